"""Preflight: before any stage runs, what each dataset of a catalog (or suite) looks like on disk.

For every dataset: found (read by its layout's reader), missing (no folder), or unreadable (the folder is there but
its layout cannot be read; the reader's message names the file and the fix, and a folder that is recognisably
another layout names the `source` to declare). Counts of classes and images per split are compared with the published
ones: a difference is a warning (people run subsets and newer versions), a layout that cannot be read is an error.
Class names listed under two labels are an error unless the layout declares them (CLIP's ImageNet list).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from models.data.datasets import DatasetFormatError

FOUND, MISSING, UNREADABLE, EMBEDDED = "found", "missing", "unreadable", "embedded"


@dataclass
class DatasetCheck:
    name: str
    source: str
    root: str | None
    status: str
    counts: dict[str, int] = field(default_factory=dict)  # classes, train, val, test
    published: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def has_problem(self) -> bool:
        return self.status in (MISSING, UNREADABLE) or bool(self.errors)

    def as_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "root": self.root, "status": self.status,
                "counts": self.counts, "published": self.published, "warnings": self.warnings,
                "errors": self.errors}


def _unset_variable(text: str) -> str | None:
    """The first $VARIABLE / ${VARIABLE} left in a path because it is not set."""
    match = re.search(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", text)
    return match.group(1) if match else None


def _missing_message(entry, root: Path) -> str:
    variable = _unset_variable(str(entry.root))
    if variable:
        return (f"${variable} is not set; export {variable}=<the folder holding the datasets> (the layout under it: "
                "README, 'The field's benchmark')")
    parent = root.parent
    siblings = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
    near = [name for name in siblings if name.lower().replace("-", "_") == root.name.lower().replace("-", "_")]
    hint = f"; {parent} holds {near[0]!r}: rename it to {root.name!r}" if near else ""
    return f"{root}: folder not found{hint} (expected {root.name}/ under {parent})"


def check_dataset(entry) -> DatasetCheck:
    """Read one catalog dataset's lists (models.data.curation.dataset_listing) and compare them with the published
    counts; never raises for a dataset problem."""
    from models.data.curation import dataset_listing
    from models.data.layouts import DatasetLayoutError, recognise_layout

    published = entry.published_counts
    if entry.source == "embedded":
        return DatasetCheck(entry.name, entry.source, None, EMBEDDED, published=published)
    root = Path(entry.root)
    check = DatasetCheck(entry.name, entry.source, str(root), FOUND, published=published)
    if not root.is_dir():
        check.status = MISSING
        check.errors.append(_missing_message(entry, root))
        return check
    try:
        listing = dataset_listing(entry, root)
    except (DatasetLayoutError, DatasetFormatError, FileNotFoundError, NotADirectoryError, ValueError) as error:
        check.status = UNREADABLE
        message = " ".join(str(error).split())
        recognised = recognise_layout(root)
        if recognised and recognised != entry.layout and f"'{recognised}'" not in message:
            message += f" (this folder looks like the {recognised!r} layout: declare `source: {recognised}`)"
        check.errors.append(message)
        return check
    records = listing.records
    per_split = {split: int(count) for split, count in records.group_by("split").len().iter_rows()}
    check.counts = {"classes": len(listing.classnames),
                    **{split: per_split.get(split, 0) for split in ("train", "val", "test")}}
    for key, expected in published.items():
        found = check.counts.get(key, 0)
        if found != expected:
            check.warnings.append(f"{key}: {found} found, {expected} published (a subset or another version: "
                                  "results are not comparable with the papers' numbers)")
    check.warnings += list(listing.notes)
    if listing.structure.generated_split:
        check.warnings.append("the train/val/test split is generated here (Dassl's rule, seeded), not the authors' "
                              "split file: results are not comparable image for image")
    counts = pl.Series(list(listing.classnames)).value_counts()
    repeated = sorted(name for name, count in counts.iter_rows() if count > 1)
    undeclared = [name for name in repeated if name not in listing.structure.duplicate_classnames]
    if undeclared:
        check.errors.append(f"class names listed under two or more labels: {undeclared[:8]}; two classes with one "
                            "name cannot be told apart by a prompt: fix the class-name file")
    elif repeated:
        check.warnings.append(f"class names under two labels, kept as the dataset's reference list has them: "
                              f"{repeated}")
    return check


def check_catalog(catalog, datasets: list[str] | None = None) -> list[DatasetCheck]:
    """Every (or the named) dataset of a catalog, in catalog order."""
    names = datasets or list(catalog.datasets)
    return [check_dataset(catalog.dataset(name)) for name in names]


def format_checks(checks: list[DatasetCheck], data_variable: str = "PROMPTLAB_DATA") -> str:
    """The preflight as a table and, below it, each warning and error with its dataset."""
    header = f"{'dataset':<22} {'status':<11} {'classes':>8} {'train':>9} {'val':>8} {'test':>8}"
    lines = [f"{data_variable}={os.environ.get(data_variable, '(not set)')}", header, "-" * len(header)]

    def cell(check: DatasetCheck, key: str, width: int) -> str:
        if key not in check.counts:
            return f"{'':>{width}}"
        found, expected = check.counts[key], check.published.get(key)
        text = f"{found:,}" + ("*" if expected is not None and expected != found else "")
        return f"{text:>{width}}"

    for check in checks:
        lines.append(f"{check.name:<22} {check.status:<11} {cell(check, 'classes', 8)} {cell(check, 'train', 9)} "
                     f"{cell(check, 'val', 8)} {cell(check, 'test', 8)}")
    if any(check.counts and any(check.published.get(k) not in (None, v) for k, v in check.counts.items())
           for check in checks):
        lines.append("* differs from the published count")
    for kind, attribute in (("error", "errors"), ("warning", "warnings")):
        by_message: dict[str, list[str]] = {}  # one line for a message several datasets share ($VAR not set)
        for check in checks:
            for message in getattr(check, attribute):
                by_message.setdefault(message, []).append(check.name)
        for message, names in by_message.items():
            who = names[0] if len(names) == 1 else f"{len(names)} datasets ({', '.join(names)})"
            lines.append(f"{kind:<7} {who}: {message}")
    problems = sum(check.has_problem for check in checks)
    lines.append(f"{len(checks)} datasets: {sum(c.status == FOUND for c in checks)} found, "
                 f"{sum(c.status == MISSING for c in checks)} missing, "
                 f"{sum(c.status == UNREADABLE for c in checks)} unreadable"
                 + (f"; {problems} with a problem" if problems else ""))
    return "\n".join(lines)
