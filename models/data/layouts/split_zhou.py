"""CoOp's split-file layout: ``<root>/<image_dir>/...`` + ``<root>/split_zhou_<Name>.json``.

The JSON maps train/val/test to ``[relative_path, label, classname]`` rows, paths relative to ``image_dir`` (for
StanfordCars ``image_dir`` is "" : paths are relative to the dataset folder). The split files exist only on CoOp's
Google Drive; without one, ``generated_split=True`` builds a split with CoOp's fallback for the dataset: Dassl's
``DTD.read_and_split_data`` over the class folders (Caltech101, Food101, DTD, EuroSAT), or the loader's own code over
the dataset's annotation files (OxfordPets, StanfordCars, OxfordFlowers, SUN397, UCF101: ``coop_fallbacks``). Either
is a different split from the paper's and is marked as generated.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

import polars as pl

from models.data.datasets import expected_classnames, read_coop_split
from models.data.layouts import coop_fallbacks
from models.data.layouts.listing import (
    DatasetLayoutError,
    DatasetListing,
    DatasetStructure,
    archive_beside,
    class_folders_sorted,
    list_class_images,
    listdir_nohidden,
    preview,
    prompt_name,
    records_frame,
    refuse_single_class,
)

SPLIT_FILE_PATTERN = re.compile(r"split_zhou_(.+)\.json")
SPLIT_FILE_SOURCE = "the Google Drive link for this dataset in CoOp's DATASETS.md (KaiyangZhou/CoOp)"


@dataclass(frozen=True)
class CoopDataset:
    """One of CoOp's split-file datasets, as its loader in CoOp's ``datasets/`` describes it."""

    folder: str  # $DATA/<folder>
    image_dir: str  # the JSON's path prefix inside the folder ("" = the folder itself)
    folder_split: bool = False  # CoOp's fallback is DTD.read_and_split_data over the class folders of image_dir
    ignored: tuple[str, ...] = ()
    new_cnames: Mapping[str, str] = field(default_factory=dict)
    misnamed_image_dirs: Mapping[str, str] = field(default_factory=dict)  # folder a download gives -> where from
    # CoOp's fallback over the dataset's annotation files: (root, image_dir, seed) -> (rows, rule for the note)
    annotation_split: coop_fallbacks.Fallback | None = None


COOP_DATASETS: dict[str, CoopDataset] = {
    "Caltech101": CoopDataset(
        "caltech-101", "101_ObjectCategories", folder_split=True,
        ignored=("BACKGROUND_Google", "Faces_easy"),
        new_cnames={"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"},
    ),
    "OxfordPets": CoopDataset("oxford_pets", "images", annotation_split=coop_fallbacks.oxford_pets),
    "StanfordCars": CoopDataset("stanford_cars", "", annotation_split=coop_fallbacks.stanford_cars),
    "OxfordFlowers": CoopDataset("oxford_flowers", "jpg", annotation_split=coop_fallbacks.oxford_flowers),
    "Food101": CoopDataset("food-101", "images", folder_split=True),
    "SUN397": CoopDataset("sun397", "SUN397", annotation_split=coop_fallbacks.sun397),
    "DescribableTextures": CoopDataset("dtd", "images", folder_split=True),
    "EuroSAT": CoopDataset(
        "eurosat", "2750", folder_split=True,
        new_cnames={
            "AnnualCrop": "Annual Crop Land", "Forest": "Forest",
            "HerbaceousVegetation": "Herbaceous Vegetation Land", "Highway": "Highway or Road",
            "Industrial": "Industrial Buildings", "Pasture": "Pasture Land", "PermanentCrop": "Permanent Crop Land",
            "Residential": "Residential Buildings", "River": "River", "SeaLake": "Sea or Lake",
        },
        misnamed_image_dirs={"EuroSAT_RGB": "the newer EuroSAT_RGB.zip", "EuroSAT": "a re-packed EuroSAT archive"},
    ),
    "UCF101": CoopDataset("ucf101", "UCF-101-midframes", annotation_split=coop_fallbacks.ucf101),
}


def split_file_name(dataset: str) -> str:
    return f"split_zhou_{dataset}.json"


def _resolve_dataset(root: Path, dataset: str | None, split_file: str | None) -> str | None:
    """CoOp name from the option, the split file's name, the one split file in root, or the folder's name."""
    if dataset is not None:
        return dataset
    if split_file is not None:
        match = SPLIT_FILE_PATTERN.fullmatch(Path(split_file).name)
        return match.group(1) if match else None
    present = sorted(name for name in listdir_nohidden(root) if SPLIT_FILE_PATTERN.fullmatch(name))
    if len(present) > 1:
        raise DatasetLayoutError(root, f"several split files ({', '.join(present)})",
                                 "pass split_file=<the one to read> (or dataset=<CoOp name>)")
    if present:
        return SPLIT_FILE_PATTERN.fullmatch(present[0]).group(1)
    by_folder = {known.folder: name for name, known in COOP_DATASETS.items()}
    return by_folder.get(root.name)


def _require_image_dir(root: Path, image_dir: Path, known: CoopDataset | None, dataset: str | None) -> None:
    if image_dir.is_dir():
        return
    for misnamed, origin in (known.misnamed_image_dirs.items() if known else ()):
        if (root / misnamed).is_dir():
            raise DatasetLayoutError(
                root / misnamed,
                f"{origin} unpacks to '{misnamed}/', but {dataset}'s split file is relative to '{image_dir.name}/'",
                f"rename it: mv {root / misnamed} {image_dir}",
            )
    archive = archive_beside(image_dir)
    fix = (f"extract {archive.name} in {root}" if archive is not None else
           f"put the images in {image_dir} (or pass image_dir=<the folder the split file's paths start from>)")
    raise DatasetLayoutError(image_dir, "image folder not found", fix)


def check_split_records(records: pl.DataFrame, split_path: Path) -> tuple[str, ...]:
    """Refuse a split file that would train or evaluate wrongly; returns the class names by label.

    Refused: an image listed twice (in one split it is counted twice, across splits it leaks test images into
    training), labels with no row at all (the class list would have holes), one class only, and a class present in
    train but absent from test or the reverse (its accuracy cannot be measured, or it is tested without training).
    """
    if records.height == 0:
        raise DatasetLayoutError(split_path, "no rows in any split",
                                 f"re-download {split_path.name} from {SPLIT_FILE_SOURCE}")
    seen: dict[str, str] = {}
    row_in_split: dict[str, int] = {}
    for relative_path, split in records.select("relative_path", "split").iter_rows():
        index = row_in_split.get(split, 0)
        row_in_split[split] = index + 1
        place = f"{split}[{index}]"
        if relative_path in seen:
            repeated = records.get_column("relative_path").is_duplicated().sum()
            raise DatasetLayoutError(
                split_path,
                f"image {relative_path!r} is listed twice ({seen[relative_path]} and {place}; {repeated} rows name an "
                "image listed more than once)",
                f"remove the repeated rows, or re-download {split_path.name} from {SPLIT_FILE_SOURCE}",
            )
        seen[relative_path] = place
    classnames = tuple(expected_classnames(records))
    labels = sorted(records.get_column("label").unique().to_list())
    if labels != list(range(len(labels))):
        holes = sorted(set(range(max(labels) + 1)) - set(labels)) if labels and labels[0] >= 0 else []
        raise DatasetLayoutError(
            split_path,
            f"labels are not 0..{len(labels) - 1} without gaps (no row has label {preview([str(h) for h in holes])}"
            f"{'; negative labels present' if labels and labels[0] < 0 else ''})",
            f"re-download {split_path.name} from {SPLIT_FILE_SOURCE}, or renumber the labels",
        )
    refuse_single_class(classnames, split_path, "a split file needs rows of at least two labels")
    by_split = {
        split: set(records.filter(pl.col("split") == split).get_column("label").to_list())
        for split in ("train", "test")
    }
    for present, absent in (("train", "test"), ("test", "train")):
        lacking = sorted(by_split[present] - by_split[absent])
        if lacking:
            described = [f"{label} {classnames[label]!r}" for label in lacking]
            raise DatasetLayoutError(
                split_path,
                f"{len(lacking)} class(es) present in {present} but not in {absent}: {preview(described)}",
                f"re-download {split_path.name} from {SPLIT_FILE_SOURCE}; a hand-made split needs every class in "
                "both train and test",
            )
    return classnames


def generate_dassl_split(
    image_dir: Path, seed: int, p_trn: float = 0.5, p_val: float = 0.2, ignored: tuple[str, ...] = (),
    new_cnames: Mapping[str, str] | None = None, file_order: Literal["sorted", "filesystem"] = "sorted",
) -> pl.DataFrame:
    """Dassl's ``DTD.read_and_split_data(image_dir, p_trn, p_val, ignored, new_cnames)`` after ``random.seed(seed)``.

    Classes = sorted non-hidden entries of ``image_dir`` minus ``ignored``; per class (in label order, one random
    stream), the class's images are shuffled with ``random.shuffle``, then ``round(n * p_trn)`` go to train,
    ``round(n * p_val)`` to val, the rest to test. Class names are ``new_cnames`` renamings, as prompts use them.

    ``file_order``: Dassl shuffles each class's files in filesystem order (``os.listdir``), which differs between
    machines and filesystems; "sorted" (default) shuffles them sorted by name, so that a seed gives the same split
    everywhere; "filesystem" is Dassl's exact behaviour on this machine.
    """
    new_cnames = new_cnames or {}
    folders, files = class_folders_sorted(image_dir)
    stray = [name for name in files if name not in ignored]
    if stray:
        raise DatasetLayoutError(
            image_dir / stray[0], f"a file among the class folders ({preview(stray)}); Dassl takes every entry as a "
            "class", "remove it or move it out of the image folder (or pass ignored=[...])",
        )
    categories = [name for name in folders if name not in ignored]  # Dassl: listdir_nohidden, minus ignored, sorted
    if not categories:
        raise DatasetLayoutError(image_dir, "no class folders", "put one folder of images per class here")
    refuse_single_class(categories, image_dir)
    rng = random.Random(seed)  # = random.seed(seed) then the module's random.shuffle, without touching global state
    splits: dict[str, list[tuple[str, int, str, str]]] = {"train": [], "val": [], "test": []}
    for label, category in enumerate(categories):
        images = list_class_images(image_dir / category, sort=(file_order == "sorted"))
        rng.shuffle(images)
        n_total = len(images)
        n_train = round(n_total * p_trn)
        n_val = round(n_total * p_val)
        n_test = n_total - n_train - n_val
        if not (n_train > 0 and n_val > 0 and n_test > 0):
            raise DatasetLayoutError(
                image_dir / category,
                f"{n_total} image(s) give {n_train} train / {n_val} val / {n_test} test (Dassl's rule rounds "
                f"{p_trn:.0%} and {p_val:.0%} per class and needs at least one image in each split)",
                "add images to the class (at least 4 for 50/20/30) or remove the class folder",
            )
        classname = prompt_name(new_cnames.get(category, category))
        for split, chosen in (("train", images[:n_train]), ("val", images[n_train:n_train + n_val]),
                              ("test", images[n_train + n_val:])):
            splits[split].extend((f"{category}/{image}", label, classname, split) for image in chosen)
    return records_frame(splits["train"] + splits["val"] + splits["test"])


def read_split_zhou(
    root: Path, *, dataset: str | None = None, image_dir: str | None = None, split_file: str | None = None,
    generated_split: bool = False, seed: int = 1, ignored: tuple[str, ...] | list[str] | None = None,
    new_cnames: Mapping[str, str] | None = None, file_order: Literal["sorted", "filesystem"] = "sorted",
) -> DatasetListing:
    """Records of a CoOp split-file dataset.

    Options: ``dataset`` (CoOp's name, e.g. "Caltech101"; default: from ``split_file``, the one
    ``split_zhou_*.json`` in root, or root's folder name, e.g. "caltech-101"), which gives the defaults of
    ``image_dir`` (e.g. "101_ObjectCategories"; "" for StanfordCars), ``split_file`` (``split_zhou_<dataset>.json``)
    and, for a generated split, ``ignored`` and ``new_cnames`` (Caltech101's and EuroSAT's constants).
    ``generated_split=True``: when the split file is absent, generate the split with CoOp's fallback seeded by
    ``seed`` instead of refusing: Dassl's rule over the class folders (see ``generate_dassl_split``, ``file_order``),
    or, for OxfordPets, StanfordCars, OxfordFlowers, SUN397 and UCF101, the loader's code over the dataset's
    annotation files (``coop_fallbacks``; ``file_order``, ``ignored`` and ``new_cnames`` do not apply); a split file
    that is present is always read, as Dassl does.
    """
    root = Path(root)
    if file_order not in ("sorted", "filesystem"):
        raise ValueError(f"file_order must be 'sorted' or 'filesystem', got {file_order!r}")
    name = _resolve_dataset(root, dataset, split_file)
    known = COOP_DATASETS.get(name) if name else None
    image_path = root / (image_dir if image_dir is not None else (known.image_dir if known else "images"))
    split_path = root / (split_file or split_file_name(name or "<Name>"))
    _require_image_dir(root, image_path, known, name)
    if split_path.is_file():
        records = read_coop_split(split_path, image_path)
        classnames = check_split_records(records, split_path)
        return DatasetListing(
            records=records, image_root=image_path, classnames=classnames,
            structure=DatasetStructure(),
        )
    if not generated_split:
        raise DatasetLayoutError(
            split_path,
            "split file not found (CoOp's split files are not part of the datasets' own archives)",
            f"download {split_path.name} from {SPLIT_FILE_SOURCE} into {root}; or pass generated_split=True to "
            "generate a split with Dassl's fallback rule (NOT the paper's split)",
        )
    if known is not None and known.annotation_split is not None:
        rows, rule = known.annotation_split(root, image_path, seed)
        records = records_frame(rows)
        note = (
            f"{split_path.name} not found: split generated here with CoOp's fallback for {name} "
            f"(random.seed({seed}); {rule}). It is NOT the authors' split: results are not comparable with "
            f"published numbers; download {split_path.name} from {SPLIT_FILE_SOURCE} for those"
        )
        return DatasetListing(
            records=records, image_root=image_path, classnames=tuple(expected_classnames(records)),
            structure=DatasetStructure(generated_split=True), notes=(note,),
        )
    if known is not None and not known.folder_split:
        raise DatasetLayoutError(
            split_path,
            f"split file not found, and CoOp's fallback for {name} reads the dataset's own annotation files, which "
            "this reader does not implement",
            f"download {split_path.name} from {SPLIT_FILE_SOURCE} into {root}",
        )
    ignored_names = tuple(ignored) if ignored is not None else (known.ignored if known else ())
    renamed = dict(new_cnames) if new_cnames is not None else (dict(known.new_cnames) if known else {})
    records = generate_dassl_split(image_path, seed, ignored=ignored_names, new_cnames=renamed,
                                   file_order=file_order)
    classnames = tuple(expected_classnames(records))
    note = (
        f"{split_path.name} not found: split generated here with Dassl's DTD.read_and_split_data rule "
        f"(random.seed({seed}), 50% train / 20% val / rest test per class, images shuffled in {file_order} order"
        f"{', ignoring ' + ', '.join(ignored_names) if ignored_names else ''}). It is NOT the authors' split: "
        f"results are not comparable with published numbers; download {split_path.name} from {SPLIT_FILE_SOURCE} "
        "for those"
    )
    return DatasetListing(
        records=records, image_root=image_path, classnames=classnames,
        structure=DatasetStructure(generated_split=True),
        notes=(note,),
    )


__all__ = ["COOP_DATASETS", "CoopDataset", "check_split_records", "generate_dassl_split", "read_split_zhou",
           "split_file_name"]
