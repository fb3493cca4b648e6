"""Content-addressed on-disk cache of image features from a frozen image tower, one entry per image.

An entry is keyed by what the features depend on: the backbone (name and weights sha256), the image transform
(its repr), the view ("original" or "mirrored"), the numeric precision of the encoding (`models.precision`: fp32 on
CPU, bf16 autocast on CUDA), how the encoder was batched (the canonical batches of an image set, see
models.prompting.features, or one image per pass: either way an image's features do not depend on who asked first or
for which subset) and the image's content sha256. So the 16-shot set reuses the
features of the 4-shot images it contains, a test split is encoded once for every method, shot count and seed,
and every augmented image and every view is cached separately. `features_for_images` in `models.experiments` is
the caller the pipeline uses; it encodes only the images the cache is missing, in batches, then stores them.

Layout. Entries sharing (backbone, weights, transform, view, precision, batching) form a namespace, one folder per
namespace:

    <cache_dir>/<backbone>-<weights[:12]>-<view>-<namespace key>/
        namespace.json                  backbone, weights sha256, transform repr, view, precision, batching
                                        (what the key hashes)
        shard-<time>-<uuid>.safetensors hashes (M, 32) uint8 (raw sha256 digests) + features (M, E) float32,
                                        metadata: format version, row count, sha256 checksum of both tensors
        .compact.lock                   held (flock) while small shards are merged

Why shards and no separate index file: a store appends ONE new shard holding all the images it encoded, so
~20k entries live in a few dozen files, not 20k tiny ones. Shards are immutable once renamed into place, so the
set of shard files IS the index: a lookup reads only the small `hashes` tensor of each shard (memoised per
process, keyed by file name, size and mtime) and then loads the few shards holding the requested rows. There is
no mutable index to fall out of step with the shards, and no lock is needed to append. When more than
`max_small_shards` shards below `shard_rows` rows pile up, a store merges them into shards of up to `shard_rows`
rows (under a non-blocking flock: a second process skips merging instead of waiting) and deletes the merged ones;
full shards are never rewritten, so loading one shard stays bounded.

Atomicity and concurrency. A shard is written to a hidden temporary file in the same folder, fsynced, then
renamed into place (os.replace is atomic): a crash leaves at most a `.tmp-*` file, which lookups never read and a
later merge deletes once it is an hour old. Two processes storing the same image each append their own shard;
the duplicate rows are identical and the first one wins (merging drops the others). A reader whose shard was
merged away between listing and reading re-lists and retries.

Corruption. A shard that cannot be parsed (truncated, not safetensors), has inconsistent shapes or fails its
checksum is moved aside to `<name>.corrupt` with a `FeatureCacheWarning` naming the file and the reason; its
images then count as missing and are re-encoded and stored again, so a damaged cache heals itself and the bad
file stays for inspection. A namespace.json that disagrees with its folder's key raises `FeatureCacheError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from models.precision import precision_for
from models.provenance import stable_hash

SHARD_FORMAT = "promptlab-feature-shard/1"
SHARD_GLOB = "shard-*.safetensors"
NAMESPACE_FILE = "namespace.json"
COMPACT_LOCK_FILE = ".compact.lock"
# test_time: views of models/testtime (per-view keys); augmented: one pass of a view recipe
# (models.prompting.view_recipes), named by FeatureNamespace.recipe
VIEWS = ("original", "mirrored", "test_time", "augmented")
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_STALE_TEMPORARY_SECONDS = 3600.0
_LOOKUP_ATTEMPTS = 5


class FeatureCacheError(RuntimeError):
    """The cache folder is inconsistent in a way it cannot repair by itself (names the file)."""


class FeatureCacheWarning(UserWarning):
    """A damaged shard was found and moved aside; its images are re-encoded."""


@dataclass(frozen=True)
class FeatureNamespace:
    """What image features depend on besides the image itself."""

    backbone: str
    weights_sha256: str
    transform: str  # repr of the eval transform
    view: str  # "original" | "mirrored"
    precision: str = "fp32"  # models.precision: "fp32", "bf16-autocast", "fp16-autocast"
    # how the encoder was batched: canonical batches of an image set (models.prompting.features), or one image per
    # pass (test-time views)
    batching: str = "one-image-per-pass"
    # the view recipe and pass of an "augmented" view (ViewRecipe.cache_view_name); empty for the other views
    recipe: str = ""

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"feature cache view must be one of {VIEWS}, got {self.view!r}")
        if (self.view == "augmented") != bool(self.recipe):
            raise ValueError("an augmented view's namespace names its recipe and pass, and only it does "
                             f"(view {self.view!r}, recipe {self.recipe!r})")
        for name in ("backbone", "weights_sha256", "transform", "precision", "batching"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"feature cache namespace {name} must be a non-empty string")

    @classmethod
    def of(cls, backbone, view: str, batching: str = "one-image-per-pass", recipe: str = "") -> "FeatureNamespace":
        """The namespace of a loaded backbone (models.backbones.loader.LoadedBackbone), a view and how the features
        were batched (models.prompting.features.ImageSet.batching)."""
        precision = precision_for(backbone.device, training=False).name
        return cls(backbone.spec.name, backbone.weights_sha256, repr(backbone.preprocess_eval), view, precision,
                   batching, recipe)

    def described(self) -> dict[str, str]:
        """What the key hashes and namespace.json holds; without an empty recipe, so that the folders written before
        recipes existed keep their keys."""
        described = asdict(self)
        if not self.recipe:
            del described["recipe"]
        return described

    @property
    def key(self) -> str:
        return stable_hash(self.described(), length=24)

    @property
    def folder_name(self) -> str:
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", self.backbone)[:40]
        return f"{readable}-{self.weights_sha256[:12]}-{self.view}-{self.precision}-{self.key}"


@dataclass(frozen=True)
class _ShardIndex:
    path: Path
    hashes: list[bytes]


class FeatureCache:
    """Per-image feature entries under one folder (see the module docstring for the layout)."""

    def __init__(self, root: Path, shard_rows: int = 4096, max_small_shards: int = 16) -> None:
        if shard_rows < 1 or max_small_shards < 1:
            raise ValueError("shard_rows and max_small_shards must be at least 1")
        self.root = Path(root)
        self.shard_rows = shard_rows
        self.max_small_shards = max_small_shards

    # ------------------------------------------------------------------------------------------------ public
    def features(
        self,
        namespace: FeatureNamespace,
        content_hashes: Sequence[str],
        encode: Callable[[list[int]], torch.Tensor],
    ) -> torch.Tensor:
        """Features (N, E) of the images in request order; `encode(positions)` computes the missing ones.

        `encode` gets the positions (into `content_hashes`) of one image per missing hash, in request order, and
        returns their features (len(positions), E); they are stored as one new shard before returning.
        """
        digests = [_digest(value, index) for index, value in enumerate(content_hashes)]
        if not digests:
            raise ValueError("no images to look up in the feature cache")
        found = self.lookup(namespace, digests)
        first_position: dict[bytes, int] = {}
        for position, digest in enumerate(digests):
            if digest not in found:
                first_position.setdefault(digest, position)
        if first_position:
            positions = list(first_position.values())
            computed = encode(positions)
            if computed.dim() != 2 or computed.shape[0] != len(positions):
                raise ValueError(f"encode returned features of shape {tuple(computed.shape)} for "
                                 f"{len(positions)} images; expected ({len(positions)}, E)")
            computed = computed.detach().float().cpu().contiguous()
            new_rows = dict(zip(first_position, computed))
            self.store(namespace, list(new_rows), computed)
            found.update(new_rows)
        dims = {row.shape[-1] for row in found.values()}
        if len(dims) != 1:
            raise FeatureCacheError(f"{self.namespace_dir(namespace)}: cached features have several widths {dims}")
        return torch.stack([found[digest] for digest in digests])

    def features_by_hash(
        self,
        namespace: FeatureNamespace,
        content_hashes: Sequence[str],
        encode: Callable[[list[str]], tuple[Sequence[str], torch.Tensor]],
    ) -> torch.Tensor:
        """Features (N, E) of the images in request order; `encode(missing hashes)` computes at least the missing
        ones and may compute more (whole canonical batches): it returns (their hashes, (M, E)). Every computed row
        the cache lacks is stored, as one new shard."""
        digests = [_digest(value, index) for index, value in enumerate(content_hashes)]
        if not digests:
            raise ValueError("no images to look up in the feature cache")
        found = self.lookup(namespace, digests)
        missing = list(dict.fromkeys(d for d in digests if d not in found))
        if missing:
            computed_hashes, computed = encode([digest.hex() for digest in missing])
            computed = computed.detach().float().cpu().contiguous()
            if computed.dim() != 2 or computed.shape[0] != len(computed_hashes):
                raise ValueError(f"encode returned features of shape {tuple(computed.shape)} for "
                                 f"{len(computed_hashes)} images; expected ({len(computed_hashes)}, E)")
            rows = {_digest(value, index): row for index, (value, row) in enumerate(zip(computed_hashes, computed))}
            absent = [digest for digest in missing if digest not in rows]
            if absent:
                raise ValueError(f"encode did not compute {len(absent)} requested image(s), e.g. {absent[0].hex()}")
            already = self.lookup(namespace, [d for d in rows if d not in found]) if len(rows) > len(missing) else {}
            new = [digest for digest in rows if digest not in found and digest not in already]
            if new:  # another process may have stored all of them meanwhile (parallel workers, one canonical batch)
                self.store(namespace, new, torch.stack([rows[digest] for digest in new]))
            found.update(rows)
        dims = {found[digest].shape[-1] for digest in digests}
        if len(dims) != 1:
            raise FeatureCacheError(f"{self.namespace_dir(namespace)}: cached features have several widths {dims}")
        return torch.stack([found[digest] for digest in digests])

    def lookup(self, namespace: FeatureNamespace, digests: Sequence[bytes]) -> dict[bytes, torch.Tensor]:
        """The cached feature row of each digest present in the cache (raw 32-byte sha256 digests)."""
        directory = self.namespace_dir(namespace)
        if not directory.is_dir():
            return {}
        self._check_namespace_file(directory, namespace)
        wanted = set(digests)
        for attempt in range(_LOOKUP_ATTEMPTS):
            try:
                return self._lookup_once(directory, wanted)
            except FileNotFoundError:
                # A concurrent merge replaced shards between listing and reading: list again.
                if attempt == _LOOKUP_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def store(self, namespace: FeatureNamespace, digests: Sequence[bytes], features: torch.Tensor) -> Path:
        """Append one shard with these entries (atomically), then merge small shards if too many piled up."""
        if features.dim() != 2 or features.shape[0] != len(digests):
            raise ValueError(f"{len(digests)} hashes but features of shape {tuple(features.shape)}")
        directory = self.namespace_dir(namespace)
        directory.mkdir(parents=True, exist_ok=True)
        self._write_namespace_file(directory, namespace)
        path = self._write_shard(directory, list(digests), features)
        self._merge_small_shards(directory)
        return path

    def namespace_dir(self, namespace: FeatureNamespace) -> Path:
        return self.root / namespace.folder_name

    def shard_paths(self, namespace: FeatureNamespace) -> list[Path]:
        return _shard_paths(self.namespace_dir(namespace))

    # ---------------------------------------------------------------------------------------------- lookups
    def _lookup_once(self, directory: Path, wanted: set[bytes]) -> dict[bytes, torch.Tensor]:
        rows_by_shard: dict[Path, list[tuple[int, bytes]]] = {}
        located: set[bytes] = set()
        for shard in self._shard_indexes(directory):
            for row, digest in enumerate(shard.hashes):
                if digest in wanted and digest not in located:
                    located.add(digest)
                    rows_by_shard.setdefault(shard.path, []).append((row, digest))
        found: dict[bytes, torch.Tensor] = {}
        for path, rows in rows_by_shard.items():
            loaded = self._read_shard(path)
            if loaded is None:
                continue  # moved aside as corrupt: its images are missing now
            features = loaded[1]
            for row, digest in rows:
                found[digest] = features[row].clone()
        return found

    def _shard_indexes(self, directory: Path) -> list[_ShardIndex]:
        indexes = []
        for path in _shard_paths(directory):
            hashes = _memoised_shard_hashes(path)
            if hashes is None:
                try:
                    hashes = _read_shard_hashes(path)
                except FileNotFoundError:
                    raise
                except Exception as error:  # noqa: BLE001 -- any parse failure means a damaged file
                    _quarantine(path, f"cannot read its hashes ({type(error).__name__}: {error})")
                    continue
                _remember_shard_hashes(path, hashes)
            indexes.append(_ShardIndex(path, hashes))
        return indexes

    def _read_shard(self, path: Path) -> tuple[list[bytes], torch.Tensor] | None:
        """(hashes, features) of a whole shard, verified; None when it was damaged (and is now moved aside)."""
        data = path.read_bytes()  # FileNotFoundError propagates: the caller re-lists
        try:
            return _parse_shard(data)
        except Exception as error:  # noqa: BLE001 -- any parse failure means a damaged file
            _quarantine(path, str(error))
            return None

    # ----------------------------------------------------------------------------------------------- writes
    @staticmethod
    def _check_namespace_file(directory: Path, namespace: FeatureNamespace) -> None:
        path = directory / NAMESPACE_FILE
        if not path.exists():
            return  # a store that crashed before writing it; the folder name still carries the key
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise FeatureCacheError(f"{path}: unreadable namespace file ({error}); delete the folder") from error
        if recorded != namespace.described():
            raise FeatureCacheError(f"{path}: the folder holds features of {recorded}, not of {namespace.described()}; "
                                    "it was copied or renamed by hand, delete it")

    def _write_namespace_file(self, directory: Path, namespace: FeatureNamespace) -> None:
        path = directory / NAMESPACE_FILE
        if path.exists():
            self._check_namespace_file(directory, namespace)
            return
        _write_atomically(path, json.dumps(namespace.described(), indent=2, sort_keys=True).encode())

    @staticmethod
    def _write_shard(directory: Path, digests: list[bytes], features: torch.Tensor) -> Path:
        hashes = torch.frombuffer(bytearray(b"".join(digests)), dtype=torch.uint8).view(len(digests), 32)
        features = features.detach().float().cpu().contiguous()
        metadata = {"format": SHARD_FORMAT, "rows": str(len(digests)), "checksum": _checksum(hashes, features)}
        data = save_safetensors_bytes({"hashes": hashes, "features": features}, metadata=metadata)
        # Time first, so listing order (and hence which duplicate wins) follows writing order.
        path = directory / f"shard-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.safetensors"
        _write_atomically(path, data)
        _remember_shard_hashes(path, digests)
        return path

    def _merge_small_shards(self, directory: Path) -> None:
        small = [p for p in _shard_paths(directory) if _memoised_shard_rows(p) < self.shard_rows]
        if len(small) <= self.max_small_shards:
            return
        with _exclusive_lock_or_none(directory / COMPACT_LOCK_FILE) as locked:
            if not locked:
                return  # another process is merging this namespace right now
            small = [p for p in _shard_paths(directory) if _memoised_shard_rows(p) < self.shard_rows]
            if len(small) <= self.max_small_shards:
                return
            merged_hashes: list[bytes] = []
            merged_rows: list[torch.Tensor] = []
            seen: set[bytes] = set()
            sources = []
            for path in small:
                try:
                    loaded = self._read_shard(path)
                except FileNotFoundError:
                    continue
                sources.append(path)
                if loaded is None:
                    continue
                for digest, row in zip(*loaded):
                    if digest not in seen:
                        seen.add(digest)
                        merged_hashes.append(digest)
                        merged_rows.append(row)
            for start in range(0, len(merged_hashes), self.shard_rows):
                stop = start + self.shard_rows
                self._write_shard(directory, merged_hashes[start:stop], torch.stack(merged_rows[start:stop]))
            # Only after the merged shards are in place: a reader sees every entry at every moment.
            for path in sources:
                path.unlink(missing_ok=True)
                _forget_shard(path)
            _remove_stale_temporaries(directory)


# ------------------------------------------------------------------------------------------------- helpers
def _digest(content_hash: str, index: int) -> bytes:
    if not isinstance(content_hash, str) or not _SHA256_HEX.match(content_hash):
        raise ValueError(f"content_hashes[{index}]: expected a sha256 hex digest (64 hex characters), "
                         f"got {content_hash!r}")
    return bytes.fromhex(content_hash)


def _checksum(hashes: torch.Tensor, features: torch.Tensor) -> str:
    digest = hashlib.sha256()
    digest.update(hashes.numpy().tobytes())
    digest.update(features.numpy().tobytes())
    return digest.hexdigest()


def _parse_shard(data: bytes) -> tuple[list[bytes], torch.Tensor]:
    tensors = load_safetensors_bytes(data)
    metadata = _safetensors_metadata(data)
    if metadata.get("format") != SHARD_FORMAT:
        raise ValueError(f"format {metadata.get('format')!r}, expected {SHARD_FORMAT!r}")
    hashes, features = tensors.get("hashes"), tensors.get("features")
    if hashes is None or features is None:
        raise ValueError(f"tensors {sorted(tensors)}, expected hashes and features")
    rows = int(metadata.get("rows", -1))
    if hashes.dtype != torch.uint8 or tuple(hashes.shape) != (rows, 32) or features.dim() != 2 \
            or features.shape[0] != rows or features.dtype != torch.float32:
        raise ValueError(f"inconsistent shapes: hashes {tuple(hashes.shape)}, features {tuple(features.shape)}, "
                         f"{rows} rows declared")
    if _checksum(hashes, features) != metadata.get("checksum"):
        raise ValueError("checksum mismatch: the features or hashes were altered after writing")
    return [bytes(row) for row in hashes.numpy()], features


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    header_length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_length]).get("__metadata__", {})


def _read_shard_hashes(path: Path) -> list[bytes]:
    """The hashes tensor only (safetensors reads it without loading the features)."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != SHARD_FORMAT:
            raise ValueError(f"format {metadata.get('format')!r}, expected {SHARD_FORMAT!r}")
        hashes = handle.get_tensor("hashes")
    if hashes.dtype != torch.uint8 or hashes.dim() != 2 or hashes.shape[1] != 32:
        raise ValueError(f"hashes tensor has dtype {hashes.dtype} and shape {tuple(hashes.shape)}")
    return [bytes(row) for row in hashes.numpy()]


def _shard_paths(directory: Path) -> list[Path]:
    return sorted(directory.glob(SHARD_GLOB)) if directory.is_dir() else []


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.parent / f".tmp-{uuid.uuid4().hex}-{path.name}"
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # make the rename itself durable where the platform allows it
        directory_handle = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory_handle)
        finally:
            os.close(directory_handle)


def _quarantine(path: Path, reason: str) -> None:
    target = path.with_name(path.name + ".corrupt")
    with contextlib.suppress(FileNotFoundError):  # another process moved it first
        os.replace(path, target)
    _forget_shard(path)
    warnings.warn(f"feature cache shard {path} is damaged ({reason}); moved to {target.name}, its images will "
                  "be encoded again", FeatureCacheWarning, stacklevel=4)


def _remove_stale_temporaries(directory: Path) -> None:
    now = time.time()
    for path in directory.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > _STALE_TEMPORARY_SECONDS:
                path.unlink()


@contextlib.contextmanager
def _exclusive_lock_or_none(path: Path):
    """Yields True holding an exclusive flock on `path`, or False at once when another process holds it."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: never merge, appending stays safe
        yield False
        return
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# Shards are immutable, so their hashes are read once per process (keyed by path, size and mtime).
_shard_hash_memo: dict[Path, tuple[tuple[int, int], list[bytes]]] = {}
_shard_hash_memo_lock = threading.Lock()


def _file_signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _memoised_shard_hashes(path: Path) -> list[bytes] | None:
    signature = _file_signature(path)
    with _shard_hash_memo_lock:
        entry = _shard_hash_memo.get(path)
    return entry[1] if entry is not None and entry[0] == signature else None


def _memoised_shard_rows(path: Path) -> int:
    try:
        hashes = _memoised_shard_hashes(path)
        if hashes is None:
            hashes = _read_shard_hashes(path)
            _remember_shard_hashes(path, hashes)
    except Exception:  # noqa: BLE001 -- damaged or gone: a lookup will quarantine it; count it as small
        return 0
    return len(hashes)


def _remember_shard_hashes(path: Path, hashes: list[bytes]) -> None:
    with contextlib.suppress(FileNotFoundError):
        signature = _file_signature(path)
        with _shard_hash_memo_lock:
            _shard_hash_memo[path] = (signature, list(hashes))


def _forget_shard(path: Path) -> None:
    with _shard_hash_memo_lock:
        _shard_hash_memo.pop(path, None)


__all__ = ["FeatureCache", "FeatureCacheError", "FeatureCacheWarning", "FeatureNamespace", "VIEWS"]
