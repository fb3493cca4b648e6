"""The multi-source views and the report's table on a small warehouse: per held-out domain, each configuration's
top-1 mean ± std over its current runs' seeds beside zero-shot's own evaluation there; in-domain runs, zero-shot on
other datasets and superseded runs stay out."""

import statistics
from dataclasses import replace

import pytest
from evaluation_synthetic import make_run, top1_metrics

from models.report import markdown_results
from models.warehouse import Warehouse

SOURCES = "Shapes+ShapesNoisy"


def multi_source_run(run_id, method, seed, top1, start_minute):
    run = replace(make_run(run_id, stage="multi_source", dataset="ShapesSketch", method=method, shots=16, seed=seed,
                           start_minute=start_minute),
                  source_dataset=SOURCES, partition_key=f"{method}-k16-s{seed}|ShapesSketch")
    return run, top1_metrics(top1)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi_source_view")
    warehouse = Warehouse(root / "warehouse" / "promptlab.duckdb", root / "warehouse" / "predictions")
    runs = [
        multi_source_run("spg-1-old", "spg", 1, 0.10, 0),  # superseded by the next run of its partition
        multi_source_run("spg-1", "spg", 1, 0.60, 1),
        multi_source_run("spg-2", "spg", 2, 0.70, 2),
        multi_source_run("coop-1", "coop", 1, 0.50, 3),
        # zero-shot on the held-out domain (the reference), on a dataset no split holds out, and an in-domain CoOp
        (make_run("zs-sketch", dataset="ShapesSketch", method="zero_shot", shots=0, seed=0, start_minute=4),
         top1_metrics(0.40)),
        (make_run("zs-digits", dataset="Digits", method="zero_shot", shots=0, seed=0, start_minute=5),
         top1_metrics(0.90)),
        (make_run("coop-sketch", dataset="ShapesSketch", method="coop", shots=16, seed=1, start_minute=6),
         top1_metrics(0.95)),
    ]
    for run, metrics in runs:
        warehouse.record_run(run, metrics)
    return warehouse


def test_the_view_shows_each_configuration_and_zero_shot_on_the_held_out_domain(warehouse):
    rows = warehouse.query("SELECT dataset, source_dataset, method, shots, is_reference, mean, std, n_seeds "
                           "FROM multi_source_results ORDER BY is_reference DESC, method").rows()
    assert [row[:5] for row in rows] == [("ShapesSketch", None, "zero_shot", 0, True),
                                         ("ShapesSketch", SOURCES, "coop", 16, False),
                                         ("ShapesSketch", SOURCES, "spg", 16, False)]
    spg = rows[2]
    assert spg[5] == pytest.approx(0.65) and spg[6] == pytest.approx(statistics.stdev([0.6, 0.7])) and spg[7] == 2
    assert rows[0][5:] == pytest.approx((0.40, 0.0, 1))


def test_the_report_tabulates_held_out_domains_with_the_reference_row_first(warehouse):
    text = markdown_results(warehouse)
    section = text[text.index("## Multi-source domain generalization"):]
    assert "| Configuration | ShapesSketch, from Shapes + ShapesNoisy | Seeds |" in section
    lines = [line for line in section.splitlines() if line.startswith("| ") and "±" in line]
    assert lines[0] == r"| zero\_shot | 40.00 ± 0.00 | 1 |"  # markdown escapes the underscore
    assert any(line.endswith(f"| 65.00 ± {100 * statistics.stdev([0.6, 0.7]):.2f} | 2 |") for line in lines)
