"""A workspace whose folder name holds glob characters (`we'ird [x]{a,b} *?`): the warehouse reads its own files,
never a pattern that matches nothing, or a neighbour's files."""

from __future__ import annotations

import polars as pl
from evaluation_synthetic import make_per_class, make_predictions, make_run

from models.warehouse import MetricRow, PREDICTION_SCHEMA, workspace_warehouse_of
from models.warehouse import pending
from models.warehouse.records import metric_frame, per_class_frame, prediction_frame
from models.workspace import Workspace
from pipelines.cli import print_accuracy_table

FOLDER = "we'ird [x]{a,b} *?"
NEIGHBOUR = "we'ird x{a,b} ab"  # what the name matches read as a pattern


def test_record_query_and_results_in_a_folder_named_with_glob_characters(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMPTLAB_WAREHOUSE", raising=False)
    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(tmp_path / FOLDER / "workspace"))
    warehouse = workspace_warehouse_of(Workspace(tmp_path / FOLDER / "workspace"))
    # A neighbour's predictions of the same run id: a pattern read of the folder would count them too.
    neighbour = Workspace(tmp_path / NEIGHBOUR / "workspace").predictions_dir
    neighbour.mkdir(parents=True)
    prediction_frame(make_run("first"), make_predictions(7)).select(list(PREDICTION_SCHEMA)).write_parquet(
        neighbour / warehouse.prediction_file("first").name)

    assert warehouse.record_run(make_run("first"), [MetricRow("test", "top1_accuracy", 0.625)], make_per_class(),
                                make_predictions(4)).merged
    # A batch still pending (as while a reader holds the file): read back from its folder, and queried.
    second = make_run("second", seed=2)
    pending.write_batch(warehouse.pending_dir, second, metric_frame(second, [MetricRow("test", "top1_accuracy", 0.5)]),
                        per_class_frame(second, []), prediction_frame(second, make_predictions(3)))
    assert warehouse.query("SELECT run_id, count(*) FROM predictions GROUP BY ALL ORDER BY 1").rows() == [
        ("first", 4), ("second", 3)]
    lines: list[str] = []
    print_accuracy_table(log=lines.append)  # `promptlab results`
    assert "56.25" in "\n".join(lines)  # the mean of both seeds

    assert warehouse.merge_pending().merged == ("second",)
    assert warehouse.query("SELECT count(*) FROM predictions").item() == 7
    assert pl.read_parquet(warehouse.prediction_file("second"), glob=False).height == 3
