"""The report's limited-label section on a warehouse of known runs: Menghini et al.'s table (method x strategy against
SSL / UL / TRZSL), the pattern verdicts against twice the seed spread, and the pseudolabel-accuracy-per-round figure
with its table."""

from __future__ import annotations

import re
import statistics
from dataclasses import replace

import pytest
from evaluation_synthetic import make_run
from report_numbers import numbers_before, numbers_by_section
from test_protocol_report import section, table_rows

from models.report import build_report
from models.warehouse import MetricRow, Warehouse

DATASETS = ("Shapes", "Digits")
SEEDS = (1, 2)
# (strategy, setting) -> test top-1 (TRZSL: the seen/unseen harmonic mean) before the per-seed/per-dataset offsets
SCORES = {("fpl", "ul"): 0.50, ("ifpl", "ul"): 0.60, ("grip", "ul"): 0.605,
          ("none", "ssl"): 0.55, ("grip", "ssl"): 0.70, ("grip", "trzsl"): 0.45}
ZERO_SHOT = 0.52


def score(strategy: str, setting: str, dataset_index: int, seed: int) -> float:
    return SCORES[(strategy, setting)] + 0.02 * dataset_index + 0.01 * seed


def round_accuracy(round_index: int, seed: int) -> float:
    return 0.60 + 0.02 * round_index + 0.01 * seed


def fill_limited_label_warehouse(warehouse: Warehouse) -> Warehouse:
    """Zero-shot and CoOp in every learning setting x strategy on two datasets, two seeds, with per-round pseudolabel
    accuracies for GRIP in SSL, and one few-shot FPL run (no setting)."""
    minute = 0
    for dataset_index, dataset in enumerate(DATASETS):
        warehouse.record_run(make_run(f"{dataset}-zs", dataset=dataset, method="zero_shot", shots=0,
                                      options={}, start_minute=minute),
                             [MetricRow("test", "top1_accuracy", ZERO_SHOT + 0.02 * dataset_index)])
        for (strategy, setting) in SCORES:
            for seed in SEEDS:
                minute += 1
                options = {"settings_hash": "0a1b2c3d", "setting": setting}
                if strategy != "none":
                    options["pseudolabels"] = {"strategy": strategy}
                key = f"coop-{setting}-s{seed}" + ("" if strategy == "none" else f"-{strategy}")
                run = replace(make_run(f"{dataset}-{key}", dataset=dataset, method="coop", shots=0, seed=seed,
                                       options=options, start_minute=minute),
                              experiment_key=key, partition_key=f"{dataset}|{key}")
                value = score(strategy, setting, dataset_index, seed)
                metrics = ([MetricRow("seen_unseen", "harmonic_mean", value), MetricRow("seen", "top1_accuracy", 0.9),
                            MetricRow("unseen", "top1_accuracy", 0.3)] if setting == "trzsl"
                           else [MetricRow("test", "top1_accuracy", value)])
                if (strategy, setting) == ("grip", "ssl"):
                    metrics += [MetricRow(f"round_{r:02d}", "pseudolabel_accuracy", round_accuracy(r, seed))
                                for r in range(3)]
                    metrics += [MetricRow(f"round_{r:02d}", "num_pseudolabels", 10.0 * (r + 1)) for r in range(3)]
                warehouse.record_run(run, metrics)
    # a few-shot FPL run (no setting) has one round: it stays out of the settings' curves
    warehouse.record_run(replace(make_run("Shapes-fewshot-fpl", dataset="Shapes", method="coop", shots=16,
                                          options={"pseudolabels": {"strategy": "fpl"}}, start_minute=minute + 1),
                                 experiment_key="coop-k16-s1-fpl", partition_key="Shapes|coop-k16-s1-fpl"),
                         [MetricRow("test", "top1_accuracy", 0.7), MetricRow("round_00", "pseudolabel_accuracy", 0.9)])
    return warehouse


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("limited_label_report")
    warehouse = fill_limited_label_warehouse(Warehouse(root / "promptlab.duckdb", root / "predictions"))
    html_path = root / "report.html"
    build_report(warehouse, html_path)
    return html_path.read_text(encoding="utf-8")


def pm(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def tables(html_text: str) -> list[str]:
    return re.findall(r"<table>.*?</table>", html_text)


def test_the_table_has_methods_by_strategy_against_settings_per_dataset_and_averaged(page):
    html_text = section(page, "Limited-label settings and pseudolabels")
    header, rows = table_rows(tables(html_text)[0])
    columns = [f"{d} {s}" for d in (*sorted(DATASETS), "average") for s in ("SSL", "UL", "TRZSL")]
    assert header == ["Method", "Strategy", *columns]
    cells = {(row[0], row[1]): dict(zip(columns, row[2:])) for row in rows}
    assert list(cells)[0] == ("zero_shot", "none")  # the baseline row first
    # zero-shot (one run, no setting) is the reference in SSL and UL, and absent in TRZSL (no split seed ran)
    assert cells[("zero_shot", "none")]["Shapes SSL"].startswith(f"{100 * ZERO_SHOT:.2f} ± 0.00")
    assert cells[("zero_shot", "none")]["Shapes TRZSL"] == ""
    for (strategy, setting) in SCORES:
        for dataset_index, dataset in enumerate(DATASETS):
            values = [score(strategy, setting, dataset_index, seed) for seed in SEEDS]
            assert cells[("coop", strategy)][f"{dataset} {setting.upper()}"] == f"{pm(values)} (2 seeds)"
        averages = [statistics.mean(score(strategy, setting, i, seed) for i in range(len(DATASETS)))
                    for seed in SEEDS]
        assert cells[("coop", strategy)][f"average {setting.upper()}"] == f"{pm(averages)} (2 seeds)"


def test_the_published_pattern_is_judged_against_twice_the_seed_spread(page):
    _, rows = table_rows(tables(section(page, "Limited-label settings and pseudolabels"))[1])
    verdicts = {row[0]: row for row in rows}
    spread = 2 * statistics.stdev([0.01 * seed for seed in SEEDS]) * 100  # the same for every configuration
    # UL: IFPL 10 points over FPL (shown), GRIP 0.5 over IFPL (inside the spread: not shown)
    assert verdicts["coop ul: IFPL ≥ FPL"][3:7] == ["+10.0", f"{spread:.1f}", "2", "shown"]
    assert verdicts["coop ul: GRIP ≥ IFPL"][3:7] == ["+0.5", f"{spread:.1f}", "2", "not shown"]
    assert verdicts["coop ul: GRIP ≥ IFPL"][-1] == "Digits, Shapes"
    # zero-shot (one run, std 0) at 53 % on average; IFPL at 62.5 %
    assert verdicts["coop ul: IFPL beats zero-shot"][1:4] == ["62.50", "53.00", "+9.5"]
    assert verdicts["coop ul: IFPL beats zero-shot"][6] == "shown"
    # strategies that did not run in a setting are not judged there
    assert "coop ssl: IFPL ≥ FPL" not in verdicts and "coop trzsl: GRIP ≥ IFPL" not in verdicts


def test_pseudolabel_accuracy_per_round_is_plotted_and_tabulated(page):
    html_text = section(page, "Limited-label settings and pseudolabels")
    assert html_text.count("data:image/png;base64,") == 1
    assert 'alt="pseudolabel accuracy against round' in html_text
    header, rows = table_rows(tables(html_text)[2])
    assert header == ["Setting", "Method", "Strategy", "Round", "Pseudolabel accuracy (%)", "Datasets"]
    assert [row[:4] for row in rows] == [["SSL", "coop", "GRIP", str(r)] for r in range(3)]
    for r, row in enumerate(rows):
        # both datasets carry the same round accuracies: the dataset average is the per-seed value
        assert row[4] == f"{pm([round_accuracy(r, seed) for seed in SEEDS])} (2 seeds)" and row[5] == "2"


def test_every_table_number_but_the_mixed_ones_is_the_single_file_reports(page):
    """Numbers unchanged (report_numbers.py) but where the single-file report mixed configurations: its headline named
    a 0-shot SSL setting the best trained configuration next to few-shot rows, and its per-dataset and per-configuration
    tables merged every setting x strategy of CoOp under one label ('coop + pseudolabels + setting [0a1b2c3d]')."""
    after, before = numbers_by_section(page), numbers_before("limited_label")
    mixed = ("Headline", "Results per dataset (test split)")
    assert {k: v for k, v in after.items() if k not in mixed} == {k: v for k, v in before.items() if k not in mixed}


def test_tables_compare_like_with_like(page):
    headline = section(page, "Headline")
    header, rows = table_rows(tables(headline)[0])
    assert header[2] == "Best few-shot configuration"
    best = {row[0]: row[2:4] for row in rows}
    # the few-shot FPL run (16 shots, 70 %) is Shapes' best few-shot configuration, though SSL GRIP scored higher
    assert best["Shapes"] == ["coop, FPL pseudolabels, 16 shots", "70.00 ± 0.00 (1 seed)"]
    assert best["Digits"] == ["–", "–"]  # no few-shot training there
    per_dataset = section(page, "Results per dataset (test split)")
    titles = re.findall(r"<h3>([^<]*)</h3><table>", per_dataset)
    assert titles == ["Few-shot (all classes)", "SSL setting", "UL setting"]  # TRZSL scores no test split
    _, ssl_rows = table_rows(tables(per_dataset)[1])
    assert {(row[0], row[1]): row[3] for row in ssl_rows if row[1] != "zero_shot"} == {
        (dataset, configuration): f"{pm([score(strategy, 'ssl', index, seed) for seed in SEEDS])} (2 seeds)"
        for index, dataset in enumerate(DATASETS)
        for strategy, configuration in (("none", "coop, SSL"), ("grip", "coop, SSL, GRIP pseudolabels"))}


def test_no_settings_section_when_only_zero_shot_and_few_shot_ran(tmp_path):
    """Zero-shot is the settings' reference row: alone (a grid without learning settings, such as `demo`) it makes
    no section."""
    warehouse = Warehouse(tmp_path / "promptlab.duckdb", tmp_path / "predictions")
    for dataset in DATASETS:
        warehouse.record_run(make_run(f"{dataset}-zs", dataset=dataset, method="zero_shot", shots=0, options={}),
                             [MetricRow("test", "top1_accuracy", ZERO_SHOT)])
        warehouse.record_run(replace(make_run(f"{dataset}-coop", dataset=dataset, method="coop", shots=16, options={}),
                                     experiment_key="coop-k16-s1", partition_key=f"{dataset}|coop-k16-s1"),
                             [MetricRow("test", "top1_accuracy", 0.7)])
    build_report(warehouse, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Headline" in page and "coop" in page
    assert "Limited-label settings and pseudolabels" not in page
