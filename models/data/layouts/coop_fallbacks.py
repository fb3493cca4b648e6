"""CoOp's fallback splits for the split-file datasets whose loader reads the dataset's own annotation files.

When ``split_zhou_<Name>.json`` is absent, CoOp's ``datasets/<name>.py`` builds the split itself (after
``random.seed(cfg.SEED)``) and saves it. Each function here is that code for one dataset, seeded with
``random.Random(seed)`` (the same random stream as ``random.seed(seed)`` then the module's ``random.shuffle``,
without touching global state), returning ``(rows, rule)``: rows ``(relative_path, label, classname, split)`` in
CoOp's order (train, val, test) with paths relative to the JSON's path prefix and class names as prompts use them,
and ``rule`` a phrase that describes the split for the listing's note.

- OxfordPets: ``annotations/trainval.txt`` / ``test.txt`` (``read_data``), ``split_trainval(p_val=0.2)``.
- OxfordFlowers: ``imagelabels.mat`` + ``cat_to_name.json``, its own 50/20/30 per class.
- StanfordCars: ``devkit/cars_train_annos.mat``, ``devkit/cars_meta.mat``, ``cars_test_annos_withlabels.mat``;
  the year moved to the front of the class name; 20% of train to val.
- SUN397: ``ClassName.txt``, ``Training_01.txt`` (80/20 train/val) and ``Testing_01.txt``.
- UCF101: ``ucfTrainTestlist/classInd.txt``, ``trainlist01.txt`` (80/20) and ``testlist01.txt``; folders renamed
  CamelCase -> ``Camel_Case``, each video's middle frame ``<video>.jpg``.

Readers never open an image; whether each listed image exists is checked later, as for a split file.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Callable

from models.data.layouts.listing import DatasetLayoutError, preview, prompt_name

Row = tuple[str, int, str, str]
Item = tuple[str, int, str]  # (relative_path, label, raw classname), CoOp's Datum without the prefix
Fallback = Callable[[Path, Path, int], tuple[list[Row], str]]

ANNOTATION_SOURCES = {
    "OxfordPets": "annotations.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/ (extract it in the dataset "
                  "folder)",
    "OxfordFlowers": "imagelabels.mat from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ and cat_to_name.json "
                     "from the Google Drive link in CoOp's DATASETS.md",
    "StanfordCars": "car_devkit.tgz (devkit/) and cars_test_annos_withlabels.mat from the Stanford Cars download "
                    "(see CoOp's DATASETS.md)",
    "SUN397": "Partitions.zip from https://vision.princeton.edu/projects/2010/SUN/ (ClassName.txt, Training_01.txt "
              "and Testing_01.txt in the dataset folder)",
    "UCF101": "UCF101TrainTestSplits-RecognitionTask.zip from https://www.crcv.ucf.edu/data/UCF101.php (extract "
              "ucfTrainTestlist/ in the dataset folder)",
}


def _require_annotation(path: Path, dataset: str) -> Path:
    if not path.is_file():
        raise DatasetLayoutError(
            path,
            f"annotation file not found (CoOp's fallback split for {dataset} reads it when "
            f"split_zhou_{dataset}.json is absent)",
            f"get {ANNOTATION_SOURCES[dataset]}; or download split_zhou_{dataset}.json (the authors' split) from the "
            "Google Drive link for this dataset in CoOp's DATASETS.md",
        )
    return path


def _lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) of every non-blank line (CoOp's ``line.strip()``)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _loadmat(path: Path, key: str):
    from scipy.io import loadmat

    try:
        content = loadmat(str(path))
    except Exception as error:  # noqa: BLE001 - a truncated or non-MATLAB file
        raise DatasetLayoutError(path, f"not a readable MATLAB file ({error})",
                                 "re-download it (an interrupted download leaves a truncated file)") from error
    if key not in content:
        found = sorted(name for name in content if not name.startswith("__"))
        raise DatasetLayoutError(path, f"no variable {key!r} in the file (found: {preview(found)})",
                                 "re-download the file; it is not the one the dataset's archive ships")
    return content[key]


def split_trainval(trainval: list[Item], rng: random.Random, source: Path, p_val: float = 0.2,
                   ) -> tuple[list[Item], list[Item]]:
    """CoOp's ``OxfordPets.split_trainval``: per label (first-appearance order) ``round(n * p_val)`` to val."""
    tracker: dict[int, list[int]] = defaultdict(list)
    for index, item in enumerate(trainval):
        tracker[item[1]].append(index)
    train: list[Item] = []
    val: list[Item] = []
    for label, indices in tracker.items():
        n_val = round(len(indices) * p_val)
        if n_val <= 0:
            raise DatasetLayoutError(
                source,
                f"label {label} ({trainval[indices[0]][2]!r}) has {len(indices)} training image(s): CoOp's rule "
                f"sends round({p_val:g} x n) to val and needs at least one",
                "use the dataset's complete annotation file (every class has enough images there)",
            )
        rng.shuffle(indices)
        for n, index in enumerate(indices):
            (val if n < n_val else train).append(trainval[index])
    return train, val


def _rows(train: list[Item], val: list[Item], test: list[Item], source: Path) -> list[Row]:
    labels = sorted({label for _, label, _ in train + val + test})
    if labels != list(range(len(labels))):
        missing = sorted(set(range(max(labels) + 1)) - set(labels)) if labels and labels[0] >= 0 else []
        raise DatasetLayoutError(
            source,
            f"labels are not 0..{len(labels) - 1} without gaps "
            f"(no image has label {preview([str(m) for m in missing])})",
            "use the dataset's complete annotation files",
        )
    seen: set[str] = set()
    rows: list[Row] = []
    for split, items in (("train", train), ("val", val), ("test", test)):
        for path, label, classname in items:
            if path in seen:
                raise DatasetLayoutError(source, f"image {path!r} is listed twice in the annotation files",
                                         "re-download the annotation files")
            seen.add(path)
            rows.append((path, label, prompt_name(classname), split))
    return rows


# --- OxfordPets -------------------------------------------------------------------------------------------------------

def _pets_read_data(path: Path) -> list[Item]:
    items: list[Item] = []
    for number, line in _lines(path):
        parts = line.split(" ")
        if len(parts) != 4 or not parts[1].isdigit():
            raise DatasetLayoutError(f"{path}:{number}", f"line {line!r} is not '<image> <class id> <species> <breed "
                                     "id>'", "re-download annotations.tar.gz")
        imname, label = parts[0], int(parts[1]) - 1
        breed = "_".join(imname.split("_")[:-1]).lower()
        items.append((imname + ".jpg", label, breed))
    return items


def oxford_pets(root: Path, image_dir: Path, seed: int) -> tuple[list[Row], str]:
    rng = random.Random(seed)
    annotations = root / "annotations"
    trainval_file = _require_annotation(annotations / "trainval.txt", "OxfordPets")
    test_file = _require_annotation(annotations / "test.txt", "OxfordPets")
    trainval = _pets_read_data(trainval_file)
    test = _pets_read_data(test_file)
    train, val = split_trainval(trainval, rng, trainval_file)
    return (_rows(train, val, test, trainval_file),
            "annotations/trainval.txt split 80% train / 20% val per class, test = annotations/test.txt")


# --- OxfordFlowers ----------------------------------------------------------------------------------------------------

def oxford_flowers(root: Path, image_dir: Path, seed: int) -> tuple[list[Row], str]:
    rng = random.Random(seed)
    label_file = _require_annotation(root / "imagelabels.mat", "OxfordFlowers")
    names_file = _require_annotation(root / "cat_to_name.json", "OxfordFlowers")
    labels = _loadmat(label_file, "labels")[0]
    try:
        lab2cname = json.loads(names_file.read_text(encoding="utf-8"))
    except ValueError as error:
        raise DatasetLayoutError(names_file, f"not valid JSON ({error})", "re-download cat_to_name.json") from error
    tracker: dict[int, list[str]] = defaultdict(list)
    for i, label in enumerate(labels):
        tracker[int(label)].append(f"image_{str(i + 1).zfill(5)}.jpg")
    train: list[Item] = []
    val: list[Item] = []
    test: list[Item] = []
    for label, impaths in tracker.items():
        rng.shuffle(impaths)
        n_total = len(impaths)
        n_train = round(n_total * 0.5)
        n_val = round(n_total * 0.2)
        n_test = n_total - n_train - n_val
        if not (n_train > 0 and n_val > 0 and n_test > 0):
            raise DatasetLayoutError(
                label_file, f"label {label} has {n_total} image(s): {n_train} train / {n_val} val / {n_test} test "
                "(CoOp's rule needs at least one image in each split)", "use the dataset's complete imagelabels.mat")
        if str(label) not in lab2cname:
            raise DatasetLayoutError(names_file, f"no name for label {label} (keys are the 1-based labels of "
                                     "imagelabels.mat)", "re-download cat_to_name.json from CoOp's DATASETS.md")
        cname = lab2cname[str(label)]
        train.extend((im, label - 1, cname) for im in impaths[:n_train])
        val.extend((im, label - 1, cname) for im in impaths[n_train:n_train + n_val])
        test.extend((im, label - 1, cname) for im in impaths[n_train + n_val:])
    return _rows(train, val, test, label_file), "imagelabels.mat split 50% train / 20% val / rest test per class"


# --- StanfordCars -----------------------------------------------------------------------------------------------------

def _cars_read_data(image_dir: str, anno_file: Path, meta_file: Path) -> list[Item]:
    annotations = _loadmat(anno_file, "annotations")[0]
    class_names = _loadmat(meta_file, "class_names")[0]
    items: list[Item] = []
    for i in range(len(annotations)):
        try:
            imname = str(annotations[i]["fname"][0])
            label = int(annotations[i]["class"][0, 0]) - 1
        except (ValueError, IndexError, KeyError) as error:
            raise DatasetLayoutError(anno_file, f"annotation {i} has no 'fname' and 'class' ({error})",
                                     "use the annotation file with labels (cars_test_annos_withlabels.mat for "
                                     "test)") from error
        if not 0 <= label < len(class_names):
            raise DatasetLayoutError(anno_file, f"annotation {i} ({imname}) has class {label + 1}, but "
                                     f"{meta_file.name} names {len(class_names)} classes", "re-download the devkit")
        names = str(class_names[label][0]).split(" ")
        year = names.pop(-1)
        names.insert(0, year)
        items.append((f"{image_dir}/{imname}", label, " ".join(names)))
    return items


def stanford_cars(root: Path, image_dir: Path, seed: int) -> tuple[list[Row], str]:
    rng = random.Random(seed)
    trainval_file = _require_annotation(root / "devkit" / "cars_train_annos.mat", "StanfordCars")
    test_file = _require_annotation(root / "cars_test_annos_withlabels.mat", "StanfordCars")
    meta_file = _require_annotation(root / "devkit" / "cars_meta.mat", "StanfordCars")
    trainval = _cars_read_data("cars_train", trainval_file, meta_file)
    test = _cars_read_data("cars_test", test_file, meta_file)
    train, val = split_trainval(trainval, rng, trainval_file)
    return (_rows(train, val, test, trainval_file),
            "devkit/cars_train_annos.mat split 80% train / 20% val per class, test = cars_test_annos_withlabels.mat")


# --- SUN397 -----------------------------------------------------------------------------------------------------------

def _sun_read_data(cname2lab: dict[str, int], path: Path) -> list[Item]:
    items: list[Item] = []
    for number, line in _lines(path):
        imname = line[1:]  # remove /
        classname = os.path.dirname(imname)
        if classname not in cname2lab:
            raise DatasetLayoutError(f"{path}:{number}", f"class {classname!r} of {line!r} is not in ClassName.txt",
                                     "use ClassName.txt and the partition files of the same Partitions.zip")
        names = classname.split("/")[1:]  # remove 1st letter
        items.append((imname, cname2lab[classname], " ".join(names[::-1])))
    return items


def sun397(root: Path, image_dir: Path, seed: int) -> tuple[list[Row], str]:
    rng = random.Random(seed)
    names_file = _require_annotation(root / "ClassName.txt", "SUN397")
    trainval_file = _require_annotation(root / "Training_01.txt", "SUN397")
    test_file = _require_annotation(root / "Testing_01.txt", "SUN397")
    cname2lab = {line[1:]: i for i, (_, line) in enumerate(_lines(names_file))}
    trainval = _sun_read_data(cname2lab, trainval_file)
    test = _sun_read_data(cname2lab, test_file)
    train, val = split_trainval(trainval, rng, trainval_file)
    return (_rows(train, val, test, trainval_file),
            "Training_01.txt split 80% train / 20% val per class, test = Testing_01.txt")


# --- UCF101 -----------------------------------------------------------------------------------------------------------

def _ucf_read_data(cname2lab: dict[str, int], path: Path) -> list[Item]:
    items: list[Item] = []
    for number, line in _lines(path):
        entry = line.split(" ")[0]  # trainlist: filename, label
        if entry.count("/") != 1:
            raise DatasetLayoutError(f"{path}:{number}", f"line {line!r} is not '<Action>/<video>.avi'",
                                     "re-download the UCF101 train/test split lists")
        action, filename = entry.split("/")
        if action not in cname2lab:
            raise DatasetLayoutError(f"{path}:{number}", f"action {action!r} is not in classInd.txt",
                                     "use classInd.txt and the lists of the same ucfTrainTestlist/")
        renamed_action = "_".join(re.findall("[A-Z][^A-Z]*", action))
        items.append((f"{renamed_action}/{filename.replace('.avi', '.jpg')}", cname2lab[action], renamed_action))
    return items


def ucf101(root: Path, image_dir: Path, seed: int) -> tuple[list[Row], str]:
    rng = random.Random(seed)
    lists = root / "ucfTrainTestlist"
    class_file = _require_annotation(lists / "classInd.txt", "UCF101")
    trainval_file = _require_annotation(lists / "trainlist01.txt", "UCF101")
    test_file = _require_annotation(lists / "testlist01.txt", "UCF101")
    cname2lab: dict[str, int] = {}
    for number, line in _lines(class_file):
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetLayoutError(f"{class_file}:{number}", f"line {line!r} is not '<id> <Action>'",
                                     "re-download the UCF101 train/test split lists")
        cname2lab[parts[1]] = int(parts[0]) - 1
    trainval = _ucf_read_data(cname2lab, trainval_file)
    test = _ucf_read_data(cname2lab, test_file)
    train, val = split_trainval(trainval, rng, trainval_file)
    return (_rows(train, val, test, trainval_file),
            "ucfTrainTestlist/trainlist01.txt split 80% train / 20% val per class, test = testlist01.txt, "
            "one middle frame per video")


__all__ = ["ANNOTATION_SOURCES", "Fallback", "oxford_flowers", "oxford_pets", "split_trainval", "stanford_cars",
           "sun397", "ucf101"]
