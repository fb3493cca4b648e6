"""FGVC-Aircraft (against CoOp's reader), DomainBed (against torchvision's ImageFolder and DomainBed's split), the
image_folder wrapper, and the refusals of misdeclared folders."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from layout_trees import write_images
from torchvision.datasets import ImageFolder

from models.data.datasets import read_image_folder
from models.data.layouts import LAYOUTS, DatasetLayoutError, read_listing, recognise_layout, refuse_misdeclared

VARIANTS = ["707-320", "A300B4", "F-16A/B"]


def expect_layout_error(call, *fragments: str) -> DatasetLayoutError:
    with pytest.raises(DatasetLayoutError) as caught:
        call()
    for fragment in fragments:
        assert fragment in str(caught.value), f"{fragment!r} not in: {caught.value}"
    return caught.value


# --- FGVC-Aircraft --------------------------------------------------------------------------------------------------

def coop_fgvc_read(dataset_dir):
    """FGVCAircraft.__init__ and read_data, as in CoOp (paths joined, labels from variants.txt order)."""
    classnames = []
    with open(os.path.join(dataset_dir, "variants.txt"), "r") as f:
        lines = f.readlines()
        for line in lines:
            classnames.append(line.strip())
    cname2lab = {c: i for i, c in enumerate(classnames)}

    def read_data(split_file):
        filepath = os.path.join(dataset_dir, split_file)
        items = []
        with open(filepath, "r") as f:
            lines = f.readlines()
            for line in lines:
                line = line.strip().split(" ")
                imname = line[0] + ".jpg"
                classname = " ".join(line[1:])
                impath = os.path.join(dataset_dir, "images", imname)
                label = cname2lab[classname]
                items.append((impath, label, classname))
        return items

    return {split: read_data(f"images_variant_{split}.txt") for split in ("train", "val", "test")}, classnames


def write_fgvc(root: Path, extra_line: str | None = None, split_with_extra: str = "train") -> Path:
    (root / "images").mkdir(parents=True)
    # variants.txt order is not sorted order: labels must follow the file
    (root / "variants.txt").write_text("".join(f"{variant}\n" for variant in reversed(VARIANTS)))
    image_id = 1000000
    for split in ("train", "val", "test"):
        lines = []
        for variant in VARIANTS:
            for _ in range(2):
                image_id += 1
                lines.append(f"{image_id} {variant}")
        write_images(root / "images", [f"{line.split(' ')[0]}.jpg" for line in lines])
        if extra_line is not None and split == split_with_extra:
            lines.append(extra_line)
        (root / f"images_variant_{split}.txt").write_text("".join(f"{line}\n" for line in lines))
    return root


def test_fgvc_labels_follow_variants_txt(tmp_path):
    root = write_fgvc(tmp_path / "fgvc_aircraft")
    reference, classnames = coop_fgvc_read(str(root))
    listing = read_listing("fgvc_aircraft", root)
    for split, items in reference.items():
        rows = listing.records.filter(listing.records["split"] == split).select("relative_path", "label", "classname")
        assert [(str(listing.image_root / path), label, name) for path, label, name in rows.iter_rows()] == items
    assert list(listing.classnames) == classnames == list(reversed(VARIANTS))
    assert recognise_layout(root) == "fgvc_aircraft"


def test_fgvc_unknown_variant_names_the_line(tmp_path):
    root = write_fgvc(tmp_path / "fgvc_aircraft", extra_line="1999999 Boeing 747")
    expect_layout_error(lambda: read_listing("fgvc_aircraft", root),
                        f"{root / 'images_variant_train.txt'}:7", "'Boeing 747' is not in variants.txt", "variant")


def test_fgvc_image_listed_twice(tmp_path):
    root = write_fgvc(tmp_path / "fgvc_aircraft", extra_line="1000001 707-320", split_with_extra="test")
    expect_layout_error(lambda: read_listing("fgvc_aircraft", root), f"{root / 'images_variant_test.txt'}:7",
                        "1000001 is listed twice", f"{root / 'images_variant_train.txt'}:1")


def test_fgvc_archive_folder_points_to_its_data_folder(tmp_path):
    archive = tmp_path / "fgvc-aircraft-2013b"
    write_fgvc(archive / "data")
    expect_layout_error(lambda: read_listing("fgvc_aircraft", archive), str(archive), "holds FGVC-Aircraft",
                        f"pass {archive / 'data'} as the root")
    # the reader alone (without read_listing's recognition) names the same fix
    expect_layout_error(lambda: LAYOUTS["fgvc_aircraft"](archive), str(archive / "variants.txt"), "not found",
                        f"pass {archive / 'data'} as the root")


@pytest.mark.parametrize("part", ["", "images"])
def test_image_folder_refuses_an_fgvc_folder(tmp_path, part):
    root = write_fgvc(tmp_path / "fgvc_aircraft")
    folder = root / part if part else root
    expect_layout_error(lambda: refuse_misdeclared("image_folder", folder), str(folder),
                        "layout 'fgvc_aircraft'", f"root {root}")


# --- DomainBed -------------------------------------------------------------------------------------------------------

DOMAINS = {"art_painting": 5, "cartoon": 7, "photo": 4, "sketch": 11}
CLASSES = ("dog", "elephant", "guitar_case")


def seed_hash(*args):
    """DomainBed misc.seed_hash."""
    args_str = str(args)
    return int(hashlib.md5(args_str.encode("utf-8")).hexdigest(), 16) % (2**31)


def split_dataset(dataset, n, seed=0):
    """DomainBed misc.split_dataset, returning (dataset, keys) pairs instead of _SplitDataset."""
    assert n <= len(dataset)
    keys = list(range(len(dataset)))
    np.random.RandomState(seed).shuffle(keys)
    keys_1 = keys[:n]
    keys_2 = keys[n:]
    return (dataset, keys_1), (dataset, keys_2)


def domainbed_reference(root, test_env_name, holdout_fraction, trial_seed):
    """MultipleEnvironmentImageFolder + train.py's splitting loop; rows (path relative to root, label, class)."""
    environments = sorted(f.name for f in os.scandir(root) if f.is_dir())
    dataset = [ImageFolder(os.path.join(root, environment)) for environment in environments]
    test_envs = [environments.index(test_env_name)]
    in_splits, out_splits = [], []
    for env_i, env in enumerate(dataset):
        out, in_ = split_dataset(env, int(len(env) * holdout_fraction), seed_hash(trial_seed, env_i))
        in_splits.append(in_)
        out_splits.append(out)

    def rows(split):
        env, keys = split
        return [(os.path.relpath(env.samples[key][0], root).replace(os.sep, "/"), env.samples[key][1],
                 env.classes[env.samples[key][1]].replace("_", " ")) for key in keys]

    train = [row for i, split in enumerate(in_splits) if i not in test_envs for row in rows(split)]
    val = [row for i, split in enumerate(out_splits) if i not in test_envs for row in rows(split)]
    test = [row for i in test_envs for row in rows(in_splits[i])]
    return {"train": train, "val": val, "test": test}


@pytest.fixture
def pacs(tmp_path) -> Path:
    root = tmp_path / "PACS"
    for domain, count in DOMAINS.items():
        for class_index, name in enumerate(CLASSES):
            images = [f"pic_{number}.{'PNG' if number % 3 == 0 else 'jpg'}" for number in range(count + class_index)]
            write_images(root / domain / name, images)
        (root / domain / "dog" / "notes.txt").write_text("not an image")  # ImageFolder skips it
        write_images(root / domain / "elephant" / "nested", ["inner_1.jpeg"])  # ImageFolder walks into it
    return root


@pytest.mark.parametrize("test_domain, holdout_fraction, trial_seed", [
    ("sketch", 0.2, 0), ("art_painting", 0.2, 1), ("photo", 0.3, 2),
])
def test_domainbed_split_is_domainbeds(pacs, test_domain, holdout_fraction, trial_seed):
    listing = read_listing("domainbed", pacs, test_domain=test_domain, holdout_fraction=holdout_fraction,
                           trial_seed=trial_seed)
    reference = domainbed_reference(str(pacs), test_domain, holdout_fraction, trial_seed)
    for split, rows in reference.items():
        got = listing.records.filter(listing.records["split"] == split).select("relative_path", "label", "classname")
        assert list(got.iter_rows()) == rows, split
    assert listing.classnames == ("dog", "elephant", "guitar case")
    assert listing.image_root == pacs
    assert not listing.structure.generated_split
    assert recognise_layout(pacs) == "domainbed"


def test_domainbed_unknown_test_domain_lists_the_domains(pacs):
    expect_layout_error(lambda: read_listing("domainbed", pacs, test_domain="painting"), str(pacs),
                        "'painting' is not a domain", "'art_painting', 'cartoon', 'photo', 'sketch'")


def test_domainbed_domains_with_different_classes(pacs):
    for image in (pacs / "photo" / "guitar_case").iterdir():
        image.unlink()
    (pacs / "photo" / "guitar_case").rmdir()
    expect_layout_error(lambda: read_listing("domainbed", pacs, test_domain="sketch"), str(pacs / "photo"),
                        "missing: guitar_case", "same class folders")


def test_domainbed_empty_class_folder(pacs):
    for image in (pacs / "cartoon" / "dog").iterdir():
        image.unlink()
    expect_layout_error(lambda: read_listing("domainbed", pacs, test_domain="sketch"),
                        str(pacs / "cartoon" / "dog"), "no image")


def test_domainbed_single_class(tmp_path):
    for domain in ("a", "b"):
        write_images(tmp_path / "set" / domain / "dog", ["1.jpg", "2.jpg"])
    expect_layout_error(lambda: read_listing("domainbed", tmp_path / "set", test_domain="a"), "one class")


def test_image_folder_refuses_a_domainbed_root_but_reads_one_domain(pacs):
    expect_layout_error(lambda: read_listing("image_folder", pacs, image_dir=""), "layout 'domainbed'")
    listing = read_listing("image_folder", pacs / "photo", image_dir="")
    assert listing.classnames == ("dog", "elephant", "guitar case")


# --- image_folder -----------------------------------------------------------------------------------------------------

def test_image_folder_wraps_read_image_folder(tmp_path):
    root = tmp_path / "flowers"
    for name, count in (("globe_flower", 6), ("PinkPrimrose", 8)):
        write_images(root / "images" / name, [f"{number}.png" for number in range(count)], format="PNG")
    assert recognise_layout(root) == "image_folder"
    listing = read_listing("image_folder", root, seed=3)
    assert listing.records.equals(read_image_folder(root / "images", 3))
    assert listing.classnames == ("Pink Primrose", "globe flower")
    assert listing.structure.generated_split and listing.notes
    assert listing.image_root == root / "images"


def test_image_folder_empty_class_folder(tmp_path):
    root = tmp_path / "flowers"
    write_images(root / "images" / "rose", ["1.png", "2.png", "3.png"])
    (root / "images" / "tulip").mkdir()
    expect_layout_error(lambda: read_listing("image_folder", root), str(root / "images" / "tulip"), "no image")


def test_image_folder_single_class(tmp_path):
    root = tmp_path / "flowers"
    write_images(root / "images" / "rose", ["1.png", "2.png", "3.png"])
    expect_layout_error(lambda: read_listing("image_folder", root), str(root / "images"), "one class")


def test_unknown_layout_and_missing_root(tmp_path):
    expect_layout_error(lambda: read_listing("coco", tmp_path), "unknown layout", "split_zhou")
    expect_layout_error(lambda: read_listing("imagenet", tmp_path / "nowhere"), "dataset root not found")
