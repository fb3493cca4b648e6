"""The APT-against-deep-VPT cost bench (bench/apt_cost.py) at a micro size: both methods measured in one process, the
ratios, the table and the rows in the warehouse (benchmark `prompt-attention`, deep VPT the baseline)."""

from pathlib import Path

import pytest

from bench import apt_cost
from bench.apt_cost import CostOptions


def test_ratios_are_apt_over_deep_vpt():
    rows = {"apt": {"seconds": 1.0, "rss_delta_mb": 50.0, "peak_cuda_mb": None},
            "deep-vpt": {"seconds": 2.0, "rss_delta_mb": 100.0, "peak_cuda_mb": None}}
    assert apt_cost.ratios(rows) == {"time": 0.5, "rss_delta": 0.5, "cuda_memory": None}


def test_micro_run_measures_both_and_records_them(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("PROMPTLAB_WAREHOUSE", raising=False)  # the temporary workspace's own DuckDB file
    options = CostOptions(architecture="ViT-B-32", n_tokens=2, prompt_depth=2, batch_size=1, repeats=1,
                          workspace=tmp_path, output=tmp_path / "apt_cost.json")
    result = apt_cost.run_benchmark(options)
    assert set(result["rows"]) == {"apt", "deep-vpt"} and result["depth"] == 2
    for row in result["rows"].values():
        assert row["seconds"] > 0 and len(row["timings_seconds"]) == 1 and row["peak_cuda_mb"] is None
    # same prompt tokens; APT adds one gate per head and block
    heads = 12
    assert result["rows"]["apt"]["trainable_parameters"] == result["rows"]["deep-vpt"]["trainable_parameters"] + 2 * heads
    assert result["ratios"]["time"] == pytest.approx(
        result["rows"]["apt"]["seconds"] / result["rows"]["deep-vpt"]["seconds"])
    assert (tmp_path / "apt_cost.json").exists()
    assert "APT / deep VPT" in apt_cost.format_table(result)

    from models.warehouse import workspace_warehouse_of
    from models.workspace import Workspace

    rows = workspace_warehouse_of(Workspace(tmp_path)).query(
        "SELECT method, variant, baseline_variant, speedup FROM latest_benchmark "
        "WHERE benchmark = 'prompt-attention' ORDER BY variant")
    assert rows["variant"].to_list() == ["apt", "deep-vpt"]
    assert rows["baseline_variant"].to_list() == ["deep-vpt", None]
    assert rows["speedup"][0] == pytest.approx(1 / result["ratios"]["time"])
