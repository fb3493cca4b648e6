"""`promptlab data check`'s library: each dataset found / missing / unreadable, counts against the published ones,
and the message that names the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.catalog import load_catalog
from models.data.preflight import EMBEDDED, FOUND, MISSING, UNREADABLE, check_catalog, check_dataset, format_checks
from tests.catalog.catalog_editing import catalog_copy, edit  # noqa: F401 (fixture)


def _entry(catalog_dir: Path, monkeypatch, name: str):
    return load_catalog(suite="coop").dataset(name)


def _write_caltech(root: Path, names=("accordion", "airplane"), duplicate_name: bool = False) -> None:
    from PIL import Image

    split = {"train": [], "val": [], "test": []}
    for label, name in enumerate(names):
        for number, subset in enumerate(("train", "train", "val", "test"), start=1):
            relative = f"{name}/image_{number:04d}.jpg"
            (root / "101_ObjectCategories" / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), (label * 40, number * 30, 9)).save(root / "101_ObjectCategories" / relative)
            split[subset].append([relative, label, "airplane" if duplicate_name else name])
    (root / "split_zhou_Caltech101.json").write_text(json.dumps(split))


def test_unset_data_variable_is_one_message_for_every_dataset(monkeypatch):
    monkeypatch.delenv("PROMPTLAB_DATA", raising=False)
    checks = check_catalog(load_catalog(suite="coop"))
    assert {check.status for check in checks} == {MISSING}
    assert all(check.errors == [checks[0].errors[0]] for check in checks)
    assert "$PROMPTLAB_DATA is not set" in checks[0].errors[0]
    text = format_checks(checks)
    assert text.count("is not set") == 1 and "15 datasets (ImageNet, Caltech101" in text


def test_found_dataset_counts_against_published_and_warns_on_a_difference(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTLAB_DATA", str(tmp_path))
    _write_caltech(tmp_path / "caltech-101")
    check = check_dataset(load_catalog(suite="coop").dataset("Caltech101"))
    assert check.status == FOUND and not check.has_problem
    assert check.counts == {"classes": 2, "train": 4, "val": 2, "test": 2}
    assert any("train: 4 found, 4128 published" in warning for warning in check.warnings)
    assert "4*" in format_checks([check])  # the table marks counts that differ


def test_a_missing_folder_names_a_misnamed_sibling(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTLAB_DATA", str(tmp_path))
    (tmp_path / "Caltech-101").mkdir()
    check = check_dataset(load_catalog(suite="coop").dataset("Caltech101"))
    assert check.status == MISSING
    assert "holds 'Caltech-101': rename it to 'caltech-101'" in check.errors[0]


def test_an_unreadable_folder_says_which_layout_it_looks_like(tmp_path, monkeypatch):
    """FGVC Aircraft's text files where a split file dataset was declared."""
    monkeypatch.setenv("PROMPTLAB_DATA", str(tmp_path))
    root = tmp_path / "caltech-101"
    root.mkdir()
    (root / "variants.txt").write_text("707-320\n")
    (root / "images_variant_train.txt").write_text("1 707-320\n")
    check = check_dataset(load_catalog(suite="coop").dataset("Caltech101"))
    assert check.status == UNREADABLE and check.has_problem
    assert "fgvc_aircraft" in check.errors[0]


def test_class_names_under_two_labels_are_an_error_unless_the_layout_declares_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTLAB_DATA", str(tmp_path))
    _write_caltech(tmp_path / "caltech-101", duplicate_name=True)
    check = check_dataset(load_catalog(suite="coop").dataset("Caltech101"))
    if check.status == UNREADABLE:  # the reader itself refused the file: also a problem, naming it
        assert "airplane" in check.errors[0]
    else:
        assert any("listed under two or more labels: ['airplane']" in error for error in check.errors)
    assert check.has_problem


def test_embedded_datasets_are_generated_not_checked():
    checks = check_catalog(load_catalog(), ["Shapes"])
    assert checks[0].status == EMBEDDED and not checks[0].has_problem


def test_a_symlink_leading_outside_the_dataset_is_reported_with_the_readers_message(tmp_path, monkeypatch,
                                                                                     catalog_copy):
    """An image linked from outside the dataset folder: unreadable, with the message read_listing refuses it with
    (the link and its target); a datasets.yaml entry with `follow_symlinks: true` reads it."""
    from models.data.curation import dataset_listing
    from models.data.layouts import DatasetLayoutError

    monkeypatch.setenv("PROMPTLAB_DATA", str(tmp_path / "data"))
    root = tmp_path / "data" / "caltech-101"
    _write_caltech(root)
    image = root / "101_ObjectCategories" / "accordion" / "image_0001.jpg"
    outside = tmp_path / "elsewhere.jpg"
    image.rename(outside)
    image.symlink_to(outside)
    entry = load_catalog(catalog_copy, suite="coop").dataset("Caltech101")
    with pytest.raises(DatasetLayoutError) as refused:
        dataset_listing(entry, root)
    check = check_dataset(entry)
    assert check.status == UNREADABLE and check.errors == [" ".join(str(refused.value).split())]
    assert f"{image}: symlink to {outside}" in check.errors[0]
    edit(catalog_copy / "suites" / "coop" / "datasets.yaml",
         lambda content: next(d for d in content["datasets"] if d["name"] == "Caltech101").update(follow_symlinks=True))
    followed = check_dataset(load_catalog(catalog_copy, suite="coop").dataset("Caltech101"))
    assert followed.status == FOUND and not followed.has_problem
