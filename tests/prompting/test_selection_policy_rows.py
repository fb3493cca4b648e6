"""Which labelled images an experiment's selection policy chooses on (models.experiments.training_sets): the few-shot
val subset, the dataset's whole val split, or none; never a test image."""

from types import SimpleNamespace

import polars as pl
import pytest

from models.catalog import ExperimentConfig
from models.experiments import ExperimentInputs
from models.experiments.training_sets import validation_rows


def _inputs(selection, method="coop", with_val=True):
    splits = ["train"] * 12 + (["val"] * 6 if with_val else []) + ["test"] * 6
    index = pl.DataFrame({
        "relative_path": [f"{split}/{i:02d}.png" for i, split in enumerate(splits)],
        "label": [i % 3 for i in range(len(splits))],
        "split": splits,
        "content_sha256": [f"{i:064x}" for i in range(len(splits))],
    })
    val = index.filter(pl.col("split") == "val")["relative_path"].to_list()[:3]
    fewshot = pl.DataFrame({"shots": [1] * (3 + len(val)), "seed": [1] * (3 + len(val)),
                            "subset": ["train"] * 3 + ["val"] * len(val),
                            "relative_path": index["relative_path"].to_list()[:3] + val})
    experiment = ExperimentConfig(key="x-k1-s1", method=method, shots=1, seed=1, selection=selection)
    inputs = ExperimentInputs(SimpleNamespace(name="Toy"), experiment, index, ["a", "b", "c"], None)
    return inputs, fewshot


@pytest.mark.parametrize("policy, expected", [("few_shot_val", 3), ("full_val", 6), ("last", 0)])
def test_each_policy_reads_its_val_rows_and_never_test(policy, expected):
    inputs, fewshot = _inputs(policy)
    rows = validation_rows(inputs, fewshot)
    assert rows.height == expected
    assert all(path.startswith("val/") for path in rows["relative_path"].to_list())


def test_the_methods_published_policy_applies_when_the_entry_sets_none():
    inputs, fewshot = _inputs(None, method="linear_probe")
    assert inputs.experiment.selection_policy == "few_shot_val" and validation_rows(inputs, fewshot).height == 3
    inputs, fewshot = _inputs(None, method="coop")
    assert inputs.experiment.selection_policy == "last" and validation_rows(inputs, fewshot).height == 0


def test_a_dataset_without_a_val_split_has_no_rows_to_select_on():
    """ImageNet: its val folder is its test set, so curation has no val rows; full_val must not reach test."""
    inputs, fewshot = _inputs("full_val", with_val=False)
    assert validation_rows(inputs, fewshot).height == 0
