"""The results table `promptlab results` prints: each configuration in words, its test top-1 as mean ± std over
seeds with the number of seeds, per dataset; base-to-new configurations with base, new and their harmonic mean.

A configuration is named by what distinguishes it (models/evaluation/configurations.py, shared with the report).
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from models.evaluation.configurations import configuration_labels, describe_configuration, options_of
from models.markdown import markdown_rows

__all__ = ["FORMATS", "RESULTS_SQL", "describe_configuration", "format_results", "results_rows"]

FORMATS = ("text", "csv", "json", "markdown")

# Test top-1 of every in-domain evaluation (the split is `test` for all-class and limited-label configurations,
# `base` / `new` for base-to-new ones), grouped over seeds by the warehouse's results_by_config view.
RESULTS_SQL = """
SELECT dataset, backbone, method, shots, options, split, mean, std, n_seeds
FROM results_by_config
WHERE stage = 'evaluation' AND source_dataset IS NULL AND metric = 'top1_accuracy'
  AND split IN ('test', 'base', 'new')
ORDER BY dataset, method <> 'zero_shot', method, shots, options, split
"""


def _labelled(frame: pl.DataFrame) -> pl.DataFrame:
    """Adds `configuration` (in words) to every row."""
    return frame.join(configuration_labels(frame), on=["backbone", "method", "options"], how="left",
                      maintain_order="left")


def results_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per dataset, configuration, shots and split (test, base, new, and hm for base-to-new, the harmonic
    mean of the mean base and new accuracies as the papers compute it): mean and std in percent, seeds."""
    if frame.is_empty():
        return pl.DataFrame(schema={"dataset": pl.String, "configuration": pl.String, "method": pl.String,
                                    "shots": pl.Int64, "split": pl.String, "mean": pl.Float64, "std": pl.Float64,
                                    "seeds": pl.Int64})
    frame = _labelled(frame)
    protocol = pl.col("options").map_elements(lambda options: options_of(options).get("protocol") or "",
                                              return_dtype=pl.String)
    frame = frame.with_columns(protocol.alias("protocol"))
    # a base-to-new configuration keeps its base / new splits; every other one its test split (zero-shot's base
    # and new rows are the base-to-new reference, so it keeps both)
    keep = ((pl.col("protocol") == "base_to_new") & pl.col("split").is_in(["base", "new"])) | (
        (pl.col("protocol") != "base_to_new") & (pl.col("split") == "test")) | (
        (pl.col("shots") == 0) & pl.col("split").is_in(["base", "new"]))
    rows = frame.filter(keep).select(
        "dataset", "configuration", "method", pl.col("shots").cast(pl.Int64), "split",
        (pl.col("mean") * 100).alias("mean"), (pl.col("std") * 100).alias("std"),
        pl.col("n_seeds").cast(pl.Int64).alias("seeds"))
    base = rows.filter(pl.col("split") == "base")
    new = rows.filter(pl.col("split") == "new")
    paired = base.join(new, on=["dataset", "configuration", "method", "shots"], suffix="_new")
    harmonic = paired.select(
        "dataset", "configuration", "method", "shots", pl.lit("hm").alias("split"),
        (2 * pl.col("mean") * pl.col("mean_new") / (pl.col("mean") + pl.col("mean_new"))).alias("mean"),
        pl.lit(None, dtype=pl.Float64).alias("std"), pl.min_horizontal("seeds", "seeds_new").alias("seeds"))
    order = {"test": 0, "base": 1, "new": 2, "hm": 3}
    return (pl.concat([rows, harmonic]).with_columns(
        pl.col("split").replace_strict(order, return_dtype=pl.Int64).alias("_order"))
        .sort("dataset", pl.col("method") != "zero_shot", "configuration", "shots", "_order").drop("_order"))


def _cell(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _readable(rows: pl.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The table a person reads: one line per dataset, configuration and shots; test top-1, or base / new / HM."""
    headers = ["dataset", "configuration", "shots", "test top-1 (%)", "base (%)", "new (%)", "HM (%)", "seeds"]
    lines: dict[tuple, dict[str, Any]] = {}
    for row in rows.iter_rows(named=True):
        line = lines.setdefault((row["dataset"], row["configuration"], row["shots"]), {"seeds": row["seeds"]})
        line[row["split"]] = _cell(row["mean"], row["std"])
        line["seeds"] = min(line["seeds"], row["seeds"])
    body = [[dataset, configuration, str(shots), line.get("test", ""), line.get("base", ""), line.get("new", ""),
             line.get("hm", ""), str(line["seeds"])] for (dataset, configuration, shots), line in lines.items()]
    used = [index for index in range(len(headers)) if index < 3 or index == 7 or any(row[index] for row in body)]
    return [headers[i] for i in used], [[row[i] for i in used] for row in body]


def format_results(rows: pl.DataFrame, fmt: str = "text") -> str:
    """`rows` (results_rows) as `text` (aligned columns), `markdown`, `csv` or `json` (one object per row, the
    long form: split, mean, std in percent and seeds)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return rows.write_csv()
    if fmt == "json":
        return json.dumps(rows.to_dicts(), indent=2)
    headers, body = _readable(rows)
    if fmt == "markdown":
        return markdown_rows(headers, body) + "\n"
    widths = [max(len(headers[i]), *(len(row[i]) for row in body)) if body else len(headers[i])
              for i in range(len(headers))]
    numeric = {i for i, name in enumerate(headers) if name not in ("dataset", "configuration")}

    def line(cells: list[str]) -> str:
        return "  ".join(cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
                         for i, cell in enumerate(cells)).rstrip()

    out = [line(headers), line(["-" * width for width in widths])]
    previous = None
    for row in body:
        if previous is not None and row[0] != previous:
            out.append("")
        out.append(line(row if row[0] != previous else ["", *row[1:]]))
        previous = row[0]
    return "\n".join(out) + "\n"
