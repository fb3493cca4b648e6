"""The report's protocol sections on the synthetic warehouse: the few-shot figure and table, and the cross-dataset
and domain-generalization tables (rows: configurations; columns: source, each target, average)."""

import re
import statistics

import pytest
from evaluation_synthetic import DATASETS, SyntheticResults

from models.report import build_report


@pytest.fixture(scope="module")
def page(synthetic_results: SyntheticResults, tmp_path_factory: pytest.TempPathFactory) -> str:
    html_path = tmp_path_factory.mktemp("protocol_report") / "report.html"
    build_report(synthetic_results.warehouse, html_path)
    return html_path.read_text(encoding="utf-8")


def section(page: str, heading: str) -> str:
    match = re.search(rf"<section><h2>{re.escape(heading)}</h2>(.*?)</section>", page)
    assert match is not None, f"no section {heading!r}"
    return match.group(1)


def table_rows(html_text: str) -> tuple[list[str], list[list[str]]]:
    header = re.findall(r"<th>([^<]*)</th>", re.search(r"<thead>(.*?)</thead>", html_text).group(1))
    body = re.search(r"<tbody>(.*?)</tbody>", html_text).group(1)
    rows = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]
    return header, rows


def pm(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


@pytest.mark.parametrize("heading, stage", [("Cross-dataset transfer", "cross_dataset"),
                                            ("Domain generalization", "domain_generalization")])
def test_transfer_tables_are_shaped_like_the_papers(synthetic_results, page, heading, stage):
    ((_, source, target, method, shots), by_seed), = [
        (key, values) for key, values in synthetic_results.transfer.items() if key[0] == stage]
    html_text = section(page, heading)
    assert f"<h3>Source: {source}</h3>" in html_text
    header, rows = table_rows(html_text)
    assert header == ["Configuration", f"Source: {source}", target, "Average", "Seeds"]
    by_configuration = {row[0]: row[1:] for row in rows}
    assert list(by_configuration) == ["zero_shot", f"{method}, {shots} shots"]  # the reference row first
    seeds = sorted(by_seed)
    on_source = [synthetic_results.test_top1[(source, method, shots)][seed] for seed in seeds]
    transferred = [by_seed[seed] for seed in seeds]
    # one target: the average over targets equals it
    assert by_configuration[f"{method}, {shots} shots"] == [pm(on_source), pm(transferred), pm(transferred),
                                                             str(len(seeds))]
    zero_shot = [synthetic_results.test_top1[(dataset, "zero_shot", 0)][1] for dataset in (source, target)]
    assert by_configuration["zero_shot"] == [pm([zero_shot[0]]), pm([zero_shot[1]]), pm([zero_shot[1]]), "1"]


def test_few_shot_section_draws_the_curves_and_tabulates_shots(synthetic_results, page):
    html_text = section(page, "Few-shot learning")
    assert html_text.count("data:image/png;base64,") == 1
    header, rows = table_rows(html_text)
    assert header == ["Dataset", "Configuration", "0 shots", "1 shot", "4 shots"]
    cells = {(row[0], row[1]): row[2:] for row in rows}
    for dataset in DATASETS:
        coop = [list(synthetic_results.test_top1[(dataset, "coop", shots)].values()) for shots in (1, 4)]
        assert cells[(dataset, "coop")] == ["", *[f"{pm(values)} ({len(values)} seeds)" for values in coop]]
        assert cells[(dataset, "zero_shot")][0].startswith(
            f"{100 * synthetic_results.test_top1[(dataset, 'zero_shot', 0)][1]:.2f} ± 0.00")
    average = cells[(f"Average over {len(DATASETS)} datasets", "coop")]
    expected = statistics.mean(statistics.mean(synthetic_results.test_top1[(d, "coop", 4)].values()) for d in DATASETS)
    assert average[2] == f"{100 * expected:.2f}"
    # the transfer runs are not in-domain results: they never enter the few-shot table
    assert len(rows) == 3 * (len(DATASETS) + 1)
