"""Dataset index: split records plus what is actually on disk for each image.

The index records problems (missing file, undecodable image) instead of raising, so that the
expectations can report every problem at once. Files are read one at a time; no image is kept.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import polars as pl
from PIL import Image

from models.data.datasets import DatasetFormatError

HASH_CHUNK_BYTES = 1 << 20
INDEX_COLUMNS: dict[str, pl.DataType] = {
    "file_exists": pl.Boolean(),
    "decodes": pl.Boolean(),
    "image_width": pl.Int64(),
    "image_height": pl.Int64(),
    "content_sha256": pl.String(),
    "decode_error": pl.String(),
}


@dataclass(frozen=True)
class _FileFacts:
    file_exists: bool
    decodes: bool
    image_width: int | None
    image_height: int | None
    content_sha256: str | None
    decode_error: str | None


def _inspect_file(image_dir: Path, relative_path: str) -> _FileFacts:
    path = image_dir / relative_path
    if not path.is_file():
        return _FileFacts(False, False, None, None, None, "file not found")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    try:
        with Image.open(path) as image:
            image.load()
            rgb = image.convert("RGB")
            width, height = rgb.size
    # PIL raises many types for bad data (UnidentifiedImageError, OSError, SyntaxError, ValueError,
    # DecompressionBombError ...); every one of them means "does not decode".
    except Exception as error:  # noqa: BLE001
        # PIL's message holds the absolute path; keep the index free of machine-specific paths.
        message = f"{type(error).__name__}: {error}".replace(str(path), relative_path)
        return _FileFacts(True, False, None, None, digest.hexdigest(), message)
    return _FileFacts(True, True, width, height, digest.hexdigest(), None)


def build_dataset_index(records: pl.DataFrame, image_dir: Path) -> pl.DataFrame:
    """Records plus file_exists, decodes, image_width, image_height, content_sha256, decode_error.

    Width/height are null when the image does not decode; content_sha256 is null when the file is
    missing; decode_error says why an image did not decode (null when it did). Never raises on a
    missing or corrupt file.
    """
    image_dir = Path(image_dir)
    facts_by_path: dict[str, _FileFacts] = {}
    column_values: dict[str, list] = {name: [] for name in INDEX_COLUMNS}
    for relative_path in records.get_column("relative_path").to_list():
        facts = facts_by_path.get(relative_path)
        if facts is None:
            facts = _inspect_file(image_dir, relative_path)
            facts_by_path[relative_path] = facts
        for name in INDEX_COLUMNS:
            column_values[name].append(getattr(facts, name))
    return records.with_columns(
        pl.Series(name, column_values[name], dtype=dtype) for name, dtype in INDEX_COLUMNS.items()
    )


def dataset_fingerprint(index: pl.DataFrame) -> str:
    """sha256 over the sorted (relative_path, label, classname, split, content_sha256) rows.

    Independent of row order and of the machine; a missing file hashes as an empty content hash.
    """
    rows = sorted(
        (str(path), int(label), str(classname), str(split), sha or "")
        for path, label, classname, split, sha in index.select(
            ["relative_path", "label", "classname", "split", "content_sha256"]
        ).iter_rows()
    )
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, ensure_ascii=True, separators=(",", ":")).encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()


def load_images(image_dir: Path, relative_paths: Iterable[str]) -> list[Image.Image]:
    """Decode images as RGB; raises ``DatasetFormatError`` naming the first file that cannot be read."""
    image_dir = Path(image_dir)
    images: list[Image.Image] = []
    for relative_path in relative_paths:
        path = image_dir / relative_path
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except Exception as error:  # noqa: BLE001 -- see _inspect_file
            raise DatasetFormatError(f"{path}: cannot read image: {type(error).__name__}: {error}") from error
    return images
