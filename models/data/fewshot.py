"""Few-shot subsets following CoOp's protocol: K images per class from train, min(K, 4) from val.

Two samplers draw them (``all_few_shot_subsets(..., sampling=...)``):

- ``"per_class"`` (``sample_few_shot``, the default): for each label in ascending order, the candidates of a
  split are sorted by ``relative_path`` and one ``numpy.random.default_rng([seed, shots, label])`` generator draws
  ``permutation(n_train)`` (the first K train candidates are taken) and then ``permutation(n_val)`` (the first
  min(K, 4) val candidates). Stable across machines and library versions that keep numpy's PCG64 stream,
  independent of row order, and one class's draw does not move when another class changes.
- ``"dassl"`` (``sample_few_shot_dassl``): the images Dassl's ``generate_fewshot_dataset`` draws for the same seed
  in CoOp and the methods built on it (CoCoOp, MaPLe, KgCoOp, ...), so that results can be compared with the
  papers' on the very same few-shot images. See its docstring for the rule and its dependence on row order.

Policy when a class has fewer candidates than requested: raise ``FewShotSamplingError``. CoOp would
silently take all of them (or sample with replacement); both change what "K shots" means without a
trace, so we refuse.

The subsets store relative paths only, so they stay valid when the dataset root moves.
"""

from __future__ import annotations

import random
from typing import Literal, Mapping, Sequence

import numpy as np
import polars as pl

MAX_VAL_SHOTS = 4
# The subsets curation draws for every dataset: CoOp's shot counts and seeds (every grid picks among them).
PROTOCOL_SHOTS: tuple[int, ...] = (1, 2, 4, 8, 16)
PROTOCOL_SEEDS: tuple[int, ...] = (1, 2, 3)
SUBSET_COLUMNS: tuple[str, ...] = ("relative_path", "label", "classname", "subset")
FewShotSampling = Literal["per_class", "dassl"]
FEW_SHOT_SAMPLINGS: tuple[str, ...] = ("per_class", "dassl")


class FewShotSamplingError(ValueError):
    """A class has too few (usable) images for the requested number of shots."""


def _chosen_rows(candidates: pl.DataFrame, generator: np.random.Generator, count: int) -> pl.DataFrame:
    order = generator.permutation(candidates.height)[:count]
    return candidates[order.tolist()]


def _check_sampling_input(index: pl.DataFrame, shots: int, seed: int, splits: Sequence[str] = ("train", "val")
                          ) -> None:
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    missing = [name for name in ("relative_path", "label", "classname", "split") if name not in index.columns]
    if missing:
        raise ValueError(f"index lacks columns {missing}")
    if "decodes" in index.columns:
        # rows an index only listed (``inspected`` false: never decoded) are candidates; they exist on disk
        inspected = pl.col("inspected") if "inspected" in index.columns else pl.lit(True)
        broken = index.filter(pl.col("split").is_in(list(splits)) & inspected & ~pl.col("decodes").fill_null(False))
        if broken.height:
            paths = broken.get_column("relative_path").to_list()
            raise FewShotSamplingError(
                f"{broken.height} {'/'.join(splits)} images do not decode or are missing (validate the index first): "
                f"{paths[:10]}"
            )


def _kept_columns(index: pl.DataFrame) -> list[str]:
    return ["relative_path", "label", "classname", *(["content_sha256"] if "content_sha256" in index.columns else [])]


def sample_few_shot(index: pl.DataFrame, shots: int, seed: int, val_is_test: bool = False) -> pl.DataFrame:
    """K = ``shots`` train images and min(K, 4) val images per class (none when ``val_is_test``: ImageNet), with a
    ``subset`` column.

    Columns: relative_path, label, classname, subset (train | val), plus content_sha256 when the index
    has it. Rows are ordered by subset (train first), label, relative_path.
    Raises ``FewShotSamplingError`` naming the class and the counts when a class is short of images, or
    when a candidate image is recorded as not decoding (sample only from a validated index).
    """
    _check_sampling_input(index, shots, seed, ("train",) if val_is_test else ("train", "val"))

    kept_columns = _kept_columns(index)
    per_subset_quota = {"train": shots} if val_is_test else {"train": shots, "val": min(shots, MAX_VAL_SHOTS)}
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


def sample_few_shot_dassl(index: pl.DataFrame, shots: int, seed: int, *, val_is_test: bool = False
                          ) -> pl.DataFrame:
    """The few-shot subset Dassl draws for ``seed``: the same images as CoOp's ``split_fewshot/shot_K-seed_S.pkl``.

    The reference (Dassl.pytorch c61a1b5 and CoOp ff61507, read there): ``train.py`` calls
    ``set_random_seed(seed)`` (``random.seed``, ``np.random.seed``, torch's seeds), then builds the trainer,
    whose first act is the dataset's constructor: it reads the split file (no random draw when the file
    exists) and calls ``generate_fewshot_dataset(train, num_shots=K)`` then
    ``generate_fewshot_dataset(val, num_shots=min(K, 4))``; nothing draws from Python's ``random`` stream
    in between. ``generate_fewshot_dataset`` groups a split's items by label in the order labels first
    appear (``split_dataset_by_label``: a defaultdict filled row by row) and calls
    ``random.sample(items, K)`` per class, in that order, on the one module-level generator. ImageNet has
    no val subset (``val_is_test=True``: CoOp evaluates on val = test), so only train draws.

    Here one ``random.Random(seed)`` (the state ``random.seed(seed)`` gives the module-level generator; the
    global generator is not touched) draws ``sample(positions, K)`` per class: ``random.sample`` picks by
    position, so drawing positions picks the items Dassl picks. Python's ``random.sample`` algorithm and
    its integer seeding have been unchanged since Python 3.2 (CoOp ran 3.8).

    The draw depends on ROW ORDER: ``index`` must hold each split's rows in the split file's order, as
    ``read_coop_split`` and ``build_dataset_index`` keep them (and Parquet round trips keep them); a frame
    sorted or shuffled first gives other images. It also depends on the other classes: one class more or
    less upstream moves every later class's draw.

    Columns as ``sample_few_shot``'s (relative_path, label, classname, subset, plus content_sha256 when the
    index has it); rows in Dassl's list order: train then val, classes in first-appearance order, each
    class's images in the order ``random.sample`` returned them (the order of the pickled list).

    Where Dassl takes every image of a class that has fewer than K (without drawing), this raises
    ``FewShotSamplingError`` naming the class and the counts, as ``sample_few_shot`` does; a class of
    train that val lacks is refused too (Dassl would give it no val image).
    """
    subsets = ("train",) if val_is_test else ("train", "val")
    _check_sampling_input(index, shots, seed, subsets)
    kept_columns = _kept_columns(index)
    generator = random.Random(seed)
    train_labels = index.filter(pl.col("split") == "train").get_column("label").unique().to_list()
    chosen: list[pl.DataFrame] = []
    for subset in subsets:
        quota = shots if subset == "train" else min(shots, MAX_VAL_SHOTS)
        rows = index.filter(pl.col("split") == subset).select(kept_columns)
        positions_by_label: dict[int, list[int]] = {}
        for position, label in enumerate(rows.get_column("label").to_list()):
            positions_by_label.setdefault(label, []).append(position)
        absent = sorted(set(train_labels) - set(positions_by_label))
        if absent:
            raise FewShotSamplingError(_dassl_shortfall(index, absent[0], subset, 0, quota, shots))
        picked: list[int] = []
        for label, positions in positions_by_label.items():
            if len(positions) < quota:
                raise FewShotSamplingError(_dassl_shortfall(index, label, subset, len(positions), quota, shots))
            picked += generator.sample(positions, quota)
        chosen.append(rows[picked].with_columns(pl.lit(subset).alias("subset")))
    return pl.concat(chosen).select([*SUBSET_COLUMNS, *kept_columns[3:]])


def _dassl_shortfall(index: pl.DataFrame, label: int, subset: str, available: int, quota: int, shots: int) -> str:
    classnames = sorted(index.filter(pl.col("label") == label).get_column("classname").unique().to_list())
    dassl_would = (f"Dassl would have taken all {available} without drawing (a {available}-shot class in a "
                   f"{shots}-shot run)" if available else "Dassl would have given it no image")
    return (f"class {label} {classnames}: {available} {subset} images, {quota} needed for {shots}-shot sampling; "
            f"{dassl_would}")


def servable_shots(index: pl.DataFrame, shots_list: Sequence[int], *, val_is_test: bool = False, dataset: str,
                   requested: Mapping[int, Sequence[str]] | None = None) -> tuple[int, ...]:
    """The shot counts of ``shots_list`` whose subsets every training class can fill: K train images and, unless
    val is test, min(K, 4) val images (a class with no val image has 0). A count no experiment asks for is left
    out (a dataset of 5 images per class has no 16-shot subset); one that ``requested`` names (K -> the
    experiments that train on it) is refused here, naming the dataset, K, the class and its images, instead of the
    experiment failing later for want of a subset. Both samplers need the same counts (``sample_few_shot_dassl``
    refuses a short class too)."""
    counts = {split: dict(index.filter(pl.col("split") == split).group_by("label").len().iter_rows())
              for split in ("train", "val")}
    labels = sorted(counts["train"])
    names = dict(index.select("label", "classname").unique("label").iter_rows())

    def shortfall(shots: int) -> str | None:
        quotas = {"train": shots} if val_is_test else {"train": shots, "val": min(shots, MAX_VAL_SHOTS)}
        for subset, quota in quotas.items():
            short = sorted((counts[subset].get(label, 0), label) for label in labels
                           if counts[subset].get(label, 0) < quota)
            if short:
                available, label = short[0]
                return (f"class {label} ({names.get(label)!r}) has {available} {subset} image"
                        f"{'' if available == 1 else 's'} ({len(short)} of {len(labels)} classes have fewer than "
                        f"{quota})")
        return None

    shortfalls = {shots: shortfall(shots) for shots in shots_list}
    for shots, experiments in sorted((requested or {}).items()):
        if shots in shortfalls and shortfalls[shots] is not None:
            needs = f"{shots} train" + ("" if val_is_test else f" and {min(shots, MAX_VAL_SHOTS)} val")
            raise FewShotSamplingError(
                f"{dataset}: {shots}-shot experiments ({', '.join(sorted(experiments))}) need {needs} images per "
                f"class, but {shortfalls[shots]}; leave {shots} shots out of the grid for {dataset} (grids.yaml: "
                f"shots) or give every class enough images")
    servable = tuple(shots for shots in shots_list if shortfalls[shots] is None)
    if shots_list and not servable:
        raise FewShotSamplingError(f"{dataset}: too few images per class for any few-shot subset: "
                                   f"{shots_list[0]}-shot: {shortfalls[shots_list[0]]}")
    return servable


def all_few_shot_subsets(
    index: pl.DataFrame, shots_list: Sequence[int] = (1, 2, 4, 8, 16), seeds: Sequence[int] = (1, 2, 3),
    sampling: FewShotSampling = "per_class", val_is_test: bool = False,
) -> pl.DataFrame:
    """Every (shots, seed) subset stacked, with leading ``shots`` and ``seed`` columns; ``sampling`` picks the
    sampler (``"per_class"``: ``sample_few_shot``; ``"dassl"``: ``sample_few_shot_dassl``, which alone takes
    ``val_is_test``)."""
    if sampling == "per_class":
        def draw(shots: int, seed: int) -> pl.DataFrame:
            return sample_few_shot(index, shots, seed, val_is_test=val_is_test)
    elif sampling == "dassl":
        def draw(shots: int, seed: int) -> pl.DataFrame:
            return sample_few_shot_dassl(index, shots, seed, val_is_test=val_is_test)
    else:
        raise ValueError(f"sampling must be one of {FEW_SHOT_SAMPLINGS}, got {sampling!r}")
    frames = [
        draw(shots, seed).select(
            pl.lit(shots, dtype=pl.Int64).alias("shots"), pl.lit(seed, dtype=pl.Int64).alias("seed"), pl.all()
        )
        for shots in shots_list
        for seed in seeds
    ]
    if not frames:  # a test-only dataset: no subset, the same columns
        return pl.DataFrame(schema={"shots": pl.Int64, "seed": pl.Int64,
                                    **{name: index.schema.get(name, pl.String) for name in _kept_columns(index)},
                                    "subset": pl.String}).select("shots", "seed", *SUBSET_COLUMNS,
                                                                 *_kept_columns(index)[3:])
    return pl.concat(frames)


def fewshot_rows(fewshot: pl.DataFrame, index: pl.DataFrame, shots: int | None, seed: int | None, subset: str,
                 where: str) -> pl.DataFrame:
    """The index rows of one drawn few-shot subset (`subset` train or val), sorted by label and path; `where` starts
    the error message when it was not drawn."""
    drawn = fewshot.filter((pl.col("shots") == shots) & (pl.col("seed") == seed))
    chosen = drawn.filter(pl.col("subset") == subset).select("relative_path")
    if chosen.height == 0 and not (subset == "val" and drawn.height):  # val is not drawn where val is test
        raise ValueError(f"{where}: no {shots}-shot {subset} subset for seed {seed}")
    return chosen.join(index, on="relative_path", how="left").sort("label", "relative_path")
