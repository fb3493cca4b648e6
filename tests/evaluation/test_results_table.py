"""`promptlab results`' table (models/evaluation/results_table.py): configurations in words, mean ± std over seeds
with their number, base / new / HM for base-to-new, and the csv / json / markdown forms, from the warehouse."""

from __future__ import annotations

import csv
import io
import json

import polars as pl
import pytest

from models.evaluation.results_table import describe_configuration, format_results, results_rows


def _frame(rows):
    return pl.DataFrame(rows, schema={"dataset": pl.String, "backbone": pl.String, "method": pl.String,
                                      "shots": pl.Int32, "options": pl.String, "split": pl.String,
                                      "mean": pl.Float64, "std": pl.Float64, "n_seeds": pl.Int64}, orient="row")


B2N = json.dumps({"settings_hash": "aaaa1111", "protocol": "base_to_new"})
PLAIN = json.dumps({"settings_hash": "aaaa1111"})
SSL_GRIP = json.dumps({"settings_hash": "aaaa1111", "setting": "ssl", "pseudolabels": {"strategy": "grip"}})
RESULTS = _frame([
    ("Shapes", "tiny-clip", "zero_shot", 0, "{}", "test", 0.80, 0.0, 1),
    ("Shapes", "tiny-clip", "zero_shot", 0, "{}", "base", 0.90, 0.0, 1),
    ("Shapes", "tiny-clip", "zero_shot", 0, "{}", "new", 0.70, 0.0, 1),
    ("Shapes", "tiny-clip", "coop", 16, PLAIN, "test", 0.85, 0.01, 3),
    ("Shapes", "tiny-clip", "coop", 16, B2N, "test", 0.50, 0.02, 3),  # not a base-to-new figure: left out
    ("Shapes", "tiny-clip", "coop", 16, B2N, "base", 0.95, 0.01, 3),
    ("Shapes", "tiny-clip", "coop", 16, B2N, "new", 0.60, 0.03, 3),
    ("Shapes", "tiny-clip", "coop", 0, SSL_GRIP, "test", 0.75, 0.02, 2),
])


def test_configurations_are_named_in_words():
    assert describe_configuration("coop", PLAIN) == "coop"
    assert describe_configuration("coop", B2N) == "coop, base-to-new"
    assert describe_configuration("coop", SSL_GRIP) == "coop, SSL, GRIP pseudolabels"
    assert describe_configuration("coop", {"variant": "csc"}) == "coop (csc)"
    assert describe_configuration("coop", {"augmentation": {"strength": 0.4}}) == "coop, diffusion augmentation"


def test_rows_keep_each_protocol_s_splits_and_add_the_harmonic_mean():
    rows = results_rows(RESULTS)
    b2n = {row["split"]: row for row in rows.filter(pl.col("configuration") == "coop, base-to-new").to_dicts()}
    assert set(b2n) == {"base", "new", "hm"}
    assert b2n["hm"]["mean"] == pytest.approx(2 * 95 * 60 / (95 + 60))
    assert b2n["base"]["std"] == pytest.approx(1.0) and b2n["hm"]["seeds"] == 3
    zero = rows.filter(pl.col("method") == "zero_shot")
    assert sorted(zero["split"]) == ["base", "hm", "new", "test"]
    assert rows["configuration"].to_list()[0] == "zero_shot"  # the reference comes first


def test_two_configurations_that_read_the_same_are_told_apart_by_their_settings_hash():
    other = json.dumps({"settings_hash": "bbbb2222"})
    rows = results_rows(_frame([("Shapes", "tiny-clip", "coop", 16, PLAIN, "test", 0.8, 0.0, 1),
                                ("Shapes", "tiny-clip", "coop", 16, other, "test", 0.7, 0.0, 1)]))
    assert sorted(rows["configuration"]) == ["coop [aaaa1111]", "coop [bbbb2222]"]


def test_text_markdown_csv_and_json():
    rows = results_rows(RESULTS)
    text = format_results(rows, "text")
    assert "shape: (" not in text and "str" not in text.split()  # not a raw Polars frame
    line = next(line for line in text.splitlines() if "base-to-new" in line)
    assert "95.00 ± 1.00" in line and "60.00 ± 3.00" in line and "73.55" in line and line.rstrip().endswith("3")
    assert "85.00 ± 1.00" in text
    markdown = format_results(rows, "markdown").splitlines()
    assert markdown[0].startswith("| dataset | configuration | shots | test top-1 \\(%\\)")
    assert len({line.count("|") for line in markdown}) == 1
    parsed = list(csv.DictReader(io.StringIO(format_results(rows, "csv"))))
    assert len(parsed) == rows.height and parsed[0].keys() >= {"dataset", "configuration", "split", "mean", "std"}
    assert json.loads(format_results(rows, "json")) == rows.to_dicts()
    with pytest.raises(ValueError, match="unknown format"):
        format_results(rows, "xml")


def test_the_command_prints_the_table_from_the_warehouse(tmp_path, monkeypatch, capsys):
    from pipelines import cli
    from pipelines.warehouse_commands import workspace_warehouse
    from evaluation_synthetic import make_run

    from models.warehouse import MetricRow

    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(tmp_path / "workspace"))
    warehouse = workspace_warehouse()
    for seed, value in ((1, 0.5), (2, 0.75)):
        warehouse.record_run(make_run(f"coop-{seed}", seed=seed), [MetricRow("test", "top1_accuracy", value)])
    capsys.readouterr()
    assert cli.main(["results"]) == 0
    printed = capsys.readouterr().out
    assert "62.50 ± 17.68" in printed and "shape:" not in printed
    assert cli.main(["results", "--format", "json"]) == 0
    (row,) = [row for row in json.loads(capsys.readouterr().out) if row["split"] == "test"]
    assert row["seeds"] == 2 and row["mean"] == pytest.approx(62.5)
