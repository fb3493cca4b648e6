"""A dataset index becomes current only when its blocking checks pass: a re-curation that fails them leaves the
promoted index.parquet as it was, and every stage that reads the index refuses, naming the failed check and the
validation record. Runs curation of the micro world's Shapes in a workspace of its own (no backbone is needed:
the refusal comes before any model is loaded)."""

import json
import re
import shutil

import dagster as dg
import polars as pl
import pytest

from models.data.validated_index import IndexNotValidatedError, read_validated_index, record_validation, stage_index
from models.workspace import Workspace
from pipelines.definitions import defs
from pipelines.partitions import multi_partition_key


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(tmp_path / "workspace"))  # PromptLabResource() reads it per call
    return Workspace(tmp_path / "workspace")


def _curate(instance, dataset="Shapes"):
    return defs.resolve_job_def("curation_job").execute_in_process(instance=instance, partition_key=dataset,
                                                                    raise_on_error=False)


def _failure_text(result) -> str:
    (failure,) = result.get_step_failure_events()
    error = failure.step_failure_data.error
    return error.message + "".join(cause.message for cause in [error.cause] if cause)


def test_a_recuration_with_train_test_overlap_is_never_current(workspace):
    instance = dg.DagsterInstance.ephemeral()
    assert _curate(instance).success
    index_path = workspace.index_path("Shapes")
    valid_bytes = index_path.read_bytes()
    assert json.loads(workspace.index_validation_path("Shapes").read_text())["status"] == "passed"
    assert read_validated_index(workspace, "Shapes").height > 0

    # the hostile re-curation: a test image becomes a copy of a training image
    index = pl.read_parquet(index_path)
    train = index.filter(pl.col("split") == "train")["relative_path"][0]
    test = index.filter(pl.col("split") == "test")["relative_path"][0]
    images = workspace.embedded_dataset_dir("Shapes") / "images"
    shutil.copyfile(images / train, images / test)
    failed = _curate(instance)
    assert not failed.success
    outcomes = {e.check_name: e.passed for e in failed.get_asset_check_evaluations()}
    assert outcomes["no_train_test_overlap"] is False
    assert index_path.read_bytes() == valid_bytes  # the valid index stays on disk, untouched
    record = json.loads(workspace.index_validation_path("Shapes").read_text())
    assert record["status"] == "failed" and test in record["failed_checks"]["no_train_test_overlap"]

    # the weekly re-evaluation refuses before loading anything, naming the check; no warehouse row is written
    reevaluation = defs.resolve_job_def("reevaluation_job").execute_in_process(
        instance=instance, partition_key=multi_partition_key("Shapes", "zeroshot"), raise_on_error=False)
    assert not reevaluation.success
    message = _failure_text(reevaluation)
    assert "no_train_test_overlap" in message and str(workspace.index_validation_path("Shapes")) in message
    assert not workspace.warehouse_path.parent.exists()  # no database, no pending batch
    with pytest.raises(IndexNotValidatedError, match="no_train_test_overlap"):
        read_validated_index(workspace, "Shapes")

    # the data fixed and curated again: promoted, readable
    shutil.rmtree(workspace.embedded_dataset_dir("Shapes"))
    assert _curate(instance).success
    assert read_validated_index(workspace, "Shapes")["relative_path"].to_list() == index["relative_path"].to_list()


def test_readers_refuse_an_index_never_validated_or_changed_after_validation(workspace):
    index = pl.DataFrame({"relative_path": ["a/0.png"], "label": [0], "classname": ["a"], "split": ["train"]})
    with pytest.raises(IndexNotValidatedError, match="Shapes is not curated"):
        read_validated_index(workspace, "Shapes")
    stage_index(workspace, "Shapes", index)  # built, not yet checked: nothing is promoted
    assert not workspace.index_path("Shapes").exists()
    with pytest.raises(IndexNotValidatedError, match="has not been validated yet"):
        read_validated_index(workspace, "Shapes")
    assert record_validation(workspace, "Shapes", ["index_not_empty"], {}) == workspace.index_path("Shapes")
    assert read_validated_index(workspace, "Shapes").height == 1
    # the checks run alone (no staged index) validate the promoted one again; failing, it is refused from then on
    assert record_validation(workspace, "Shapes", [], {"index_not_empty": "0 rows"}) is None
    rejected = re.escape(str(workspace.index_path("Shapes")))
    with pytest.raises(IndexNotValidatedError, match=f"index_not_empty.*rejected index {rejected}"):
        read_validated_index(workspace, "Shapes")
    record_validation(workspace, "Shapes", ["index_not_empty"], {})
    # an index written over the promoted one by hand is not the one that passed
    index.vstack(index).write_parquet(workspace.index_path("Shapes"))
    with pytest.raises(IndexNotValidatedError, match="is not the index that passed validation"):
        read_validated_index(workspace, "Shapes")
