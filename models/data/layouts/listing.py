"""What every layout reader returns (``DatasetListing``), the error it raises (``DatasetLayoutError``) and the small
checks all readers share.

Readers list folders and read text files; they never open an image. Whether each listed image exists and decodes
is checked later by ``models.data.expectations``; what a reader refuses is a layout that would silently give wrong
labels, wrong class names or an empty split.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import polars as pl

from models.data.datasets import RECORD_SCHEMA, SPLITS, DatasetFormatError, clean_classname


@dataclass(frozen=True)
class DatasetStructure:
    """Facts about a dataset's splits and names that a consumer must respect."""

    test_only: bool = False  # only test rows (ImageNetV2/Sketch/A/R)
    val_is_test: bool = False  # ImageNet: its val folder is the test split; no separate val rows
    # names that legitimately appear under two labels: set only where the names come from a reference list that has
    # them (CLIP's ImageNet list: "missile", "sunglasses"); elsewhere a repeated name is a defect to report
    duplicate_classnames: tuple[str, ...] = ()
    generated_split: bool = False  # the split was generated here, not read from the authors' file


@dataclass(frozen=True)
class DatasetListing:
    """The images of a dataset as split records, with its complete class-name list.

    ``records`` has the columns of ``RECORD_SCHEMA``: ``relative_path`` (POSIX, relative to ``image_root``),
    ``label``, ``classname`` (as prompts use it) and ``split`` (train | val | test). ``classnames[label]`` is the
    name of every label, including labels with no image in ``records``.
    """

    records: pl.DataFrame
    image_root: Path
    classnames: tuple[str, ...]
    structure: DatasetStructure = field(default_factory=DatasetStructure)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if dict(self.records.schema) != RECORD_SCHEMA:
            raise ValueError(f"records must have the schema {RECORD_SCHEMA}, got {dict(self.records.schema)}")
        object.__setattr__(self, "image_root", Path(self.image_root))
        object.__setattr__(self, "classnames", tuple(self.classnames))

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


class DatasetLayoutError(DatasetFormatError):
    """A dataset folder is not laid out as its layout requires.

    The message names the file, folder or line (``where``), what is wrong (``problem``) and how to fix it (``fix``);
    the three parts are kept as attributes so that a CLI can show them separately.
    """

    def __init__(self, where: str | Path, problem: str, fix: str) -> None:
        self.where = str(where)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.where}: {problem}. Fix: {fix}")

    def __reduce__(self):  # picklable with its three parts (the message alone would not rebuild it)
        return (type(self), (self.where, self.problem, self.fix))


def listdir_nohidden(folder: Path) -> list[str]:
    """Non-hidden entries of a folder in the order the filesystem gives (Dassl's ``listdir_nohidden``)."""
    return [name for name in os.listdir(folder) if not name.startswith(".")]


def preview(items: list[str] | tuple[str, ...], count: int = 8) -> str:
    """``a, b, c ... (+N more)``: long lists in messages stay readable."""
    shown = ", ".join(str(item) for item in items[:count])
    return shown + (f" ... (+{len(items) - count} more)" if len(items) > count else "")


def require_folder(folder: Path, what: str, fix: str) -> None:
    if not folder.is_dir():
        problem = f"{what} not found" if not folder.exists() else f"{what} is a file, not a folder"
        raise DatasetLayoutError(folder, problem, fix)


def require_file(path: Path, what: str, fix: str) -> None:
    if not path.is_file():
        raise DatasetLayoutError(path, f"{what} not found", fix)


def archive_beside(folder: Path) -> Path | None:
    """An archive named like a missing folder (``101_ObjectCategories.tar.gz``): it was downloaded, not extracted."""
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        candidate = folder.with_name(folder.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def class_folders_sorted(folder: Path) -> tuple[list[str], list[str]]:
    """(sorted non-hidden sub-folders, sorted non-hidden files) of a folder."""
    folders, files = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            (folders if entry.is_dir() else files).append(entry.name)
    return sorted(folders), sorted(files)


def list_class_images(class_folder: Path, sort: bool = True) -> list[str]:
    """Non-hidden files of one class folder (sorted unless ``sort=False``: then in filesystem order, as Dassl).

    The reference readers take every non-hidden entry as an image; a sub-folder there would be read as an image
    and fail at training time, and an empty folder is a class with no image: both are refused here.
    """
    names: list[str] = []
    subfolders: list[str] = []
    with os.scandir(class_folder) as entries:  # file types from the directory listing: no stat per image
        for entry in entries:
            if not entry.name.startswith("."):
                (subfolders if entry.is_dir() else names).append(entry.name)
    subfolders.sort()
    if subfolders:
        raise DatasetLayoutError(
            class_folder / subfolders[0],
            f"a folder inside a class folder ({len(subfolders)}: {preview(subfolders)}); the reader takes every "
            "entry of a class folder as an image",
            f"move its images up into {class_folder} or remove it",
        )
    if not names:
        raise DatasetLayoutError(
            class_folder, "class folder is empty (a class with no image)",
            "restore its images from the dataset's archive (an interrupted extraction leaves empty folders), "
            "or remove the folder if the class is not part of the dataset",
        )
    return sorted(names) if sort else names


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _leaving_link(root: Path, path: Path, real_root: str) -> Path:
    """The first symlink on the way from root down to path whose target is outside real_root (path itself when
    none is found, e.g. a link replaced while being looked at)."""
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        if current.is_symlink() and not _inside(os.path.realpath(current), real_root):
            return current
    return path


def links_leaving_root(root: Path, image_root: Path, relative_paths: Iterable[str]) -> dict[Path, str]:
    """The symlinks through which listed images lead outside the dataset's root: link -> where it resolves to.

    The root is the resolved dataset folder (a root that is itself a link is fine); links that stay inside it are
    fine. A linked folder (the image folder, a class folder) is found by resolving each folder that holds listed
    images, once; a linked image by the folder's listing (os.scandir: the entry's type, no stat per image), so that
    ImageNet's 1.28 M images cost one more listing of their 1,000 folders, not a stat each. Paths that leave the root
    without a link ('..') are not this check's concern.
    """
    root = Path(os.path.abspath(root))
    image_root = Path(os.path.abspath(image_root))
    real_root = os.path.realpath(root)
    names_by_folder: dict[str, set[str]] = {}
    for relative_path in relative_paths:
        folder, _, name = relative_path.rpartition("/")
        names_by_folder.setdefault(folder, set()).add(name)
    leaving: dict[Path, str] = {}
    for folder, names in names_by_folder.items():
        directory = Path(os.path.normpath(image_root / folder))
        base = next((Path(top) for top in (root, real_root) if _inside(str(directory), str(top))), None)
        if base is None:
            continue
        real_directory = os.path.realpath(directory)
        if not _inside(real_directory, real_root):
            link = _leaving_link(base, directory, real_root)
            leaving[link] = os.path.realpath(link)
            continue
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_symlink() and entry.name in names:
                        target = os.path.realpath(entry.path)
                        if not _inside(target, real_root):
                            leaving[Path(entry.path)] = target
        except OSError:  # a folder that cannot be listed: its images are reported missing by the index
            continue
    return dict(sorted(leaving.items()))


def refuse_links_leaving_root(root: Path, listing: "DatasetListing") -> None:
    """DatasetLayoutError naming the first symlink that leads a listed image outside the dataset's root, its target
    and how many such links there are; the default of every reader (``read_listing(..., follow_symlinks=False)``)."""
    leaving = links_leaving_root(root, listing.image_root, listing.records.get_column("relative_path").to_list())
    if not leaving:
        return
    link, target = next(iter(leaving.items()))
    others = [str(other) for other in list(leaving)[1:]]
    raise DatasetLayoutError(
        link,
        f"symlink to {target}, outside the dataset root {os.path.realpath(root)}: the images it leads to would be "
        f"indexed and trained on from another folder" + (f" ({len(others)} more such link(s): {preview(others, 3)})"
                                                         if others else ""),
        "copy the images into the dataset folder (the dataset folder itself may be a link), or, for a dataset laid "
        "out with links on purpose, set `follow_symlinks: true` on its entry in datasets.yaml",
    )


def records_frame(rows: list[tuple[str, int, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=RECORD_SCHEMA, orient="row")


def refuse_single_class(classnames: tuple[str, ...] | list[str], where: Path | str, fix: str | None = None) -> None:
    if len(classnames) == 1:
        raise DatasetLayoutError(
            where, f"one class only ({classnames[0]!r}): a classifier needs at least two",
            fix or "point the reader at the folder that holds all the class folders",
        )


def duplicate_names(classnames: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Names that occur under more than one label, in order of first occurrence."""
    counts = Counter(classnames)
    return tuple(dict.fromkeys(name for name in classnames if counts[name] > 1))


def prompt_name(raw_name: str) -> str:
    """A class name as prompts use it (CoOp's trainers replace underscores by spaces)."""
    return clean_classname(raw_name)


__all__ = [
    "SPLITS", "DatasetListing", "DatasetLayoutError", "DatasetStructure", "archive_beside", "class_folders_sorted",
    "duplicate_names", "links_leaving_root", "list_class_images", "listdir_nohidden", "preview", "prompt_name",
    "records_frame", "refuse_links_leaving_root", "refuse_single_class", "require_file", "require_folder",
]
