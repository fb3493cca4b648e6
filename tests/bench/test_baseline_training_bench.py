"""bench/baseline_training.py on a tiny run: every method trains through its experiment's own path (views of its
recipe encoded once and shared, val images of its policy), and each figure is recorded with its ratio to CoOp's."""

import json

import pytest

from bench.baseline_training import main, split_train_val
from models.warehouse import workspace_warehouse_of
from models.workspace import Workspace


def test_train_and_val_positions_take_the_first_shots_per_class_then_the_rest():
    train, val = split_train_val([0, 1, 0, 1, 0, 1, 0, 1], shots=2)
    assert train == [0, 1, 2, 3] and val == [4, 5, 6, 7]


def test_a_tiny_run_records_each_method_beside_coop(tmp_path, capsys):
    output = tmp_path / "baselines.json"
    assert main(["--methods", "coop", "tip_adapter", "tip_adapter_f", "--shots", "1", "--repeats", "1",
                 "--dataset", "Shapes", "--workspace", str(tmp_path / "workspace"), "--output", str(output),
                 "--num-threads", "2"]) == 0
    result = json.loads(output.read_text())
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == {"coop", "tip_adapter", "tip_adapter_f"}
    coop = rows["coop"]["seconds"]
    for method, row in rows.items():
        assert row["seconds"] > 0 and row["details"]["relative_to_coop"] == pytest.approx(row["seconds"] / coop,
                                                                                          rel=1e-3)
    tip, tip_f = rows["tip_adapter"]["details"], rows["tip_adapter_f"]["details"]
    assert tip["training_views"] == [20, 10] and tip["selection"] == "full_val"  # 20 classes x 1 shot, 10 passes
    assert tip_f["view_encoding_seconds"] < tip["view_encoding_seconds"]  # the same recipe: read from the cache
    assert rows["coop"]["details"]["epochs"] == 50  # CoOp's published 1-shot schedule
    assert "tip_adapter_f" in capsys.readouterr().out
    recorded = workspace_warehouse_of(Workspace(tmp_path / "workspace")).query(
        "SELECT method, variant FROM latest_benchmark WHERE benchmark = 'baseline-training' ORDER BY method")
    assert recorded["method"].to_list() == ["coop", "tip_adapter", "tip_adapter_f"]


def test_with_epochs_the_published_schedule_is_extrapolated_from_the_epochs_run(tmp_path, capsys):
    output = tmp_path / "epochs.json"
    assert main(["--methods", "coop", "ramt", "--shots", "1", "--repeats", "1", "--epochs", "2", "--dataset",
                 "Shapes", "--workspace", str(tmp_path / "workspace"), "--output", str(output), "--num-threads", "2",
                 "--no-record"]) == 0
    rows = {row["method"]: row for row in json.loads(output.read_text())["rows"]}
    coop, ramt = rows["coop"], rows["ramt"]
    assert coop["details"]["epochs"] == 2 and coop["details"]["published_epochs"] == 50  # CoOp's 1-shot schedule
    assert ramt["details"]["epochs"] == 2 and ramt["details"]["published_epochs"] == 30  # R-AMT's 30 epochs
    for row in (coop, ramt):
        details = row["details"]
        assert details["extrapolated"] and row["seconds"] == pytest.approx(
            details["measured_seconds"] / 2 * details["published_epochs"], rel=1e-3)
    assert ramt["details"]["relative_to_coop"] == pytest.approx(ramt["seconds"] / coop["seconds"], rel=1e-3)
    assert "50 epochs extrapolated from 2" in capsys.readouterr().out
