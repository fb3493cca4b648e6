"""Symlinks in a dataset folder: an image reached through a link that leads outside the dataset's root (a linked
image, class folder or image folder) is refused by every layout, naming the link and its target, unless the dataset
says `follow_symlinks` (then the listing is the one the same files give in place). Links that stay inside the root,
and a dataset root that is itself a link, are fine. Before: the outside file was listed, indexed and trained on."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from layout_trees import wnid_list, write_imagenet, write_images, write_split_file

from models.data.layouts import DatasetLayoutError, read_listing


def _image_folder(root: Path) -> tuple[dict, Path, str]:
    for name in ("cat", "dog"):
        write_images(root / "images" / name, [f"{name}_{number}.jpg" for number in range(10)])
    return {"image_dir": "images"}, root / "images", "cat"


def _split_zhou(root: Path) -> tuple[dict, Path, str]:
    split = {split: [] for split in ("train", "val", "test")}
    for label, name in enumerate(("cat", "dog")):
        names = [f"{name}_{number}.jpg" for number in range(4)]
        write_images(root / "images" / name, names)
        for subset, image in zip(("train", "train", "val", "test"), names):
            split[subset].append((f"{name}/{image}", label, name))
    write_split_file(root / "split_zhou_Pets.json", split)
    return {"dataset": "Pets", "image_dir": "images", "split_file": "split_zhou_Pets.json"}, root / "images", "cat"


def _imagenet(root: Path) -> tuple[dict, Path, str]:
    wnids = wnid_list()[:3]
    write_imagenet(root, wnids, images_per_class=2)
    return {"allow_partial": True}, root / "images" / "train", wnids[0]


def _domainbed(root: Path) -> tuple[dict, Path, str]:
    for domain in ("photo", "sketch"):
        for name in ("dog", "guitar"):
            write_images(root / domain / name, [f"{domain}_{number}.jpg" for number in range(6)])
    return {"test_domain": "sketch"}, root / "photo", "dog"


LAYOUTS = {"image_folder": _image_folder, "split_zhou": _split_zhou, "imagenet": _imagenet, "domainbed": _domainbed}


def _link_outside(tmp_path: Path, image_folder: Path, class_name: str, what: str) -> tuple[Path, Path]:
    """Move an image, a class folder or the image folder out of the dataset and link it back: (link, target)."""
    link = {"image": next(iter(sorted((image_folder / class_name).iterdir()))),
            "class folder": image_folder / class_name, "image folder": image_folder}[what]
    target = tmp_path / "elsewhere" / link.name
    target.parent.mkdir()
    shutil.move(link, target)
    os.symlink(target, link)
    return link, target


@pytest.mark.parametrize("what", ["image", "class folder", "image folder"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_link_leading_outside_the_root_is_refused_naming_link_and_target(tmp_path, layout, what):
    root = tmp_path / "dataset"
    options, image_folder, class_name = LAYOUTS[layout](root)
    in_place = read_listing(layout, root, **options)
    link, target = _link_outside(tmp_path, image_folder, class_name, what)
    with pytest.raises(DatasetLayoutError) as refused:
        read_listing(layout, root, **options)
    assert refused.value.where == str(link)
    assert f"symlink to {target}, outside the dataset root {root}" in refused.value.problem
    assert "follow_symlinks: true" in refused.value.fix
    followed = read_listing(layout, root, follow_symlinks=True, **options)
    assert followed.records.equals(in_place.records) and followed.classnames == in_place.classnames


def test_links_inside_the_root_and_a_linked_root_are_read(tmp_path):
    real_root = tmp_path / "store" / "dataset"
    options, image_folder, _ = _image_folder(real_root)
    in_place = read_listing("image_folder", real_root, **options)
    first = sorted((image_folder / "cat").iterdir())[0]
    kept = real_root / "kept" / first.name  # the image moved elsewhere inside the root, linked back (relative link)
    kept.parent.mkdir()
    shutil.move(first, kept)
    os.symlink(os.path.relpath(kept, first.parent), first)
    shutil.move(image_folder / "dog", real_root / "dog_store")  # a class folder linked from inside the root
    os.symlink(real_root / "dog_store", image_folder / "dog")
    linked_root = tmp_path / "dataset"  # $PROMPTLAB_DATA/<name> may itself be a link to another disk
    os.symlink(real_root, linked_root)
    for root in (real_root, linked_root):
        listing = read_listing("image_folder", root, **options)
        assert listing.records.equals(in_place.records)
