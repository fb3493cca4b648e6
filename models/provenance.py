"""What a result depends on: stable hashes of configs, files and source code, and the git commit."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def stable_hash(value: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of a config (sorted keys), truncated for readability."""
    canonical = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def sha256_file(path: Path | str, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_directory(directory: Path | str) -> str:
    """Hash over the relative paths and bytes of every file in a folder (a saved model, a dataset)."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def library_code_version() -> str:
    """Fingerprint of the models/ library source: changes whenever any method, reader or trainer changes."""
    digest = hashlib.sha256()
    for path in sorted((PACKAGE_ROOT / "models").rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD commit of the checkout, with '-dirty' when tracked files differ from it; 'unknown' outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PACKAGE_ROOT, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def source_version(*relative_paths: str) -> str:
    """Fingerprint of specific source/config files (a Dagster asset's code_version)."""
    digest = hashlib.sha256()
    for relative in relative_paths:
        path = PACKAGE_ROOT / relative
        digest.update(relative.encode())
        digest.update(path.read_bytes() if path.exists() else b"<missing>")
    return digest.hexdigest()[:12]
