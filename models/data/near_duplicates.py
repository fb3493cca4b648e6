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

Search (``find_near_duplicates``): exact, without comparing every pair. Write w(x) for an image's weighted
192-vector and R = max_distance * sqrt(192): two images are within max_distance iff ||w(a) - w(b)|| <= R.

- Coordinates. U is a k x 192 matrix with orthonormal rows (the top principal directions of the thumbnails, so that
  k numbers carry most of the spread; any orthonormal rows would keep the search exact) and Q = I - U^T U projects
  on the rest. Each image gets k + 1 coordinates c(x) = (U w(x), ||Q w(x)||). For v = w(a) - w(b), Pythagoras
  gives ||v||^2 = ||U v||^2 + ||Q v||^2 and the reverse triangle inequality ||Q v|| >= | ||Q w(a)|| - ||Q w(b)|| |,
  so ||w(a) - w(b)|| >= ||c(a) - c(b)||: a close pair is close in coordinates too.
- Boxes. Each split's images are ordered by a k-d tree over c (median splits along the widest coordinate), cut
  into leaves of at most LEAF_ROWS images and groups of whole leaves of at most GROUP_ROWS; each leaf and group
  keeps the box [lo, hi] of its coordinates. For a in a box A and any b, every coordinate differs by at least
  gap_j = max(0, lo_j - c_j(b), c_j(b) - hi_j), so ||w(a) - w(b)|| >= ||gap||; and for b in a box B, by at least
  max(0, lo_B,j - hi_A,j, lo_A,j - hi_B,j). Split a against split b: for each group of a, the leaves of b whose
  boxes come within R of the group's box; of their images, those within R of the group's box, then of each of
  its leaves' boxes; then the pairs (image of the leaf, image left) whose coordinates lie within R (one matrix
  product). Whatever is skipped is farther than R: nothing within the threshold is lost.
- Decision. The squared distances of the pairs left are computed exactly (below), and those within the threshold
  go to the final decision that ``find_near_duplicates_exhaustive`` applies to its own candidates: the float64 RMS
  distance of the two thumbnails, by the same function. Both methods return the same pairs
  (tests/data/test_near_duplicates.py checks it).

Rounding. Weighted values are multiples of 1/4 in [0, 255] and the centre subtracted is one too, so the float32
features are exact, and squared norms and squared differences (multiples of 1/16 below 2^28) sum exactly in float64
in any order. The exhaustive method's float32 product a.b of length n = 192 is within gamma_n ||a|| ||b|| of the true
value, gamma_n = n u / (1 - n u), u = 2^-24, whatever the summation order (Higham, Accuracy and Stability of
Numerical Algorithms, 3.1); the float32 norms and the two float32 operations that form |a|^2 + |b|^2 - 2 a.b add at
most 3 u (|a| + |b|)^2. FLOAT32_ALLOWANCE, twice gamma_(n+3), times (|a| + |b|)^2 (the largest norms of the block)
bounds the error of the squared distance, and a pair within the threshold plus that allowance goes on to the
decision. The search's coordinates and their squared distances are float64 products of length at most 192, wrong
by at most about 1e-13 L (L the largest norm, below 256 sqrt(192)) and 1e-14 L^2; every test above compares with
reach = R + 1e-6 (1 + L) instead of R, which covers both with orders of magnitude to spare.

Cost: building the boxes is O(n log n); the box test is quadratic in the number of groups and leaves
(n^2 / (GROUP_ROWS LEAF_ROWS), k + 1 operations each), and the rest depends on how crowded the thumbnails are, not on
n^2. bench/dataset_scale.py measures both methods on 10,000 to 1,331,167 thumbnails.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
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
# The exhaustive comparison: rows of one split per block; a block's distance matrix holds at most
# COMPARISON_BLOCK_VALUES float32 values (64 MiB), whatever the other split's size.
COMPARISON_BLOCK_ROWS = 2048
COMPARISON_BLOCK_VALUES = 1 << 24
# The search: images per group and per leaf, principal directions kept, rows sampled (evenly) to find them, groups
# of one split tested against all leaves of another at a time. Tuned on bench/dataset_scale.py's synthetic
# thumbnails (1,000,000: 1024/64/8 took 16 s, 512/64/8 17 s, 1024/32/8 21 s, 1024/64/10 19 s); any values keep the
# search exact.
GROUP_ROWS = 1024
LEAF_ROWS = 64
PROJECTED_DIMENSIONS = 8
PRINCIPAL_SAMPLE_ROWS = 20_000
GROUP_TEST_CHUNK = 16
_FLOAT32_ROUNDOFF = 2.0 ** -24
# twice gamma_(n+3) for n = THUMBNAIL_VALUES (module docstring, Rounding)
FLOAT32_ALLOWANCE = 2 * (THUMBNAIL_VALUES + 3) * _FLOAT32_ROUNDOFF / (1 - (THUMBNAIL_VALUES + 3) * _FLOAT32_ROUNDOFF)
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


def _thumbnail_values(thumbnails: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(thumbnails), dtype=np.uint8).reshape(len(thumbnails), THUMBNAIL_VALUES)


def _weighted(values: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    features = values.astype(dtype)
    features[:, 1::3] *= CHROMA_WEIGHT
    features[:, 2::3] *= CHROMA_WEIGHT
    return features


def _rms_distance(values_a: np.ndarray, values_b: np.ndarray) -> float:
    """The decision of both methods: float64 RMS difference of two thumbnails' weighted values (uint8 rows)."""
    features = _weighted(np.stack([values_a, values_b]))
    return float(np.sqrt(np.mean((features[0] - features[1]) ** 2)))


def thumbnail_distance(thumbnail_a: bytes, thumbnail_b: bytes) -> float:
    """RMS difference (grey levels) of two thumbnails, chroma weighted by CHROMA_WEIGHT."""
    return _rms_distance(*_thumbnail_values([thumbnail_a, thumbnail_b]))


def _centred(values: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Weighted values minus the common centre, in float32: exact (multiples of 1/4 below 256 in magnitude)."""
    features = _weighted(values, np.float32)
    features -= centre.astype(np.float32)
    return features


def _common_centre(values_by_split: dict[str, np.ndarray]) -> np.ndarray:
    """Mean weighted thumbnail rounded to a multiple of 1/4 (so the centred values stay exact in float32)."""
    rows = [values for values in values_by_split.values() if len(values)]
    if not rows:
        return np.zeros(THUMBNAIL_VALUES)
    total = sum(values.sum(axis=0, dtype=np.float64) for values in rows)
    mean = _weighted(total[None] / sum(len(values) for values in rows))[0]
    return np.round(4 * mean) / 4


def _squared_norms(features: np.ndarray) -> np.ndarray:
    """Exact squared norms (float64 sums of multiples of 1/16 below 2^28)."""
    as_float64 = features.astype(np.float64)
    return np.einsum("ij,ij->i", as_float64, as_float64)


def _decided(values_a: np.ndarray, rows_a: Iterable[int], values_b: np.ndarray, rows_b: Iterable[int],
             max_distance: float) -> list[tuple[int, int, float]]:
    """The final decision of both methods, pair by pair."""
    pairs = []
    for row_a, row_b in zip(rows_a, rows_b):
        distance = _rms_distance(values_a[row_a], values_b[row_b])
        if distance <= max_distance:
            pairs.append((int(row_a), int(row_b), distance))
    return pairs


def _squared_limit(max_distance: float) -> float:
    return max_distance * max_distance * THUMBNAIL_VALUES


FoundPairs = dict[tuple[str, str], list[tuple[int, int, float]]]
PairFinder = Callable[[dict[str, np.ndarray], np.ndarray, float], FoundPairs]


def _exhaustive_pairs(values: dict[str, np.ndarray], centre: np.ndarray, max_distance: float) -> FoundPairs:
    """Every cross-split pair compared, one block of rows of a against all of b per float32 matrix product; a pair
    goes on to the decision when within the threshold plus the proven rounding allowance (module docstring)."""
    features = {split: _centred(split_values, centre) for split, split_values in values.items()}
    squared_norms = {split: _squared_norms(split_features) for split, split_features in features.items()}
    found = {}
    for split_a, split_b in itertools.combinations(SPLITS, 2):
        pairs: list[tuple[int, int, float]] = []
        if len(values[split_a]) and len(values[split_b]):
            features_b = features[split_b]
            squared_b = squared_norms[split_b].astype(np.float32)
            largest_b = math.sqrt(float(squared_norms[split_b].max()))
            block_rows = max(1, min(COMPARISON_BLOCK_ROWS, COMPARISON_BLOCK_VALUES // len(features_b)))
            for start in range(0, len(features[split_a]), block_rows):
                block = features[split_a][start:start + block_rows]
                block_squared = squared_norms[split_a][start:start + block_rows]
                largest = math.sqrt(float(block_squared.max())) + largest_b
                bound = np.float32(_squared_limit(max_distance) + FLOAT32_ALLOWANCE * largest * largest)
                squared = (block_squared.astype(np.float32)[:, None] + squared_b[None, :]
                           - np.float32(2.0) * (block @ features_b.T))
                rows_a, rows_b = np.nonzero(squared <= bound)
                pairs += _decided(values[split_a], rows_a + start, values[split_b], rows_b, max_distance)
        found[(split_a, split_b)] = pairs
    return found


@dataclass(frozen=True)
class _Leaves:
    """A split's images in k-d tree order (`rows`: the split's row of each position) with their coordinates, cut
    into leaves (leaf i holds positions starts[i]:starts[i + 1]) and groups of leaves (group j holds leaves
    group_first_leaf[j]:group_first_leaf[j + 1]), each with its box (low, high). `left` and `right` append to the
    coordinates c what makes one matrix product give squared distances: [c, |c|^2, 1] . [-2 c', 1, |c'|^2]."""

    rows: np.ndarray
    coordinates: np.ndarray
    starts: np.ndarray
    low: np.ndarray
    high: np.ndarray
    group_first_leaf: np.ndarray
    group_low: np.ndarray
    group_high: np.ndarray
    left: np.ndarray
    right: np.ndarray

    def positions(self, leaves: np.ndarray) -> np.ndarray:
        """The positions of the given leaves' images, concatenated."""
        starts, lengths = self.starts[leaves], self.starts[leaves + 1] - self.starts[leaves]
        return np.arange(int(lengths.sum())) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)


def _principal_directions(values: dict[str, np.ndarray], centre: np.ndarray, dimensions: int) -> np.ndarray:
    """Orthonormal rows: the top principal directions of an even sample of all thumbnails."""
    total = sum(len(split_values) for split_values in values.values())
    step = max(1, total // PRINCIPAL_SAMPLE_ROWS)
    sample = np.concatenate([_centred(split_values[::step], centre) for split_values in values.values()])
    if len(sample) == 0:
        return np.eye(THUMBNAIL_VALUES)[:dimensions]
    sample = sample.astype(np.float64) - sample.mean(axis=0, dtype=np.float64)
    _, vectors = np.linalg.eigh(sample.T @ sample)
    return np.ascontiguousarray(vectors[:, ::-1][:, :dimensions].T)


def _coordinates(values: np.ndarray, centre: np.ndarray, directions: np.ndarray, chunk_rows: int = 1 << 16
                 ) -> tuple[np.ndarray, float]:
    """(U w, ||Q w||) per row (module docstring, Coordinates), and the largest norm ||w||."""
    coordinates = np.empty((len(values), len(directions) + 1))
    largest_norm = 0.0
    for start in range(0, len(values), chunk_rows):
        chunk = _centred(values[start:start + chunk_rows], centre).astype(np.float64)
        projected = chunk @ directions.T
        coordinates[start:start + chunk_rows, :-1] = projected
        coordinates[start:start + chunk_rows, -1] = np.linalg.norm(chunk - projected @ directions, axis=1)
        largest_norm = max(largest_norm, float(np.sqrt(np.einsum("ij,ij->i", chunk, chunk).max())))
    return coordinates, largest_norm


def _build_leaves(coordinates: np.ndarray) -> _Leaves:
    """Median splits along the coordinate of widest spread: nodes of at most GROUP_ROWS images are groups, split on
    until every leaf holds at most LEAF_ROWS."""
    pending: list[tuple[np.ndarray, bool]] = [(np.arange(len(coordinates)), False)]
    leaves: list[np.ndarray] = []
    group_first_leaves: list[int] = []
    while pending:
        rows, in_group = pending.pop()
        if not in_group and len(rows) <= GROUP_ROWS:
            group_first_leaves.append(len(leaves))
            in_group = True
        if len(rows) <= LEAF_ROWS:
            if len(rows):
                leaves.append(rows)
            continue
        points = coordinates[rows]
        axis = int(np.argmax(points.max(axis=0) - points.min(axis=0)))
        half = len(rows) // 2
        order = np.argpartition(points[:, axis], half)
        pending += [(rows[order[half:]], in_group), (rows[order[:half]], in_group)]  # the lower half first
    rows = np.concatenate(leaves) if leaves else np.zeros(0, dtype=np.int64)
    starts = np.cumsum([0] + [len(leaf) for leaf in leaves])
    group_first_leaf = np.array(group_first_leaves + [len(leaves)]) if leaves else np.zeros(1, dtype=np.int64)
    ordered = coordinates[rows]

    def boxes(bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(bounds) < 2:
            return np.zeros((0, ordered.shape[1])), np.zeros((0, ordered.shape[1]))
        return np.minimum.reduceat(ordered, bounds[:-1]), np.maximum.reduceat(ordered, bounds[:-1])

    squared, ones = np.einsum("ij,ij->i", ordered, ordered)[:, None], np.ones((len(ordered), 1))
    return _Leaves(rows, ordered, starts, *boxes(starts), group_first_leaf, *boxes(starts[group_first_leaf]),
                   np.hstack([ordered, squared, ones]), np.hstack([-2.0 * ordered, ones, squared]))


def _pairs_within_reach(leaves_a: _Leaves, leaves_b: _Leaves, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows of a, rows of b) of every pair whose coordinates lie within `reach` of each other: for each group of
    a, the leaves of b whose boxes come within reach of the group's box, then those of their images that do, then
    the pairs themselves."""
    found_a, found_b = [], []
    reach_squared = reach * reach
    for first in range(0, len(leaves_a.group_low), GROUP_TEST_CHUNK):
        low_a = leaves_a.group_low[first:first + GROUP_TEST_CHUNK]
        high_a = leaves_a.group_high[first:first + GROUP_TEST_CHUNK]
        gaps = np.maximum(np.maximum(leaves_b.low[None] - high_a[:, None], low_a[:, None] - leaves_b.high[None]), 0.0)
        reachable = np.einsum("abk,abk->ab", gaps, gaps) <= reach_squared
        for offset in np.flatnonzero(reachable.any(axis=1)):
            positions_b = leaves_b.positions(np.flatnonzero(reachable[offset]))
            coordinates_b = leaves_b.coordinates[positions_b]
            # The gap of each image of b to a's box: its coordinates clipped into the box, minus themselves.
            point_gaps = np.clip(coordinates_b, low_a[offset], high_a[offset])
            point_gaps -= coordinates_b
            near_group = np.einsum("ik,ik->i", point_gaps, point_gaps) <= reach_squared
            positions_b, coordinates_b = positions_b[near_group], coordinates_b[near_group]
            if not len(positions_b):
                continue
            # Then, leaf by leaf of the group, the images of b within reach of the leaf's box, and the pairs.
            group = first + offset
            for leaf in range(leaves_a.group_first_leaf[group], leaves_a.group_first_leaf[group + 1]):
                point_gaps = np.clip(coordinates_b, leaves_a.low[leaf], leaves_a.high[leaf])
                point_gaps -= coordinates_b
                near_leaf = positions_b[np.einsum("ik,ik->i", point_gaps, point_gaps) <= reach_squared]
                if not len(near_leaf):
                    continue
                start, stop = leaves_a.starts[leaf], leaves_a.starts[leaf + 1]
                squared = leaves_a.left[start:stop] @ leaves_b.right[near_leaf].T
                # Pairs within reach are rare: find the rows holding one before listing them.
                for row in np.flatnonzero(squared.min(axis=1) <= reach_squared):
                    close_b = np.flatnonzero(squared[row] <= reach_squared)
                    found_a.append(np.full(len(close_b), leaves_a.rows[start + row]))
                    found_b.append(leaves_b.rows[near_leaf[close_b]])
    empty = np.zeros(0, dtype=np.int64)
    return (np.concatenate(found_a) if found_a else empty), (np.concatenate(found_b) if found_b else empty)


def _exactly_within(values_a: np.ndarray, rows_a: np.ndarray, values_b: np.ndarray, rows_b: np.ndarray,
                    limit: float, chunk_pairs: int = 1 << 16) -> np.ndarray:
    """Which pairs have a squared distance within `limit`: computed exactly (float64 sums of multiples of 1/16)."""
    within = np.zeros(len(rows_a), dtype=bool)
    for start in range(0, len(rows_a), chunk_pairs):
        stop = start + chunk_pairs
        difference = _weighted(values_a[rows_a[start:stop]]) - _weighted(values_b[rows_b[start:stop]])
        within[start:stop] = np.einsum("ij,ij->i", difference, difference) <= limit
    return within


def _indexed_pairs(values: dict[str, np.ndarray], centre: np.ndarray, max_distance: float) -> FoundPairs:
    """The pairs of `_exhaustive_pairs`, comparing only what the coordinates cannot rule out."""
    directions = _principal_directions(values, centre, min(PROJECTED_DIMENSIONS, THUMBNAIL_VALUES))
    coordinates = {split: _coordinates(split_values, centre, directions) for split, split_values in values.items()}
    leaves = {split: _build_leaves(split_coordinates) for split, (split_coordinates, _) in coordinates.items()}
    largest_norm = max(largest for _, largest in coordinates.values())
    reach = max_distance * math.sqrt(THUMBNAIL_VALUES) + 1e-6 * (1.0 + largest_norm)
    found = {}
    for split_a, split_b in itertools.combinations(SPLITS, 2):
        rows_a, rows_b = _pairs_within_reach(leaves[split_a], leaves[split_b], reach)
        # Exact squared distances leave the few pairs the final decision (the exhaustive method's) has to see.
        within = _exactly_within(values[split_a], rows_a, values[split_b], rows_b,
                                 _squared_limit(max_distance) * (1 + 1e-9) + 1e-9)
        found[(split_a, split_b)] = _decided(values[split_a], rows_a[within], values[split_b], rows_b[within],
                                             max_distance)
    return found


def find_near_duplicates(index: pl.DataFrame, policy: NearDuplicatePolicy) -> tuple[pl.DataFrame, int]:
    """Pairs of images in different splits whose thumbnails are within ``policy.max_distance``, closest first
    (columns path_a, split_a, path_b, split_b, distance; split_a comes before split_b in train, val, test), and
    how many pairs the allow-list exempted. Rows without a thumbnail (missing or undecodable files, which their own
    expectations report) are not compared. Exact without comparing every pair (module docstring): the same pairs as
    ``find_near_duplicates_exhaustive``."""
    return _near_duplicates(index, policy, _indexed_pairs)


def find_near_duplicates_exhaustive(index: pl.DataFrame, policy: NearDuplicatePolicy) -> tuple[pl.DataFrame, int]:
    """``find_near_duplicates`` comparing every cross-split pair (quadratic): the reference for tests and the
    benchmark."""
    return _near_duplicates(index, policy, _exhaustive_pairs)


def _near_duplicates(index: pl.DataFrame, policy: NearDuplicatePolicy, find_pairs: PairFinder
                     ) -> tuple[pl.DataFrame, int]:
    rows = index.select("relative_path", "split", THUMBNAIL_COLUMN).filter(pl.col(THUMBNAIL_COLUMN).is_not_null())
    by_split = {split: rows.filter(pl.col("split") == split) for split in SPLITS}
    values = {split: _thumbnail_values(frame.get_column(THUMBNAIL_COLUMN).to_list())
              for split, frame in by_split.items()}
    pairs_by_splits = find_pairs(values, _common_centre(values), policy.max_distance)
    found: list[tuple[str, str, str, str, float]] = []
    exempted = 0
    for (split_a, split_b), pairs in pairs_by_splits.items():
        paths_a = by_split[split_a].get_column("relative_path").to_list()
        paths_b = by_split[split_b].get_column("relative_path").to_list()
        for row_a, row_b, distance in pairs:
            if policy.allows(paths_a[row_a], paths_b[row_b]):
                exempted += 1
            else:
                found.append((paths_a[row_a], split_a, paths_b[row_b], split_b, round(distance, 3)))
    pairs = pl.DataFrame(found, schema=NEAR_DUPLICATE_SCHEMA, orient="row").sort(
        "distance", "path_a", "path_b", maintain_order=True)
    return pairs, exempted
