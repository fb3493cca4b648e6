"""Published numbers beside measured ones: the warehouse's published_results tables hold the catalog's file (and are
replaced when it changes, only then), the few-shot and base-to-new tables show the published number and measured −
published for runs on a backbone and datasets the file has, and nothing for others; the few-shot table laid out as
CLIP-LoRA's Table 1 averages each seed over the datasets, then takes mean ± std over seeds."""

from __future__ import annotations

import hashlib
import re
import shutil
import statistics
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest
import yaml
from evaluation_synthetic import DATASETS, SyntheticResults, make_run
from test_protocol_report import section, table_rows

from models.catalog import DEFAULT_CATALOG_DIR
from models.catalog.published import PUBLISHED_RESULTS_FILE, load_published_results
from models.report import build_report, markdown_results
from models.warehouse import MetricRow, Warehouse
from models.warehouse.published import catalog_published_file, replace_published_results

BACKBONE = "ViT-B-16-openai"
TWO = ("Caltech101", "OxfordPets")
# (dataset, method, shots) -> {seed: test top-1}; zero-shot has one seed
FEW_SHOT = {
    ("Caltech101", "zero_shot", 0): {1: 0.60}, ("OxfordPets", "zero_shot", 0): {1: 0.70},
    ("Caltech101", "coop", 1): {1: 0.80, 2: 0.84}, ("OxfordPets", "coop", 1): {1: 0.74, 2: 0.71},
    ("Caltech101", "coop", 4): {1: 0.88, 2: 0.90}, ("OxfordPets", "coop", 4): {1: 0.79, 2: 0.82},
}
# (dataset, method) -> {seed: (base, new)}
BASE_TO_NEW = {("Caltech101", "zero_shot"): {1: (0.70, 0.75)}, ("OxfordPets", "zero_shot"): {1: (0.66, 0.72)},
               ("Caltech101", "coop"): {1: (0.90, 0.60), 2: (0.92, 0.64)},
               ("OxfordPets", "coop"): {1: (0.82, 0.58), 2: (0.80, 0.61)}}

PUBLISHED = {
    "sources": {"paper": "[table] a paper's Table 1"},
    "averages": {"average-2": {"description": "Caltech101 and OxfordPets", "datasets": list(TWO)}},
    "rows": [
        {"method": "coop", "backbone": BACKBONE, "dataset": "Caltech101", "protocol": "few_shot", "shots": 1,
         "metric": "top1_accuracy", "value": 85.0, "source": "paper"},
        {"method": "coop", "backbone": BACKBONE, "dataset": "average-2", "protocol": "few_shot", "shots": 4,
         "metric": "top1_accuracy", "value": 80.0, "source": "paper"},
        {"method": "zero_shot", "backbone": BACKBONE, "dataset": "average-2", "protocol": "few_shot", "shots": 0,
         "metric": "top1_accuracy", "value": 66.5, "source": "paper"},
        {"method": "coop", "backbone": BACKBONE, "dataset": "average-2", "protocol": "base_to_new", "shots": 16,
         "metric": "base_accuracy", "value": 84.0, "source": "paper"},
        {"method": "coop", "backbone": BACKBONE, "dataset": "average-2", "protocol": "base_to_new", "shots": 16,
         "metric": "harmonic_mean", "value": 70.0, "source": "paper"},
        # never compared here: another backbone, a variant, another shot count
        {"method": "coop", "backbone": "ViT-B-32-openai", "dataset": "Caltech101", "protocol": "few_shot",
         "shots": 4, "metric": "top1_accuracy", "value": 10.0, "source": "paper"},
        {"method": "zero_shot", "variant": "ensemble", "backbone": BACKBONE, "dataset": "Caltech101",
         "protocol": "few_shot", "shots": 0, "metric": "top1_accuracy", "value": 20.0, "source": "paper"},
        {"method": "coop", "backbone": BACKBONE, "dataset": "OxfordPets", "protocol": "few_shot", "shots": 16,
         "metric": "top1_accuracy", "value": 30.0, "source": "paper"},
    ],
}


def small_catalog(folder: Path, published: dict) -> Path:
    """A catalog with the shipped backbones and suites and `published` as its published_results.yaml."""
    folder.mkdir(parents=True)
    shutil.copy(DEFAULT_CATALOG_DIR / "backbones.yaml", folder / "backbones.yaml")
    shutil.copytree(DEFAULT_CATALOG_DIR / "suites", folder / "suites")
    (folder / PUBLISHED_RESULTS_FILE).write_text(yaml.safe_dump(published, sort_keys=False))
    return folder


def published_warehouse(root: Path) -> Warehouse:
    warehouse = Warehouse(root / "warehouse" / "promptlab.duckdb", root / "warehouse" / "predictions")
    for (dataset, method, shots), by_seed in FEW_SHOT.items():
        for seed, top1 in by_seed.items():
            run = make_run(f"{dataset}-{method}-{shots}-{seed}", dataset=dataset, method=method, shots=shots, seed=seed)
            warehouse.record_run(replace(run, backbone=BACKBONE), [MetricRow("test", "top1_accuracy", top1)])
    for (dataset, method), by_seed in BASE_TO_NEW.items():
        for seed, (base, new) in by_seed.items():
            run = make_run(f"{dataset}-{method}-b2n-{seed}", dataset=dataset, method=method, seed=seed,
                           shots=16 if method == "coop" else 0,
                           options={"settings_hash": "0a1b2c3d", "protocol": "base_to_new"} if method == "coop"
                           else None)
            warehouse.record_run(replace(run, backbone=BACKBONE, partition_key=f"{dataset}|{method}-b2n-{seed}",
                                         experiment_key=f"{method}-b2n-{seed}"),
                                 [MetricRow("base", "top1_accuracy", base), MetricRow("new", "top1_accuracy", new)])
    return warehouse


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> tuple[str, str]:
    """The HTML and Markdown reports of the warehouse above, with the small catalog's published results."""
    root = tmp_path_factory.mktemp("published_report")
    catalog = small_catalog(root / "catalog", PUBLISHED)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROMPTLAB_CATALOG", str(catalog))
        warehouse = published_warehouse(root)
        build_report(warehouse, root / "report.html")
        markdown = markdown_results(warehouse)
    return (root / "report.html").read_text(encoding="utf-8"), markdown


def mean(values) -> float:
    return statistics.mean(values)


def points(value: float) -> str:
    return f"{100 * value:+.2f}"


def test_the_few_shot_table_shows_the_published_number_and_the_difference(compared):
    page, _ = compared
    header, rows = table_rows(section(page, "Few-shot learning"))
    assert header == ["Dataset", "Configuration", "0 shots", "0 shots published (%)", "0 shots Δ (points)", "1 shot",
                      "1 shot published (%)", "1 shot Δ (points)", "4 shots", "4 shots published (%)",
                      "4 shots Δ (points)"]
    cells = {(row[0], row[1]): row[2:] for row in rows}
    caltech_1 = mean(FEW_SHOT[("Caltech101", "coop", 1)].values())
    assert cells[("Caltech101", "coop")][3:6] == [
        f"{100 * caltech_1:.2f} ± {100 * statistics.stdev(FEW_SHOT[('Caltech101', 'coop', 1)].values()):.2f} "
        "(2 seeds)", "85.00", points(caltech_1 - 0.85)]
    assert cells[("Caltech101", "coop")][7:] == ["", ""]  # no published 4-shot number for Caltech101 alone
    average = "Average over 2 datasets"
    coop_4 = mean(mean(FEW_SHOT[(dataset, "coop", 4)].values()) for dataset in TWO)
    assert cells[(average, "coop")][6:] == [f"{100 * coop_4:.2f}", "80.00", points(coop_4 - 0.80)]
    zero_shot = mean(FEW_SHOT[(dataset, "zero_shot", 0)][1] for dataset in TWO)
    assert cells[(average, "zero_shot")][:3] == [f"{100 * zero_shot:.2f}", "66.50", points(zero_shot - 0.665)]
    # neither another backbone's number, nor the ensemble's, nor a shot count that was not run
    assert not any(cell in ("10.00", "20.00", "30.00") for row in rows for cell in row)
    assert "Δ = measured − published" in section(page, "Few-shot learning")


def test_the_base_to_new_average_shows_the_published_numbers_it_has(compared):
    page, _ = compared
    body = section(page, "Base-to-new generalization")
    average = re.search(r"<h3>Average over 2 datasets</h3>(<table>.*?</table>)", body).group(1)
    header, rows = table_rows(average)
    assert header == ["Configuration", "Base (%)", "Base published (%)", "Base Δ (points)", "New (%)", "HM (%)",
                      "HM published (%)", "HM Δ (points)", "Datasets"]
    coop = next(row for row in rows if row[0].startswith("coop"))
    base = mean(mean(seed[0] for seed in BASE_TO_NEW[(dataset, "coop")].values()) for dataset in TWO)
    new = mean(mean(seed[1] for seed in BASE_TO_NEW[(dataset, "coop")].values()) for dataset in TWO)
    harmonic = 2 * base * new / (base + new)
    assert coop == [coop[0], f"{100 * base:.2f}", "84.00", points(base - 0.84), f"{100 * new:.2f}",
                    f"{100 * harmonic:.2f}", "70.00", points(harmonic - 0.70), "2"]
    zero_shot = next(row for row in rows if row[0] == "zero_shot")
    assert zero_shot[2:4] == ["", ""] and zero_shot[6:8] == ["", ""]
    per_dataset = re.search(r"<h3>Caltech101</h3>(<table>.*?</table>)", body).group(1)
    assert "published" not in per_dataset  # no per-dataset base-to-new number is published here


def test_the_markdown_shows_the_same_published_columns(compared):
    page, markdown = compared
    few_shot = markdown.split("## Few-shot learning", 1)[1].split("\n## ", 1)[0]
    assert "| 1 shot published \\(%\\) | 1 shot Δ \\(points\\) |" in few_shot
    _, rows = table_rows(section(page, "Few-shot learning"))
    assert all(f" {cell} " in few_shot for row in rows for cell in row[2:] if cell and "±" not in cell)


def test_the_table_1_layout_shows_the_published_average_of_the_same_datasets(compared):
    page, _ = compared
    header, rows = table_rows(section(page, "Few-shot top-1 averaged over datasets"))
    assert header == ["Configuration", "0 shots", "0 shots published (%)", "0 shots Δ (points)", "1 shot", "4 shots",
                      "4 shots published (%)", "4 shots Δ (points)", "Selection"]
    coop = next(row for row in rows if row[0] == "coop")
    assert coop[8] == "last"  # CoOp's published policy (the registry's), as no grid entry set one
    per_seed = [mean(FEW_SHOT[(dataset, "coop", 4)][seed] for dataset in TWO) for seed in (1, 2)]
    assert coop[5:8] == [f"{100 * mean(per_seed):.2f} ± {100 * statistics.stdev(per_seed):.2f} (2 seeds)", "80.00",
                        points(mean(per_seed) - 0.80)]


def test_a_warehouse_whose_backbone_has_no_published_rows_shows_no_published_columns(
        synthetic_results: SyntheticResults, tmp_path):
    build_report(synthetic_results.warehouse, tmp_path / "report.html")  # tiny-clip: the shipped file has none
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    for heading in ("Few-shot learning", "Few-shot top-1 averaged over datasets", "Base-to-new generalization"):
        assert "published" not in section(page, heading), heading
    assert "published" not in markdown_results(synthetic_results.warehouse).lower().replace(
        "published-pattern", "").replace("does the published", "")


def test_the_table_1_layout_averages_each_seed_over_the_datasets(synthetic_results: SyntheticResults, tmp_path):
    build_report(synthetic_results.warehouse, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    body = section(page, "Few-shot top-1 averaged over datasets")
    assert ", ".join(DATASETS) in body
    header, rows = table_rows(body)
    assert header == ["Configuration", "0 shots", "1 shot", "4 shots", "Selection"]
    cells = {row[0]: row[1:-1] for row in rows}
    assert {row[0]: row[-1] for row in rows} == {"zero_shot": "", "cocoop": "last", "coop": "last"}
    assert list(cells) == ["zero_shot", "cocoop", "coop"]  # zero-shot first

    def expected(method: str, shots: int) -> str:
        seeds = sorted(set.intersection(*(set(synthetic_results.test_top1[(d, method, shots)]) for d in DATASETS)))
        per_seed = [mean(synthetic_results.test_top1[(d, method, shots)][seed] for d in DATASETS) for seed in seeds]
        std = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
        return f"{100 * mean(per_seed):.2f} ± {100 * std:.2f} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})"

    assert cells["zero_shot"] == [expected("zero_shot", 0), "", ""]
    assert cells["coop"] == ["", expected("coop", 1), expected("coop", 4)]
    assert cells["cocoop"] == ["", "", expected("cocoop", 4)]


# ------------------------------------------------------------------------------------------------- the table
def test_the_warehouse_table_holds_the_catalog_file_and_is_replaced_only_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMPTLAB_CATALOG", raising=False)
    warehouse = Warehouse(tmp_path / "warehouse" / "promptlab.duckdb", tmp_path / "warehouse" / "predictions")
    assert warehouse.ensure_schema()
    shipped = load_published_results()
    stored = warehouse.query("SELECT * FROM published_results ORDER BY file_row")
    assert stored.height == len(shipped.rows)
    for row, line in zip(shipped.rows, stored.iter_rows(named=True)):
        assert (line["file_row"], line["method"], line["variant"], line["backbone"], line["dataset"],
                line["protocol"], line["shots"], line["metric"], line["value_percent"], line["source_key"],
                line["source"]) == (row.row, row.method, row.variant, row.backbone, row.dataset, row.protocol,
                                    row.shots, row.metric, row.value, row.source, shipped.sources[row.source])
        assert line["value"] == pytest.approx(row.value / 100)
    averages = warehouse.query("SELECT average, list(dataset ORDER BY dataset) AS datasets FROM published_averages "
                               "GROUP BY average ORDER BY average")
    assert dict(averages.rows()) == {name: sorted(average.datasets) for name, average in shipped.averages.items()
                                     if average.datasets}
    file = warehouse.query("SELECT * FROM published_results_file").row(0, named=True)
    sha256 = hashlib.sha256((DEFAULT_CATALOG_DIR / PUBLISHED_RESULTS_FILE).read_bytes()).hexdigest()
    assert file == {"catalog_file": f"assets_catalog/{PUBLISHED_RESULTS_FILE}", "sha256": sha256,
                    "n_rows": len(shipped.rows)}

    # the same file again: nothing to write
    assert warehouse.ensure_schema() and warehouse.sync_published_results()
    with duckdb.connect(str(warehouse.database_path)) as connection:
        assert replace_published_results(connection, shipped) is False
    # another catalog's file replaces every row
    monkeypatch.setenv("PROMPTLAB_CATALOG", str(small_catalog(tmp_path / "catalog", PUBLISHED)))
    assert warehouse.sync_published_results()
    stored = warehouse.query("SELECT method, dataset, value_percent FROM published_results ORDER BY file_row")
    assert stored.rows() == [(row["method"], row["dataset"], row["value"]) for row in PUBLISHED["rows"]]
    assert warehouse.query("SELECT * FROM published_averages").rows() == [("average-2", dataset) for dataset in TWO]
    assert warehouse.query("SELECT n_rows FROM published_results_file").item() == len(PUBLISHED["rows"])


def test_the_warehouse_reads_the_file_the_catalog_reads(monkeypatch, tmp_path):
    monkeypatch.delenv("PROMPTLAB_CATALOG", raising=False)
    assert catalog_published_file() == DEFAULT_CATALOG_DIR / PUBLISHED_RESULTS_FILE
    monkeypatch.setenv("PROMPTLAB_CATALOG", str(tmp_path))
    assert catalog_published_file() == load_published_results().path == tmp_path / PUBLISHED_RESULTS_FILE
    assert load_published_results().rows == ()  # a catalog without the file has no published results


def test_the_lake_holds_the_same_published_rows_as_the_file_warehouse(tmp_path, monkeypatch):
    from models.warehouse import open_warehouse

    monkeypatch.delenv("PROMPTLAB_CATALOG", raising=False)
    lake = open_warehouse(tmp_path / "lake" / "promptlab.duckdb", tmp_path / "lake" / "predictions",
                          f"ducklake:sqlite:{tmp_path / 'catalog.sqlite'}")
    warehouse = Warehouse(tmp_path / "file" / "promptlab.duckdb", tmp_path / "file" / "predictions")
    assert lake.ensure_schema() and warehouse.ensure_schema() and lake.sync_published_results()
    for sql in ("SELECT * FROM published_results ORDER BY file_row", "SELECT * FROM published_results_file",
                "SELECT * FROM published_averages ORDER BY average, dataset"):
        assert lake.query(sql).rows() == warehouse.query(sql).rows(), sql
    assert lake.query("SELECT count(*) FROM published_results").item() == len(load_published_results().rows)


def test_the_selection_column_is_the_grid_entrys_policy_else_the_methods_published_one():
    from models.report.sections import selection_policy

    assert selection_policy("coop", '{"settings_hash": "x"}') == "last"
    assert selection_policy("coop", '{"settings_hash": "x", "selection": "full_val"}') == "full_val"
    assert selection_policy("tip_adapter", None) == "full_val" and selection_policy("linear_probe", "{}") == \
        "few_shot_val"
    assert selection_policy("a_method_of_another_code", None) == "?"
