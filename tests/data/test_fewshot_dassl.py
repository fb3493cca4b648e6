"""Dassl's few-shot draw (models/data/fewshot.py, sample_few_shot_dassl) against a re-implementation of the reference
code in this file, written as Dassl.pytorch c61a1b5 (base_dataset.py) and CoOp ff61507 (oxford_pets.py, imagenet.py,
train.py) write it; and the base/new split against CoOp's subsample_classes applied after the few-shot draw."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
import pytest

from models.data.class_splits import split_base_new
from models.data.datasets import read_coop_split, read_dataset
from models.data.fewshot import (FewShotSamplingError, all_few_shot_subsets, sample_few_shot,
                                 sample_few_shot_dassl)
from models.data.index import build_dataset_index

SHOTS = (1, 2, 4, 8, 16)
SEEDS = (1, 2, 3)


# ------------------------------------------------------------------------ the reference, as Dassl and CoOp write it
class Datum(NamedTuple):
    impath: str
    label: int
    classname: str


def split_dataset_by_label(data_source):
    output = defaultdict(list)

    for item in data_source:
        output[item.label].append(item)

    return output


def generate_fewshot_dataset(*data_sources, num_shots=-1, repeat=False):
    if num_shots < 1:
        if len(data_sources) == 1:
            return data_sources[0]
        return data_sources

    output = []

    for data_source in data_sources:
        tracker = split_dataset_by_label(data_source)
        dataset = []

        for label, items in tracker.items():
            if len(items) >= num_shots:
                sampled_items = random.sample(items, num_shots)
            else:
                if repeat:
                    sampled_items = random.choices(items, k=num_shots)
                else:
                    sampled_items = items
            dataset.extend(sampled_items)

        output.append(dataset)

    if len(output) == 1:
        return output[0]

    return output


def read_split(filepath):
    def _convert(items):
        return [Datum(impath=impath, label=int(label), classname=classname) for impath, label, classname in items]

    split = json.loads(Path(filepath).read_text())
    return _convert(split["train"]), _convert(split["val"]), _convert(split["test"])


def subsample_classes(*args, subsample="all"):
    assert subsample in ["all", "base", "new"]

    if subsample == "all":
        return args

    dataset = args[0]
    labels = set()
    for item in dataset:
        labels.add(item.label)
    labels = list(labels)
    labels.sort()
    n = len(labels)
    # Divide classes into two halves
    m = math.ceil(n / 2)

    if subsample == "base":
        selected = labels[:m]  # take the first half
    else:
        selected = labels[m:]  # take the second half
    relabeler = {y: y_new for y_new, y in enumerate(selected)}

    output = []
    for dataset in args:
        dataset_new = []
        for item in dataset:
            if item.label not in selected:
                continue
            item_new = Datum(impath=item.impath, label=relabeler[item.label], classname=item.classname)
            dataset_new.append(item_new)
        output.append(dataset_new)

    return output


@pytest.fixture
def restore_global_random():
    state, numpy_state = random.getstate(), np.random.get_state()
    yield
    random.setstate(state)
    np.random.set_state(numpy_state)


def reference_fewshot(split_file: Path, num_shots: int, seed: int, imagenet: bool = False):
    """train.py's set_random_seed, then the dataset constructor's few-shot branch (OxfordPets; ImageNet: train only)."""
    random.seed(seed)
    np.random.seed(seed)
    train, val, test = read_split(split_file)
    train = generate_fewshot_dataset(train, num_shots=num_shots)
    if imagenet:
        return train, [], test
    val = generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
    return train, val, test


# ------------------------------------------------------------------------------------------------ fixtures
def write_uneven_split_file(directory: Path, class_count: int = 7, seed: int = 0) -> Path:
    """A split_zhou file with uneven classes (train 16-40 images, val 4-12, test 3) whose rows interleave the
    classes in a shuffled order, so that first-appearance order differs from label order."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list[list]] = {}
    for split, (low, high) in {"train": (16, 41), "val": (4, 13), "test": (3, 4)}.items():
        split_rows = [[f"class{label}/{split}_{number:03d}.jpg", label, f"class{label}"]
                      for label in range(class_count) for number in range(int(rng.integers(low, high)))]
        rows[split] = [split_rows[i] for i in rng.permutation(len(split_rows))]
    (directory / "images").mkdir(exist_ok=True)
    path = directory / "split_zhou_Uneven.json"
    path.write_text(json.dumps(rows, indent=4))
    return path


def as_rows(items: list[Datum], subset: str) -> list[tuple[str, int, str, str]]:
    return [(item.impath, item.label, item.classname, subset) for item in items]


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("class_count", [3, 7])
def test_draws_the_images_dassl_draws_for_every_shots_and_seed(tmp_path, restore_global_random, class_count):
    split_file = write_uneven_split_file(tmp_path, class_count)
    records = read_coop_split(split_file, tmp_path / "images")
    for shots in SHOTS:
        for seed in SEEDS:
            train, val, _ = reference_fewshot(split_file, shots, seed)
            drawn = sample_few_shot_dassl(records, shots, seed)
            # Same images in the same order (the order of Dassl's pickled list).
            assert drawn.rows() == as_rows(train, "train") + as_rows(val, "val"), (shots, seed)


def test_imagenet_draws_train_only_and_val_is_test(tmp_path, restore_global_random):
    split_file = write_uneven_split_file(tmp_path)
    records = read_coop_split(split_file, tmp_path / "images")
    for shots in (1, 16):
        for seed in SEEDS:
            train, _, _ = reference_fewshot(split_file, shots, seed, imagenet=True)
            assert sample_few_shot_dassl(records, shots, seed, val_is_test=True).rows() == as_rows(train, "train")


def test_the_global_random_generator_is_left_alone(tmp_path, restore_global_random):
    records = read_coop_split(write_uneven_split_file(tmp_path), tmp_path / "images")
    random.seed(99)
    expected = random.random()
    random.seed(99)
    sample_few_shot_dassl(records, 4, 1)
    assert random.random() == expected


def test_draws_differ_from_the_default_sampler(tmp_path):
    records = read_coop_split(write_uneven_split_file(tmp_path), tmp_path / "images")
    for shots in SHOTS:
        for seed in SEEDS:
            dassl = set(sample_few_shot_dassl(records, shots, seed)["relative_path"])
            default = set(sample_few_shot(records, shots, seed)["relative_path"])
            assert len(dassl) == len(default) and dassl != default, (shots, seed)


def test_the_draw_follows_the_split_file_order(tmp_path, make_shapes_dataset):
    records = read_coop_split(write_uneven_split_file(tmp_path), tmp_path / "images")
    drawn = sample_few_shot_dassl(records, 4, 1)
    assert not drawn.equals(sample_few_shot_dassl(records.sort("relative_path"), 4, 1))
    # The index keeps the records' order, so drawing from it or from the records is the same.
    source = make_shapes_dataset()
    shapes = read_dataset(source)
    assert sample_few_shot_dassl(build_dataset_index(shapes, source.image_dir), 2, 3).drop("content_sha256").equals(
        sample_few_shot_dassl(shapes, 2, 3))


def test_a_short_class_is_refused_saying_what_dassl_would_have_done(tmp_path):
    records = read_coop_split(write_uneven_split_file(tmp_path), tmp_path / "images")
    fewest = records.filter(pl.col("split") == "train").group_by("label").len().sort("len", "label").row(0)
    label, count = fewest
    with pytest.raises(FewShotSamplingError, match=(
            rf"class {label} \['class{label}'\]: {count} train images, {count + 1} needed for {count + 1}-shot "
            rf"sampling; Dassl would have taken all {count} without drawing")):
        sample_few_shot_dassl(records, count + 1, 1)
    no_val = records.filter((pl.col("split") != "val") | (pl.col("label") != 2))
    with pytest.raises(FewShotSamplingError, match=r"class 2 \['class2'\]: 0 val images, 1 needed for 1-shot "
                                                   r"sampling; Dassl would have given it no image"):
        sample_few_shot_dassl(no_val, 1, 1)
    assert sample_few_shot_dassl(no_val, 1, 1, val_is_test=True)["subset"].unique().to_list() == ["train"]


def test_all_subsets_take_the_sampler_as_a_parameter(tmp_path):
    records = read_coop_split(write_uneven_split_file(tmp_path), tmp_path / "images").with_columns(
        pl.col("relative_path").alias("content_sha256"))
    stacked = all_few_shot_subsets(records, shots_list=(2, 8), seeds=(1, 3), sampling="dassl")
    assert stacked.columns == ["shots", "seed", "relative_path", "label", "classname", "subset", "content_sha256"]
    one = stacked.filter((pl.col("shots") == 8) & (pl.col("seed") == 3)).drop("shots", "seed")
    assert one.equals(sample_few_shot_dassl(records, 8, 3))
    default = all_few_shot_subsets(records, shots_list=(2, 8), seeds=(1, 3))
    assert default.equals(all_few_shot_subsets(records, shots_list=(2, 8), seeds=(1, 3), sampling="per_class"))
    assert not default.equals(stacked)
    imagenet = all_few_shot_subsets(records, shots_list=(2,), seeds=(1,), sampling="dassl", val_is_test=True)
    assert imagenet["subset"].unique().to_list() == ["train"]
    # where val is test, neither sampler draws val images
    per_class = all_few_shot_subsets(records, shots_list=(2,), seeds=(1,), sampling="per_class", val_is_test=True)
    assert per_class["subset"].unique().to_list() == ["train"]
    assert per_class.height == imagenet.height
    # a test-only dataset: no subsets, the same columns
    assert all_few_shot_subsets(records, shots_list=(), seeds=(1,)).columns == stacked.columns
    with pytest.raises(ValueError, match="sampling must be one of"):
        all_few_shot_subsets(records, sampling="coop")  # type: ignore[arg-type]


@pytest.mark.parametrize("class_count", [2, 3, 7, 10, 37])
def test_base_new_equals_subsample_classes_after_the_few_shot_draw(tmp_path, restore_global_random, class_count):
    split_file = write_uneven_split_file(tmp_path, class_count, seed=class_count)
    records = read_coop_split(split_file, tmp_path / "images")
    classnames = [f"class{label}" for label in range(class_count)]
    split = split_base_new(classnames)
    for shots, seed in ((1, 1), (4, 2), (16, 3)):
        train, val, test = reference_fewshot(split_file, shots, seed)
        drawn = sample_few_shot_dassl(records, shots, seed)
        test_rows = records.filter(pl.col("split") == "test").rename({"split": "subset"})
        for group in ("base", "new"):
            reference = subsample_classes(train, val, test, subsample=group)
            ours = [split.restrict(frame, group) for frame in (drawn.filter(pl.col("subset") == "train"),
                                                                drawn.filter(pl.col("subset") == "val"), test_rows)]
            for subset, items, frame in zip(("train", "val", "test"), reference, ours):
                assert frame.rows() == as_rows(items, subset), (group, subset, shots, seed)
        # The reference takes its labels from the (few-shot) train set: every class is in it, so ceil(n/2) base.
        assert len(split.base_labels) == math.ceil(class_count / 2)
