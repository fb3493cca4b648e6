"""Base-to-new class split (CoCoOp protocol): the first ceil(n/2) labels are base, the rest new."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import polars as pl

ClassGroup = Literal["base", "new"]


@dataclass(frozen=True)
class BaseNewSplit:
    """Which original labels are base and which are new, and how each group is relabelled from 0."""

    base_labels: tuple[int, ...]
    new_labels: tuple[int, ...]
    base_relabel: dict[int, int]  # original label -> 0..B-1
    new_relabel: dict[int, int]  # original label -> 0..N-1
    base_classnames: tuple[str, ...]
    new_classnames: tuple[str, ...]

    def relabel(self, group: ClassGroup) -> dict[int, int]:
        return self.base_relabel if group == "base" else self.new_relabel

    def restrict(self, records: pl.DataFrame, group: ClassGroup) -> pl.DataFrame:
        """Rows of ``records`` whose label is in ``group``, with labels remapped to 0..len(group)-1."""
        if group not in ("base", "new"):
            raise ValueError(f"group must be 'base' or 'new', got {group!r}")
        mapping = self.relabel(group)
        return records.filter(pl.col("label").is_in(list(mapping))).with_columns(
            pl.col("label").replace_strict(mapping, return_dtype=records.schema["label"])
        )


def split_base_new(classnames_by_label: list[str]) -> BaseNewSplit:
    """Labels 0..n-1 (position in ``classnames_by_label``): first ceil(n/2) base, the rest new."""
    class_count = len(classnames_by_label)
    if class_count < 2:
        raise ValueError(f"a base/new split needs at least 2 classes, got {class_count}")
    base_count = math.ceil(class_count / 2)
    base_labels = tuple(range(base_count))
    new_labels = tuple(range(base_count, class_count))
    return BaseNewSplit(
        base_labels=base_labels,
        new_labels=new_labels,
        base_relabel={label: position for position, label in enumerate(base_labels)},
        new_relabel={label: position for position, label in enumerate(new_labels)},
        base_classnames=tuple(classnames_by_label[label] for label in base_labels),
        new_classnames=tuple(classnames_by_label[label] for label in new_labels),
    )
