from __future__ import annotations

import shutil

import polars as pl
import pytest

from models.data.datasets import DatasetFormatError, read_dataset
from models.data.expectations import validate_dataset_index
from models.data.index import build_dataset_index

ALL_EXPECTATIONS = [
    "index_not_empty",
    "files_exist",
    "images_decode",
    "labels_in_range",
    "labels_match_classnames",
    "classes_in_every_split",
    "no_train_test_overlap",
    "no_near_duplicates_across_splits",
]


def _validate(source):
    index = build_dataset_index(read_dataset(source), source.image_dir)
    return validate_dataset_index(index, source.name)


def test_clean_dataset_passes_every_expectation(make_shapes_dataset, capsys):
    report = _validate(make_shapes_dataset())
    assert [outcome.name for outcome in report.outcomes] == ALL_EXPECTATIONS
    assert report.success, report.outcomes
    assert report.failed_names == []
    assert report.suite_name == "Shapes_dataset_index"
    assert "all 16 files exist" in report.outcome("files_exist").details
    # GX's tqdm progress bars are switched off
    assert "Calculating Metrics" not in capsys.readouterr().err


def _delete_file(source):
    (source.image_dir / "circle/train_2.png").unlink()


def _corrupt_file(source):
    (source.image_dir / "square/val_1.png").write_bytes(b"\x00garbage bytes, not a png")


def _copy_train_image_into_test(source):
    shutil.copyfile(source.image_dir / "circle/train_0.png", source.image_dir / "circle/test_1.png")


def _name_unknown_class(rows):
    rows["train"][5][2] = "hexagon"  # square/train_1.png claims label 1 is "hexagon"


def _drop_square_from_test(rows):
    rows["test"] = [row for row in rows["test"] if row[2] != "square"]


@pytest.mark.parametrize(
    ("edit_rows", "edit_files", "failing", "details_mention"),
    [
        (None, _delete_file, "files_exist", ["1 files missing", "circle/train_2.png (train)"]),
        (None, _corrupt_file, "images_decode", ["square/val_1.png (val)", "UnidentifiedImageError"]),
        (_name_unknown_class, None, "labels_match_classnames",
         ["(label 1, 'hexagon') vs (label 1, 'square')", "square/train_1.png"]),
        (_drop_square_from_test, None, "classes_in_every_split", ["label 1 'square' has no test images"]),
        # A byte copy is also a near-duplicate (distance 0): both checks name it.
        (None, _copy_train_image_into_test, ["no_train_test_overlap", "no_near_duplicates_across_splits"],
         ["circle/train_0.png (train) = circle/test_1.png (test)",
          "circle/train_0.png (train) ~ circle/test_1.png (test) distance 0.00"]),
    ],
)
def test_each_problem_fails_exactly_its_expectation(
    make_shapes_dataset, edit_rows, edit_files, failing, details_mention
):
    source = make_shapes_dataset(edit_rows)
    if edit_files is not None:
        edit_files(source)
    report = _validate(source)
    assert not report.success
    failing = failing if isinstance(failing, list) else [failing]
    assert report.failed_names == failing
    details = " | ".join(report.outcome(name).details for name in failing)
    for text in details_mention:
        assert text in details, details


def test_labels_out_of_range_and_label_with_two_names(make_shapes_dataset):
    def relabel(rows):
        rows["val"][0][1] = 7  # circle/val_0.png: label 7 but still named "circle"

    report = _validate(make_shapes_dataset(relabel))
    assert report.failed_names == ["labels_in_range", "labels_match_classnames", "classes_in_every_split"]
    assert "circle/val_0.png (val) label 7" in report.outcome("labels_in_range").details
    assert "(label 7, 'circle') vs (label 0, 'circle')" in report.outcome("labels_match_classnames").details
    assert "label 7 'circle' has no train images" in report.outcome("classes_in_every_split").details


def test_many_missing_files_are_previewed_with_a_count(make_shapes_dataset):
    source = make_shapes_dataset()
    for path in sorted(source.image_dir.rglob("*.png"))[:12]:
        path.unlink()
    details = _validate(source).outcome("files_exist").details
    assert details.startswith("12 files missing:")
    assert "(+2 more)" in details


def test_empty_index_fails_and_bad_columns_raise(make_shapes_dataset):
    source = make_shapes_dataset()
    index = build_dataset_index(read_dataset(source), source.image_dir)
    report = validate_dataset_index(index.clear(), "Empty")
    assert report.failed_names == ["index_not_empty"]
    with pytest.raises(DatasetFormatError, match="lacks columns \\['decodes'\\]"):
        validate_dataset_index(index.drop("decodes"), "Shapes")
    with pytest.raises(DatasetFormatError, match="label column must be integer"):
        validate_dataset_index(index.with_columns(pl.col("label").cast(pl.Float64)), "Shapes")


# --- the dataset's declared structure (models.data.layouts.DatasetStructure) relaxes what it legitimately has ---

def _index_without(source, splits):
    index = build_dataset_index(read_dataset(source), source.image_dir)
    return index.filter(~pl.col("split").is_in(splits))


def test_a_test_only_dataset_passes_coverage_only_when_declared(make_shapes_dataset):
    from models.data.layouts.listing import DatasetStructure

    index = _index_without(make_shapes_dataset(), ["train", "val"])
    plain = validate_dataset_index(index, "Shapes")
    assert plain.failed_names == ["classes_in_every_split"]
    declared = validate_dataset_index(index, "Shapes", structure=DatasetStructure(test_only=True))
    assert declared.success, declared.outcomes
    assert "relaxed: test-only dataset" in declared.outcome("classes_in_every_split").details
    # relaxed, not switched off: a class whose one image is not a test image still fails
    square_not_in_test = pl.concat([
        index.filter(pl.col("classname") != "square"),
        index.filter(pl.col("classname") == "square").head(1).with_columns(pl.lit("train").alias("split"))])
    report = validate_dataset_index(square_not_in_test, "Shapes", structure=DatasetStructure(test_only=True))
    assert "classes_in_every_split" in report.failed_names


def test_val_is_test_needs_train_and_test_only(make_shapes_dataset):
    from models.data.layouts.listing import DatasetStructure

    index = _index_without(make_shapes_dataset(), ["val"])
    assert validate_dataset_index(index, "Shapes").failed_names == ["classes_in_every_split"]
    report = validate_dataset_index(index, "Shapes", structure=DatasetStructure(val_is_test=True))
    assert report.success, report.outcomes
    assert "present in train, test" in report.outcome("classes_in_every_split").details


def test_duplicate_class_names_pass_only_when_declared(make_shapes_dataset):
    """CLIP's ImageNet names hold "missile" and "sunglasses" under two labels each; elsewhere one name under two
    labels is a mistake."""
    from models.data.layouts.listing import DatasetStructure

    index = build_dataset_index(read_dataset(make_shapes_dataset()), make_shapes_dataset().image_dir)
    renamed = index.with_columns(pl.lit("shape").alias("classname"))
    assert "labels_match_classnames" in validate_dataset_index(renamed, "Shapes").failed_names
    report = validate_dataset_index(renamed, "Shapes", structure=DatasetStructure(duplicate_classnames=("shape",)))
    assert report.success, report.outcomes
    assert "class names declared under two labels: ['shape']" in report.outcome("labels_match_classnames").details
    assert "labels within [0, 1]" in report.outcome("labels_in_range").details


def test_listed_but_not_inspected_rows_are_counted_not_failed(make_shapes_dataset):
    source = make_shapes_dataset()
    records = read_dataset(source)
    (source.image_dir / "circle/train_2.png").write_bytes(b"not an image")  # never read: no experiment reads it
    test_rows = records.filter(pl.col("split") != "train").get_column("relative_path").to_list()
    index = build_dataset_index(records, source.image_dir, inspect=test_rows)
    assert index.filter(~pl.col("inspected")).height == 8
    report = validate_dataset_index(index, "Shapes")
    assert report.success, report.outcomes
    assert "8 listed images not decoded or hashed" in report.outcome("images_decode").details
    # an inspected broken file still fails
    (source.image_dir / "square/val_1.png").write_bytes(b"not an image")
    index = build_dataset_index(records, source.image_dir, inspect=test_rows)
    assert validate_dataset_index(index, "Shapes").failed_names == ["images_decode"]
