"""Few-shot subsets following CoOp's protocol: K images per class from train, min(K, 4) from val.

Selection rule (stable across machines and library versions that keep numpy's PCG64 stream):
for each label in ascending order, the candidates of a split are sorted by ``relative_path`` and one
``numpy.random.default_rng([seed, shots, label])`` generator draws ``permutation(n_train)`` (the first
K train candidates are taken) and then ``permutation(n_val)`` (the first min(K, 4) val candidates).

Policy when a class has fewer candidates than requested: raise ``FewShotSamplingError``. CoOp would
silently take all of them (or sample with replacement); both change what "K shots" means without a
trace, so we refuse.

The subsets store relative paths only, so they stay valid when the dataset root moves.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import polars as pl

MAX_VAL_SHOTS = 4
SUBSET_COLUMNS: tuple[str, ...] = ("relative_path", "label", "classname", "subset")


class FewShotSamplingError(ValueError):
    """A class has too few (usable) images for the requested number of shots."""


def _chosen_rows(candidates: pl.DataFrame, generator: np.random.Generator, count: int) -> pl.DataFrame:
    order = generator.permutation(candidates.height)[:count]
    return candidates[order.tolist()]


def sample_few_shot(index: pl.DataFrame, shots: int, seed: int) -> pl.DataFrame:
    """K = ``shots`` train images and min(K, 4) val images per class, with a ``subset`` column.

    Columns: relative_path, label, classname, subset (train | val), plus content_sha256 when the index
    has it. Rows are ordered by subset (train first), label, relative_path.
    Raises ``FewShotSamplingError`` naming the class and the counts when a class is short of images, or
    when a candidate image is recorded as not decoding (sample only from a validated index).
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    missing = [name for name in ("relative_path", "label", "classname", "split") if name not in index.columns]
    if missing:
        raise ValueError(f"index lacks columns {missing}")
    if "decodes" in index.columns:
        broken = index.filter(pl.col("split").is_in(["train", "val"]) & ~pl.col("decodes").fill_null(False))
        if broken.height:
            paths = broken.get_column("relative_path").to_list()
            raise FewShotSamplingError(
                f"{broken.height} train/val images do not decode or are missing (validate the index first): "
                f"{paths[:10]}"
            )

    kept_columns = ["relative_path", "label", "classname"]
    if "content_sha256" in index.columns:
        kept_columns.append("content_sha256")
    per_subset_quota = {"train": shots, "val": min(shots, MAX_VAL_SHOTS)}
    chosen_by_subset: dict[str, list[pl.DataFrame]] = {"train": [], "val": []}
    for label in sorted(index.get_column("label").unique().to_list()):
        generator = np.random.default_rng([seed, shots, label])
        for subset, quota in per_subset_quota.items():
            candidates = (
                index.filter((pl.col("label") == label) & (pl.col("split") == subset))
                .select(kept_columns)
                .sort("relative_path")
            )
            if candidates.height < quota:
                classnames = sorted(
                    index.filter(pl.col("label") == label).get_column("classname").unique().to_list()
                )
                raise FewShotSamplingError(
                    f"class {label} {classnames}: {candidates.height} {subset} images, "
                    f"{quota} needed for {shots}-shot sampling"
                )
            chosen_by_subset[subset].append(
                _chosen_rows(candidates, generator, quota).with_columns(pl.lit(subset).alias("subset"))
            )

    frames = [
        pl.concat(chosen_by_subset[subset]).sort(["label", "relative_path"])
        for subset in ("train", "val")
        if chosen_by_subset[subset]
    ]
    output_columns = [*SUBSET_COLUMNS, *kept_columns[3:]]
    if not frames:
        empty = index.select(kept_columns).clear().with_columns(pl.lit(None, dtype=pl.String).alias("subset"))
        return empty.select(output_columns)
    return pl.concat(frames).select(output_columns)


def all_few_shot_subsets(
    index: pl.DataFrame, shots_list: Sequence[int] = (1, 2, 4, 8, 16), seeds: Sequence[int] = (1, 2, 3)
) -> pl.DataFrame:
    """Every (shots, seed) subset stacked, with leading ``shots`` and ``seed`` columns."""
    frames = [
        sample_few_shot(index, shots, seed).select(
            pl.lit(shots, dtype=pl.Int64).alias("shots"), pl.lit(seed, dtype=pl.Int64).alias("seed"), pl.all()
        )
        for shots in shots_list
        for seed in seeds
    ]
    return pl.concat(frames)


def fewshot_rows(fewshot: pl.DataFrame, index: pl.DataFrame, shots: int | None, seed: int | None, subset: str,
                 where: str) -> pl.DataFrame:
    """The index rows of one drawn few-shot subset (`subset` train or val), sorted by label and path; `where` starts
    the error message when it was not drawn."""
    chosen = fewshot.filter((pl.col("shots") == shots) & (pl.col("seed") == seed)
                            & (pl.col("subset") == subset)).select("relative_path")
    if chosen.height == 0:
        raise ValueError(f"{where}: no {shots}-shot {subset} subset for seed {seed}")
    return chosen.join(index, on="relative_path", how="left").sort("label", "relative_path")
