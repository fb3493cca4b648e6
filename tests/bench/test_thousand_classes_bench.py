"""The 1000-class bench (bench/thousand_classes.py) without running a step: its plan, when it skips an unchunked
step, its ratios and table, the test's figure, and its rows in the warehouse (benchmark `thousand-classes`)."""

from dataclasses import asdict, replace
from pathlib import Path

import pytest

from bench import thousand_classes as bench
from bench.thousand_classes import BenchOptions, StepCase


def measurement(case: StepCase, seconds: float, rise_mb: float) -> dict:
    return {"case": asdict(case), "name": case.name, "prompts": case.prompts, "prompts_per_pass": case.prompts_per_pass,
            "passes": -(-case.prompts // case.prompts_per_pass), "seconds": seconds, "peak_rss_mb": 2000 + rise_mb,
            "rss_before_mb": 2000.0, "rise_mb": rise_mb, "loss": 6.9, "threads": 2, "load_average_1min": 0.1,
            "weights_sha256": "ab" * 32}


def fake_result(options: BenchOptions) -> dict:
    measured = []
    for chunked, unchunked in bench.plan_cases(options):
        measured.append(measurement(chunked, 20.0, 400.0))
        if unchunked.n_classes < options.n_classes or unchunked.text_blocks:
            measured.append(measurement(unchunked, 16.0, 2000.0))
    return {"bench_run_id": "bench-test-1", "started_at": "2026-12-07 04:00:00+00:00",
            "finished_at": "2026-12-07 04:10:00+00:00", "git_commit": None, "code_version": None,
            "device": bench.describe_device(bench.FIXED_MMAP_THRESHOLD), "torch_version": "2",
            "architecture": "ViT-B-16",
            "measure": bench.MEASURE, "allocator_environment": bench.allocator_environment(bench.FIXED_MMAP_THRESHOLD),
            "load_average_1min_before": 0.1, "options": {"text_chunk_size": 128}, "measured": measured,
            "skipped": [], "ratios": bench.ratios(measured)}


def test_plan_puts_the_tests_case_first_and_each_method_small_then_large():
    cases = bench.plan_cases(BenchOptions())
    test_case = cases[0][0]
    assert (test_case.method, test_case.n_classes, test_case.batch_size, test_case.text_blocks) == ("coop", 1000, 2, 1)
    assert [(c.method, c.n_classes, c.batch_size) for c, _ in cases[1:]] == [
        ("coop", 256, 32), ("coop", 1000, 32), ("cocoop", 256, 1), ("cocoop", 1000, 1)]
    assert all(c.chunked and not u.chunked and replace(u, chunked=True) == c for c, u in cases)
    cocoop = StepCase("cocoop", 1000, 4, chunked=False)
    assert cocoop.prompts == cocoop.prompts_per_pass == 4000  # one pass of every image x class prompt


def test_unchunked_step_is_skipped_when_its_estimate_exceeds_the_memory(monkeypatch):
    small = measurement(StepCase("coop", 256, 32, chunked=False), 40.0, 5000.0)
    large = StepCase("coop", 1000, 32, chunked=False)
    monkeypatch.setattr(bench, "available_memory_mb", lambda: 22000.0)
    fits, estimate = bench.unchunked_fits(large, [small])
    assert not fits and estimate == pytest.approx(5000.0 * 1000 / 256)
    monkeypatch.setattr(bench, "available_memory_mb", lambda: 100000.0)
    assert bench.unchunked_fits(large, [small])[0]
    assert bench.unchunked_fits(large, []) == (True, None)  # nothing to estimate from: measured


def test_ratios_table_figure_and_warehouse_rows(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("PROMPTLAB_WAREHOUSE", raising=False)  # the temporary workspace's own DuckDB file
    options = BenchOptions(workspace=tmp_path, output=None, measured_figure=None)
    result = fake_result(options)
    assert {(r["name"], r["rise_ratio"], r["time_ratio"]) for r in result["ratios"]} == {
        ("coop/1000 classes, text tower cut to 1 block(s)", 0.2, 1.25), ("coop/256 classes", 0.2, 1.25),
        ("cocoop/256 classes", 0.2, 1.25)}
    table = bench.format_table(result)
    assert "coop/1000 classes" in table and "0.200" in table and "glibc mmap threshold fixed" in table
    figure = bench.figure_for_the_test(result, options)
    assert figure["rise_mb"] == 400.0 and figure["allowed_rise_mb"] == pytest.approx(400.0 * (1 + bench.TEST_MARGIN))
    assert figure["allocator_environment"] == {"MALLOC_MMAP_THRESHOLD_": "131072"}
    assert figure["case"]["text_blocks"] == 1 and figure["unchunked_rise_mb"] == 2000.0

    bench.record(result, options)
    from models.warehouse import workspace_warehouse_of
    from models.workspace import Workspace

    rows = workspace_warehouse_of(Workspace(tmp_path)).query(
        "SELECT method, variant, baseline_variant, speedup, rss_delta_mb FROM latest_benchmark "
        "WHERE benchmark = 'thousand-classes' ORDER BY method, variant")
    assert rows.height == len(result["measured"]) == 8
    chunked_1000 = rows.filter((rows["method"] == "coop/1000 classes") & (rows["variant"] == "chunked"))
    assert chunked_1000["baseline_variant"][0] is None  # no unchunked step measured beside it
    paired = rows.filter((rows["method"] == "coop/256 classes") & (rows["variant"] == "chunked"))
    assert paired["baseline_variant"][0] == "unchunked" and paired["speedup"][0] == pytest.approx(0.8)
