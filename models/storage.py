"""Where a workspace is stored: a local folder (the default) or object storage (`s3://bucket/prefix`, or any other
fsspec URL whose filesystem is installed), reached through one layer, fsspec.

Torch, open_clip, DuckDB and the Parquet readers need local files, so computation always reads and writes a local
folder. For a remote workspace that folder is a working copy (`WorkingCopy`) that `pull` fills from the store and
`push` publishes to it, one *unit* at a time. A unit is a folder of the workspace (`curation/Shapes`) with, when
present, its sibling `<folder>.fingerprint` file (the embedded world's "is this output current" record). Two kinds:

- mirrored units (everything but the caches) are published whole. A push uploads the changed files (each one
  object, written by a single atomic PUT), then writes the unit's manifest `<unit>/.promptlab-manifest.json` last
  (every file's size and SHA-256, a generation id), then removes the objects the new manifest no longer lists. A
  push that will overwrite or remove objects of the current version first marks the manifest `writing`, so a reader
  never combines files of two versions. A pull reads the manifest first and takes exactly the files it lists, each
  checked against its SHA-256; a unit without a manifest is absent, a unit marked `writing` (a push under way, or
  interrupted) is waited for and then refused, naming it. A pull is a no-op while the store still holds the version
  this working copy last pushed or pulled (its record under `.promptlab-sync/`), so local work not yet pushed is kept.
- additive units (the feature and variation caches: content-addressed files, each written once under a unique name)
  are merged, not mirrored: a push uploads the files the store lacks, a pull downloads those this copy has never
  seen (so a shard merged away locally is not fetched again). No manifest is needed: every object is complete.

For a local workspace (`LocalStore`) the working copy IS the workspace: pull and push do nothing, no file is copied.
One writer per unit at a time is assumed (a partition is computed by one worker); two machines pushing the same
mirrored unit at once leave the last manifest written.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

MANIFEST_NAME = ".promptlab-manifest.json"
MANIFEST_FORMAT = "promptlab-unit/1"
SYNC_RECORDS = ".promptlab-sync"  # in the working copy: what each unit was when last pushed or pulled
OPTIONS_ENV = "PROMPTLAB_WORKSPACE_OPTIONS"  # JSON storage options for fsspec (endpoint_url, key, secret, ...)
# Defaults for S3, overridable through $PROMPTLAB_WORKSPACE_OPTIONS: fail in seconds on an unreachable endpoint
# instead of botocore's minutes of retries.
_PROTOCOL_DEFAULTS = {"s3": {"config_kwargs": {"connect_timeout": 10, "retries": {"max_attempts": 3,
                                                                                      "mode": "standard"}}}}
_CREDENTIAL_HINTS = {
    "s3": "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), AWS_ENDPOINT_URL for an S3-compatible "
          f"server, or the fsspec options as JSON in ${OPTIONS_ENV}",
}


class WorkspaceStorageError(OSError):
    """The workspace's store cannot be used: a bad URL, missing credentials, an unreachable endpoint, or a unit that
    is being written or whose last push was interrupted. An OSError, like the failures of a local folder."""


def _hidden_or_transient(relative: str) -> bool:
    """Never synchronised: hidden files (temporaries, locks, manifests, sync records), `*.tmp`, quarantined
    `*.corrupt` files."""
    parts = relative.split("/")
    return any(part.startswith(".") for part in parts) or relative.endswith((".tmp", ".corrupt"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_parquet_file(path: Path | str, **options):
    """One local Parquet file as a polars DataFrame, its path taken literally: polars reads a path as a glob pattern
    by default, so a workspace folder named `proj [v2]` or `we'ird [x]{a,b} *?` would match nothing ("expanded
    paths were empty"). Every reader of a workspace file goes through here; `options` are read_parquet's."""
    import polars as pl

    return pl.read_parquet(path, glob=False, **options)


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as output:
            output.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------------- URLs
def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and "://" in location


def parse_location(location: str | Path, variable: str = "PROMPTLAB_WORKSPACE") -> tuple[str | None, Path | None]:
    """(remote URL, None) for object storage, (None, local folder) for a plain path or a file:// URL; an unknown
    scheme or one whose fsspec filesystem is not installed is refused naming `variable`."""
    if not is_url(location):
        return None, Path(location)
    scheme = urlparse(location).scheme
    if scheme in ("file", "local"):
        return None, Path(urlparse(location).path)
    import fsspec

    if scheme not in fsspec.available_protocols():
        raise WorkspaceStorageError(f"{variable}={location}: unknown storage scheme {scheme!r}; use a local folder, "
                                    "file://..., s3://bucket/prefix or another fsspec protocol")
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as error:
        raise WorkspaceStorageError(f"{variable}={location}: the {scheme!r} filesystem is not installed ({error})"
                                    ) from error
    return location.rstrip("/"), None


def default_cache_root(url: str) -> Path:
    """The local working copy of a remote workspace: $PROMPTLAB_WORKSPACE_CACHE, else one folder per URL under
    $XDG_CACHE_HOME/promptlab/workspaces (~/.cache by default)."""
    chosen = os.environ.get("PROMPTLAB_WORKSPACE_CACHE", "").strip()
    if chosen:
        return Path(chosen)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "promptlab" / "workspaces" / hashlib.sha256(url.encode()).hexdigest()[:16]


def storage_options(url: str, variable: str = "PROMPTLAB_WORKSPACE") -> dict:
    """fsspec options of a URL's filesystem: the protocol's defaults overridden by $PROMPTLAB_WORKSPACE_OPTIONS."""
    scheme = urlparse(url).scheme
    options = json.loads(json.dumps(_PROTOCOL_DEFAULTS.get(scheme, {})))
    text = os.environ.get(OPTIONS_ENV, "").strip()
    if text:
        try:
            chosen = json.loads(text)
        except json.JSONDecodeError as error:
            raise WorkspaceStorageError(f"${OPTIONS_ENV} (for {variable}={url}) is not JSON: {error}") from error
        if not isinstance(chosen, dict):
            raise WorkspaceStorageError(f"${OPTIONS_ENV} (for {variable}={url}) must be a JSON object of fsspec "
                                        f"options, got {type(chosen).__name__}")
        options.update(chosen)
    return options


# -------------------------------------------------------------------------------------------------------- stores
class LocalStore:
    """A workspace that is a local folder: keys are paths under `root`; writes go through a temporary file and a
    rename."""

    remote = False

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        _write_atomically(self._path(key), data)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list_files(self, prefix: str) -> dict[str, int]:
        """{key: size} of the files under the folder `prefix`."""
        folder = self._path(prefix)
        if not folder.is_dir():
            return {}
        return {path.relative_to(self.root).as_posix(): path.stat().st_size
                for path in folder.rglob("*") if path.is_file()}

    def remove(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            import shutil

            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def put_files(self, pairs: list[tuple[Path, str]]) -> None:
        for local, key in pairs:
            _write_atomically(self._path(key), Path(local).read_bytes())

    def get_files(self, pairs: list[tuple[str, Path]]) -> None:
        for key, local in pairs:
            _write_atomically(Path(local), self.read_bytes(key))


class ObjectStore:
    """A workspace in object storage, through fsspec: keys are paths under the URL's prefix. Every error reaching
    the store is raised as WorkspaceStorageError naming the variable, the URL and what to set."""

    remote = True

    def __init__(self, url: str, options: dict | None = None, variable: str = "PROMPTLAB_WORKSPACE") -> None:
        import fsspec

        self.url, self.variable = url.rstrip("/"), variable
        self.scheme = urlparse(self.url).scheme
        options = storage_options(self.url, variable) if options is None else options
        with self._reaching("opening the filesystem"):
            # a fresh instance: credentials and endpoint are read now, not from an instance cached before
            self.fs = fsspec.filesystem(self.scheme, skip_instance_cache=True, **options)
        self.base = self.fs._strip_protocol(self.url).rstrip("/")
        self._checked = False

    @contextmanager
    def _reaching(self, what: str) -> Iterator[None]:
        try:
            yield
        except (WorkspaceStorageError, FileNotFoundError):
            raise
        except Exception as error:  # botocore's NoCredentialsError, EndpointConnectionError, PermissionError, ...
            hint = _CREDENTIAL_HINTS.get(self.scheme, f"check the fsspec options in ${OPTIONS_ENV}")
            raise WorkspaceStorageError(f"{self.variable}={self.url}: {what} failed: {type(error).__name__}: "
                                        f"{' '.join(str(error).split())} ({hint})") from error

    def check(self) -> None:
        """Reach the store once (its bucket for S3-like stores): a missing bucket, missing credentials or an
        unreachable endpoint are refused here, before any work."""
        if self._checked:
            return
        container = self.base.split("/")[0] if self.scheme in ("s3", "s3a", "gs", "gcs", "az", "abfs") else self.base
        with self._reaching(f"reaching {self.scheme}://{container}"):
            try:
                if container:
                    self.fs.info(container)
            except FileNotFoundError as error:
                if container != self.base:  # a prefix of a bucket may well not exist yet; its bucket must
                    raise WorkspaceStorageError(f"{self.variable}={self.url}: the bucket {container!r} does not "
                                                "exist (create it first)") from error
        self._checked = True

    def _key(self, key: str) -> str:
        return f"{self.base}/{key}"

    def read_bytes(self, key: str) -> bytes:
        self.check()
        with self._reaching(f"reading {key}"):
            return self.fs.cat_file(self._key(key))

    def write_bytes(self, key: str, data: bytes) -> None:
        self.check()
        with self._reaching(f"writing {key}"):
            self.fs.pipe_file(self._key(key), data)  # one PUT: the object appears whole or not at all

    def exists(self, key: str) -> bool:
        self.check()
        with self._reaching(f"looking up {key}"):
            return self.fs.exists(self._key(key))

    def list_files(self, prefix: str) -> dict[str, int]:
        self.check()
        with self._reaching(f"listing {prefix}/"):
            self.fs.invalidate_cache(self._key(prefix))
            try:
                found = self.fs.find(self._key(prefix), detail=True)
            except FileNotFoundError:
                return {}
        start = len(self.base) + 1
        return {name[start:]: int(info.get("size") or 0) for name, info in found.items()
                if info.get("type", "file") == "file" and name.startswith(self._key(prefix) + "/")}

    def remove(self, key: str) -> None:
        self.check()
        with self._reaching(f"removing {key}"):
            try:
                self.fs.rm(self._key(key), recursive=True)
            except FileNotFoundError:
                pass

    def put_files(self, pairs: list[tuple[Path, str]]) -> None:
        """Upload (local file, key) pairs, concurrently; each object is one PUT (or one completed multipart
        upload), so it appears whole or not at all."""
        if not pairs:
            return
        self.check()
        with self._reaching(f"uploading {len(pairs)} file(s) ({pairs[0][1]}, ...)"):
            self.fs.put([str(local) for local, _ in pairs], [self._key(key) for _, key in pairs])

    def get_files(self, pairs: list[tuple[str, Path]]) -> None:
        """Download (key, local file) pairs, concurrently, each to a temporary file beside its target and then
        renamed: a reader of the local file never sees half of it."""
        if not pairs:
            return
        self.check()
        temporaries = []
        for _, local in pairs:
            Path(local).parent.mkdir(parents=True, exist_ok=True)
            temporaries.append(Path(local).with_name(f".{Path(local).name}.{uuid.uuid4().hex[:8]}.tmp"))
        try:
            with self._reaching(f"downloading {len(pairs)} file(s) ({pairs[0][0]}, ...)"):
                self.fs.get([self._key(key) for key, _ in pairs], [str(t) for t in temporaries])
            for temporary, (_, local) in zip(temporaries, pairs):
                os.replace(temporary, local)
        finally:
            for temporary in temporaries:
                temporary.unlink(missing_ok=True)


def open_store(url: str, variable: str = "PROMPTLAB_WORKSPACE") -> ObjectStore:
    """The store of a URL, one per process and options (so the bucket is checked once, not at every asset)."""
    return _cached_store(url.rstrip("/"), variable, os.environ.get(OPTIONS_ENV, ""))


@lru_cache(maxsize=8)
def _cached_store(url: str, variable: str, options_text: str) -> ObjectStore:
    return ObjectStore(url, variable=variable)


# ------------------------------------------------------------------------------------------------ synchronisation
@dataclass(frozen=True)
class Unit:
    """A folder of the workspace synchronised as a whole (mirrored) or merged file by file (additive)."""

    folder: str  # relative to the workspace root, '/'-separated
    additive: bool = False

    @property
    def fingerprint(self) -> str:
        return f"{self.folder}.fingerprint"

    @property
    def manifest_key(self) -> str:
        return f"{self.folder}/{MANIFEST_NAME}"


@dataclass
class SyncReport:
    """What a pull or push moved: counted over every unit it touched, for the asset's log."""

    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    units: list[str] = field(default_factory=list)

    def line(self, verb: str) -> str:
        return (f"{verb} {self.files} file(s), {self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s "
                f"({', '.join(self.units) or 'nothing changed'})")


class WorkingCopy:
    """A local folder kept in step with a remote store, unit by unit (see the module docstring)."""

    def __init__(self, store: ObjectStore | LocalStore, root: Path, wait_seconds: float = 60.0) -> None:
        self.store, self.root = store, Path(root)
        self.wait_seconds = wait_seconds  # how long a pull waits for a unit marked `writing` before refusing it

    @property
    def remote(self) -> bool:
        return self.store.remote

    # ------------------------------------------------------------------------------------------------ records
    def _record_path(self, unit: Unit) -> Path:
        return self.root / SYNC_RECORDS / (unit.folder.replace("/", "%2F") + ".json")

    def _record(self, unit: Unit) -> dict:
        path = self._record_path(unit)
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save_record(self, unit: Unit, record: dict) -> None:
        _write_atomically(self._record_path(unit), json.dumps(record).encode())

    def remote_manifest(self, unit: Unit) -> dict | None:
        try:
            data = self.store.read_bytes(unit.manifest_key)
        except FileNotFoundError:
            return None
        try:
            manifest = json.loads(data)
        except json.JSONDecodeError as error:
            raise WorkspaceStorageError(f"{self.store.url}/{unit.manifest_key} is not JSON ({error}); push "
                                        f"{unit.folder} again") from error
        if manifest.get("format") != MANIFEST_FORMAT:
            raise WorkspaceStorageError(f"{self.store.url}/{unit.manifest_key}: unknown manifest format "
                                        f"{manifest.get('format')!r} (expected {MANIFEST_FORMAT})")
        return manifest

    def _local_files(self, unit: Unit, known: dict) -> dict[str, dict]:
        """{relative path: {size, sha256, mtime_ns}} of the unit's local files; a hash is reused from `known` when
        size and mtime are unchanged."""
        folder = self.root / unit.folder
        paths = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
        if (self.root / unit.fingerprint).is_file():
            paths.append(self.root / unit.fingerprint)
        files = {}
        for path in paths:
            relative = path.relative_to(self.root).as_posix()
            if _hidden_or_transient(relative):
                continue
            stat = path.stat()
            previous = known.get(relative) or {}
            same = previous.get("size") == stat.st_size and previous.get("mtime_ns") == stat.st_mtime_ns
            files[relative] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                               "sha256": previous["sha256"] if same and "sha256" in previous else sha256_of(path)}
        return files

    def _each_unit(self, units: Iterable[Unit], *, additive: Callable[[Unit], tuple[int, int]],
                   mirrored: Callable[[Unit], tuple[int, int]]) -> SyncReport:
        """Sync each unit once (in order) with `additive` or `mirrored`, which return (files, bytes) moved; nothing
        for a local store. The report names the units where anything moved."""
        report, started = SyncReport(), time.perf_counter()
        if self.remote:
            for unit in dict.fromkeys(units):
                moved = additive(unit) if unit.additive else mirrored(unit)
                if moved[0]:
                    report.files += moved[0]
                    report.bytes += moved[1]
                    report.units.append(unit.folder)
        report.seconds = time.perf_counter() - started
        return report

    # -------------------------------------------------------------------------------------------------- pull
    def pull(self, units: Iterable[Unit]) -> SyncReport:
        return self._each_unit(units, additive=self._pull_additive, mirrored=self._pull_mirrored)

    def _pull_mirrored(self, unit: Unit) -> tuple[int, int]:
        deadline = time.monotonic() + self.wait_seconds
        while True:
            manifest = self.remote_manifest(unit)
            if manifest is None:
                return 0, 0  # absent from the store: whatever is local stays (work not pushed yet)
            record = self._record(unit)
            if manifest.get("state") == "complete":
                if record.get("generation") == manifest["generation"]:
                    return 0, 0  # the store holds what this copy last synced: local changes are this copy's
                moved = self._take(unit, manifest, record)
                if moved is not None:
                    return moved
                # a file did not match the manifest: a push replaced it meanwhile; read the manifest again
            if time.monotonic() > deadline:
                state = manifest.get("state")
                raise WorkspaceStorageError(
                    f"{self.store.url}/{unit.folder} is {'being written' if state == 'writing' else 'inconsistent'}"
                    f" (manifest state {state!r}, written by {manifest.get('writer')} at "
                    f"{manifest.get('written_at')}) and stayed so for {self.wait_seconds:.0f} s: a push is under way "
                    "or was interrupted; materialize the asset that writes it again")
            time.sleep(min(1.0, max(0.05, self.wait_seconds / 20)))

    def _take(self, unit: Unit, manifest: dict, record: dict) -> tuple[int, int] | None:
        """Make the local unit exactly the manifest's version; None when a downloaded file does not match it."""
        local = self._local_files(unit, record.get("files", {}))
        missing = sorted(relative for relative, entry in manifest["files"].items()
                         if local.get(relative, {}).get("sha256") != entry["sha256"])
        self.store.get_files([(relative, self.root / relative) for relative in missing])
        mismatched = [relative for relative in missing if sha256_of(self.root / relative)
                      != manifest["files"][relative]["sha256"]]
        for relative in mismatched:
            (self.root / relative).unlink(missing_ok=True)
        if mismatched:
            return None
        count, size = len(missing), sum(manifest["files"][relative]["size"] for relative in missing)
        for relative in set(local) - set(manifest["files"]):
            (self.root / relative).unlink(missing_ok=True)
        self._save_record(unit, {"generation": manifest["generation"],
                                 "files": self._local_files(unit, {})})
        return count, size

    def _pull_additive(self, unit: Unit) -> tuple[int, int]:
        record = self._record(unit)
        seen = set(record.get("seen", []))
        remote = {key: size for key, size in self.store.list_files(unit.folder).items()
                  if not _hidden_or_transient(key)}
        missing = sorted(key for key in set(remote) - seen if not (self.root / key).exists())
        self.store.get_files([(key, self.root / key) for key in missing])
        count, size = len(missing), sum(remote[key] for key in missing)
        if set(remote) - seen:
            self._save_record(unit, {"seen": sorted(seen | set(remote))})
        return count, size

    # -------------------------------------------------------------------------------------------------- push
    def push(self, units: Iterable[Unit]) -> SyncReport:
        return self._each_unit(units, additive=self._push_additive, mirrored=self._push_mirrored)

    def _manifest(self, unit: Unit, state: str, files: dict) -> dict:
        return {"format": MANIFEST_FORMAT, "unit": unit.folder, "state": state, "generation": uuid.uuid4().hex,
                "written_at": datetime.now(timezone.utc).isoformat(),
                "writer": f"{socket.gethostname()}:{os.getpid()}",
                "files": {k: {"size": v["size"], "sha256": v["sha256"]} for k, v in sorted(files.items())}}

    def _push_mirrored(self, unit: Unit) -> tuple[int, int]:
        record = self._record(unit)
        local = self._local_files(unit, record.get("files", {}))
        current = self.remote_manifest(unit)
        complete = current is not None and current.get("state") == "complete"
        published = current["files"] if complete else {}
        wanted = {k: {"size": v["size"], "sha256": v["sha256"]} for k, v in local.items()}
        if current is None and not local:
            return 0, 0
        if complete and published == wanted:
            self._save_record(unit, {"generation": current["generation"], "files": local})
            return 0, 0
        if current is not None and (not complete or any(published[k] != wanted.get(k) for k in published)):
            # objects of the published version change: readers must not combine them with the old manifest
            self.store.write_bytes(unit.manifest_key, json.dumps(self._manifest(unit, "writing", {})).encode())
        changed = sorted(relative for relative in local if published.get(relative) != wanted[relative])
        self.store.put_files([(self.root / relative, relative) for relative in changed])
        count, size = len(changed), sum(local[relative]["size"] for relative in changed)
        if not local:  # the unit was removed locally: remove it from the store, manifest first
            self.store.remove(unit.manifest_key)
            self.store.remove(unit.folder)
            self.store.remove(unit.fingerprint)
            self._record_path(unit).unlink(missing_ok=True)
            return count, size
        manifest = self._manifest(unit, "complete", local)
        self.store.write_bytes(unit.manifest_key, json.dumps(manifest, indent=1).encode())
        # objects the new version no longer lists (and leftovers of an interrupted push), after the manifest
        stale = {key for key in self.store.list_files(unit.folder) if not _hidden_or_transient(key)} - set(local)
        if unit.fingerprint in published and unit.fingerprint not in local:
            stale.add(unit.fingerprint)
        for key in sorted(stale):
            self.store.remove(key)
        self._save_record(unit, {"generation": manifest["generation"], "files": local})
        return count, size

    def _push_additive(self, unit: Unit) -> tuple[int, int]:
        record = self._record(unit)
        seen = set(record.get("seen", []))
        folder = self.root / unit.folder
        names = {path.relative_to(self.root).as_posix() for path in folder.rglob("*") if path.is_file()
                 } if folder.is_dir() else set()
        names = {name for name in names if not _hidden_or_transient(name)}
        if not names - seen:
            return 0, 0  # every local file is known to be in the store already
        remote = set(self.store.list_files(unit.folder))
        new = sorted(names - remote)
        self.store.put_files([(self.root / key, key) for key in new])
        count, size = len(new), sum((self.root / key).stat().st_size for key in new)
        self._save_record(unit, {"seen": sorted(seen | names | remote)})
        return count, size

    def unit_exists(self, unit: Unit) -> bool:
        """The unit is complete in the store (mirrored) or has files there (additive); locally for a local store."""
        if not self.remote:
            return (self.root / unit.folder).exists()
        if unit.additive:
            return bool(self.store.list_files(unit.folder))
        manifest = self.remote_manifest(unit)
        return manifest is not None and manifest.get("state") == "complete"
