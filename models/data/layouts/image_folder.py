"""A plain class-per-folder dataset (``<root>/<image_dir>/<class>/<image>``), split here: ``read_image_folder``.

Before reading, the folder is checked against the other layouts (``refuse_misdeclared``): an ImageNet, FGVC or
split-file tree read this way would get wrong classes and a generated split instead of the authors'.
"""

from __future__ import annotations

from pathlib import Path

from models.data.datasets import IMAGE_EXTENSIONS, read_image_folder
from models.data.layouts.listing import (
    DatasetLayoutError,
    DatasetListing,
    DatasetStructure,
    class_folders_sorted,
    refuse_single_class,
    require_folder,
)
from models.data.layouts.recognise import refuse_misdeclared


def read_image_folder_layout(
    root: Path, *, image_dir: str = "images", seed: int = 1, val_fraction: float = 0.1, test_fraction: float = 0.3,
) -> DatasetListing:
    """Records of ``<root>/<image_dir>`` (``image_dir=""``: root itself) split by ``read_image_folder``.

    Options: ``image_dir``, ``seed``, ``val_fraction``, ``test_fraction`` (see ``read_image_folder``). Class names are
    the folder names cleaned (underscores -> spaces, CamelCase split).
    """
    root = Path(root)
    class_parent = root / image_dir if image_dir else root
    refuse_misdeclared("image_folder", root)
    if class_parent != root:
        refuse_misdeclared("image_folder", class_parent)
    require_folder(class_parent, "image folder", f"put one folder of images per class in {class_parent}, or pass "
                   "image_dir=<the folder that holds the class folders> ('' for the root itself)")
    folders, _ = class_folders_sorted(class_parent)
    if not folders:
        raise DatasetLayoutError(class_parent, "no class folders", "put one folder of images per class here")
    for folder in folders:
        if not any(path.suffix.lower() in IMAGE_EXTENSIONS for path in (class_parent / folder).iterdir()
                   if path.is_file() and not path.name.startswith(".")):
            raise DatasetLayoutError(
                class_parent / folder,
                f"class folder has no image (extensions {', '.join(sorted(IMAGE_EXTENSIONS))})",
                "restore its images, or remove the folder if the class is not part of the dataset",
            )
    records = read_image_folder(class_parent, seed, val_fraction, test_fraction)
    classnames = tuple(
        name for _, name in sorted(set(records.select("label", "classname").iter_rows()))
    )
    refuse_single_class(classnames, class_parent)
    return DatasetListing(
        records=records, image_root=class_parent, classnames=classnames,
        structure=DatasetStructure(generated_split=True),
        notes=(f"split generated here by read_image_folder (seed {seed}, val {val_fraction}, test {test_fraction} "
               "per class): no authors' split exists for this folder",),
    )


__all__ = ["read_image_folder_layout"]
