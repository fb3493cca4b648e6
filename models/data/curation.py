"""Curation decisions, one function each: which reader lists a catalog dataset, which of its images the index reads
(all of them, or at ImageNet scale only those some experiment reads), and what the reader said of the dataset
(its structure, class names, notes), kept beside the index for the checks and the later stages.

Why not read every image: the index hashes and decodes each image it inspects (about 2-3 ms for a small JPEG on
one core), which for ImageNet's 1.28 M training images is hours before a 16-shot experiment, that reads 16,000 of
them, can start. Above LISTED_ONLY_ABOVE training images the index lists the rest (they exist: the reader listed
them from disk) and inspects the few-shot draws of the grid, the val and the test images.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import polars as pl

from models.data.layouts import DatasetListing, DatasetStructure, read_listing

# Training images above which the index inspects only what experiments read (CoOp's largest split_zhou dataset,
# Food101, has 50,500; ImageNet 1.28 M).
LISTED_ONLY_ABOVE = 200_000


def reader_options(entry) -> dict[str, Any]:
    """The layout reader's keyword options for a catalog dataset entry (models.catalog.DatasetEntry)."""
    options = entry.layout_options
    if entry.layout in (None, "split_zhou"):
        return {"dataset": entry.name, "image_dir": entry.image_dir, "split_file": entry.split_file_name,
                "seed": entry.split_seed, **options}
    if entry.layout == "image_folder":
        return {"image_dir": entry.image_dir, "seed": entry.split_seed, **options}
    return options


def dataset_listing(entry, root: Path) -> DatasetListing:
    """The dataset's (image, label, class name) lists as its layout's reference code builds them."""
    return read_listing(entry.layout or "split_zhou", Path(root), **reader_options(entry))


def rows_experiments_read(listing: DatasetListing, shots: Sequence[int], seeds: Sequence[int], sampling: str,
                          whole_training_set: bool) -> list[str] | None:
    """The relative paths the index must inspect, or None for all of them: all when the dataset is small enough or
    an experiment reads the whole training set (the learning settings' unlabelled pool); otherwise the few-shot
    draws of every (shots, seed) of the grid, and every val and test image."""
    from models.data.fewshot import all_few_shot_subsets

    records = listing.records
    train_count = records.filter(pl.col("split") == "train").height
    if train_count <= LISTED_ONLY_ABOVE or whole_training_set:
        return None
    drawn = (all_few_shot_subsets(records, shots_list=shots, seeds=seeds, sampling=sampling,
                                  val_is_test=listing.structure.val_is_test).get_column("relative_path")
             if shots and seeds else pl.Series([], dtype=pl.String))
    evaluated = records.filter(pl.col("split") != "train").get_column("relative_path")
    return list(dict.fromkeys([*drawn.to_list(), *evaluated.to_list()]))


def write_listing_record(path: Path, listing: DatasetListing, layout: str, root: Path) -> None:
    """listing.json: the reader's structure, class names by label, notes, layout and image folder (relative to the
    dataset's root, which each machine resolves itself: $PROMPTLAB_DATA or the workspace differ between hosts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image_dir = Path(os.path.relpath(listing.image_root, root)).as_posix()
    payload = {"layout": layout, "image_dir": image_dir, "classnames": list(listing.classnames),
               "structure": asdict(listing.structure), "notes": list(listing.notes)}
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(payload, indent=2))
    os.replace(temporary, path)


def read_listing_record(path: Path) -> dict[str, Any]:
    """listing.json as written, with `structure` as a DatasetStructure (the default one when there is no record:
    an index curated before records were kept)."""
    if not Path(path).exists():
        return {"structure": DatasetStructure(), "classnames": None, "notes": [], "image_dir": None, "layout": None}
    payload = json.loads(Path(path).read_text())
    structure = payload.get("structure") or {}
    structure["duplicate_classnames"] = tuple(structure.get("duplicate_classnames") or ())
    payload["structure"] = DatasetStructure(**structure)
    return payload
