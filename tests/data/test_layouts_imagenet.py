"""ImageNet and its shifted test sets (V2, Sketch, A, R): labels and names against re-implementations of CoOp's
readers, open_clip's names when classnames.txt is absent, and each known layout mistake."""

from __future__ import annotations

import os
from collections import Counter, OrderedDict
from pathlib import Path

import pytest
from layout_trees import clip_names, coop_like_names, wnid_list, write_classnames, write_imagenet, write_images

from models.data.layouts import DatasetLayoutError, read_listing, recognise_layout, refuse_misdeclared

V2_FOLDER = "imagenetv2-matched-frequency-format-val"


# --- CoOp's readers, as written in CoOp's datasets/imagenet*.py (paths, labels and raw names) ---------------------

def listdir_nohidden(path, sort=False):
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    if sort:
        items.sort()
    return items


def coop_read_classnames(text_file):
    classnames = OrderedDict()
    with open(text_file, "r") as f:
        lines = f.readlines()
        for line in lines:
            line = line.strip().split(" ")
            folder = line[0]
            classname = " ".join(line[1:])
            classnames[folder] = classname
    return classnames


def coop_imagenet_read_data(image_dir, classnames, split_dir):
    split_dir = os.path.join(image_dir, split_dir)
    folders = sorted(f.name for f in os.scandir(split_dir) if f.is_dir())
    items = []
    for label, folder in enumerate(folders):
        imnames = listdir_nohidden(os.path.join(split_dir, folder))
        classname = classnames[folder]
        for imname in imnames:
            impath = os.path.join(split_dir, folder, imname)
            items.append((impath, label, classname))
    return items


def coop_imagenet_v2_read_data(image_dir, classnames):
    folders = list(classnames.keys())
    items = []
    for label in range(1000):
        class_dir = os.path.join(image_dir, str(label))
        imnames = listdir_nohidden(class_dir)
        folder = folders[label]
        classname = classnames[folder]
        for imname in imnames:
            items.append((os.path.join(class_dir, imname), label, classname))
    return items


def coop_sorted_folders_read_data(image_dir, classnames, to_be_ignored=()):
    """ImageNetSketch.read_data, and ImageNetA/R's (with TO_BE_IGNORED = ["README.txt"])."""
    folders = listdir_nohidden(image_dir, sort=True)
    folders = [f for f in folders if f not in to_be_ignored]
    items = []
    for label, folder in enumerate(folders):
        imnames = listdir_nohidden(os.path.join(image_dir, folder))
        classname = classnames[folder]
        for imname in imnames:
            items.append((os.path.join(image_dir, folder, imname), label, classname))
    return items


def listing_items(listing, split="test"):
    """(absolute path, label, name as prompted) of a split, sorted: CoOp lists files in filesystem order."""
    rows = listing.records.filter(listing.records["split"] == split).select("relative_path", "label", "classname")
    return sorted((str(listing.image_root / path), label, name) for path, label, name in rows.iter_rows())


def prompted(items):
    """CoOp's trainers replace underscores by spaces before the prompt."""
    return sorted((path, label, name.replace("_", " ")) for path, label, name in items)


def expect_layout_error(call, *fragments: str) -> DatasetLayoutError:
    with pytest.raises(DatasetLayoutError) as caught:
        call()
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    assert caught.value.fix, message
    return caught.value


# --- the full-size miniature family (every folder, one image each) --------------------------------------------

@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("imagenet_family")
    wnids = wnid_list()
    write_imagenet(base / "imagenet", wnids)
    classnames_text = (base / "imagenet" / "classnames.txt").read_text()
    for label in range(1000):
        write_images(base / "imagenetv2" / V2_FOLDER / str(label), [f"{label:04d}abc.jpeg"])
    for wnid in wnids:
        write_images(base / "imagenet-sketch" / "images" / wnid, [f"sketch_{wnid}.JPEG"])
    for folder, subset, file_name in (("imagenet-adversarial", "imagenet-a", "imagenet_a_wnids.txt"),
                                      ("imagenet-rendition", "imagenet-r", "imagenet_r_wnids.txt")):
        for wnid in wnid_list(file_name):
            write_images(base / folder / subset / wnid, ["b.jpg", "a.jpg"])
        (base / folder / subset / "README.txt").write_text("readme")
    for folder in ("imagenetv2", "imagenet-sketch", "imagenet-adversarial", "imagenet-rendition"):
        (base / folder / "classnames.txt").write_text(classnames_text)
    # ImageNet without classnames.txt: the same images through a link (leading outside that dataset's folder, so
    # read with follow_symlinks=True, as a dataset laid out with links on purpose is).
    (base / "imagenet_no_names").mkdir()
    (base / "imagenet_no_names" / "images").symlink_to(base / "imagenet" / "images")
    return base


def test_imagenet_labels_and_names_match_coop(family):
    root = family / "imagenet"
    listing = read_listing("imagenet", root)
    classnames = coop_read_classnames(root / "classnames.txt")
    image_dir = str(root / "images")
    assert listing_items(listing, "train") == prompted(coop_imagenet_read_data(image_dir, classnames, "train"))
    # CoOp: test = the val folder, and no separate val rows
    assert listing_items(listing, "test") == prompted(coop_imagenet_read_data(image_dir, classnames, "val"))
    assert listing.records.filter(listing.records["split"] == "val").height == 0
    assert listing.structure.val_is_test and not listing.structure.test_only
    assert listing.classnames == coop_like_names()
    assert listing.classnames[744] == "projectile" and listing.classnames[836] == "sunglass"
    assert listing.structure.duplicate_classnames == ()
    assert listing.notes == ()
    assert listing.image_root == root / "images"
    assert listing.records.get_column("relative_path")[0].startswith("train/n01440764/")


def test_imagenet_without_classnames_uses_open_clip_names_with_a_note(family):
    listing = read_listing("imagenet", family / "imagenet_no_names", follow_symlinks=True)
    assert listing.classnames == clip_names()
    counts = Counter(clip_names())
    assert listing.structure.duplicate_classnames == tuple(name for name in dict.fromkeys(clip_names())
                                                           if counts[name] == 2)
    assert set(listing.structure.duplicate_classnames) == {"missile", "sunglasses"}
    (note,) = listing.notes
    for fragment in ("classnames.txt", "open_clip", "n04008634", "projectile", "missile", "n04355933", "sunglass"):
        assert fragment in note
    train = listing.records.filter(listing.records["split"] == "train")
    assert train.filter(train["label"] == 744).get_column("classname").to_list() == ["missile"]


def test_imagenet_v2_folder_number_is_the_label(family):
    root = family / "imagenetv2"
    listing = read_listing("imagenet_v2", root)
    classnames = coop_read_classnames(root / "classnames.txt")
    assert listing_items(listing) == prompted(coop_imagenet_v2_read_data(str(root / V2_FOLDER), classnames))
    assert listing.structure.test_only
    assert set(listing.records.get_column("split")) == {"test"}
    labels = dict(listing.records.select("relative_path", "label").iter_rows())
    assert labels["10/0010abc.jpeg"] == 10 and labels["100/0100abc.jpeg"] == 100  # never string-sorted
    assert listing.classnames == coop_like_names()


@pytest.mark.parametrize("layout, folder, subset, to_be_ignored", [
    ("imagenet_sketch", "imagenet-sketch", "images", ()),
    ("imagenet_a", "imagenet-adversarial", "imagenet-a", ("README.txt",)),
    ("imagenet_r", "imagenet-rendition", "imagenet-r", ("README.txt",)),
])
def test_sorted_wnid_test_sets_match_coop(family, layout, folder, subset, to_be_ignored):
    root = family / folder
    listing = read_listing(layout, root)
    classnames = coop_read_classnames(root / "classnames.txt")
    image_dir = str(root / subset)
    assert listing_items(listing) == prompted(coop_sorted_folders_read_data(image_dir, classnames, to_be_ignored))
    folders = [name for name in listdir_nohidden(image_dir, sort=True) if name not in to_be_ignored]
    assert listing.classnames == tuple(classnames[wnid] for wnid in folders)
    assert len(listing.classnames) == (1000 if layout == "imagenet_sketch" else 200)
    assert listing.structure.test_only
    assert listing.image_root == root / subset


def test_a_and_r_without_classnames_take_open_clip_names_by_wnid(family, tmp_path):
    root = tmp_path / "imagenet-rendition"
    root.mkdir()
    (root / "imagenet-r").symlink_to(family / "imagenet-rendition" / "imagenet-r")
    listing = read_listing("imagenet_r", root, follow_symlinks=True)  # the images are linked from the family's copy
    index_of = {wnid: index for index, wnid in enumerate(wnid_list())}
    assert listing.classnames == tuple(clip_names()[index_of[wnid]] for wnid in wnid_list("imagenet_r_wnids.txt"))
    assert "open_clip" in listing.notes[0]


def test_recognise_layout_of_each_root_and_of_imagenet_parts(family):
    assert recognise_layout(family / "imagenet") == "imagenet"
    assert recognise_layout(family / "imagenet" / "images") == "imagenet"
    assert recognise_layout(family / "imagenet" / "images" / "train") == "imagenet"
    assert recognise_layout(family / "imagenetv2") == "imagenet_v2"
    assert recognise_layout(family / "imagenet-sketch") == "imagenet_sketch"
    assert recognise_layout(family / "imagenet-adversarial") == "imagenet_a"
    assert recognise_layout(family / "imagenet-rendition") == "imagenet_r"


@pytest.mark.parametrize("part", ["images", "images/train"])
def test_image_folder_refuses_an_imagenet_tree(family, part):
    folder = family / "imagenet" / part
    expect_layout_error(lambda: read_listing("image_folder", folder, image_dir=""),
                        str(folder), "layout 'imagenet'", f"root {family / 'imagenet'}")
    expect_layout_error(lambda: refuse_misdeclared("image_folder", folder), "layout 'imagenet'")


def test_imagenet_declared_on_its_images_folder_names_the_root(family):
    expect_layout_error(lambda: read_listing("imagenet", family / "imagenet" / "images"),
                        f"pass {family / 'imagenet'} as the root")


# --- known mistakes, each on a small tree ------------------------------------------------------------------------

FIRST_THREE = wnid_list()[:3]


def small_imagenet(root: Path, wnids=FIRST_THREE, classnames=True) -> Path:
    write_imagenet(root, wnids, images_per_class=2, classnames=classnames)
    return root


def test_flat_val_folder_points_to_valprep(tmp_path):
    root = tmp_path / "imagenet"
    write_images(root / "images" / "train" / FIRST_THREE[0], ["x.JPEG"])
    write_images(root / "images" / "train" / FIRST_THREE[1], ["y.JPEG"])
    write_images(root / "images" / "val", ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"])
    expect_layout_error(lambda: read_listing("imagenet", root), str(root / "images" / "val"), "valprep.sh", "#60")


def test_partial_imagenet_is_refused_unless_allowed(tmp_path):
    root = small_imagenet(tmp_path / "imagenet")
    expect_layout_error(lambda: read_listing("imagenet", root), str(root / "images" / "train"), "3 of ImageNet's 1000",
                        "shift", "allow_partial=True")
    listing = read_listing("imagenet", root, allow_partial=True)
    classnames = coop_read_classnames(root / "classnames.txt")
    assert listing_items(listing, "train") == prompted(
        coop_imagenet_read_data(str(root / "images"), classnames, "train"))
    assert listing.classnames == coop_like_names()[:3]
    assert "partial copy" in listing.notes[0]


def test_empty_class_folder_is_refused(tmp_path):
    root = small_imagenet(tmp_path / "imagenet")
    empty = root / "images" / "val" / FIRST_THREE[1]
    for image in empty.iterdir():
        image.unlink()
    expect_layout_error(lambda: read_listing("imagenet", root, allow_partial=True), str(empty), "empty")


def test_classnames_file_missing_wnids_names_them(tmp_path):
    root = small_imagenet(tmp_path / "imagenet", classnames=False)
    write_classnames(root / "classnames.txt", [FIRST_THREE[0], FIRST_THREE[2]], ["tench", "great white shark"])
    expect_layout_error(lambda: read_listing("imagenet", root, allow_partial=True),
                        str(root / "classnames.txt"), "missing", FIRST_THREE[1], "CoOp's classnames.txt")


def test_classnames_file_extra_wnid_names_the_line(tmp_path):
    root = small_imagenet(tmp_path / "imagenet", classnames=False)
    write_classnames(root / "classnames.txt", [*FIRST_THREE, "n99999999"], ["a", "b", "c", "not imagenet"])
    expect_layout_error(lambda: read_listing("imagenet", root, allow_partial=True),
                        f"{root / 'classnames.txt'}:4", "extra wnid n99999999", "remove line 4")


def test_classnames_file_given_explicitly_must_exist(tmp_path):
    root = small_imagenet(tmp_path / "imagenet", classnames=False)
    expect_layout_error(lambda: read_listing("imagenet", root, allow_partial=True, classnames_file="classnames.txt"),
                        str(root / "classnames.txt"), "not found", "CoOp's classnames.txt")


def test_sketch_folder_not_renamed(tmp_path):
    root = tmp_path / "imagenet-sketch"
    for wnid in FIRST_THREE:
        write_images(root / "sketch" / wnid, ["1.JPEG"])
    expect_layout_error(lambda: read_listing("imagenet_sketch", root, allow_partial=True),
                        str(root / "sketch"), "rename", str(root / "images"))


def test_imagenet_v2_folder_outside_0_to_999(tmp_path):
    root = tmp_path / "imagenetv2"
    for name in ("0", "1", "1000"):
        write_images(root / V2_FOLDER / name, ["a.jpeg"])
    expect_layout_error(lambda: read_listing("imagenet_v2", root, allow_partial=True),
                        str(root / V2_FOLDER / "1000"), "0..999")


def test_imagenet_v2_classnames_out_of_order_names_the_line(tmp_path):
    root = tmp_path / "imagenetv2"
    for name in ("0", "1"):
        write_images(root / V2_FOLDER / name, ["a.jpeg"])
    wnids, names = list(wnid_list()), list(coop_like_names())
    wnids[0], wnids[1], names[0], names[1] = wnids[1], wnids[0], names[1], names[0]
    write_classnames(root / "classnames.txt", wnids, names)
    expect_layout_error(lambda: read_listing("imagenet_v2", root, allow_partial=True),
                        f"{root / 'classnames.txt'}:1", "label-th line", "sort")


def test_imagenet_a_folder_that_is_not_an_imagenet_wnid(tmp_path):
    root = tmp_path / "imagenet-adversarial"
    write_images(root / "imagenet-a" / wnid_list("imagenet_a_wnids.txt")[0], ["a.jpg"])
    write_images(root / "imagenet-a" / "n99999999", ["a.jpg"])
    expect_layout_error(lambda: read_listing("imagenet_a", root, allow_partial=True),
                        str(root / "imagenet-a" / "n99999999"), "not an ImageNet WordNet id", "remove")


def test_imagenet_r_folder_of_another_imagenet_class(tmp_path):
    root = tmp_path / "imagenet-rendition"
    not_in_r = next(wnid for wnid in wnid_list() if wnid not in wnid_list("imagenet_r_wnids.txt"))
    write_images(root / "imagenet-r" / wnid_list("imagenet_r_wnids.txt")[0], ["a.jpg"])
    write_images(root / "imagenet-r" / not_in_r, ["a.jpg"])
    expect_layout_error(lambda: read_listing("imagenet_r", root, allow_partial=True),
                        str(root / "imagenet-r" / not_in_r), "not one of ImageNet-R's 200")


def test_single_class_is_refused(tmp_path):
    root = tmp_path / "imagenet-adversarial"
    write_images(root / "imagenet-a" / wnid_list("imagenet_a_wnids.txt")[0], ["a.jpg"])
    expect_layout_error(lambda: read_listing("imagenet_a", root, allow_partial=True),
                        str(root / "imagenet-a"), "one class")


def test_wordnet_id_class_folders_beside_classnames_are_refused_as_image_folder(tmp_path):
    root = tmp_path / "subset"
    for wnid in FIRST_THREE:
        write_images(root / "train" / wnid, ["a.jpg", "b.jpg", "c.jpg"])
    write_classnames(root / "classnames.txt", FIRST_THREE, ["tench", "goldfish", "great white shark"])
    expect_layout_error(lambda: read_listing("image_folder", root, image_dir="train"),
                        str(root / "train"), "WordNet ids", str(root / "classnames.txt"), "imagenet_sketch")
