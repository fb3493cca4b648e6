"""The limited-label learning settings of Menghini et al. ("Enhancing CLIP with CLIP", NeurIPS 2023): which training
images are labelled (for training or validation) and which form the unlabelled pool that pseudolabels are drawn from.

- ``ssl`` (semi-supervised): ``labels_per_class`` (2) labelled images per class; those 2C images are split 80/20 into
  labelled train and labelled val; every other training image is the unlabelled pool.
- ``ul`` (unsupervised): no labels; the whole training split is the pool.
- ``trzsl`` (transductive zero-shot): int(0.62 C) seen classes, drawn with the split seed (the authors' 500, 0, 200);
  every training image of a seen class is labelled (80/20 into train and val); the training images of the unseen
  classes are the pool (as in the authors' code, where every seen-class image is labelled, so the pool holds only
  unseen-class images); results are reported on seen, unseen and their harmonic mean
  (models.evaluation.metrics.harmonic_mean).

Only the training split is ever assigned: val and test images never enter a pool. Departures from the authors' code
(../shared/METHODS-2.md section 3): the labelled draw depends on the experiment's seed (theirs used one fixed seed for
every run), and the 80/20 split is made per class where a class has 2 or more labelled images, so no class is left
without a training label by chance (theirs split the 2C images as one list). A class that cannot get the labelled
images its setting asks for is refused, naming the class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

LEARNING_SETTINGS = ("ssl", "ul", "trzsl")
LABELLED_TRAIN, LABELLED_VAL, UNLABELLED = "labelled_train", "labelled_val", "unlabelled"
TRAIN_FRACTION = 0.8  # ratio_train_val
SEEN_CLASS_FRACTION = 0.62


@dataclass(frozen=True)
class SettingSplit:
    """The training images of one setting: `rows` (relative_path, label, role) and, for TRZSL, the seen classes."""

    setting: str
    rows: pl.DataFrame
    seen_labels: tuple[int, ...]  # every class in SSL and UL

    def role(self, role: str) -> pl.DataFrame:
        return self.rows.filter(pl.col("role") == role)

    @property
    def pool(self) -> pl.DataFrame:
        return self.role(UNLABELLED)


def _train_val(paths: list[str], rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """80/20 of one class's labelled images; with 2 or more, at least one lands in each part."""
    order = [paths[i] for i in rng.permutation(len(paths))]
    if len(order) < 2:
        return order, []
    n_train = min(max(1, round(TRAIN_FRACTION * len(order))), len(order) - 1)
    return order[:n_train], order[n_train:]


def seen_classes(num_classes: int, split_seed: int) -> tuple[int, ...]:
    """TRZSL's seen classes: int(0.62 C) labels drawn without replacement by the split seed, sorted."""
    count = int(SEEN_CLASS_FRACTION * num_classes)
    if count < 1 or count >= num_classes:
        raise ValueError(f"trzsl needs seen and unseen classes; {num_classes} classes give {count} seen")
    chosen = np.random.default_rng(split_seed).choice(num_classes, size=count, replace=False)
    return tuple(sorted(int(label) for label in chosen))


def learning_setting_split(train: pl.DataFrame, classnames: list[str], setting: str, seed: int,
                           labels_per_class: int = 2, split_seed: int = 500) -> SettingSplit:
    """Assign every training image (rows with relative_path and label) a role under `setting`.

    Raises ValueError naming the setting and the class when a class has fewer training images than the setting
    labels, or when the pool would be empty.
    """
    if setting not in LEARNING_SETTINGS:
        raise ValueError(f"unknown learning setting {setting!r}; known: {list(LEARNING_SETTINGS)}")
    missing = {"relative_path", "label"} - set(train.columns)
    if missing:
        raise ValueError(f"{setting}: the training rows lack column(s) {sorted(missing)}")
    if labels_per_class < 1:
        raise ValueError(f"{setting}: labels_per_class must be >= 1, got {labels_per_class}")
    num_classes = len(classnames)
    rng = np.random.default_rng(seed)
    by_class = {label: sorted(group["relative_path"].to_list())
                for (label,), group in train.group_by("label", maintain_order=True)}
    roles: dict[str, str] = {path: UNLABELLED for paths in by_class.values() for path in paths}
    seen = tuple(range(num_classes)) if setting != "trzsl" else seen_classes(num_classes, split_seed)
    for label in range(num_classes):
        paths = by_class.get(label, [])
        if setting == "ssl":
            if len(paths) < labels_per_class:
                raise ValueError(f"ssl: class {classnames[label]!r} (label {label}) has {len(paths)} training "
                                 f"image(s), fewer than the {labels_per_class} labels per class the setting draws")
            labelled = [paths[i] for i in sorted(rng.choice(len(paths), size=labels_per_class, replace=False))]
        elif setting == "trzsl" and label in seen:
            if not paths:
                raise ValueError(f"trzsl: seen class {classnames[label]!r} (label {label}) has no training image")
            labelled = paths
        else:
            labelled = []
        train_part, val_part = _train_val(labelled, rng)
        roles.update({path: LABELLED_TRAIN for path in train_part})
        roles.update({path: LABELLED_VAL for path in val_part})
    rows = train.select("relative_path", "label").with_columns(
        role=pl.col("relative_path").replace_strict(roles, return_dtype=pl.String)).sort("relative_path")
    if rows.filter(pl.col("role") == UNLABELLED).height == 0:
        raise ValueError(f"{setting}: the unlabelled pool is empty ({rows.height} training images, all labelled)")
    return SettingSplit(setting, rows, seen)


def setting_splits_table(train: pl.DataFrame, classnames: list[str], requests: list[tuple[str, int]],
                         labels_per_class: int, split_seed_of: dict[int, int]) -> pl.DataFrame:
    """Every requested (setting, seed) split of the training rows, stacked: setting, seed, split_seed (TRZSL's, else
    null), relative_path, label, role, seen_class (whether the row's class is a seen class of that split)."""
    frames = []
    for setting, seed in sorted(set(requests)):
        split_seed = split_seed_of[seed] if setting == "trzsl" else None
        split = learning_setting_split(train, classnames, setting, seed, labels_per_class=labels_per_class,
                                       split_seed=split_seed if split_seed is not None else 500)
        frames.append(split.rows.with_columns(
            setting=pl.lit(setting), seed=pl.lit(seed, dtype=pl.Int64),
            split_seed=pl.lit(split_seed, dtype=pl.Int64),
            seen_class=pl.col("label").is_in(list(split.seen_labels))))
    columns = ["setting", "seed", "split_seed", "relative_path", "label", "role", "seen_class"]
    if not frames:
        return pl.DataFrame(schema={"setting": pl.String, "seed": pl.Int64, "split_seed": pl.Int64,
                                    "relative_path": pl.String, "label": pl.Int64, "role": pl.String,
                                    "seen_class": pl.Boolean})
    return pl.concat([frame.select(columns) for frame in frames])


def split_of(table: pl.DataFrame, setting: str, seed: int, where: str = "") -> SettingSplit:
    """One (setting, seed) split back out of `setting_splits_table`'s output."""
    rows = table.filter((pl.col("setting") == setting) & (pl.col("seed") == seed))
    if rows.height == 0:
        raise ValueError(f"{where}no {setting} split for seed {seed} was curated (learning_setting_splits)")
    seen = tuple(sorted(set(rows.filter(pl.col("seen_class"))["label"].to_list())))
    return SettingSplit(setting, rows.select("relative_path", "label", "role").sort("relative_path"), seen)
