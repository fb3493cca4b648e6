"""Readers that turn a dataset on disk into split records (one row per image).

Two layouts are supported:
- CoOp: ``<root>/<image_dir>/...`` plus ``<root>/split_zhou_<Name>.json`` mapping each split to
  ``[relative_path, label, classname]`` rows (paths relative to the image folder).
- ImageFolder: ``<root>/<image_dir>/<class_folder>/<image>``, split here with a seeded per-class split.

Both return a Polars frame with columns ``relative_path`` (str, POSIX, relative to the image folder),
``label`` (int), ``classname`` (str) and ``split`` (train | val | test).

Readers check *structure* only. Semantic problems (a row naming an unknown class, a missing or corrupt
image, a class absent from a split) are left in the records so that ``models.data.expectations`` can
report all of them at once.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

import numpy as np
import polars as pl

SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
RECORD_SCHEMA: dict[str, pl.DataType] = {
    "relative_path": pl.String(),
    "label": pl.Int64(),
    "classname": pl.String(),
    "split": pl.String(),
}


class DatasetFormatError(ValueError):
    """A dataset file is structurally malformed; the message names the file, split, row and field."""


def clean_classname(raw_name: str, split_camel_case: bool = False) -> str:
    """Class name as CoOp writes it in prompts: underscores become spaces, whitespace collapsed.

    With ``split_camel_case`` (ImageFolder folder names such as ``AnnualCrop``) word boundaries inside
    CamelCase become spaces too; letter case is kept, as CoOp keeps it.
    """
    name = raw_name
    if split_camel_case:
        # "AnnualCrop" -> "Annual Crop", "HTTPServer" -> "HTTP Server", "Type2Car" stays joined at digits.
        name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name)
    name = name.replace("_", " ")
    return " ".join(name.split())


def _records_frame(rows: list[tuple[str, int, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=RECORD_SCHEMA, orient="row")


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _require_utf8(value: str, where: str, field_name: str) -> str:
    """Text stored in the index (Parquet, DuckDB) must be valid UTF-8: refuse lone surrogates from a JSON escape
    (``"\\ud800"``) or a file name that is not UTF-8 (Python keeps its bytes as surrogate escapes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise DatasetFormatError(
            f"{where}: {field_name} is not valid UTF-8 text (character {error.start}: "
            f"{value[error.start:error.end]!r} in {value!r}); rename it to UTF-8"
        ) from None
    return value


def _check_relative_path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise DatasetFormatError(f"{where}: relative_path must be a non-empty string, got {_describe(value)}")
    if "\\" in value:
        raise DatasetFormatError(f"{where}: relative_path must use '/' separators, got {value!r}")
    _require_utf8(value, where, "relative_path")
    posix = PurePosixPath(value)
    if posix.is_absolute() or PureWindowsPath(value).drive:
        raise DatasetFormatError(f"{where}: relative_path must be relative to the image folder, got {value!r}")
    if ".." in posix.parts:
        raise DatasetFormatError(f"{where}: relative_path must not contain '..', got {value!r}")
    return posix.as_posix()


def read_coop_split(split_file: Path, image_dir: Path) -> pl.DataFrame:
    """Read a CoOp ``split_zhou_<Name>.json``; rows of train, val, test in file order.

    Raises ``DatasetFormatError`` on malformed structure (naming file, split, row index and field) and
    ``FileNotFoundError`` when the split file or the image folder is missing. Image existence and
    label/classname consistency are not checked here (see ``models.data.expectations``).
    """
    split_file = Path(split_file)
    image_dir = Path(image_dir)
    if not split_file.is_file():
        raise FileNotFoundError(f"split file not found: {split_file}")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    file_name = split_file.name
    try:
        content = json.loads(split_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetFormatError(f"{file_name}: not valid JSON: {error}") from error
    if not isinstance(content, dict):
        raise DatasetFormatError(
            f"{file_name}: top level must be an object with keys {list(SPLITS)}, got {type(content).__name__}"
        )
    unknown_keys = sorted(set(content) - set(SPLITS))
    if unknown_keys:
        raise DatasetFormatError(f"{file_name}: unknown split keys {unknown_keys}; expected {list(SPLITS)}")

    rows: list[tuple[str, int, str, str]] = []
    for split in SPLITS:
        if split not in content:
            raise DatasetFormatError(f"{file_name}: missing split key '{split}'")
        split_rows = content[split]
        if not isinstance(split_rows, list):
            raise DatasetFormatError(f"{file_name}: {split} must be a list of rows, got {type(split_rows).__name__}")
        for row_index, row in enumerate(split_rows):
            where = f"{file_name}: {split}[{row_index}]"
            if not isinstance(row, list) or len(row) != 3:
                raise DatasetFormatError(
                    f"{where}: row must be a 3-list [relative_path, label, classname], got {_describe(row)}"
                )
            raw_path, label, classname = row
            relative_path = _check_relative_path(raw_path, where)
            # bool is an int subclass in Python; true/false in JSON is not a label.
            if not isinstance(label, int) or isinstance(label, bool):
                raise DatasetFormatError(f"{where}: label must be an int, got {_describe(label)}")
            if not isinstance(classname, str) or not classname.strip():
                raise DatasetFormatError(f"{where}: classname must be a non-empty string, got {_describe(classname)}")
            _require_utf8(classname, where, "classname")
            rows.append((relative_path, label, clean_classname(classname), split))
    return _records_frame(rows)


def _split_counts(image_count: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) counts: rounded fractions, at least one per split when there are >= 3 images.

    With 1 image it goes to train; with 2, one to train and one to test (the expectations then report
    the class as missing from val).
    """
    if image_count >= 3:
        val_count = max(1, math.floor(image_count * val_fraction + 0.5))
        test_count = max(1, math.floor(image_count * test_fraction + 0.5))
        while image_count - val_count - test_count < 1:
            if test_count >= val_count and test_count > 1:
                test_count -= 1
            else:
                val_count -= 1
        return image_count - val_count - test_count, val_count, test_count
    if image_count == 2:
        return 1, 0, 1
    return image_count, 0, 0


def read_image_folder(
    image_dir: Path, seed: int, val_fraction: float = 0.1, test_fraction: float = 0.3
) -> pl.DataFrame:
    """Read a class-per-folder dataset and split every class with a seeded, machine-independent split.

    Classes are the sorted sub-folder names (label = position); class names are cleaned
    (underscores -> spaces, CamelCase split). Per class, image files (direct children, by extension)
    are sorted by name and permuted by ``numpy.random.default_rng([seed, label])``; the permutation's
    first images go to train, then val, then test. Seeding per label keeps one class's split unchanged
    when another class is added. Rows are ordered by split, label, relative_path.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}")
    if not (0.0 <= val_fraction and 0.0 <= test_fraction and val_fraction + test_fraction < 1.0):
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be >= 0 and sum to < 1"
        )
    class_folders = sorted(
        entry.name for entry in image_dir.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    if not class_folders:
        raise DatasetFormatError(f"{image_dir}: no class folders found")

    rows_by_split: dict[str, list[tuple[str, int, str, str]]] = {split: [] for split in SPLITS}
    for label, folder in enumerate(class_folders):
        _require_utf8(folder, f"{image_dir}: class folder", "the folder name")
        file_names = sorted(
            entry.name
            for entry in (image_dir / folder).iterdir()
            if entry.is_file() and not entry.name.startswith(".") and entry.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not file_names:
            raise DatasetFormatError(f"{image_dir / folder}: class folder contains no images")
        for file_name in file_names:
            _require_utf8(file_name, f"{image_dir / folder}: image", "the file name")
        classname = clean_classname(folder, split_camel_case=True)
        train_count, val_count, _ = _split_counts(len(file_names), val_fraction, test_fraction)
        order = np.random.default_rng([seed, label]).permutation(len(file_names))
        for position, file_index in enumerate(order):
            if position < train_count:
                split = "train"
            elif position < train_count + val_count:
                split = "val"
            else:
                split = "test"
            rows_by_split[split].append((f"{folder}/{file_names[file_index]}", label, classname, split))
    rows = [row for split in SPLITS for row in sorted(rows_by_split[split], key=lambda row: (row[1], row[0]))]
    return _records_frame(rows)


DatasetLayout = Literal["coop", "image_folder"]


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset lives and how to read it.

    ``seed`` only matters for the ImageFolder layout (it seeds the train/val/test split).
    """

    name: str
    root: Path
    layout: DatasetLayout = "coop"
    image_dir_name: str = "images"
    split_file_name: str | None = None  # default: split_zhou_<name>.json
    seed: int = 1
    val_fraction: float = 0.1
    test_fraction: float = 0.3

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.layout not in ("coop", "image_folder"):
            raise ValueError(f"dataset '{self.name}': layout must be 'coop' or 'image_folder', got {self.layout!r}")

    @property
    def image_dir(self) -> Path:
        return self.root / self.image_dir_name

    @property
    def split_file(self) -> Path:
        return self.root / (self.split_file_name or f"split_zhou_{self.name}.json")


def read_dataset(source: DatasetSource) -> pl.DataFrame:
    """Split records of a dataset, dispatching on ``source.layout``."""
    if not source.root.is_dir():
        raise FileNotFoundError(f"dataset '{source.name}': root folder not found: {source.root}")
    if not source.image_dir.is_dir():
        raise FileNotFoundError(f"dataset '{source.name}': image folder not found: {source.image_dir}")
    if source.layout == "coop":
        if not source.split_file.is_file():
            raise FileNotFoundError(f"dataset '{source.name}': split file not found: {source.split_file}")
        return read_coop_split(source.split_file, source.image_dir)
    return read_image_folder(source.image_dir, source.seed, source.val_fraction, source.test_fraction)


def classname_votes(records: pl.DataFrame) -> dict[int, Counter[str]]:
    """For each label, how many rows name each classname."""
    votes: dict[int, Counter[str]] = {}
    for label, classname, count in (
        records.group_by(["label", "classname"]).len().select(["label", "classname", "len"]).iter_rows()
    ):
        votes.setdefault(int(label), Counter())[classname] = int(count)
    return votes


def expected_classnames(records: pl.DataFrame) -> list[str]:
    """Class names ordered by label (one entry per distinct label, ascending).

    When a label is named inconsistently the majority name wins (ties: alphabetically first); the
    inconsistency itself is reported by ``validate_dataset_index``, not raised here.
    """
    votes = classname_votes(records)
    return [min(votes[label].items(), key=lambda item: (-item[1], item[0]))[0] for label in sorted(votes)]
