"""The padding bench (bench/text_padding.py) at a micro size: both variants run on the same classifier, their
logits agree, the figures reach the warehouse as a `text-padding` run with whole-context as the baseline, and the
table reads them."""

from __future__ import annotations

import duckdb

from bench import text_padding as bench


def test_micro_run_records_both_variants(tmp_path):
    options = bench.BenchOptions(workspace=tmp_path / "workspace", architectures=("tiny-clip",),
                                 methods=("coop", "cocoop"), n_classes=6, repeats=1, text_blocks=1,
                                 output=tmp_path / "text_padding.json")
    result = bench.run_benchmark(options)
    assert [m["name"] for m in result["measured"]] == ["tiny-clip/coop", "tiny-clip/cocoop"]
    for measured in result["measured"]:
        assert measured["used_length"] < measured["context_length"] == 24
        assert measured["largest_logit_difference"] < 1e-4
        assert set(measured["seconds"]) == {"padding-cut", "whole-context"}
    assert (tmp_path / "text_padding.json").exists()
    with duckdb.connect(result["warehouse"], read_only=True) as connection:
        rows = connection.execute(
            "SELECT method, variant, baseline_variant, speedup FROM latest_benchmark "
            "WHERE benchmark = 'text-padding' ORDER BY method, variant").fetchall()
    assert [(m, v, b) for m, v, b, _ in rows] == [
        ("tiny-clip/cocoop", "padding-cut", "whole-context"), ("tiny-clip/cocoop", "whole-context", None),
        ("tiny-clip/coop", "padding-cut", "whole-context"), ("tiny-clip/coop", "whole-context", None)]
    assert all(speedup > 0 for _, variant, _, speedup in rows if variant == "padding-cut")
    table = bench.format_table(result)
    assert "tiny-clip/coop" in table and " of 24" in table
