"""Real services for tests, on 127.0.0.1 only, in temporary folders, stopped afterwards: PostgreSQL from the Debian
package (run as the `postgres` user when the tests run as root: PostgreSQL refuses root)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's initdb and pg_ctl, or None."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True) + [
            str(Path(p).parent) for p in [shutil.which("initdb")] if p]:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stdout[-1500:]}{result.stderr[-1500:]}")


class LocalPostgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1, trust authentication, user `postgres`."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.folder: Path | None = None
        self.port: int | None = None
        self.seconds: float | None = None

    def start(self) -> LocalPostgres:
        if self.bin is None:
            raise RuntimeError("PostgreSQL's initdb and pg_ctl are not installed (/usr/lib/postgresql/*/bin)")
        started = time.perf_counter()
        self.port = free_port()
        # its folder must belong to the user that runs it, and that user must reach it: not under pytest's
        # root-only tmp folder
        self.folder = Path(tempfile.mkdtemp(prefix="promptlab-postgres-"))
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        cluster = self.folder / "cluster"
        _run(as_postgres_user([str(self.bin / "initdb"), "-D", str(cluster), "-U", "postgres", "--auth=trust",
                               "-E", "UTF8", "--no-sync"]), "initdb")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off "
                   "-c max_connections=200")
        _run(as_postgres_user([str(self.bin / "pg_ctl"), "-D", str(cluster), "-o", options,
                               "-l", str(self.folder / "postgres.log"), "-w", "-t", "60", "start"]), "pg_ctl start")
        self.seconds = time.perf_counter() - started
        return self

    def create_database(self, name: str) -> str:
        """Create database `name`; returns its libpq connection string."""
        _run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
             f"createdb {name}")
        return f"dbname={name} host=127.0.0.1 port={self.port} user=postgres"

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.folder is None:
            return
        if (self.folder / "cluster" / "postmaster.pid").exists():
            subprocess.run(as_postgres_user([str(self.bin / "pg_ctl"), "-D", str(self.folder / "cluster"), "-m",
                                             "immediate", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None
