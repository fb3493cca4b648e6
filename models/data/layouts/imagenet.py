"""ImageNet in CoOp's layout: ``<root>/images/{train,val}/<wnid>/<image>`` and ``<root>/classnames.txt``.

As CoOp's ``ImageNet.read_data``: label = position of the wnid in the sorted folder list of each split folder (so
a complete copy gives the standard indices 0..999); class names from ``classnames.txt`` by wnid (else open_clip's
list, with a note); the val folder is the test split (``structure.val_is_test``, no val rows).

Departure from the reference: CoOp lists the images of a class folder in filesystem order (``listdir_nohidden``);
here they are sorted by name. The set of images is the same; only which images Dassl's few-shot sampler draws for a
seed depends on the order, and filesystem order differs between machines anyway.
"""

from __future__ import annotations

from pathlib import Path

from models.data.datasets import IMAGE_EXTENSIONS
from models.data.layouts.listing import (
    DatasetLayoutError,
    DatasetListing,
    DatasetStructure,
    class_folders_sorted,
    duplicate_names,
    list_class_images,
    preview,
    records_frame,
    refuse_single_class,
    require_folder,
)
from models.data.layouts.wordnet import WNID_PATTERN, imagenet_label_of, imagenet_names, imagenet_wnids

VALPREP_FIX = (
    "sort the validation images into one folder per wnid: run valprep.sh (soumith/imagenetloader.torch) inside "
    "images/val (see CoOp issue #60)"
)


def check_wnid_folders(
    folder: Path, wnids: list[str], expected: tuple[str, ...], dataset: str, allow_partial: bool,
) -> tuple[str, ...]:
    """Refuse class folders that are not ``expected`` WordNet ids, and a partial copy unless ``allow_partial``.

    Labels are positions in the sorted folder list, so one missing folder shifts every later label: a partial copy
    gives wrong labels against any model or list that uses the standard indices. Returns the notes to add.
    """
    known = imagenet_label_of()
    not_wnids = [name for name in wnids if name not in known]
    if not_wnids:
        kind = "not a WordNet id" if not WNID_PATTERN.fullmatch(not_wnids[0]) else "not an ImageNet WordNet id"
        raise DatasetLayoutError(
            folder / not_wnids[0],
            f"class folder {not_wnids[0]!r} is {kind} ({len(not_wnids)} such: {preview(not_wnids)}); {dataset} "
            "class folders are ImageNet wnids",
            "remove or move the folder out of the dataset (a stray folder takes a label and shifts the others)",
        )
    expected_set = set(expected)
    foreign = [name for name in wnids if name not in expected_set]
    if foreign:
        raise DatasetLayoutError(
            folder / foreign[0],
            f"wnid folder {foreign[0]} is an ImageNet class but not one of {dataset}'s {len(expected)} "
            f"({len(foreign)} such: {preview(foreign)})",
            f"remove it: {dataset}'s labels are positions among its own {len(expected)} sorted wnids",
        )
    present = set(wnids)
    missing = [wnid for wnid in expected if wnid not in present]
    if not missing:
        return ()
    if not allow_partial:
        raise DatasetLayoutError(
            folder,
            f"partial copy: {len(wnids)} of {dataset}'s {len(expected)} wnid folders (missing {preview(missing)}); "
            f"labels are positions in the sorted folder list, so every label after {missing[0]} would shift",
            f"restore the missing folders from the full archive, or pass allow_partial=True to read a subset "
            f"(its labels are then NOT the standard {dataset} indices)",
        )
    return (
        f"{folder}: partial copy ({len(wnids)} of {len(expected)} wnid folders, missing {preview(missing)}): labels "
        f"are positions among the folders present, not the standard {dataset} indices",
    )


def _refuse_flat_val(val_dir: Path, files: list[str]) -> None:
    images = [name for name in files if Path(name).suffix.lower() in IMAGE_EXTENSIONS]
    if images:
        raise DatasetLayoutError(
            val_dir,
            f"{len(images)} image(s) lie directly in the val folder (e.g. {images[0]}) instead of one folder per wnid: "
            "this is the official validation archive, which is flat, so the test split would be empty",
            VALPREP_FIX,
        )


def read_imagenet(
    root: Path, *, classnames_file: str | Path | None = None, allow_partial: bool = False,
) -> DatasetListing:
    """Records of ImageNet (train rows, and val rows as split "test").

    Options: ``classnames_file`` (default ``<root>/classnames.txt``; when that default is absent, open_clip's names
    are used with a note; a file given explicitly must exist); ``allow_partial`` (read fewer than 1000 wnid folders;
    labels are then positions among those present, as CoOp would compute them).
    """
    root = Path(root)
    image_root = root / "images"
    train_dir, val_dir = image_root / "train", image_root / "val"
    require_folder(
        image_root, "ImageNet image folder 'images'",
        "root must be the folder that holds images/train, images/val and classnames.txt (CoOp's $DATA/imagenet)",
    )
    require_folder(train_dir, "ImageNet training folder", "extract ILSVRC2012_img_train.tar into images/train "
                   "(one folder per wnid, each from its own inner tar)")
    require_folder(val_dir, "ImageNet validation folder (the test split)",
                   f"extract ILSVRC2012_img_val.tar into images/val, then {VALPREP_FIX}")
    train_wnids, _ = class_folders_sorted(train_dir)
    val_wnids, val_files = class_folders_sorted(val_dir)
    if not val_wnids:
        _refuse_flat_val(val_dir, val_files)
        raise DatasetLayoutError(val_dir, "no wnid folders in the val folder (the test split would be empty)",
                                 f"extract ILSVRC2012_img_val.tar into images/val, then {VALPREP_FIX}")
    if not train_wnids:
        raise DatasetLayoutError(train_dir, "no wnid folders in the training folder",
                                 "extract ILSVRC2012_img_train.tar and its 1000 inner tars into images/train")
    notes = list(check_wnid_folders(train_dir, train_wnids, imagenet_wnids(), "ImageNet", allow_partial))
    # CoOp labels val by its own sorted folder list: different folder sets would give the same wnid two labels.
    if val_wnids != train_wnids:
        missing_in_val = sorted(set(train_wnids) - set(val_wnids))
        extra_in_val = sorted(set(val_wnids) - set(train_wnids))
        _refuse_flat_val(val_dir, val_files)
        raise DatasetLayoutError(
            val_dir,
            f"the val wnid folders differ from train's (missing in val: {preview(missing_in_val) or 'none'}; only "
            f"in val: {preview(extra_in_val) or 'none'}); each split is labelled by its own sorted folder list, so "
            "labels would not match",
            "give images/val exactly the wnid folders of images/train (re-run valprep.sh on the full validation set)",
        )
    refuse_single_class(train_wnids, train_dir)
    names = imagenet_names(root, train_wnids, classnames_file)
    notes.extend(names.notes)
    rows: list[tuple[str, int, str, str]] = []
    for split_folder, split in ((train_dir, "train"), (val_dir, "test")):
        for label, wnid in enumerate(train_wnids):
            classname = names.names[label]
            for image in list_class_images(split_folder / wnid):
                rows.append((f"{split_folder.name}/{wnid}/{image}", label, classname, split))
    return DatasetListing(
        records=records_frame(rows),
        image_root=image_root,
        classnames=names.names,
        structure=DatasetStructure(val_is_test=True, duplicate_classnames=duplicate_names(names.names)),
        notes=tuple(notes),
    )

