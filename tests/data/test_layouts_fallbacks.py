"""CoOp's fallback splits over the datasets' annotation files (OxfordPets, OxfordFlowers, StanfordCars, SUN397,
UCF101), each against a copy of the CoOp loader's code for that dataset (random.seed + its loops; Datum replaced by
a tuple) on a miniature tree of the dataset's annotation files."""

from __future__ import annotations

import json
import os
import random
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from layout_trees import write_images
from scipy.io import loadmat, savemat

from models.data.layouts import DatasetLayoutError, read_listing

# --- CoOp, as written there ------------------------------------------------------------------------------------------


def coop_split_trainval(trainval, p_val=0.2):
    tracker = defaultdict(list)
    for idx, item in enumerate(trainval):
        label = item[1]
        tracker[label].append(idx)

    train, val = [], []
    for label, idxs in tracker.items():
        n_val = round(len(idxs) * p_val)
        assert n_val > 0
        random.shuffle(idxs)
        for n, idx in enumerate(idxs):
            item = trainval[idx]
            if n < n_val:
                val.append(item)
            else:
                train.append(item)

    return train, val


def coop_pets(dataset_dir):
    image_dir = os.path.join(dataset_dir, "images")
    anno_dir = os.path.join(dataset_dir, "annotations")

    def read_data(split_file):
        filepath = os.path.join(anno_dir, split_file)
        items = []
        with open(filepath, "r") as f:
            lines = f.readlines()
            for line in lines:
                line = line.strip()
                imname, label, species, _ = line.split(" ")
                breed = imname.split("_")[:-1]
                breed = "_".join(breed)
                breed = breed.lower()
                imname += ".jpg"
                impath = os.path.join(image_dir, imname)
                label = int(label) - 1
                items.append((impath, label, breed))
        return items

    trainval = read_data(split_file="trainval.txt")
    test = read_data(split_file="test.txt")
    train, val = coop_split_trainval(trainval)
    return (train, val, test), image_dir


def coop_flowers(dataset_dir):
    image_dir = os.path.join(dataset_dir, "jpg")
    tracker = defaultdict(list)
    label_file = loadmat(os.path.join(dataset_dir, "imagelabels.mat"))["labels"][0]
    for i, label in enumerate(label_file):
        imname = f"image_{str(i + 1).zfill(5)}.jpg"
        impath = os.path.join(image_dir, imname)
        label = int(label)
        tracker[label].append(impath)

    def _collate(ims, y, c):
        return [(im, y - 1, c) for im in ims]

    with open(os.path.join(dataset_dir, "cat_to_name.json")) as f:
        lab2cname = json.load(f)
    train, val, test = [], [], []
    for label, impaths in tracker.items():
        random.shuffle(impaths)
        n_total = len(impaths)
        n_train = round(n_total * 0.5)
        n_val = round(n_total * 0.2)
        n_test = n_total - n_train - n_val
        assert n_train > 0 and n_val > 0 and n_test > 0
        cname = lab2cname[str(label)]
        train.extend(_collate(impaths[:n_train], label, cname))
        val.extend(_collate(impaths[n_train : n_train + n_val], label, cname))
        test.extend(_collate(impaths[n_train + n_val :], label, cname))
    return (train, val, test), image_dir


def coop_cars(dataset_dir):
    def read_data(image_dir, anno_file, meta_file):
        anno_file = loadmat(anno_file)["annotations"][0]
        meta_file = loadmat(meta_file)["class_names"][0]
        items = []
        for i in range(len(anno_file)):
            imname = anno_file[i]["fname"][0]
            impath = os.path.join(dataset_dir, image_dir, imname)
            label = anno_file[i]["class"][0, 0]
            label = int(label) - 1
            classname = meta_file[label][0]
            names = classname.split(" ")
            year = names.pop(-1)
            names.insert(0, year)
            classname = " ".join(names)
            items.append((impath, label, classname))
        return items

    trainval_file = os.path.join(dataset_dir, "devkit", "cars_train_annos.mat")
    test_file = os.path.join(dataset_dir, "cars_test_annos_withlabels.mat")
    meta_file = os.path.join(dataset_dir, "devkit", "cars_meta.mat")
    trainval = read_data("cars_train", trainval_file, meta_file)
    test = read_data("cars_test", test_file, meta_file)
    train, val = coop_split_trainval(trainval)
    return (train, val, test), dataset_dir


def coop_sun397(dataset_dir):
    image_dir = os.path.join(dataset_dir, "SUN397")

    def read_data(cname2lab, text_file):
        text_file = os.path.join(dataset_dir, text_file)
        items = []
        with open(text_file, "r") as f:
            lines = f.readlines()
            for line in lines:
                imname = line.strip()[1:]
                classname = os.path.dirname(imname)
                label = cname2lab[classname]
                impath = os.path.join(image_dir, imname)
                names = classname.split("/")[1:]
                names = names[::-1]
                classname = " ".join(names)
                items.append((impath, label, classname))
        return items

    classnames = []
    with open(os.path.join(dataset_dir, "ClassName.txt"), "r") as f:
        lines = f.readlines()
        for line in lines:
            line = line.strip()[1:]
            classnames.append(line)
    cname2lab = {c: i for i, c in enumerate(classnames)}
    trainval = read_data(cname2lab, "Training_01.txt")
    test = read_data(cname2lab, "Testing_01.txt")
    train, val = coop_split_trainval(trainval)
    return (train, val, test), image_dir


def coop_ucf101(dataset_dir):
    image_dir = os.path.join(dataset_dir, "UCF-101-midframes")

    def read_data(cname2lab, text_file):
        text_file = os.path.join(dataset_dir, text_file)
        items = []
        with open(text_file, "r") as f:
            lines = f.readlines()
            for line in lines:
                line = line.strip().split(" ")[0]
                action, filename = line.split("/")
                label = cname2lab[action]
                elements = re.findall("[A-Z][^A-Z]*", action)
                renamed_action = "_".join(elements)
                filename = filename.replace(".avi", ".jpg")
                impath = os.path.join(image_dir, renamed_action, filename)
                items.append((impath, label, renamed_action))
        return items

    cname2lab = {}
    with open(os.path.join(dataset_dir, "ucfTrainTestlist/classInd.txt"), "r") as f:
        lines = f.readlines()
        for line in lines:
            label, classname = line.strip().split(" ")
            label = int(label) - 1
            cname2lab[classname] = label
    trainval = read_data(cname2lab, "ucfTrainTestlist/trainlist01.txt")
    test = read_data(cname2lab, "ucfTrainTestlist/testlist01.txt")
    train, val = coop_split_trainval(trainval)
    return (train, val, test), image_dir


def coop_rows(reference, dataset_dir, seed):
    """random.seed(seed), the loader's fallback, then save_split's relative paths; names with "_" -> " "."""
    state = random.getstate()
    random.seed(seed)
    try:
        splits, path_prefix = reference(str(dataset_dir))
    finally:
        random.setstate(state)
    rows = []
    for split, items in zip(("train", "val", "test"), splits):
        for impath, label, classname in items:
            impath = impath.replace(path_prefix, "")
            if impath.startswith("/"):
                impath = impath[1:]
            rows.append((impath, label, classname.replace("_", " "), split))
    return rows


# --- miniature trees of each dataset's annotation files --------------------------------------------------------------


def write_pets(root: Path) -> None:
    breeds = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("Bengal", 1, 3), ("yorkshire_terrier", 2, 4)]
    trainval, test = [], []
    for number in range(1, 12):  # classes interleaved: split_trainval groups by first appearance
        for index, (breed, species, breed_id) in enumerate(breeds):
            if number <= 5 + 2 * index:
                trainval.append(f"{breed}_{number} {index + 1} {species} {breed_id}")
    for index, (breed, species, breed_id) in enumerate(breeds[::-1]):
        label = len(breeds) - index
        test.extend(f"{breed}_{100 + n} {label} {species} {breed_id}" for n in range(3))
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "trainval.txt").write_text("\n".join(trainval) + "\n")
    (root / "annotations" / "test.txt").write_text("\n".join(test) + "\n")
    write_images(root / "images", [line.split(" ")[0] + ".jpg" for line in trainval + test])


def write_flowers(root: Path) -> None:
    labels = [1 + (i * 7) % 3 for i in range(22)] + [2, 3, 3]
    root.mkdir(parents=True)
    savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    (root / "cat_to_name.json").write_text(json.dumps(
        {"1": "pink primrose", "2": "hard-leaved pocket orchid", "3": "globe-flower"}))
    write_images(root / "jpg", [f"image_{i + 1:05d}.jpg" for i in range(len(labels))])


CAR_NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Ram C/V Cargo Van Minivan 2012"]


def car_annotations(classes: list[int], first: int) -> np.ndarray:
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    annotations = np.zeros((1, len(classes)), dtype=fields)
    for i, cls in enumerate(classes):
        box = [np.array([[v]], dtype=np.uint16) for v in (1, 2, 30, 40)]
        annotations[0, i] = (*box, np.array([[cls]], dtype=np.uint8), f"{first + i:05d}.jpg")
    return annotations


def write_cars(root: Path) -> None:
    train_classes = [1 + (i * 5) % 3 for i in range(17)]
    test_classes = [3, 1, 2, 2, 1, 3]
    (root / "devkit").mkdir(parents=True)
    savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": car_annotations(train_classes, 1)})
    savemat(root / "cars_test_annos_withlabels.mat", {"annotations": car_annotations(test_classes, 1)})
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": np.array([CAR_NAMES], dtype=object)})
    write_images(root / "cars_train", [f"{i + 1:05d}.jpg" for i in range(len(train_classes))])
    write_images(root / "cars_test", [f"{i + 1:05d}.jpg" for i in range(len(test_classes))])


SUN_CLASSES = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bakery/shop", "/b/bedroom"]


def write_sun397(root: Path) -> None:
    training = [f"{SUN_CLASSES[(i * 3) % 4]}/sun_{i:04d}.jpg" for i in range(21)]
    testing = [f"{cls}/sun_{100 + n:04d}.jpg" for cls in SUN_CLASSES for n in range(2)]
    root.mkdir(parents=True)
    (root / "ClassName.txt").write_text("\n".join(SUN_CLASSES) + "\n")
    (root / "Training_01.txt").write_text("\n".join(training) + "\n")
    (root / "Testing_01.txt").write_text("\n".join(testing) + "\n")
    for line in training + testing:
        write_images(root / "SUN397" / os.path.dirname(line[1:]), [os.path.basename(line)])


UCF_ACTIONS = ["ApplyEyeMakeup", "BasketballDunk", "YoYo"]


def write_ucf101(root: Path) -> None:
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    # the official lists have CRLF line ends; trainlist lines carry the 1-based label, testlist lines do not
    (lists / "classInd.txt").write_bytes("".join(f"{i + 1} {a}\r\n" for i, a in enumerate(UCF_ACTIONS)).encode())
    train = [(a, f"v_{a}_g{g:02d}_c01.avi") for g in range(8, 14) for a in UCF_ACTIONS if not (a == "YoYo" and g > 12)]
    test = [(a, f"v_{a}_g01_c0{c}.avi") for a in UCF_ACTIONS for c in (1, 2)]
    (lists / "trainlist01.txt").write_bytes("".join(
        f"{a}/{v} {UCF_ACTIONS.index(a) + 1}\r\n" for a, v in train).encode())
    (lists / "testlist01.txt").write_bytes("".join(f"{a}/{v}\r\n" for a, v in test).encode())
    for action, video in train + test:
        renamed = "_".join(re.findall("[A-Z][^A-Z]*", action))
        write_images(root / "UCF-101-midframes" / renamed, [video.replace(".avi", ".jpg")])


DATASETS = {  # CoOp name: (folder, image dir, tree writer, CoOp's code, annotation files)
    "OxfordPets": ("oxford_pets", "images", write_pets, coop_pets,
                   ["annotations/trainval.txt", "annotations/test.txt"]),
    "OxfordFlowers": ("oxford_flowers", "jpg", write_flowers, coop_flowers, ["imagelabels.mat", "cat_to_name.json"]),
    "StanfordCars": ("stanford_cars", "", write_cars, coop_cars,
                     ["devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat", "devkit/cars_meta.mat"]),
    "SUN397": ("sun397", "SUN397", write_sun397, coop_sun397, ["ClassName.txt", "Training_01.txt", "Testing_01.txt"]),
    "UCF101": ("ucf101", "UCF-101-midframes", write_ucf101, coop_ucf101,
               ["ucfTrainTestlist/classInd.txt", "ucfTrainTestlist/trainlist01.txt",
                "ucfTrainTestlist/testlist01.txt"]),
}


def tree(tmp_path: Path, name: str) -> Path:
    folder, _, writer, _, _ = DATASETS[name]
    root = tmp_path / folder
    writer(root)
    return root


def listed_rows(listing):
    return list(listing.records.iter_rows())


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", list(DATASETS))
def test_generated_split_is_coops_fallback(tmp_path, name, seed):
    root = tree(tmp_path, name)
    listing = read_listing("split_zhou", root, generated_split=True, seed=seed)
    expected = coop_rows(DATASETS[name][3], root, seed)
    assert listed_rows(listing) == expected
    # Dassl's classnames: by sorted label, from the train list
    by_label = {label: classname for _, label, classname, split in expected if split == "train"}
    assert listing.classnames == tuple(by_label[label] for label in sorted(by_label))
    assert {split for *_, split in expected} == {"train", "val", "test"}
    assert listing.structure.generated_split
    (note,) = listing.notes
    assert f"split_zhou_{name}.json" in note and "NOT the authors' split" in note and f"random.seed({seed})" in note
    assert listing.image_root == root / DATASETS[name][1]
    # every listed image exists in the miniature tree, as CoOp's Datum asserts
    assert all((listing.image_root / path).is_file() for path, *_ in expected)


def test_seed_changes_the_split(tmp_path):
    root = tree(tmp_path, "OxfordPets")
    first = read_listing("split_zhou", root, generated_split=True, seed=1).records
    assert first.equals(read_listing("split_zhou", root, generated_split=True, seed=1).records)
    assert not first.equals(read_listing("split_zhou", root, generated_split=True, seed=3).records)


def test_class_names_as_coop_builds_them(tmp_path):
    names = {name: read_listing("split_zhou", tree(tmp_path, name), generated_split=True).classnames
             for name in DATASETS}
    assert names["OxfordPets"] == ("abyssinian", "american bulldog", "bengal", "yorkshire terrier")
    assert names["OxfordFlowers"] == ("pink primrose", "hard-leaved pocket orchid", "globe-flower")
    assert names["StanfordCars"] == ("2000 AM General Hummer SUV", "2012 Acura RL Sedan",
                                     "2012 Ram C/V Cargo Van Minivan")
    assert names["SUN397"] == ("abbey", "outdoor apartment building", "shop bakery", "bedroom")
    assert names["UCF101"] == ("Apply Eye Makeup", "Basketball Dunk", "Yo Yo")


@pytest.mark.parametrize(("name", "missing"), [(name, file) for name, spec in DATASETS.items() for file in spec[4]])
def test_missing_annotation_file_is_named(tmp_path, name, missing):
    root = tree(tmp_path, name)
    (root / missing).unlink()
    with pytest.raises(DatasetLayoutError) as caught:
        read_listing("split_zhou", root, generated_split=True)
    assert caught.value.where == str(root / missing)
    assert "annotation file not found" in caught.value.problem and f"split_zhou_{name}.json" in caught.value.problem


def test_split_file_is_still_read_first(tmp_path):
    root = tree(tmp_path, "OxfordPets")
    (root / "split_zhou_OxfordPets.json").write_text(json.dumps(
        {"train": [["Abyssinian_1.jpg", 0, "abyssinian"], ["Bengal_1.jpg", 1, "bengal"]], "val": [],
         "test": [["Abyssinian_2.jpg", 0, "abyssinian"], ["Bengal_2.jpg", 1, "bengal"]]}))
    listing = read_listing("split_zhou", root, generated_split=True)
    assert not listing.structure.generated_split and listing.records.height == 4


def test_class_too_small_for_the_val_share(tmp_path):
    root = tmp_path / "oxford_pets"
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "annotations" / "trainval.txt").write_text(
        "".join(f"Abyssinian_{n} 1 1 1\n" for n in range(5)) + "Bengal_1 2 1 3\nBengal_2 2 1 3\n")
    (root / "annotations" / "test.txt").write_text("Abyssinian_9 1 1 1\nBengal_9 2 1 3\n")
    with pytest.raises(DatasetLayoutError) as caught:
        read_listing("split_zhou", root, generated_split=True)
    assert caught.value.where == str(root / "annotations" / "trainval.txt")
    assert "label 1 ('bengal') has 2 training image(s)" in caught.value.problem


def test_malformed_lines_name_the_line(tmp_path):
    root = tree(tmp_path, "UCF101")
    (root / "ucfTrainTestlist" / "testlist01.txt").write_text("ApplyEyeMakeup/v_a.avi\nJuggling/v_b.avi\n")
    with pytest.raises(DatasetLayoutError) as caught:
        read_listing("split_zhou", root, generated_split=True)
    assert caught.value.where == f"{root / 'ucfTrainTestlist' / 'testlist01.txt'}:2"
    assert "'Juggling' is not in classInd.txt" in caught.value.problem
