"""ImageNet's four shifted test sets in CoOp's layouts (test-only; CoOp's ImageNetV2/Sketch/A/R readers).

- ``imagenet_v2``: ``<root>/imagenetv2-matched-frequency-format-val/<0..999>/`` + ``classnames.txt``. The folder
  number IS the label (never string-sorted: torchvision's ImageFolder would order "0", "1", "10", "100"...); the name
  is the label-th line of ``classnames.txt``, so the file must be in sorted-wnid order (checked).
- ``imagenet_sketch``: ``<root>/images/<wnid>/`` (+ ``classnames.txt``): sorted wnid folders -> labels 0..999. The
  download unpacks to ``sketch/``, which CoOp expects renamed to ``images/``.
- ``imagenet_a`` / ``imagenet_r``: ``<root>/imagenet-a/<wnid>/`` (``imagenet-r``), ``README.txt`` ignored: the 200
  sorted wnid folders -> labels 0..199, names by wnid. Evaluation is 200-way.

Without ``classnames.txt`` every reader takes open_clip's names by standard index (exact for V2, whose file is read
by line position in the standard order) and says so in a note. Images inside a class folder are sorted by name (the
reference lists them in filesystem order; only the order differs).
"""

from __future__ import annotations

from pathlib import Path

from models.data.layouts.imagenet import check_wnid_folders
from models.data.layouts.listing import (
    DatasetLayoutError,
    DatasetListing,
    DatasetStructure,
    archive_beside,
    duplicate_names,
    list_class_images,
    listdir_nohidden,
    preview,
    records_frame,
    refuse_single_class,
    require_folder,
)
from models.data.layouts.wordnet import (
    COOP_CLASSNAMES_SOURCE,
    imagenet_a_wnids,
    imagenet_names,
    imagenet_r_wnids,
    imagenet_wnids,
)

IMAGENET_V2_FOLDER = "imagenetv2-matched-frequency-format-val"


def _test_listing(rows, image_root: Path, names: tuple[str, ...], notes: tuple[str, ...]) -> DatasetListing:
    return DatasetListing(
        records=records_frame(rows), image_root=image_root, classnames=names,
        structure=DatasetStructure(test_only=True, duplicate_classnames=duplicate_names(names)), notes=notes,
    )


def _missing_folder_fix(folder: Path, fix: str) -> str:
    archive = archive_beside(folder)
    return f"extract {archive.name} there" if archive is not None else fix


def read_imagenet_v2(
    root: Path, *, image_dir: str = IMAGENET_V2_FOLDER, classnames_file: str | Path | None = None,
    allow_partial: bool = False,
) -> DatasetListing:
    """Records of ImageNetV2 (split "test"): label = folder number, name = label-th line of ``classnames.txt``.

    Options: ``image_dir`` (another variant, e.g. ``imagenetv2-threshold0.7-format-val``); ``classnames_file``
    (default ``<root>/classnames.txt``, else open_clip's names with a note); ``allow_partial`` (numbered folders
    missing: CoOp would stop; labels do not shift, as folder numbers are labels).
    """
    root = Path(root)
    image_root = root / image_dir
    if not image_root.is_dir():
        variants = sorted(name for name in listdir_nohidden(root) if name.startswith("imagenetv2-")
                          and (root / name).is_dir()) if root.is_dir() else []
        fix = (f"pass image_dir={variants[0]!r} to read that variant" if variants else _missing_folder_fix(
            image_root, f"extract {IMAGENET_V2_FOLDER}.tar.gz (ImageNetV2, matched frequency) into {root}"))
        require_folder(image_root, "ImageNetV2 image folder", fix)
    numbers: dict[int, str] = {}
    for name in sorted(listdir_nohidden(image_root)):
        if not (image_root / name).is_dir():
            continue  # the reference only opens the folders 0..999
        if not (name.isdigit() and str(int(name)) == name and int(name) < 1000):
            raise DatasetLayoutError(
                image_root / name,
                f"folder {name!r} is not a label 0..999 written without leading zeros; ImageNetV2's folders are "
                "named by the standard ImageNet label",
                "remove or rename it (the reference reads exactly the folders '0' to '999')",
            )
        numbers[int(name)] = name
    if not numbers:
        raise DatasetLayoutError(image_root, "no numbered label folders (0..999) in the ImageNetV2 image folder",
                                 f"extract {IMAGENET_V2_FOLDER}.tar.gz so that its folders 0..999 are in {image_root}")
    missing = [label for label in range(1000) if label not in numbers]
    notes: list[str] = []
    if missing and not allow_partial:
        raise DatasetLayoutError(
            image_root,
            f"{len(missing)} of the 1000 numbered folders are missing ({preview([str(m) for m in missing])})",
            "restore them from the ImageNetV2 archive, or pass allow_partial=True to read the folders present",
        )
    if missing:
        notes.append(f"{image_root}: {1000 - len(missing)} of 1000 label folders present; labels are folder numbers")
    names = imagenet_names(root, imagenet_wnids(), classnames_file)
    if names.source is not None:
        # The reference takes the label-th line, so a file in any other order names every class wrongly.
        for position, (wnid, expected) in enumerate(zip(names.source.names, imagenet_wnids())):
            if wnid != expected:
                line = names.source.line_of[wnid]
                raise DatasetLayoutError(
                    f"{names.source.path}:{line}",
                    f"line {line} is {wnid}, but ImageNetV2 names label {position} by the label-th line, which must "
                    f"be {expected} (the file is not in sorted-wnid order)",
                    f"sort the file's lines by wnid, or use {COOP_CLASSNAMES_SOURCE}",
                )
    notes.extend(names.notes)
    rows = [
        (f"{label}/{image}", label, names.names[label], "test")
        for label in sorted(numbers)
        for image in list_class_images(image_root / numbers[label])
    ]
    refuse_single_class([names.names[label] for label in numbers], image_root)
    return _test_listing(rows, image_root, names.names, tuple(notes))


def _read_wnid_test_set(
    root: Path, image_root: Path, expected: tuple[str, ...], dataset: str, classnames_file: str | Path | None,
    allow_partial: bool, ignored: tuple[str, ...] = (),
) -> DatasetListing:
    """Sorted wnid folders -> labels (CoOp's ``listdir_nohidden(image_dir, sort=True)``), names by wnid."""
    entries = sorted(name for name in listdir_nohidden(image_root) if name not in ignored)
    files = [name for name in entries if not (image_root / name).is_dir()]
    if files:
        raise DatasetLayoutError(
            image_root / files[0],
            f"a file among the class folders ({len(files)}: {preview(files)}); the reference takes every entry here "
            "as a class folder",
            "remove it or move it out of the image folder",
        )
    if not entries:
        raise DatasetLayoutError(image_root, f"no class folders in the {dataset} image folder",
                                 f"extract the {dataset} archive so that its wnid folders are in {image_root}")
    notes = list(check_wnid_folders(image_root, entries, expected, dataset, allow_partial))
    refuse_single_class(entries, image_root)
    names = imagenet_names(root, entries, classnames_file)
    notes.extend(names.notes)
    rows = [
        (f"{wnid}/{image}", label, names.names[label], "test")
        for label, wnid in enumerate(entries)
        for image in list_class_images(image_root / wnid)
    ]
    return _test_listing(rows, image_root, names.names, tuple(notes))


def read_imagenet_sketch(
    root: Path, *, classnames_file: str | Path | None = None, allow_partial: bool = False,
) -> DatasetListing:
    """Records of ImageNet-Sketch (split "test"): 1000 sorted wnid folders in ``<root>/images``.

    Options: ``classnames_file`` (as for ImageNet); ``allow_partial`` (fewer than 1000 wnid folders: labels are
    then positions among those present, not the standard indices)."""
    root = Path(root)
    image_root = root / "images"
    if not image_root.is_dir() and (root / "sketch").is_dir():
        raise DatasetLayoutError(
            root / "sketch", "ImageNet-Sketch unpacked to 'sketch/', but CoOp's layout reads 'images/'",
            f"rename it: mv {root / 'sketch'} {image_root}",
        )
    require_folder(image_root, "ImageNet-Sketch image folder",
                   _missing_folder_fix(image_root, f"extract ImageNet-Sketch into {root} and rename its sketch/ "
                                       "folder to images/"))
    return _read_wnid_test_set(root, image_root, imagenet_wnids(), "ImageNet-Sketch", classnames_file,
                               allow_partial)


def _read_imagenet_subset(root: Path, folder: str, expected: tuple[str, ...], dataset: str,
                          classnames_file: str | Path | None, allow_partial: bool) -> DatasetListing:
    root = Path(root)
    image_root = root / folder
    require_folder(image_root, f"{dataset} image folder",
                   _missing_folder_fix(image_root, f"extract {folder}.tar into {root} (it unpacks to {folder}/)"))
    return _read_wnid_test_set(root, image_root, expected, dataset, classnames_file, allow_partial,
                               ignored=("README.txt",))


def read_imagenet_a(root: Path, *, classnames_file: str | Path | None = None,
                    allow_partial: bool = False) -> DatasetListing:
    """Records of ImageNet-A (split "test"): its 200 sorted wnid folders in ``<root>/imagenet-a`` -> labels 0..199.

    Options: ``classnames_file`` (CoOp's 1000-line file serves; else open_clip's names); ``allow_partial``."""
    return _read_imagenet_subset(root, "imagenet-a", imagenet_a_wnids(), "ImageNet-A", classnames_file,
                                 allow_partial)


def read_imagenet_r(root: Path, *, classnames_file: str | Path | None = None,
                    allow_partial: bool = False) -> DatasetListing:
    """Records of ImageNet-R (split "test"): its 200 sorted wnid folders in ``<root>/imagenet-r`` -> labels 0..199.

    Options: as ``read_imagenet_a``."""
    return _read_imagenet_subset(root, "imagenet-r", imagenet_r_wnids(), "ImageNet-R", classnames_file,
                                 allow_partial)


__all__ = ["IMAGENET_V2_FOLDER", "read_imagenet_a", "read_imagenet_r", "read_imagenet_sketch", "read_imagenet_v2"]
