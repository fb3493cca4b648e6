"""ImageNet's WordNet ids and class names: the vendored wnid lists, CoOp's ``classnames.txt`` and open_clip's list.

``imagenet_wnids.txt`` (1000 ids, sorted = the standard label index) and the ImageNet-A/R subsets are vendored from
clip_benchmark 1.6.2 (see their headers), so that labels can be checked and names looked up when a dataset folder
has no ``classnames.txt``.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from models.data.layouts.listing import DatasetLayoutError, preview, prompt_name

WNID_PATTERN = re.compile(r"n\d{8}")
CLASSNAMES_FILE = "classnames.txt"
# Where copies of CoOp's classnames.txt (EventCLIP's CLIP-IN_ClassNames.txt) and CLIP's list differ: CLIP's list
# keeps "missile" and "sunglasses" twice on purpose (open_clip#917).
COOP_CLIP_NAME_DIFFERENCES: dict[str, tuple[str, str]] = {
    "n04008634": ("projectile", "missile"),
    "n04355933": ("sunglass", "sunglasses"),
}
COOP_CLASSNAMES_SOURCE = (
    "CoOp's classnames.txt (Google Drive link in CoOp's DATASETS.md, KaiyangZhou/CoOp; lines '<wnid> <name>', "
    "1000 lines in sorted-wnid order)"
)


def _read_wnid_file(name: str) -> tuple[str, ...]:
    text = (Path(__file__).with_name(name)).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


@cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids, sorted; position = standard label."""
    return _read_wnid_file("imagenet_wnids.txt")


@cache
def imagenet_a_wnids() -> tuple[str, ...]:
    return _read_wnid_file("imagenet_a_wnids.txt")


@cache
def imagenet_r_wnids() -> tuple[str, ...]:
    return _read_wnid_file("imagenet_r_wnids.txt")


@cache
def imagenet_label_of() -> dict[str, int]:
    return {wnid: label for label, wnid in enumerate(imagenet_wnids())}


@cache
def open_clip_imagenet_classnames() -> tuple[str, ...]:
    """open_clip's ``IMAGENET_CLASSNAMES`` (CLIP's 1000 names, index order), read from its source file so that
    torch need not be imported for a list of strings."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip is not installed (pip install open_clip_torch)")
    source_file = Path(next(iter(spec.submodule_search_locations))) / "zero_shot_metadata.py"
    for node in ast.parse(source_file.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "IMAGENET_CLASSNAMES"
                                                for target in node.targets):
            names = tuple(ast.literal_eval(node.value))
            break
    else:  # not a literal any more: import it
        from open_clip import IMAGENET_CLASSNAMES

        names = tuple(IMAGENET_CLASSNAMES)
    if len(names) != 1000:
        raise RuntimeError(f"{source_file}: IMAGENET_CLASSNAMES has {len(names)} names, expected 1000")
    return names


@dataclass(frozen=True)
class ClassnamesFile:
    """CoOp's ``classnames.txt`` as read by ``ImageNet.read_classnames``: wnid -> name, in file order."""

    path: Path
    names: dict[str, str]  # raw names, file order
    line_of: dict[str, int]  # 1-based line number of each wnid


def read_classnames_file(path: Path) -> ClassnamesFile:
    """Parse ``<wnid> <name words>`` lines as CoOp does (``line.strip().split(" ")``), refusing what CoOp would
    read wrongly: a first word that is not a WordNet id, a wnid listed twice (CoOp keeps the last), a wnid that is
    not one of ImageNet's 1000."""
    names: dict[str, str] = {}
    line_of: dict[str, int] = {}
    known = imagenet_label_of()
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        words = line.strip().split(" ")
        wnid, name = words[0], " ".join(words[1:])
        where = f"{path}:{line_number}"
        if not WNID_PATTERN.fullmatch(wnid):
            raise DatasetLayoutError(
                where, f"line {line.strip()[:60]!r} does not start with a WordNet id (n + 8 digits)",
                f"use {COOP_CLASSNAMES_SOURCE}; a plain list of names or torchvision's categories gives other names",
            )
        if wnid not in known:
            raise DatasetLayoutError(
                where, f"extra wnid {wnid}: not one of ImageNet's 1000 WordNet ids",
                f"remove line {line_number} or replace the file by {COOP_CLASSNAMES_SOURCE}",
            )
        if wnid in names:
            raise DatasetLayoutError(
                where, f"wnid {wnid} listed twice (lines {line_of[wnid]} and {line_number}; CoOp keeps the last)",
                f"keep one of the two lines, or replace the file by {COOP_CLASSNAMES_SOURCE}",
            )
        if not name.strip():
            raise DatasetLayoutError(where, f"wnid {wnid} has no name", "write its name after the wnid")
        names[wnid] = name
        line_of[wnid] = line_number
    return ClassnamesFile(path, names, line_of)


def fallback_note(classnames_path: Path) -> str:
    differences = "; ".join(
        f"{wnid} ({coop!r} in copies of CoOp's file, {clip!r} in CLIP's)"
        for wnid, (coop, clip) in COOP_CLIP_NAME_DIFFERENCES.items()
    )
    return (
        f"{classnames_path} not found: class names are open_clip's IMAGENET_CLASSNAMES (CLIP's list, by standard "
        f"index). Copies of CoOp's classnames.txt differ from it at {differences}; CLIP's list names 'missile' and "
        f"'sunglasses' twice. Put {COOP_CLASSNAMES_SOURCE} at {classnames_path} to use CoOp's names"
    )


@dataclass(frozen=True)
class ImagenetNames:
    names: tuple[str, ...]  # prompt names of the requested wnids, in their order
    notes: tuple[str, ...]
    source: ClassnamesFile | None  # None: open_clip's list


def classnames_path(root: Path, classnames_file: str | Path | None) -> tuple[Path, bool]:
    """(path, explicit): the default is ``<root>/classnames.txt``, whose absence allows open_clip's names."""
    if classnames_file is None:
        return root / CLASSNAMES_FILE, False
    path = Path(classnames_file)
    return (path if path.is_absolute() else root / path), True


def imagenet_names(root: Path, wnids: list[str] | tuple[str, ...], classnames_file: str | Path | None) -> ImagenetNames:
    """Prompt names of ``wnids`` from ``classnames.txt``, or from open_clip's list when the default file is absent.

    A ``classnames_file`` given explicitly must exist. A file that lacks some of ``wnids`` is refused (CoOp would
    stop with a KeyError), naming the missing wnids.
    """
    path, explicit = classnames_path(root, classnames_file)
    if path.is_file():
        source = read_classnames_file(path)
        missing = [wnid for wnid in wnids if wnid not in source.names]
        if missing:
            raise DatasetLayoutError(
                path, f"{len(missing)} wnid(s) of the image folders are missing: {preview(missing)}",
                f"add a '<wnid> <name>' line for each, or replace the file by {COOP_CLASSNAMES_SOURCE}",
            )
        return ImagenetNames(tuple(prompt_name(source.names[wnid]) for wnid in wnids), (), source)
    if explicit:
        raise DatasetLayoutError(
            path, "class-name file not found (classnames_file was given, so open_clip's names are not used)",
            f"put {COOP_CLASSNAMES_SOURCE} there, or leave classnames_file out to use open_clip's names when "
            f"{root / CLASSNAMES_FILE} is absent",
        )
    clip_names = open_clip_imagenet_classnames()
    label_of = imagenet_label_of()
    return ImagenetNames(tuple(clip_names[label_of[wnid]] for wnid in wnids), (fallback_note(path),), None)


__all__ = [
    "CLASSNAMES_FILE", "COOP_CLASSNAMES_SOURCE", "COOP_CLIP_NAME_DIFFERENCES", "WNID_PATTERN", "ClassnamesFile",
    "ImagenetNames", "classnames_path", "fallback_note", "imagenet_a_wnids", "imagenet_label_of",
    "imagenet_names", "imagenet_r_wnids", "imagenet_wnids", "open_clip_imagenet_classnames", "read_classnames_file",
]
