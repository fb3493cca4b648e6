"""Dataset index: split records plus what is actually on disk for each image.

The index records problems (missing file, undecodable image) instead of raising, so that the
expectations can report every problem at once. Files are read one at a time; no image is kept.

Every image reaches the models through ``to_rgb`` (here and in ``load_images``): transparent pixels are composited
on white instead of exposing whatever colour the file stores under them, and the index records each conversion
(``conversion``) and each image PIL warns is a possible decompression bomb (``decode_warning``).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import polars as pl
from PIL import Image

from models.data.datasets import DatasetFormatError
from models.data.near_duplicates import THUMBNAIL_COLUMN, image_thumbnail

HASH_CHUNK_BYTES = 1 << 20
# What transparent pixels are composited on. White: what a viewer shows for a transparent PNG, and the plain
# background most catalogue photos with cut-out alpha were made for.
TRANSPARENCY_BACKGROUND = (255, 255, 255)
_TRANSPARENT_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
INDEX_COLUMNS: dict[str, pl.DataType] = {
    "file_exists": pl.Boolean(),
    "decodes": pl.Boolean(),
    "image_width": pl.Int64(),
    "image_height": pl.Int64(),
    "content_sha256": pl.String(),
    "decode_error": pl.String(),
    "conversion": pl.String(),
    "decode_warning": pl.String(),
    THUMBNAIL_COLUMN: pl.Binary(),
}


@dataclass(frozen=True)
class _FileFacts:
    file_exists: bool
    decodes: bool
    image_width: int | None
    image_height: int | None
    content_sha256: str | None
    decode_error: str | None
    conversion: str | None = None
    decode_warning: str | None = None
    thumbnail_ycbcr_8x8: bytes | None = None  # THUMBNAIL_COLUMN


def to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """The image as RGB (a new image) and what the conversion did (None when it was RGB already).

    Transparent or translucent pixels are composited on TRANSPARENCY_BACKGROUND; a plain ``convert("RGB")`` would
    drop alpha and show the colour stored under it (often black), so a fully transparent image became a picture.
    """
    mode = image.mode
    if mode in _TRANSPARENT_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        not_opaque = float(np.mean(alpha < 255))
        if not_opaque == 0.0:
            return rgba.convert("RGB"), f"{mode}->RGB (alpha opaque everywhere, dropped)"
        background = Image.new("RGBA", rgba.size, (*TRANSPARENCY_BACKGROUND, 255))
        flattened = Image.alpha_composite(background, rgba).convert("RGB")
        return flattened, f"{mode}->RGB composited on white ({not_opaque:.1%} of pixels transparent or translucent)"
    if mode == "RGB":
        return image.convert("RGB"), None
    return image.convert("RGB"), f"{mode}->RGB"


def _decompression_bomb_warning(caught: list[warnings.WarningMessage], width: int, height: int) -> str | None:
    if not any(issubclass(item.category, Image.DecompressionBombWarning) for item in caught):
        return None
    return (f"DecompressionBombWarning: {width}x{height} = {width * height} pixels, over PIL's limit of "
            f"{Image.MAX_IMAGE_PIXELS}; decoded anyway")


def _inspect_file(image_dir: Path, relative_path: str) -> _FileFacts:
    path = image_dir / relative_path
    if not path.is_file():
        return _FileFacts(False, False, None, None, None, "file not found")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                rgb, conversion = to_rgb(image)
        width, height = rgb.size
    # PIL raises many types for bad data (UnidentifiedImageError, OSError, SyntaxError, ValueError,
    # DecompressionBombError ...); every one of them means "does not decode".
    except Exception as error:  # noqa: BLE001
        # PIL's message holds the absolute path; keep the index free of machine-specific paths.
        message = f"{type(error).__name__}: {error}".replace(str(path), relative_path)
        return _FileFacts(True, False, None, None, digest.hexdigest(), message)
    return _FileFacts(True, True, width, height, digest.hexdigest(), None, conversion,
                      _decompression_bomb_warning(caught, width, height), image_thumbnail(rgb))


def build_dataset_index(records: pl.DataFrame, image_dir: Path, inspect: Iterable[str] | None = None,
                        workers: int = 1, progress: Callable[[int, int], None] | None = None) -> pl.DataFrame:
    """Records plus file_exists, decodes, image_width, image_height, content_sha256, decode_error,
    conversion, decode_warning and the near-duplicate thumbnail (``models.data.near_duplicates``).

    Width/height are null when the image does not decode; content_sha256 is null when the file is
    missing; decode_error says why an image did not decode (null when it did); conversion says how
    the image became RGB (null when it was RGB); decode_warning names a decompression-bomb warning
    with the image's size. Never raises on a missing or corrupt file.

    ``inspect``: the relative paths to read, hash and decode (None: every row). The others are listed only (an
    ``inspected`` column is added: false, with file_exists true since the reader listed them from disk and every
    other fact null): at ImageNet's 1.28 M training images, the few thousand a few-shot grid samples are what an
    experiment reads. ``workers`` threads read files at once (hashing and decoding release the GIL); ``progress``
    is called with (files done, files to inspect) every 1,000 files and at the end.
    """
    from concurrent.futures import ThreadPoolExecutor

    image_dir = Path(image_dir)
    paths = records.get_column("relative_path").to_list()
    chosen = None if inspect is None else set(inspect)
    to_inspect = list(dict.fromkeys(path for path in paths if chosen is None or path in chosen))
    facts_by_path: dict[str, _FileFacts] = {}

    def inspected(relative_path: str) -> tuple[str, _FileFacts]:
        return relative_path, _inspect_file(image_dir, relative_path)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(inspected, to_inspect) if workers > 1 else map(inspected, to_inspect)
        for done, (relative_path, facts) in enumerate(results, start=1):
            facts_by_path[relative_path] = facts
            if progress is not None and (done % 1000 == 0 or done == len(to_inspect)):
                progress(done, len(to_inspect))
    listed_only = _FileFacts(True, None, None, None, None, None)  # type: ignore[arg-type]
    column_values: dict[str, list] = {name: [] for name in INDEX_COLUMNS}
    for relative_path in paths:
        facts = facts_by_path.get(relative_path, listed_only)
        for name in INDEX_COLUMNS:
            column_values[name].append(getattr(facts, name))
    index = records.with_columns(
        pl.Series(name, column_values[name], dtype=dtype) for name, dtype in INDEX_COLUMNS.items()
    )
    if chosen is not None:
        index = index.with_columns(pl.col("relative_path").is_in(list(facts_by_path)).alias("inspected"))
    return index


def conversion_summary(index: pl.DataFrame) -> dict[str, object]:
    """What the index metadata says about decoding: rows per conversion, and each decode warning by file."""
    conversions = index.filter(pl.col("conversion").is_not_null()).group_by("conversion").len().sort("conversion")
    warned = index.filter(pl.col("decode_warning").is_not_null()).select("relative_path", "decode_warning")
    return {
        "conversions": {conversion: int(count) for conversion, count in conversions.iter_rows()},
        "decode_warnings": {path: warning for path, warning in warned.unique(maintain_order=True).iter_rows()},
    }


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
    """Decode images as RGB (``to_rgb``: as the index saw them); raises ``DatasetFormatError`` naming the first
    file that cannot be read."""
    image_dir = Path(image_dir)
    images: list[Image.Image] = []
    for relative_path in relative_paths:
        path = image_dir / relative_path
        try:
            with Image.open(path) as image:
                images.append(to_rgb(image)[0])
        except Exception as error:  # noqa: BLE001 -- see _inspect_file
            raise DatasetFormatError(f"{path}: cannot read image: {type(error).__name__}: {error}") from error
    return images
