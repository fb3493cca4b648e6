"""Which layout a folder is, from folder and file names only (no image is opened), and the refusal of a folder
declared as a layout that would misread it.

The classic mistake: an ImageNet tree declared as a plain class-per-folder dataset. Pointed at ``imagenet/images``
its split folders train/val become two classes; pointed at ``imagenet/images/train`` the class names are WordNet
ids and the authors' test split is replaced by a generated one. ``refuse_misdeclared`` names the layout and root to
declare instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from models.data.datasets import IMAGE_EXTENSIONS
from models.data.layouts.domainbed import DOMAINBED_DATASETS
from models.data.layouts.fgvc_aircraft import SPLIT_FILES as FGVC_SPLIT_FILES
from models.data.layouts.fgvc_aircraft import VARIANTS_FILE
from models.data.layouts.imagenet_shifts import IMAGENET_V2_FOLDER
from models.data.layouts.listing import DatasetLayoutError, preview
from models.data.layouts.split_zhou import SPLIT_FILE_PATTERN
from models.data.layouts.wordnet import CLASSNAMES_FILE, WNID_PATTERN

WNID_SAMPLE = 20  # folders looked at to call a folder list "WordNet ids"


@dataclass(frozen=True)
class Recognised:
    layout: str
    root: Path  # the folder to pass as the layout's root
    what: str  # what the folder is, for messages
    relation: str = "is"  # the folder looked at "is" the root, is "inside" it, or "holds" it (its only sub-folder)

    def describe(self) -> str:
        return {"is": f"this is {self.what}",
                "inside": f"this folder is inside {self.what} (root {self.root})",
                "holds": f"this folder holds {self.what} in {self.root}"}[self.relation]


def _entries(folder: Path) -> tuple[list[str], list[str]]:
    """(sorted non-hidden sub-folders, sorted non-hidden files); empty when the folder cannot be listed."""
    folders, files = [], []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not entry.name.startswith("."):
                    (folders if entry.is_dir() else files).append(entry.name)
    except OSError:
        return [], []
    return sorted(folders), sorted(files)


def _are_wnids(names: list[str]) -> bool:
    return bool(names) and all(WNID_PATTERN.fullmatch(name) for name in names[:WNID_SAMPLE])


def _recognise_root(folder: Path) -> Recognised | None:
    """The layout whose root ``folder`` is, or None."""
    folders, files = _entries(folder)
    if not folders and not files:
        return None
    if any(SPLIT_FILE_PATTERN.fullmatch(name) for name in files):
        return Recognised("split_zhou", folder, "a CoOp split-file dataset (split_zhou_*.json)")
    if VARIANTS_FILE in files or FGVC_SPLIT_FILES["train"] in files:
        return Recognised("fgvc_aircraft", folder, "FGVC-Aircraft (variants.txt, images_variant_*.txt)")
    if "imagenet-a" in folders:
        return Recognised("imagenet_a", folder, "ImageNet-A (imagenet-a/<wnid>/)")
    if "imagenet-r" in folders:
        return Recognised("imagenet_r", folder, "ImageNet-R (imagenet-r/<wnid>/)")
    if IMAGENET_V2_FOLDER in folders or any(name.startswith("imagenetv2-") and name.endswith("-format-val")
                                            for name in folders):
        return Recognised("imagenet_v2", folder, "ImageNetV2 (numbered label folders 0..999)")
    has_classnames = CLASSNAMES_FILE in files
    if "images" in folders:
        image_folders, _ = _entries(folder / "images")
        split_folders = [name for name in ("train", "val") if name in image_folders]
        if split_folders and (has_classnames or _are_wnids(_entries(folder / "images" / split_folders[0])[0])):
            return Recognised("imagenet", folder, "ImageNet in CoOp's layout (images/train, images/val of wnids)")
        if _are_wnids(image_folders) and (has_classnames or len(image_folders) >= 1000):
            return Recognised("imagenet_sketch", folder, "ImageNet-Sketch (images/<wnid>/)")
    if "sketch" in folders:
        sketch_folders, _ = _entries(folder / "sketch")
        if _are_wnids(sketch_folders) and (has_classnames or len(sketch_folders) >= 1000):
            return Recognised("imagenet_sketch", folder, "ImageNet-Sketch (sketch/<wnid>/, to be renamed images/)")
    for dataset, domains in DOMAINBED_DATASETS.items():
        if set(folders) == set(domains):
            return Recognised("domainbed", folder, f"DomainBed's {dataset} (one folder per domain)")
    return None


def _looks_like_image_folder(folder: Path) -> bool:
    """At least two class folders, the first of which holds an image file directly."""
    folders, _ = _entries(folder)
    if len(folders) < 2:
        return False
    _, files = _entries(folder / folders[0])
    return any(os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS for name in files)


def recognise(folder: Path) -> Recognised | None:
    """The layout that ``folder`` is the root of, or is inside (its parent's or grandparent's), or that its only
    sub-folder is (an archive that unpacked into one folder); else "image_folder" for a class-per-folder tree."""
    folder = Path(folder).absolute()
    found = _recognise_root(folder)
    if found is not None:
        return found
    for ancestor in (folder.parent, folder.parent.parent):
        if ancestor != folder:
            found = _recognise_root(ancestor)
            if found is not None:
                return replace(found, relation="inside")
    folders, files = _entries(folder)
    if len(folders) == 1 and not files:
        found = _recognise_root(folder / folders[0])
        if found is not None:
            return replace(found, relation="holds")
    for candidate in (folder / "images", folder):
        if _looks_like_image_folder(candidate):
            return Recognised("image_folder", folder, "a class-per-folder image tree")
    return None


def recognise_layout(folder: Path) -> str | None:
    """Which layout key ``folder`` (or its parent, grandparent or only child) is; listing folders only."""
    found = recognise(folder)
    return found.layout if found is not None else None


def _refuse_wordnet_class_names(class_parent: Path) -> None:
    """Class folders named by WordNet id with a classnames.txt beside them: the names are in that file."""
    folders, _ = _entries(class_parent)
    if not _are_wnids(folders):
        return
    for place in (class_parent, class_parent.parent, class_parent.parent.parent):
        if (place / CLASSNAMES_FILE).is_file():
            raise DatasetLayoutError(
                class_parent,
                f"class folders are WordNet ids ({preview(folders, 3)}) and {place / CLASSNAMES_FILE} lies beside "
                "them: read as 'image_folder' the class names (and so the prompts) would be the ids",
                "declare the ImageNet layout it is ('imagenet' for <root>/images/{train,val}, 'imagenet_sketch' for "
                "<root>/images/<wnid>, 'imagenet_a'/'imagenet_r'; allow_partial=True for a subset of wnids), which "
                f"takes the names from {CLASSNAMES_FILE}",
            )


def refuse_misdeclared(layout: str, folder: Path) -> None:
    """Raise ``DatasetLayoutError`` when ``folder``, declared as ``layout``'s root, is recognisably something else
    (or a part of such a dataset, or of a ``layout`` dataset whose root is elsewhere), naming the key and root to
    declare. A domain folder of a DomainBed dataset may be read as an image folder (one domain alone)."""
    folder = Path(folder).absolute()
    found = recognise(folder)
    if found is not None and found.layout != "image_folder":
        same_root = found.relation == "is"
        if found.layout == layout and not same_root:
            raise DatasetLayoutError(folder, found.describe(), f"pass {found.root} as the root of layout '{layout}'")
        one_domain = layout == "image_folder" and found.layout == "domainbed" and found.relation == "inside"
        if found.layout != layout and not one_domain:
            consequence = (
                "its sub-folders would become classes (split folders or WordNet ids as class names) and a split "
                "would be generated instead of the authors'" if layout == "image_folder"
                else f"'{layout}' looks for other files and folders and would misread it"
            )
            raise DatasetLayoutError(
                folder, f"{found.describe()}, declared as '{layout}': {consequence}",
                f"declare layout '{found.layout}' with root {found.root}",
            )
    if layout == "image_folder":
        _refuse_wordnet_class_names(folder)


__all__ = ["Recognised", "recognise", "recognise_layout", "refuse_misdeclared"]
