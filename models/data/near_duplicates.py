"""Near-duplicate images across splits: the leakage a byte hash cannot see (a re-saved, re-encoded, resized or
converted copy of a training image placed in val or test).

Each image is summarised once, when the index is built, by a thumbnail: the composited RGB image in YCbCr,
area-averaged to 8x8 cells (192 bytes, a column of the index, so it is cached with it). Two images are compared by
the root-mean-square difference of their thumbnails in grey levels (0-255), chroma weighted by 1/4:

- a colour thumbnail, not a perceptual hash: pHash and its kind threshold each coefficient against the median, so
  they keep structure and drop colour and contrast. On the embedded datasets a black and an olive lightning bolt
  at the same place hash alike (Colours: distance 0 bits between different classes), while a JPEG re-encode of a
  32 px image moves pHash by up to 18 of its 64 bits (it does not downscale such a small image first);
- area averaging over 4x4-pixel cells cancels most of a codec's block noise and any resampling of the same picture;
- lossy codecs subsample chroma 2x and quantise it coarsely, so a re-encode moves chroma several times more than
  luma; weighting chroma by 1/4 lets colour still separate colour classes without reading codec noise as content.

Pairs are compared exhaustively, one split against another, in blocks (a matrix product per block): quadratic in
the number of images; see bench/near_duplicates.py for the cost and where it stops being cheap.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import polars as pl
from PIL import Image

from models.data.datasets import SPLITS

THUMBNAIL_COLUMN = "thumbnail_ycbcr_8x8"
THUMBNAIL_SIDE = 8
THUMBNAIL_VALUES = THUMBNAIL_SIDE * THUMBNAIL_SIDE * 3
CHROMA_WEIGHT = 0.25
# RMS grey levels, chosen on the embedded datasets (bench/results/near-duplicates-latest.json): above every
# re-save, lossless format change, resize and JPEG q90 copy measured there (at most 1.77), below every pair of
# distinct images (the closest: 1.91, ColourShapes) except in ShapesSketch, whose faint outlines get their own
# lower threshold in datasets.yaml.
DEFAULT_MAX_DISTANCE = 1.8
COMPARISON_BLOCK_ROWS = 2048
# A block's distance matrix holds at most this many float32 values (64 MiB), whatever the other split's size.
COMPARISON_BLOCK_VALUES = 1 << 24
NEAR_DUPLICATE_SCHEMA: dict[str, pl.DataType] = {
    "path_a": pl.String(), "split_a": pl.String(), "path_b": pl.String(), "split_b": pl.String(),
    "distance": pl.Float64(),
}


@dataclass(frozen=True)
class NearDuplicatePolicy:
    """How close two images in different splits may be (``max_distance``, RMS grey levels of the weighted
    thumbnail; a pair at or below it is a near-duplicate) and which pairs are known and accepted (unordered
    relative paths)."""

    max_distance: float = DEFAULT_MAX_DISTANCE
    allowed_pairs: frozenset[frozenset[str]] = frozenset()

    @staticmethod
    def allowing(max_distance: float, pairs: Iterable[tuple[str, str]]) -> "NearDuplicatePolicy":
        return NearDuplicatePolicy(max_distance, frozenset(frozenset(pair) for pair in pairs))

    def allows(self, path_a: str, path_b: str) -> bool:
        return frozenset((path_a, path_b)) in self.allowed_pairs


def image_thumbnail(rgb_image: Image.Image) -> bytes:
    """8x8 YCbCr cells (area average) of an RGB image, as 192 bytes (row-major, Y Cb Cr interleaved)."""
    thumbnail = rgb_image.convert("YCbCr").resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX)
    return thumbnail.tobytes()


def _weighted_features(thumbnails: list[bytes]) -> np.ndarray:
    values = np.frombuffer(b"".join(thumbnails), dtype=np.uint8).reshape(len(thumbnails), THUMBNAIL_VALUES)
    features = values.astype(np.float64)
    features[:, 1::3] *= CHROMA_WEIGHT
    features[:, 2::3] *= CHROMA_WEIGHT
    return features


def thumbnail_distance(thumbnail_a: bytes, thumbnail_b: bytes) -> float:
    """RMS difference (grey levels) of two thumbnails, chroma weighted by CHROMA_WEIGHT."""
    features = _weighted_features([thumbnail_a, thumbnail_b])
    return float(np.sqrt(np.mean((features[0] - features[1]) ** 2)))


def _close_pairs(features_a: np.ndarray, features_b: np.ndarray, max_distance: float) -> list[tuple[int, int, float]]:
    """(row in a, row in b, distance) of every pair within max_distance."""
    if len(features_a) == 0 or len(features_b) == 0:
        return []
    # Centring keeps the float32 expansion |a|^2 + |b|^2 - 2ab accurate; candidates get a margin, then the exact
    # distance in float64 decides.
    centre = np.concatenate([features_a, features_b]).mean(axis=0)
    a32, b32 = (features_a - centre).astype(np.float32), (features_b - centre).astype(np.float32)
    b_norms = np.einsum("ij,ij->i", b32, b32)
    limit = (max_distance ** 2) * THUMBNAIL_VALUES + 1.0
    pairs: list[tuple[int, int, float]] = []
    block_rows = max(1, min(COMPARISON_BLOCK_ROWS, COMPARISON_BLOCK_VALUES // len(b32)))
    for start in range(0, len(a32), block_rows):
        block = a32[start:start + block_rows]
        squared = np.einsum("ij,ij->i", block, block)[:, None] + b_norms[None, :] - 2.0 * (block @ b32.T)
        for row_a, row_b in zip(*np.nonzero(squared <= limit)):
            index_a = start + int(row_a)
            distance = float(np.sqrt(np.mean((features_a[index_a] - features_b[row_b]) ** 2)))
            if distance <= max_distance:
                pairs.append((index_a, int(row_b), distance))
    return pairs


def find_near_duplicates(index: pl.DataFrame, policy: NearDuplicatePolicy) -> tuple[pl.DataFrame, int]:
    """Pairs of images in different splits whose thumbnails are within ``policy.max_distance``, closest first
    (columns path_a, split_a, path_b, split_b, distance; split_a comes before split_b in train, val, test), and
    how many pairs the allow-list exempted. Rows without a thumbnail (missing or undecodable files, which their own
    expectations report) are not compared."""
    rows = index.select("relative_path", "split", THUMBNAIL_COLUMN).filter(pl.col(THUMBNAIL_COLUMN).is_not_null())
    by_split = {split: rows.filter(pl.col("split") == split) for split in SPLITS}
    found: list[tuple[str, str, str, str, float]] = []
    exempted = 0
    for split_a, split_b in itertools.combinations(SPLITS, 2):
        rows_a, rows_b = by_split[split_a], by_split[split_b]
        features_a = _weighted_features(rows_a.get_column(THUMBNAIL_COLUMN).to_list())
        features_b = _weighted_features(rows_b.get_column(THUMBNAIL_COLUMN).to_list())
        paths_a, paths_b = rows_a.get_column("relative_path").to_list(), rows_b.get_column("relative_path").to_list()
        for row_a, row_b, distance in _close_pairs(features_a, features_b, policy.max_distance):
            if policy.allows(paths_a[row_a], paths_b[row_b]):
                exempted += 1
            else:
                found.append((paths_a[row_a], split_a, paths_b[row_b], split_b, round(distance, 3)))
    pairs = pl.DataFrame(found, schema=NEAR_DUPLICATE_SCHEMA, orient="row").sort(
        "distance", "path_a", "path_b", maintain_order=True)
    return pairs, exempted
