"""The limited-label settings (SSL, UL, TRZSL): who is labelled, who is in the pool, and what is refused."""

import polars as pl
import pytest

from models.data.learning_settings import (
    LABELLED_TRAIN, LABELLED_VAL, UNLABELLED, learning_setting_split, seen_classes)

CLASSES = [f"class{label}" for label in range(10)]


def training_rows(per_class: int = 12, classes: int = 10) -> pl.DataFrame:
    return pl.DataFrame({"relative_path": [f"c{label}/train_{i:03d}.png" for label in range(classes)
                                           for i in range(per_class)],
                         "label": [label for label in range(classes) for _ in range(per_class)]})


def test_ssl_labels_two_images_per_class_split_80_20_and_pools_the_rest():
    split = learning_setting_split(training_rows(), CLASSES, "ssl", seed=1)
    labelled = split.rows.filter(pl.col("role") != UNLABELLED)
    assert labelled.group_by("label").len()["len"].to_list() == [2] * 10
    # per class one labelled train and one labelled val image: no class is left without a training label
    assert split.role(LABELLED_TRAIN).group_by("label").len()["len"].to_list() == [1] * 10
    assert split.role(LABELLED_VAL).height == 10
    assert split.pool.height == 120 - 20
    assert set(split.pool["relative_path"]).isdisjoint(labelled["relative_path"])  # labelled never pooled
    assert split.rows.height == 120 and split.rows["relative_path"].is_unique().all()


def test_ssl_labels_depend_on_the_seed_and_repeat_for_the_same_seed():
    first = learning_setting_split(training_rows(), CLASSES, "ssl", seed=1).rows
    again = learning_setting_split(training_rows(), CLASSES, "ssl", seed=1).rows
    other = learning_setting_split(training_rows(), CLASSES, "ssl", seed=2).rows
    assert first.equals(again) and not first.equals(other)


def test_ul_pools_every_training_image():
    split = learning_setting_split(training_rows(), CLASSES, "ul", seed=1)
    assert split.pool.height == 120 and split.rows.filter(pl.col("role") != UNLABELLED).height == 0


def test_trzsl_labels_the_seen_classes_and_pools_the_unseen_ones():
    split = learning_setting_split(training_rows(), CLASSES, "trzsl", seed=1, split_seed=500)
    assert len(split.seen_labels) == int(0.62 * 10) == 6
    assert split.seen_labels == seen_classes(10, 500) != seen_classes(10, 0)
    labelled = split.rows.filter(pl.col("role") != UNLABELLED)
    assert set(labelled["label"]) == set(split.seen_labels) and labelled.height == 6 * 12
    assert set(split.pool["label"]) == set(range(10)) - set(split.seen_labels)
    train = split.role(LABELLED_TRAIN).group_by("label").len()["len"].to_list()
    assert train == [round(0.8 * 12)] * 6  # 80/20 within each seen class


@pytest.mark.parametrize("change, setting, message", [
    (lambda rows: rows.filter(~((pl.col("label") == 3) & (pl.col("relative_path") != "c3/train_000.png"))), "ssl",
     r"ssl: class 'class3' \(label 3\) has 1 training image\(s\), fewer than the 2 labels"),
    (lambda rows: rows, "semi", r"unknown learning setting 'semi'; known: \['ssl', 'ul', 'trzsl'\]"),
    # only classes 0 and 1 have training images
    (lambda rows: rows.head(20).with_columns(label=pl.Series([0, 1] * 10)), "ssl",
     r"ssl: class 'class2' \(label 2\) has 0 training image"),
])
def test_bad_settings_are_refused_naming_the_class(change, setting, message):
    rows = change(training_rows())
    with pytest.raises(ValueError, match=message):
        learning_setting_split(rows, CLASSES, setting, seed=1)


def test_an_empty_pool_is_refused():
    with pytest.raises(ValueError, match=r"ssl: the unlabelled pool is empty \(20 training images, all labelled\)"):
        learning_setting_split(training_rows(per_class=2), CLASSES, "ssl", seed=1)
