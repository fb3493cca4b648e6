"""CoOp's split-file layout: reading split_zhou_<Name>.json, Dassl's fallback split (against a copy of Dassl's
DTD.read_and_split_data), the per-dataset constants, and each known mistake."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from layout_trees import write_images, write_split_file

from models.data.layouts import DatasetLayoutError, read_listing, recognise_layout

# Caltech-101's quirks: two ignored folders, capitalised folders renamed, ASCII sort puts capitals first.
CALTECH_FOLDERS = {"BACKGROUND_Google": 5, "Faces": 5, "Faces_easy": 6, "Leopards": 7, "Motorbikes": 9,
                   "accordion": 4, "airplanes": 10, "water_lilly": 6}
CALTECH_IGNORED = ["BACKGROUND_Google", "Faces_easy"]
CALTECH_NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


# --- Dassl/CoOp, as written there (Datum replaced by a tuple) -------------------------------------------------------

def listdir_nohidden(path, sort=False):
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    if sort:
        items.sort()
    return items


def dassl_read_and_split_data(image_dir, p_trn=0.5, p_val=0.2, ignored=[], new_cnames=None, sort_files=False):
    """DTD.read_and_split_data; ``sort_files`` sorts each class's files before the shuffle (our default order)."""
    categories = listdir_nohidden(image_dir)
    categories = [c for c in categories if c not in ignored]
    categories.sort()

    def _collate(ims, y, c):
        return [(im, y, c) for im in ims]

    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = os.path.join(image_dir, category)
        images = listdir_nohidden(category_dir, sort=sort_files)
        images = [os.path.join(category_dir, im) for im in images]
        random.shuffle(images)
        n_total = len(images)
        n_train = round(n_total * p_trn)
        n_val = round(n_total * p_val)
        n_test = n_total - n_train - n_val
        assert n_train > 0 and n_val > 0 and n_test > 0
        if new_cnames is not None and category in new_cnames:
            category = new_cnames[category]
        train.extend(_collate(images[:n_train], label, category))
        val.extend(_collate(images[n_train : n_train + n_val], label, category))
        test.extend(_collate(images[n_train + n_val :], label, category))
    return train, val, test


def coop_save_split(train, val, test, filepath, path_prefix):
    def _extract(items):
        out = []
        for impath, label, classname in items:
            impath = impath.replace(path_prefix, "")
            if impath.startswith("/"):
                impath = impath[1:]
            out.append((impath, label, classname))
        return out

    write_split_file(Path(filepath), {"train": _extract(train), "val": _extract(val), "test": _extract(test)})


def dassl_lab2cname(train):
    """DatasetBase.get_lab2cname over train_x, then classnames by sorted label."""
    mapping = {label: classname for _, label, classname in train}
    return [mapping[label] for label in sorted(mapping)]


def seeded_reference(seed, *args, **kwargs):
    state = random.getstate()
    random.seed(seed)
    try:
        return dassl_read_and_split_data(*args, **kwargs)
    finally:
        random.setstate(state)


def rows_by_split(listing):
    return {split: [(path, label, name) for path, label, name, _ in listing.records.filter(
        listing.records["split"] == split).iter_rows()] for split in ("train", "val", "test")}


def relative(items, image_dir):
    return [(os.path.relpath(path, image_dir).replace(os.sep, "/"), label, name.replace("_", " "))
            for path, label, name in items]


def expect_layout_error(call, *fragments: str) -> DatasetLayoutError:
    with pytest.raises(DatasetLayoutError) as caught:
        call()
    for fragment in fragments:
        assert fragment in str(caught.value), f"{fragment!r} not in: {caught.value}"
    return caught.value


@pytest.fixture
def caltech(tmp_path) -> Path:
    root = tmp_path / "caltech-101"
    for folder, count in CALTECH_FOLDERS.items():
        write_images(root / "101_ObjectCategories" / folder, [f"image_{number:04d}.jpg" for number in range(count)])
    return root


@pytest.mark.parametrize("file_order", ["filesystem", "sorted"])
def test_generated_split_is_dassls_rule(caltech, file_order):
    image_dir = str(caltech / "101_ObjectCategories")
    train, val, test = seeded_reference(2, image_dir, ignored=CALTECH_IGNORED, new_cnames=CALTECH_NEW_CNAMES,
                                        sort_files=(file_order == "sorted"))
    listing = read_listing("split_zhou", caltech, generated_split=True, seed=2, file_order=file_order)
    assert rows_by_split(listing) == {"train": relative(train, image_dir), "val": relative(val, image_dir),
                                      "test": relative(test, image_dir)}
    assert list(listing.classnames) == [name.replace("_", " ") for name in dassl_lab2cname(train)]
    assert listing.classnames[:5] == ("face", "leopard", "motorbike", "accordion", "airplane")
    assert listing.structure.generated_split
    (note,) = listing.notes
    assert "split_zhou_Caltech101.json" in note and "NOT the authors' split" in note and "random.seed(2)" in note
    assert listing.image_root == caltech / "101_ObjectCategories"


def test_generated_split_changes_with_the_seed(caltech):
    first = read_listing("split_zhou", caltech, generated_split=True, seed=1).records
    assert not first.equals(read_listing("split_zhou", caltech, generated_split=True, seed=3).records)
    assert first.equals(read_listing("split_zhou", caltech, generated_split=True, seed=1).records)


def test_split_file_rows_are_read_as_written(caltech):
    image_dir = str(caltech / "101_ObjectCategories")
    train, val, test = seeded_reference(1, image_dir, ignored=CALTECH_IGNORED, new_cnames=CALTECH_NEW_CNAMES)
    coop_save_split(train, val, test, caltech / "split_zhou_Caltech101.json", image_dir)
    assert recognise_layout(caltech) == "split_zhou"
    listing = read_listing("split_zhou", caltech)
    saved = json.loads((caltech / "split_zhou_Caltech101.json").read_text())
    assert rows_by_split(listing) == {split: [(path, label, name.replace("_", " ")) for path, label, name in rows]
                                      for split, rows in saved.items()}
    assert list(listing.classnames) == [name.replace("_", " ") for name in dassl_lab2cname(train)]
    assert not listing.structure.generated_split and listing.notes == ()
    # a split file that is present is read even when generation is allowed, as Dassl does
    assert read_listing("split_zhou", caltech, generated_split=True).records.equals(listing.records)


def test_eurosat_constants_follow_the_folder_name(tmp_path):
    root = tmp_path / "eurosat"
    for folder in ("AnnualCrop", "HerbaceousVegetation", "SeaLake"):
        write_images(root / "2750" / folder, [f"{folder}_{number}.jpg" for number in range(1, 6)])
    listing = read_listing("split_zhou", root, generated_split=True)
    assert listing.classnames == ("Annual Crop Land", "Herbaceous Vegetation Land", "Sea or Lake")
    assert listing.records.get_column("relative_path")[0].startswith("AnnualCrop/AnnualCrop_")


def test_stanford_cars_paths_are_relative_to_the_dataset_folder(tmp_path):
    root = tmp_path / "stanford_cars"
    write_images(root / "cars_train", ["00001.jpg", "00002.jpg"])
    write_images(root / "cars_test", ["00001.jpg", "00002.jpg"])
    write_split_file(root / "split_zhou_StanfordCars.json", {
        "train": [("cars_train/00001.jpg", 0, "2012 Audi S4 Sedan"),
                  ("cars_train/00002.jpg", 1, "2000 AM General Hummer SUV")],
        "val": [],
        "test": [("cars_test/00001.jpg", 0, "2012 Audi S4 Sedan"),
                 ("cars_test/00002.jpg", 1, "2000 AM General Hummer SUV")],
    })
    listing = read_listing("split_zhou", root)
    assert listing.image_root == root
    assert listing.classnames == ("2012 Audi S4 Sedan", "2000 AM General Hummer SUV")


# --- known mistakes ------------------------------------------------------------------------------------------------

def test_missing_split_file_names_the_file_and_where_it_comes_from(tmp_path):
    root = tmp_path / "dtd"
    for folder in ("banded", "blotchy"):
        write_images(root / "images" / folder, [f"{folder}_{number}.jpg" for number in range(5)])
    split_file = root / "split_zhou_DescribableTextures.json"
    error = expect_layout_error(lambda: read_listing("split_zhou", root), str(split_file),
                                "not found", "Google Drive", "CoOp's DATASETS.md", "generated_split=True")
    assert "NOT the paper's split" in error.fix


def test_eurosat_rgb_folder_must_be_renamed_2750(tmp_path):
    root = tmp_path / "eurosat"
    write_images(root / "EuroSAT_RGB" / "Forest", ["Forest_1.jpg"])
    write_split_file(root / "split_zhou_EuroSAT.json", {"train": [], "val": [], "test": []})
    expect_layout_error(lambda: read_listing("split_zhou", root), str(root / "EuroSAT_RGB"), "rename",
                        str(root / "2750"))


def small_split(root: Path, edit) -> Path:
    write_images(root / "images" / "cat", ["1.jpg", "2.jpg", "3.jpg"])
    write_images(root / "images" / "dog", ["1.jpg", "2.jpg", "3.jpg"])
    split = {
        "train": [["cat/1.jpg", 0, "cat"], ["dog/1.jpg", 1, "dog"]],
        "val": [["cat/2.jpg", 0, "cat"], ["dog/2.jpg", 1, "dog"]],
        "test": [["cat/3.jpg", 0, "cat"], ["dog/3.jpg", 1, "dog"]],
    }
    edit(split)
    write_split_file(root / "split_zhou_Pets.json", split)
    return root


def test_image_listed_twice_in_the_split_file(tmp_path):
    root = small_split(tmp_path / "pets", lambda split: split["test"].append(["cat/1.jpg", 0, "cat"]))
    expect_layout_error(lambda: read_listing("split_zhou", root), str(root / "split_zhou_Pets.json"),
                        "'cat/1.jpg' is listed twice", "train[0]", "test[2]", "remove the repeated rows")


def test_class_in_train_but_not_in_test(tmp_path):
    root = small_split(tmp_path / "pets", lambda split: split["test"].pop())
    expect_layout_error(lambda: read_listing("split_zhou", root), str(root / "split_zhou_Pets.json"),
                        "present in train but not in test", "1 'dog'", "re-download")


def test_split_file_with_one_class(tmp_path):
    def keep_cat(split):
        for rows in split.values():
            rows[:] = [row for row in rows if row[1] == 0]
    root = small_split(tmp_path / "pets", keep_cat)
    expect_layout_error(lambda: read_listing("split_zhou", root), str(root / "split_zhou_Pets.json"), "one class")


def test_empty_class_folder_in_a_generated_split(tmp_path):
    root = tmp_path / "dtd"
    write_images(root / "images" / "banded", [f"{number}.jpg" for number in range(5)])
    (root / "images" / "blotchy").mkdir()
    expect_layout_error(lambda: read_listing("split_zhou", root, generated_split=True),
                        str(root / "images" / "blotchy"), "empty")


def test_class_too_small_for_dassls_rule(tmp_path):
    root = tmp_path / "dtd"
    write_images(root / "images" / "banded", [f"{number}.jpg" for number in range(5)])
    write_images(root / "images" / "blotchy", ["1.jpg", "2.jpg", "3.jpg"])
    expect_layout_error(lambda: read_listing("split_zhou", root, generated_split=True),
                        str(root / "images" / "blotchy"), "3 image(s) give 2 train / 1 val / 0 test", "at least 4")


def test_generation_needs_the_annotation_files_where_coops_fallback_reads_them(tmp_path):
    root = tmp_path / "oxford_pets"
    write_images(root / "images", ["Abyssinian_1.jpg"])
    expect_layout_error(lambda: read_listing("split_zhou", root, generated_split=True),
                        str(root / "annotations" / "trainval.txt"), "annotation file not found",
                        "split_zhou_OxfordPets.json", "Google Drive")


def test_unextracted_archive_is_named(tmp_path):
    root = tmp_path / "caltech-101"
    root.mkdir()
    (root / "101_ObjectCategories.tar.gz").write_bytes(b"")
    expect_layout_error(lambda: read_listing("split_zhou", root), str(root / "101_ObjectCategories"),
                        "extract 101_ObjectCategories.tar.gz")


def test_repeated_names_are_not_declared_legitimate_outside_imagenet(tmp_path):
    def rename_dog(split):
        for rows in split.values():
            for row in rows:
                row[2] = "cat"
    listing = read_listing("split_zhou", small_split(tmp_path / "pets", rename_dog))
    assert listing.classnames == ("cat", "cat")
    assert listing.structure.duplicate_classnames == ()  # a defect for the checks to report, not a reference list
