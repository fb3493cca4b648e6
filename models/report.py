"""One self-contained HTML report over the results warehouse.

Every number in the report comes from a SQL query over the warehouse views (`results_by_config`,
`base_to_new_results`, ...); Python only formats and plots. The HTML has inline CSS, PNG charts embedded as
base64 data URIs, no scripts and no external links, so it opens anywhere offline. It is written atomically and
holds no generation timestamp: the same warehouse content gives the same bytes.

Conventions: accuracies are stored as fractions and shown in percent as "mean ± std (n seeds)" over the seeds of a
configuration (sample std, 0 for one seed). A configuration is a method, prefixed by its backbone when the
warehouse holds several backbones and followed by its options when the method was run with several option sets.
Zero-shot results are the evaluation runs whose method is `zero_shot_method`; every other method counts as trained.
"""

from __future__ import annotations

import base64
import html
import io
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from models.warehouse import Warehouse

TOP1 = "top1_accuracy"
MACRO_F1 = "macro_f1"
ECE = "expected_calibration_error"
# Metrics shown in percent; any other metric (counts, losses) is shown as a plain number.
_FRACTION_METRIC_SUFFIXES = ("accuracy", "f1", "calibration_error", "precision", "recall", "coverage")

_LABELLED_RESULTS = """
WITH evaluation AS (
    SELECT * FROM results_by_config WHERE stage = 'evaluation'
),
option_variety AS (
    SELECT method, count(DISTINCT options) AS n_options,
           count(DISTINCT json_extract_string(options, '$.settings_hash')) AS n_settings
    FROM evaluation GROUP BY method
),
backbone_variety AS (
    SELECT count(DISTINCT backbone) AS n_backbones FROM evaluation
),
-- A readable name. When a method ran with several option sets, the options in use are named ("coop +
-- augmentation"); the settings hash is shown only when the parameters themselves differ. Options without a
-- settings hash (written by other tools) are shown as their JSON.
base_labels AS (
    SELECT DISTINCT e.backbone, e.method, e.options,
        CASE WHEN b.n_backbones > 1 THEN e.backbone || ' / ' ELSE '' END
        || e.method
        || CASE
             WHEN v.n_options <= 1 THEN ''
             WHEN json_extract_string(e.options, '$.settings_hash') IS NULL THEN ' ' || e.options
             ELSE coalesce(' + ' || nullif(array_to_string(
                      list_transform(
                          list_sort(list_filter(json_keys(e.options), k -> k <> 'settings_hash')),
                          k -> CASE WHEN k IN ('protocol', 'variant') THEN json_extract_string(e.options, '$.' || k)
                                    ELSE k END),
                      ' + '), ''), '')
           END AS base_label
    FROM evaluation AS e JOIN option_variety AS v USING (method) CROSS JOIN backbone_variety AS b
),
-- The settings hash is appended only where two configurations would otherwise share a name.
labels AS (
    SELECT backbone, method, options,
        base_label || CASE WHEN count(*) OVER (PARTITION BY backbone, method, base_label) > 1
                           THEN ' [' || json_extract_string(options, '$.settings_hash') || ']' ELSE '' END
            AS configuration
    FROM base_labels
),
labelled AS (
    SELECT e.*, l.configuration FROM evaluation AS e JOIN labels AS l USING (backbone, method, options)
)
"""

RUN_COUNTS_SQL = """
SELECT count(*) AS runs,
       count(*) FILTER (WHERE is_current) AS current_runs,
       max(finished_at) AS latest_finished_at
FROM runs
"""

DATASETS_SQL = "SELECT DISTINCT dataset FROM runs WHERE is_current ORDER BY dataset"

HEADLINE_SQL = _LABELLED_RESULTS + """,
test_top1 AS (SELECT * FROM labelled WHERE split = 'test' AND metric = 'top1_accuracy'),
zero_shot AS (
    SELECT dataset, max(mean) AS zero_shot_top1 FROM test_top1 WHERE method = $zero_shot GROUP BY dataset
),
best_trained AS (
    SELECT dataset, configuration, shots, mean, std, n_seeds FROM test_top1 WHERE method <> $zero_shot
    QUALIFY row_number() OVER (PARTITION BY dataset ORDER BY mean DESC, configuration, shots) = 1
)
SELECT d.dataset, z.zero_shot_top1, b.configuration AS best_configuration, b.shots AS best_shots,
       b.mean AS best_top1, b.std AS best_std, b.n_seeds AS best_n_seeds, b.mean - z.zero_shot_top1 AS gain
FROM (SELECT DISTINCT dataset FROM test_top1) AS d
LEFT JOIN zero_shot AS z USING (dataset)
LEFT JOIN best_trained AS b USING (dataset)
ORDER BY d.dataset
"""

HEADLINE_AVERAGE_SQL = f"""
SELECT avg(zero_shot_top1) AS mean_zero_shot_top1,
       count(zero_shot_top1) AS n_zero_shot_datasets,
       avg(best_top1) AS mean_best_top1,
       count(best_top1) AS n_best_datasets,
       avg(gain) AS mean_gain,
       count(gain) AS n_gain_datasets
FROM ({HEADLINE_SQL})
"""

CONFIGURATION_AVERAGES_SQL = _LABELLED_RESULTS + """
SELECT configuration, shots, avg(mean) AS mean_top1, count(DISTINCT dataset) AS n_datasets
FROM labelled WHERE split = 'test' AND metric = 'top1_accuracy'
GROUP BY configuration, method, shots
ORDER BY method <> $zero_shot, configuration, shots
"""

CROSS_DATASET_SQL = _LABELLED_RESULTS + """
SELECT dataset, configuration, shots,
       max(mean) FILTER (WHERE metric = 'top1_accuracy') AS top1_mean,
       max(std) FILTER (WHERE metric = 'top1_accuracy') AS top1_std,
       max(n_seeds) FILTER (WHERE metric = 'top1_accuracy') AS top1_seeds,
       max(mean) FILTER (WHERE metric = 'macro_f1') AS macro_f1_mean,
       max(std) FILTER (WHERE metric = 'macro_f1') AS macro_f1_std,
       max(n_seeds) FILTER (WHERE metric = 'macro_f1') AS macro_f1_seeds,
       max(mean) FILTER (WHERE metric = 'expected_calibration_error') AS ece_mean,
       max(std) FILTER (WHERE metric = 'expected_calibration_error') AS ece_std,
       max(n_seeds) FILTER (WHERE metric = 'expected_calibration_error') AS ece_seeds
FROM labelled WHERE split = 'test'
GROUP BY dataset, configuration, method, shots
HAVING top1_mean IS NOT NULL
ORDER BY dataset, method <> $zero_shot, configuration, shots
"""

# The bar chart compares each configuration at its largest shot count on each dataset.
BAR_CHART_SQL = _LABELLED_RESULTS + """
SELECT dataset, configuration, shots, mean, std, n_seeds
FROM labelled WHERE split = 'test' AND metric = 'top1_accuracy'
QUALIFY shots = max(shots) OVER (PARTITION BY dataset, configuration)
ORDER BY dataset, method <> $zero_shot, configuration
"""

# Few-shot protocol (view few_shot_results), with CoOp's first panel: the average over datasets of the points that
# were measured on every dataset (std left out: it is not a mean over seeds).
FEW_SHOT_SQL = _LABELLED_RESULTS + """,
few_shot AS (
    SELECT f.dataset, l.configuration, f.method = $zero_shot OR f.shots = 0 AS is_zero_shot, f.shots, f.mean, f.std,
           f.n_seeds
    FROM few_shot_results AS f JOIN labels AS l USING (backbone, method, options)
),
dataset_count AS (SELECT count(DISTINCT dataset) AS n FROM few_shot)
SELECT 0 AS panel, 'Average over ' || n || ' datasets' AS dataset, configuration, is_zero_shot, shots,
       avg(mean) AS mean, NULL::DOUBLE AS std, NULL::BIGINT AS n_seeds
FROM few_shot CROSS JOIN dataset_count
GROUP BY configuration, is_zero_shot, shots, n
HAVING count(DISTINCT dataset) = n AND n > 1
UNION ALL
SELECT 1, dataset, configuration, is_zero_shot, shots, mean, std, n_seeds FROM few_shot
ORDER BY panel, dataset, is_zero_shot DESC, configuration, shots
"""

# Transfer protocols (views cross_dataset_results / domain_generalization_results): one row per configuration,
# source and role ('source', 'target', 'average').
_TRANSFER_SQL = _LABELLED_RESULTS + """
SELECT t.source_dataset, t.role, t.dataset, coalesce(l.configuration, t.method) AS configuration, t.shots,
       t.mean, t.std, t.n_seeds, t.n_targets
FROM transfer_view AS t LEFT JOIN labels AS l USING (backbone, method, options)
ORDER BY t.source_dataset, t.method <> $zero_shot, configuration, t.shots, t.role, t.dataset
"""
CROSS_DATASET_TRANSFER_SQL = _TRANSFER_SQL.replace("transfer_view", "cross_dataset_results")
DOMAIN_GENERALIZATION_SQL = _TRANSFER_SQL.replace("transfer_view", "domain_generalization_results")

BASE_TO_NEW_SQL = _LABELLED_RESULTS + """
SELECT r.dataset, l.configuration, r.shots, r.base_accuracy, r.base_std, r.new_accuracy, r.new_std,
       r.harmonic_mean, r.n_seeds
FROM base_to_new_results AS r JOIN labels AS l USING (backbone, method, options)
ORDER BY r.dataset, r.method <> $zero_shot, l.configuration, r.shots
"""

BASE_TO_NEW_AVERAGES_SQL = _LABELLED_RESULTS + """
SELECT l.configuration, a.shots, a.base_accuracy, a.new_accuracy, a.harmonic_mean, a.n_datasets
FROM base_to_new_averages AS a JOIN labels AS l USING (backbone, method, options)
ORDER BY a.method <> $zero_shot, l.configuration, a.shots
"""

# One base-to-new configuration per method for the published-pattern checks: the plain one (zero-shot with the
# dataset's template, each tuned method's base_to_new run without further variants).
PATTERN_AVERAGES_SQL = _LABELLED_RESULTS + """
SELECT a.method, l.configuration, a.base_accuracy, a.new_accuracy, a.harmonic_mean, a.n_datasets
FROM base_to_new_averages AS a JOIN labels AS l USING (backbone, method, options)
WHERE l.configuration IN (a.method, a.method || ' + base_to_new')
ORDER BY a.method
"""

# The same configurations per seed, for the seed spread of each margin; a seed enters only where it was scored on
# every dataset of its configuration's average.
PATTERN_SEED_AVERAGES_SQL = _LABELLED_RESULTS + """
SELECT s.method, s.seed, s.base_accuracy, s.new_accuracy, s.harmonic_mean
FROM base_to_new_seed_averages AS s
JOIN labels AS l USING (backbone, method, options)
JOIN base_to_new_averages AS a USING (backbone, method, shots, options)
WHERE l.configuration IN (s.method, s.method || ' + base_to_new') AND s.n_datasets = a.n_datasets
ORDER BY s.method, s.seed
"""

# Per-seed test top-1 of the plain few-shot configurations (zero-shot with the dataset's template, each method without
# variants), for CoOp's few-shot claims.
FEW_SHOT_PATTERN_SQL = _LABELLED_RESULTS + """
SELECT r.dataset, r.method, r.shots, r.seed, avg(r.value) AS value
FROM current_results AS r JOIN labels AS l USING (backbone, method, options)
WHERE r.stage = 'evaluation' AND r.source_dataset IS NULL AND r.split = 'test' AND r.metric = 'top1_accuracy'
  AND json_extract_string(r.options, '$.protocol') IS NULL AND l.configuration = r.method
GROUP BY r.dataset, r.method, r.shots, r.seed
ORDER BY r.dataset, r.method, r.shots, r.seed
"""

OTHER_EVALUATION_SPLITS_SQL = _LABELLED_RESULTS + """
SELECT dataset, split, configuration, shots, mean, std, n_seeds
FROM labelled WHERE metric = 'top1_accuracy' AND split NOT IN ('test', 'base', 'new')
ORDER BY dataset, split, method <> $zero_shot, configuration, shots
"""

STAGE_RESULTS_SQL = """
SELECT stage, dataset, method, shots, options, split, metric, mean, std, n_seeds
FROM results_by_config WHERE stage = $stage
ORDER BY dataset, method, shots, options, split, metric
"""

OTHER_STAGES_SQL = """
SELECT DISTINCT stage FROM runs
WHERE is_current AND stage NOT IN ('evaluation', 'pseudolabels', 'cross_dataset', 'domain_generalization',
                                   'test_time')
ORDER BY stage
"""

RUNS_BY_STAGE_SQL = """
SELECT stage, count(*) AS runs, count(*) FILTER (WHERE is_current) AS current_runs,
       count(DISTINCT dataset) AS datasets, min(started_at) AS first_started_at, max(finished_at) AS last_finished_at
FROM runs GROUP BY stage ORDER BY stage
"""

PROVENANCE_SQL = """
WITH facts AS (
    SELECT 'code version' AS field, coalesce(code_version, '(none)') AS value, is_current FROM runs
    UNION ALL SELECT 'git commit', coalesce(git_commit, '(none)'), is_current FROM runs
    UNION ALL SELECT 'backbone (weights sha256)',
                     backbone || ' (' || coalesce(backbone_weights_sha256, 'unknown') || ')', is_current FROM runs
    UNION ALL SELECT 'config hash', config_hash, is_current FROM runs
    UNION ALL SELECT 'data hash (' || dataset || ')', coalesce(data_hash, '(none)'), is_current FROM runs
    UNION ALL SELECT 'computed on', coalesce(compute, '(not recorded)'), is_current FROM runs
)
SELECT field, value, count(*) AS runs, count(*) FILTER (WHERE is_current) AS current_runs
FROM facts GROUP BY field, value ORDER BY field, current_runs DESC, value
"""

CURRENT_CODE_VERSIONS_SQL = """
SELECT count(DISTINCT coalesce(code_version, '(none)')) AS n_code_versions FROM runs WHERE is_current
"""


@dataclass(frozen=True)
class ReportSummary:
    """Where the report went and its key numbers (fractions, not percent) for callers and logs."""

    html_path: Path
    is_empty: bool
    num_runs: int
    num_current_runs: int
    datasets: tuple[str, ...]
    mean_zero_shot_top1: float | None  # test top-1 of zero-shot averaged over datasets
    mean_best_trained_top1: float | None  # per dataset the best trained configuration, averaged over datasets
    # "<configuration> (<shots> shots)" -> test top-1 averaged over the datasets that configuration ran on
    mean_top1_by_method: dict[str, float] = field(default_factory=dict)
    # "<configuration> (<shots> shots)" -> harmonic mean of the dataset-averaged base and new top-1
    harmonic_mean_by_method: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------- formatting
def _is_fraction_metric(metric: str) -> bool:
    return metric.endswith(_FRACTION_METRIC_SUFFIXES)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.2f}"


def _seeds(n_seeds: int | None) -> str:
    return "" if n_seeds is None else f" ({n_seeds} seed{'s' if n_seeds != 1 else ''})"


def format_mean_std(mean: float | None, std: float | None, n_seeds: int | None, percent: bool = True) -> str:
    """'mean ± std (n seeds)', in percent with two decimals for fractions; '–' when there is no value."""
    if mean is None:
        return "–"
    if percent:
        return f"{100.0 * mean:.2f} ± {100.0 * (std or 0.0):.2f}{_seeds(n_seeds)}"
    return f"{mean:.4g} ± {(std or 0.0):.4g}{_seeds(n_seeds)}"


def _signed_points(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:+.2f}"


def _label(configuration: str, shots: int) -> str:
    return f"{configuration} ({shots} shots)"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric_columns: Iterable[int] = (),
           measured_columns: Iterable[int] = ()) -> str:
    """An HTML table; `measured_columns` hold the machine's measurements (times, speeds, memory; class "measured"):
    the only cells that may differ between two runs of the same results (bench/reproducibility.py masks them)."""
    numeric, measured = set(numeric_columns), set(measured_columns)

    def cell(index: int, value: Any) -> str:
        classes = " ".join(name for name, member in (("num", index in numeric), ("measured", index in measured))
                           if member)
        return f"<td class=\"{classes}\">{html.escape(str(value))}</td>" if classes else \
            f"<td>{html.escape(str(value))}</td>"

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(cell(i, c) for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _section(title: str, *parts: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{''.join(parts)}</section>"


def _paragraph(text: str, css_class: str = "") -> str:
    class_attribute = f' class="{css_class}"' if css_class else ""
    return f"<p{class_attribute}>{html.escape(text)}</p>"


def _figure_to_image(figure: Figure, alt: str) -> str:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    # No software/version metadata, so the same numbers give the same bytes.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f4f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
.muted { color: #666; } .empty { font-size: 1.2em; padding: 1.5em; background: #f6f8fa; border-radius: 6px; }
.warning { color: #8a5300; background: #fff7e6; padding: 0.5em; border-radius: 4px; }
img { max-width: 100%; }
"""


def _document(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------- charts
_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974",
           "#64B5CD")


def _bar_chart(results: pl.DataFrame) -> str:
    datasets = results["dataset"].unique(maintain_order=True).to_list()
    configurations = results["configuration"].unique(maintain_order=True).to_list()
    width = 0.8 / len(configurations)
    figure = Figure(figsize=(max(6.0, 1.2 * len(datasets) * max(1, len(configurations)) * 0.5 + 2), 4.2))
    axes = figure.add_subplot()
    for index, configuration in enumerate(configurations):
        rows = results.filter(pl.col("configuration") == configuration)
        positions = [datasets.index(d) + (index - (len(configurations) - 1) / 2) * width for d in rows["dataset"]]
        axes.bar(positions, (rows["mean"] * 100).to_list(), width, yerr=(rows["std"] * 100).to_list(), capsize=3,
                 label=configuration, color=_COLORS[index % len(_COLORS)])
    axes.set_xticks(range(len(datasets)), datasets, rotation=20, ha="right")
    axes.set_ylabel("test top-1 accuracy (%)")
    axes.set_title("Top-1 per dataset (largest shot count; error bars: std over seeds)")
    axes.legend(fontsize="small", ncols=min(4, len(configurations)))
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return _figure_to_image(figure, "grouped bar chart of test top-1 accuracy per dataset and method")


def _shot_curves(results: pl.DataFrame) -> str:
    datasets = results["dataset"].unique(maintain_order=True).to_list()
    configurations = results["configuration"].unique(maintain_order=True).to_list()
    columns = min(4, len(datasets))
    rows_of_plots = (len(datasets) + columns - 1) // columns
    figure = Figure(figsize=(3.4 * columns, 2.9 * rows_of_plots))
    for plot_index, dataset in enumerate(datasets):
        axes = figure.add_subplot(rows_of_plots, columns, plot_index + 1)
        of_dataset = results.filter(pl.col("dataset") == dataset)
        for index, configuration in enumerate(configurations):
            rows = of_dataset.filter(pl.col("configuration") == configuration)
            if rows.height == 0:
                continue
            color = _COLORS[index % len(_COLORS)]
            if rows["is_zero_shot"][0] or rows["shots"].max() == 0:
                axes.axhline(rows["mean"][0] * 100, color=color, linestyle="--", label=configuration)
            else:
                rows = rows.filter(pl.col("shots") > 0)
                # panels of averages over datasets carry no std
                errors = None if rows["std"].is_null().all() else (rows["std"].fill_null(0.0) * 100).to_list()
                axes.errorbar(rows["shots"].to_list(), (rows["mean"] * 100).to_list(), yerr=errors, marker="o",
                              capsize=3, color=color, label=configuration)
        shot_counts = sorted(set(of_dataset["shots"].to_list()) - {0})
        if shot_counts:
            # Few-shot protocols double the shots (1, 2, 4, 8, 16): a log2 axis spaces them evenly.
            axes.set_xscale("log", base=2)
            axes.set_xticks(shot_counts, [str(count) for count in shot_counts])
            axes.minorticks_off()
        axes.set_title(dataset, fontsize="medium")
        axes.set_xlabel("shots per class")
        axes.set_ylabel("test top-1 (%)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small")
    figure.tight_layout()
    return _figure_to_image(figure, "test top-1 accuracy against shots per class, one panel per dataset")


# --------------------------------------------------------------------------------------------------- sections
def _headline_section(warehouse: Warehouse, params: dict) -> tuple[str, dict[str, float], float | None, float | None]:
    per_dataset = warehouse.query(HEADLINE_SQL, params)
    if per_dataset.height == 0:
        return _section("Headline", _paragraph("No test results of evaluation runs yet.", "muted")), {}, None, None
    average = warehouse.query(HEADLINE_AVERAGE_SQL, params).row(0, named=True)
    rows = [
        (r["dataset"], _percent(r["zero_shot_top1"]),
         "–" if r["best_configuration"] is None else _label(r["best_configuration"], r["best_shots"]),
         format_mean_std(r["best_top1"], r["best_std"], r["best_n_seeds"]), _signed_points(r["gain"]))
        for r in per_dataset.iter_rows(named=True)
    ]
    rows.append((
        f"Average ({average['n_zero_shot_datasets']} / {average['n_best_datasets']} datasets)",
        _percent(average["mean_zero_shot_top1"]), "best per dataset", _percent(average["mean_best_top1"]),
        _signed_points(average["mean_gain"]),
    ))
    headline = _table(["Dataset", "Zero-shot top-1 (%)", "Best trained configuration", "Best top-1 (%)",
                       "Gain (points)"], rows, numeric_columns=(1, 3, 4))
    averages = warehouse.query(CONFIGURATION_AVERAGES_SQL, params)
    by_method = {_label(r["configuration"], r["shots"]): r["mean_top1"] for r in averages.iter_rows(named=True)}
    averages_table = _table(
        ["Configuration", "Shots", "Mean test top-1 over datasets (%)", "Datasets"],
        [(r["configuration"], r["shots"], _percent(r["mean_top1"]), r["n_datasets"])
         for r in averages.iter_rows(named=True)],
        numeric_columns=(1, 2, 3),
    )
    section = _section(
        "Headline",
        _paragraph(f"Zero-shot is method '{params['zero_shot']}'; the best trained configuration is chosen per "
                   "dataset by mean test top-1 over seeds."),
        headline,
        "<h3>Average over datasets, per configuration</h3>",
        averages_table,
    )
    return section, by_method, average["mean_zero_shot_top1"], average["mean_best_top1"]


def _cross_dataset_section(warehouse: Warehouse, params: dict) -> str:
    results = warehouse.query(CROSS_DATASET_SQL, params)
    if results.height == 0:
        return ""
    rows = [
        (r["dataset"], r["configuration"], r["shots"], format_mean_std(r["top1_mean"], r["top1_std"], r["top1_seeds"]),
         format_mean_std(r["macro_f1_mean"], r["macro_f1_std"], r["macro_f1_seeds"]),
         format_mean_std(r["ece_mean"], r["ece_std"], r["ece_seeds"]))
        for r in results.iter_rows(named=True)
    ]
    return _section(
        "Results per dataset (test split)",
        _paragraph("Mean ± sample std over seeds, in percent; lower ECE is better calibrated.", "muted"),
        _table(["Dataset", "Configuration", "Shots", "Top-1 (%)", "Macro-F1 (%)", "ECE (%)"], rows,
               numeric_columns=(2, 3, 4, 5)),
    )


def _charts_section(warehouse: Warehouse, params: dict) -> str:
    bars = warehouse.query(BAR_CHART_SQL, params)
    if bars.height == 0:
        return ""
    return _section("Charts", _bar_chart(bars))


def _configuration_name(configuration: str, shots: int) -> str:
    return configuration if shots == 0 else _label(configuration, shots)


def _percent_pm(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{100.0 * mean:.2f} ± {100.0 * (std or 0.0):.2f}"


def _side_by_side(blocks: Iterable[tuple[str, str]]) -> str:
    """Small titled tables tiled across the page, as the papers print one small table per dataset."""
    tiles = "".join(f"<div><h3>{html.escape(title)}</h3>{table}</div>" for title, table in blocks)
    return f'<div style="display: flex; flex-wrap: wrap; gap: 0 1.5em;">{tiles}</div>'


def _few_shot_section(warehouse: Warehouse, params: dict) -> str:
    """CoOp's few-shot figure (top-1 against K, zero-shot as a flat line, one small panel per dataset) and table."""
    results = warehouse.query(FEW_SHOT_SQL, params)
    per_dataset = results.filter(pl.col("panel") == 1)
    trained_shot_counts = (per_dataset.filter(~pl.col("is_zero_shot")).group_by("dataset", "configuration")
                           .agg(pl.col("shots").n_unique().alias("n")))
    if trained_shot_counts.filter(pl.col("n") > 1).height == 0:
        return ""  # no shot axis to draw
    shots = sorted(set(results["shots"].to_list()))
    cells: dict[tuple[str, str], dict[int, str]] = {}
    for r in results.iter_rows(named=True):
        cells.setdefault((r["dataset"], r["configuration"]), {})[r["shots"]] = (
            _percent(r["mean"]) if r["std"] is None else format_mean_std(r["mean"], r["std"], r["n_seeds"]))
    rows = [(dataset, configuration, *[by_shots.get(k, "") for k in shots])
            for (dataset, configuration), by_shots in cells.items()]
    return _section(
        "Few-shot learning",
        _paragraph("Test top-1 (%) against labelled images per class (K), mean ± std over seeds; zero-shot is the "
                   "flat dashed line (0 shots). The average panel averages the points measured on every dataset.",
                   "muted"),
        _shot_curves(results.select("dataset", "configuration", "is_zero_shot", "shots", "mean", "std")),
        _table(["Dataset", "Configuration", *[f"{k} shot{'s' if k != 1 else ''}" for k in shots]], rows,
               numeric_columns=range(2, 2 + len(shots))),
    )


LIMITED_LABEL_SEED_SQL = """
SELECT dataset, method, strategy, setting, seed, score FROM limited_label_seed_results WHERE score IS NOT NULL
ORDER BY dataset, method, strategy, setting, seed
"""
LIMITED_LABEL_SQL = """
SELECT * FROM (
    SELECT dataset, method, strategy, setting, mean, std, n_seeds FROM limited_label_results
    UNION ALL
    SELECT NULL, method, strategy, setting, mean, std, n_seeds FROM limited_label_averages
)
ORDER BY method <> 'zero_shot', method, strategy, setting, dataset
"""

# Pseudolabel accuracy per round (against the hidden labels) of the learning settings' runs (a few-shot FPL run has
# one round and no setting), averaged over datasets per seed, then over seeds.
PSEUDOLABEL_ROUNDS_SQL = """
WITH per_seed AS (
    SELECT method, strategy, setting, round, seed, avg(value) AS value, count(DISTINCT dataset) AS n_datasets
    FROM pseudolabel_rounds WHERE metric = 'pseudolabel_accuracy' AND setting IS NOT NULL
    GROUP BY ALL
)
SELECT method, strategy, setting, round, avg(value) AS mean, stddev_samp(value) AS std, count(*) AS n_seeds,
       max(n_datasets) AS n_datasets
FROM per_seed GROUP BY ALL
ORDER BY setting, method, strategy, round
"""


def _pseudolabel_round_curves(rounds: pl.DataFrame) -> str:
    """Pseudolabel accuracy against round, one panel per learning setting, a line per method x strategy."""
    settings = [s for s in ("ssl", "ul", "trzsl") if s in set(rounds["setting"].to_list())]
    figure = Figure(figsize=(3.6 * len(settings), 3.0))
    for plot_index, setting in enumerate(settings):
        axes = figure.add_subplot(1, len(settings), plot_index + 1)
        of_setting = rounds.filter(pl.col("setting") == setting)
        lines = of_setting.select("method", "strategy").unique(maintain_order=True).rows()
        for index, (method, strategy) in enumerate(lines):
            line = of_setting.filter((pl.col("method") == method) & (pl.col("strategy") == strategy)).sort("round")
            errors = None if line["std"].is_null().all() else (line["std"].fill_null(0.0) * 100).to_list()
            axes.errorbar(line["round"].to_list(), (line["mean"] * 100).to_list(), yerr=errors, marker="o",
                          markersize=3, capsize=2, color=_COLORS[index % len(_COLORS)],
                          label=f"{method} {strategy.upper()}")
        axes.set_title(setting.upper(), fontsize="medium")
        axes.set_xlabel("round (0: zero-shot)")
        axes.set_ylabel("pseudolabel accuracy (%)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="x-small")
    figure.tight_layout()
    return _figure_to_image(figure, "pseudolabel accuracy against round, one panel per learning setting")


def _limited_label_section(warehouse: Warehouse) -> str:
    """Menghini et al.'s main table: rows are method x pseudolabel strategy, columns SSL / UL / TRZSL (HM) per dataset
    and averaged; zero-shot is the reference row. Then whether GRIP >= IFPL >= FPL and iterative > zero-shot in UL
    hold on the datasets both rows ran, beyond twice the seed std."""
    from models.evaluation.phenomena import limited_label_pattern_checks

    results = warehouse.query(LIMITED_LABEL_SQL)
    if results.height == 0:
        return ""
    settings = ("ssl", "ul", "trzsl")
    datasets = sorted({d for d in results["dataset"].to_list() if d is not None}) + [None]
    cells: dict[tuple[str, str], dict[tuple, str]] = {}
    for r in results.iter_rows(named=True):
        cells.setdefault((r["method"], r["strategy"]), {})[(r["dataset"], r["setting"])] = format_mean_std(
            r["mean"], r["std"], r["n_seeds"])
    columns = [(d, s) for d in datasets for s in settings]
    rows = [(method, strategy, *[by.get(c, "") for c in columns]) for (method, strategy), by in cells.items()]
    try:
        checks = [(c.claim, _percent(c.value), _percent(c.reference_value), f"{100 * c.margin:+.1f}",
                   f"{100 * c.spread:.1f}", c.n_seeds, c.verdict, c.reason, ", ".join(c.datasets))
                  for c in limited_label_pattern_checks(warehouse.query(LIMITED_LABEL_SEED_SQL))]
    except ValueError as error:  # several option variants of one configuration: no check picks one silently
        checks, why_unchecked = [], f"The pattern is not checked: {error}."
    else:
        why_unchecked = "No strategy pair ran in the same setting yet."
    return _section(
        "Limited-label settings and pseudolabels",
        _paragraph("Menghini et al.'s table: SSL and UL score test top-1 on all classes, TRZSL the harmonic mean of "
                   "seen and unseen top-1 (both among all classes); mean ± std over seeds; the last columns average "
                   "the datasets (per seed, then over seeds). Strategy 'none': the setting's labels alone.", "muted"),
        _table(["Method", "Strategy", *[f"{d or 'average'} {s.upper()}" for d, s in columns]], rows,
               numeric_columns=range(2, 2 + len(columns))),
        _paragraph("Checks (Menghini et al.: GRIP ≥ IFPL ≥ FPL on average, iterative strategies above zero-shot in UL): "
                   "each compares two rows on the datasets both ran, per seed averaged over those datasets, then "
                   "over seeds; 'shown' when the margin exceeds twice the larger seed std, 'contradicted' when it "
                   "falls below minus that, 'not shown' in between or with fewer than two seeds (no spread).",
                   "muted"),
        _table(["Claim", "Value (%)", "Against (%)", "Margin (points)", "2 × seed std", "Seeds", "Verdict", "Why",
                "Datasets"], checks)
        if checks else _paragraph(why_unchecked, "muted"),
        *_pseudolabel_rounds_parts(warehouse),
    )


def _pseudolabel_rounds_parts(warehouse: Warehouse) -> list[str]:
    """The per-round pseudolabel accuracy: a plot and its table (view pseudolabel_rounds, all its metrics)."""
    rounds = warehouse.query(PSEUDOLABEL_ROUNDS_SQL)
    if rounds.height == 0:
        return []
    rows = [(r["setting"].upper(), r["method"], r["strategy"].upper(), r["round"],
             format_mean_std(r["mean"], r["std"], r["n_seeds"]), r["n_datasets"]) for r in rounds.iter_rows(named=True)]
    return [
        _paragraph("Pseudolabel accuracy per round against the hidden training labels (round 0: the zero-shot "
                   "selection), averaged over datasets per seed, then mean ± std over seeds. Coverage and "
                   "calibration per round: the view pseudolabel_rounds.", "muted"),
        _pseudolabel_round_curves(rounds),
        _table(["Setting", "Method", "Strategy", "Round", "Pseudolabel accuracy (%)", "Datasets"], rows,
               numeric_columns=(3, 4, 5)),
    ]


def _base_to_new_section(warehouse: Warehouse, params: dict) -> tuple[str, dict[str, float]]:
    results = warehouse.query(BASE_TO_NEW_SQL, params)
    if results.height == 0:
        return "", {}
    averages = warehouse.query(BASE_TO_NEW_AVERAGES_SQL, params)
    n_datasets = results["dataset"].n_unique()
    blocks = [(f"Average over {n_datasets} dataset{'s' if n_datasets != 1 else ''}", _table(
        ["Configuration", "Base (%)", "New (%)", "HM (%)", "Datasets"],
        [(_configuration_name(r["configuration"], r["shots"]), _percent(r["base_accuracy"]),
          _percent(r["new_accuracy"]), _percent(r["harmonic_mean"]), r["n_datasets"])
         for r in averages.iter_rows(named=True)], numeric_columns=(1, 2, 3, 4)))]
    for dataset in results["dataset"].unique(maintain_order=True).to_list():
        blocks.append((dataset, _table(
            ["Configuration", "Base (%)", "New (%)", "HM (%)", "Seeds"],
            [(_configuration_name(r["configuration"], r["shots"]), _percent_pm(r["base_accuracy"], r["base_std"]),
              _percent_pm(r["new_accuracy"], r["new_std"]), _percent(r["harmonic_mean"]), r["n_seeds"])
             for r in results.filter(pl.col("dataset") == dataset).iter_rows(named=True)],
            numeric_columns=(1, 2, 3, 4))))
    harmonic_by_method = {_label(r["configuration"], r["shots"]): r["harmonic_mean"]
                          for r in averages.iter_rows(named=True)}
    section = _section(
        "Base-to-new generalization",
        _paragraph("Top-1 (%) on base and new classes of configurations trained on the base half (protocol "
                   "base_to_new) and of zero-shot; mean ± std over seeds. HM = 2·B·N / (B + N) of the seed means, "
                   "computed in SQL; the average table takes the HM of the dataset-averaged base and new accuracies, "
                   "as the papers do.", "muted"),
        _side_by_side(blocks),
    )
    return section, harmonic_by_method


_PATTERN_HEADERS = ["Claim", "Method", "Value (%)", "Against", "Its value (%)", "Margin (points)",
                    "Seed std (points)", "Seeds", "Verdict", "Why"]


def _pattern_table(checks) -> str:
    rows = [(check.claim, check.method, _percent(check.value), check.reference, _percent(check.reference_value),
             _signed_points(check.margin), f"{100.0 * check.seed_std:.2f}", check.n_seeds, check.verdict,
             check.reason) for check in checks]
    return _table(_PATTERN_HEADERS, rows, numeric_columns=(2, 4, 5, 6, 7))


def _verdict_rule(thresholds: str) -> str:
    from models.evaluation.phenomena import SPREADS_TO_SHOW

    return (f"'shown': the margin clears the claim's threshold ({thresholds}) by more than {SPREADS_TO_SHOW:g} seed "
            f"stds; 'contradicted': it falls short of it by more than {SPREADS_TO_SHOW:g} seed stds; 'not shown': "
            "in between, or fewer than 2 seeds.")


def _published_pattern_section(warehouse: Warehouse) -> str:
    from models.evaluation.phenomena import COOP_NEW_CLASS_DROP, published_pattern_checks

    averages = warehouse.query(PATTERN_AVERAGES_SQL)
    checks = published_pattern_checks(averages, warehouse.query(PATTERN_SEED_AVERAGES_SQL)) if averages.height else []
    if not checks:
        return ""
    return _section(
        "Does the published base-to-new pattern appear?",
        _paragraph("The papers report (ViT-B/16, 11 datasets) that tuning beats zero-shot on base classes, that "
                   f"CoOp falls below zero-shot on new classes, by at least {100 * COOP_NEW_CLASS_DROP:g} points, "
                   "and that CoCoOp, KgCoOp, MaPLe and PromptSRC recover harmonic mean over CoOp. Each claim is "
                   "checked here on the base-to-new averages above (base and new: accuracy; HM: harmonic mean). "
                   "Margin: how many points the numbers go the published way (negative: the other way). Seed std: "
                   "the sample std over seeds of that margin, each seed's base and new averaged over the datasets "
                   "first; zero-shot is deterministic and adds no spread, against CoOp the seeds both ran are "
                   f"paired. {_verdict_rule(f'0, or {100 * COOP_NEW_CLASS_DROP:g} points')}", "muted"),
        _pattern_table(checks),
    )


def _few_shot_pattern_section(warehouse: Warehouse) -> str:
    from models.evaluation.phenomena import COOP_FEW_SHOT_GAIN, few_shot_pattern_checks

    results = warehouse.query(FEW_SHOT_PATTERN_SQL)
    checks = few_shot_pattern_checks(results) if results.height else []
    if not checks:
        return ""
    return _section(
        "Does the published few-shot pattern appear?",
        _paragraph("CoOp (Figure 3: 11 datasets) reports that 16-shot CoOp beats zero-shot CLIP (by about 15 points "
                   f"with ViT-B/16; checked here as beating it, and by at least {100 * COOP_FEW_SHOT_GAIN:g} "
                   "points), that the linear probe falls below zero-shot at 1 shot and overtakes it by 16 shots, and "
                   "that CoOp stays above the linear probe. Each claim compares the two configurations (plain, "
                   "without variants) on the datasets where both ran, averaged over those datasets; seed std: the "
                   "std over seeds of that dataset-averaged margin (zero-shot adds no spread; against CoOp the seeds "
                   f"are paired). {_verdict_rule(f'0, or {100 * COOP_FEW_SHOT_GAIN:g} points')}", "muted"),
        _pattern_table(checks),
    )


def _transfer_section(warehouse: Warehouse, params: dict, sql: str, title: str, targets_name: str) -> str:
    """Rows: configurations; columns: the source, each target, the average over targets (mean ± std over seeds)."""
    results = warehouse.query(sql, params)
    if results.height == 0:
        return ""
    parts = [_paragraph(
        f"Test top-1 (%) of prompts learned on all classes of the source (its own test split in the first column), "
        f"applied to the class names of each {targets_name}; mean ± std over seeds. Average: over the targets, per "
        "seed, then over seeds. Zero-shot learned nothing from the source: its row is its own evaluation on each "
        "dataset.", "muted")]
    for source in results["source_dataset"].unique(maintain_order=True).to_list():
        of_source = results.filter(pl.col("source_dataset") == source)
        targets = sorted(of_source.filter(pl.col("role") == "target")["dataset"].unique().to_list())
        rows = []
        for (configuration, shots), group in of_source.group_by("configuration", "shots", maintain_order=True):
            by_column = {("average" if r["role"] == "average" else r["dataset"]): _percent_pm(r["mean"], r["std"])
                         for r in group.iter_rows(named=True)}
            rows.append((_configuration_name(configuration, shots), by_column.get(source, "–"),
                         *[by_column.get(target, "–") for target in targets], by_column.get("average", "–"),
                         group["n_seeds"].max()))
        header = ["Configuration", f"Source: {source}", *targets, "Average", "Seeds"]
        parts += [f"<h3>Source: {html.escape(source)}</h3>",
                  _table(header, rows, numeric_columns=range(1, len(header)))]
    return _section(title, *parts)


TEST_TIME_SEED_SQL = "SELECT * FROM test_time_seed_results"
TEST_TIME_DETAILS_SQL = """
SELECT coalesce(source_dataset, dataset) AS source_dataset, dataset, experiment_key,
       json_extract_string(options, '$.test_time.mode') AS mode, method, seed,
       max(value) FILTER (WHERE split = 'test' AND metric = 'top1_accuracy') AS top1,
       max(value) FILTER (WHERE split = 'before_tuning' AND metric = 'top1_accuracy') AS before_tuning,
       max(value) FILTER (WHERE metric = 'mean_views_kept') AS views_kept,
       max(value) FILTER (WHERE metric = 'mean_entropy_before') AS entropy_before,
       max(value) FILTER (WHERE metric = 'mean_entropy_after') AS entropy_after,
       max(value) FILTER (WHERE metric = 'images_per_second') AS images_per_second
FROM current_results WHERE stage = 'test_time'
GROUP BY ALL ORDER BY source_dataset, mode, experiment_key, dataset, seed
"""


def _test_time_section(warehouse: Warehouse) -> str:
    """TPT's table (rows: zero-shot, ensemble, trained checkpoints, TPT, TPT + checkpoint, DiffTPT; columns: the
    source, its shifted variants, their averages), the published pattern checks, and per-run diagnostics."""
    from models.evaluation.test_time_table import row_label, tpt_pattern_checks, tpt_tables

    seed_results = warehouse.query(TEST_TIME_SEED_SQL)
    if seed_results.height == 0:
        return ""
    parts = [_paragraph(
        "Test top-1 (%) of prompts tuned per test image on that image's views (TPT: the 10 % lowest-entropy of 64 "
        "augmented views, one AdamW step; DiffTPT: conventional and diffusion-generated views, cosine then entropy "
        "filter, 4 steps; settings in each run's lineage), and the untuned rows they start from or compare with: "
        "zero-shot, the prompt ensemble, the trained checkpoint (on the shifted variants: transferred, as in domain "
        "generalization). Mean ± std over seeds (the views' seed; a checkpoint's own seed). Average: over all "
        "columns, Shifts: over the shifted variants, per seed then over seeds.", "muted")]
    for table in tpt_tables(seed_results):
        columns = [*table.datasets, "average", "shifts"]
        rows = [(label, *[_percent_pm(cells[c].mean, cells[c].std) if c in cells else "–" for c in columns],
                 max(cell.n_seeds for cell in cells.values()))
                for label, cells in table.rows.items()]
        header = ["Row", f"{table.source} (source)", *table.datasets[1:], "Average", "Shifts", "Seeds"]
        parts += [f"<h3>Source: {html.escape(table.source)}</h3>",
                  _table(header, rows, numeric_columns=range(1, len(header)))]
    checks = tpt_pattern_checks(seed_results)
    if checks:
        parts += [_paragraph("Published pattern (TPT: above zero-shot in domain and on the shifts, TPT + CoOp above "
                             "CoOp on the shifts; DiffTPT: above TPT on average). " + _verdict_rule("0"), "muted"),
                  _pattern_table(checks)]
    details = warehouse.query(TEST_TIME_DETAILS_SQL)
    if details.height:
        rows = [(row_label(r["mode"], r["method"], r["experiment_key"]), r["dataset"], r["seed"], _percent(r["top1"]),
                 _percent(r["before_tuning"]), f"{r['views_kept']:.1f}" if r["views_kept"] is not None else "–",
                 f"{r['entropy_before']:.3f}" if r["entropy_before"] is not None else "–",
                 f"{r['entropy_after']:.3f}" if r["entropy_after"] is not None else "–",
                 f"{r['images_per_second']:.1f}" if r["images_per_second"] is not None else "–")
                for r in details.iter_rows(named=True)]
        parts += [_paragraph("Per run: top-1 after tuning and of the starting prompt on the original view (before "
                             "tuning), views kept per image, the average entropy of the kept views before and after "
                             "tuning, and test images per second.", "muted"),
                  _table(["Run", "Dataset", "Seed", "Top-1 (%)", "Before tuning (%)", "Views kept",
                          "Entropy before", "Entropy after", "Images/s"], rows, numeric_columns=range(2, 9),
                         measured_columns=(8,))]
    return _section("Test-time tuning (TPT, DiffTPT)", *parts)


def _other_splits_section(warehouse: Warehouse, params: dict) -> str:
    results = warehouse.query(OTHER_EVALUATION_SPLITS_SQL, params)
    if results.height == 0:
        return ""
    rows = [
        (r["dataset"], r["split"], r["configuration"], r["shots"], format_mean_std(r["mean"], r["std"], r["n_seeds"]))
        for r in results.iter_rows(named=True)
    ]
    return _section("Other evaluation splits (top-1)",
                    _table(["Dataset", "Split", "Configuration", "Shots", "Top-1 (%)"], rows, numeric_columns=(3, 4)))


def _stage_table(results: pl.DataFrame) -> str:
    rows = [
        (r["dataset"], r["method"], r["shots"], r["options"], r["split"], r["metric"],
         format_mean_std(r["mean"], r["std"], r["n_seeds"], percent=_is_fraction_metric(r["metric"])))
        for r in results.iter_rows(named=True)
    ]
    return _table(["Dataset", "Method", "Shots", "Options", "Split", "Metric", "Mean ± std"], rows,
                  numeric_columns=(2, 6))


def _pseudolabel_section(warehouse: Warehouse) -> str:
    results = warehouse.query(STAGE_RESULTS_SQL, {"stage": "pseudolabels"})
    if results.height == 0:
        return ""
    return _section(
        "Pseudolabel quality",
        _paragraph("Accuracy-like metrics in percent, counts as numbers; mean ± std over seeds.", "muted"),
        _stage_table(results),
    )


def _other_stages_section(warehouse: Warehouse) -> str:
    stages = warehouse.query(OTHER_STAGES_SQL)["stage"].to_list()
    parts = []
    for stage in stages:
        results = warehouse.query(STAGE_RESULTS_SQL, {"stage": stage})
        if results.height:
            parts += [f"<h3>{html.escape(stage)}</h3>", _stage_table(results)]
    return _section("Other stages", *parts) if parts else ""


def _provenance_section(warehouse: Warehouse) -> str:
    by_stage = warehouse.query(RUNS_BY_STAGE_SQL)
    facts = warehouse.query(PROVENANCE_SQL)
    code_versions = warehouse.query(CURRENT_CODE_VERSIONS_SQL)["n_code_versions"][0]
    parts = []
    if code_versions > 1:
        parts.append(_paragraph(f"Current results come from {code_versions} different code versions.", "warning"))
    parts.append(_table(
        ["Stage", "Runs", "Current runs", "Datasets", "First started (UTC)", "Last finished (UTC)"],
        [(r["stage"], r["runs"], r["current_runs"], r["datasets"], r["first_started_at"], r["last_finished_at"])
         for r in by_stage.iter_rows(named=True)],
        numeric_columns=(1, 2, 3),
    ))
    parts.append(_table(
        ["Field", "Value", "Runs", "Current runs"],
        [(r["field"], r["value"], r["runs"], r["current_runs"]) for r in facts.iter_rows(named=True)],
        numeric_columns=(2, 3),
    ))
    return _section("Provenance", *parts)


# ------------------------------------------------------------------------------------------------- throughput
_BENCHMARK_VIEW_EXISTS_SQL = """
SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'latest_benchmark'
"""
THROUGHPUT_SQL = """
SELECT benchmark, method, variant, batch_size, images_per_second, baseline_variant, speedup, target_speedup,
       meets_target, peak_rss_mb, rss_delta_mb, peak_cuda_mb, bench_run_id, finished_at, device, torch_version,
       backbone, backbone_weights_sha256, weights_source, dataset, git_commit, load_average
FROM latest_benchmark
ORDER BY benchmark = 'training' DESC, benchmark, backbone, device, dataset, bench_run_id, method, variant
"""
_VARIANT_ORDER = ("cached", "re-encoded", "image-prompted", "batched", "per-image")
_BENCHMARK_TITLES = {
    "training": ("Training", "training images/s of every method (`make bench`)"),
    "zero-shot-evaluation": ("Zero-shot evaluation", "test images/s, PromptLab with cold and warm caches against "
                             "CLIP_benchmark on the same model object (`python -m bench.clip_benchmark_compare`)"),
    "test-time": ("Test-time tuning", "test images/s of the batched loop against the authors' reference-style loop "
                  "(`make bench-testtime`)"),
}


def _throughput_chart(results: pl.DataFrame) -> str:
    labels = [f"{r['method']} ({r['variant']})" for r in results.iter_rows(named=True)]
    figure = Figure(figsize=(7.5, 0.8 + 0.32 * len(labels)))
    axes = figure.add_subplot()
    colors = [_COLORS[_VARIANT_ORDER.index(v) % len(_COLORS)] if v in _VARIANT_ORDER else _COLORS[-1]
              for v in results["variant"]]
    axes.barh(range(len(labels)), results["images_per_second"].to_list(), color=colors)
    axes.set_yticks(range(len(labels)), labels, fontsize="small")
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("training images per second (log scale)")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return _figure_to_image(figure, "horizontal bar chart of training images per second per method and variant")


def _benchmark_run_parts(results: pl.DataFrame) -> list[str]:
    """One benchmark run: what, where and how busy, its rows with their speed-ups and targets, missed targets."""
    run = results.row(0, named=True)
    title, measures = _BENCHMARK_TITLES.get(run["benchmark"], (run["benchmark"], "images/s"))
    load = "unknown" if run["load_average"] is None else f"{run['load_average']:.2f}"
    about = _paragraph(
        f"{title}: {measures}. Run {run['bench_run_id']}, finished {run['finished_at']} UTC on {run['device']} "
        f"(1-minute load {load} at its start), torch {run['torch_version']}, commit {run['git_commit'] or 'unknown'}; "
        f"backbone {run['backbone']} ({run['weights_source']}; weights {run['backbone_weights_sha256'][:12]}); "
        f"{run['dataset']}. Speed-up: images/s over the same method's baseline variant.", "muted")
    rows = []
    for r in results.iter_rows(named=True):
        speedup = "–" if r["speedup"] is None else f"{r['speedup']:.2f}x over {r['baseline_variant']}"
        target = ("" if r["target_speedup"] is None
                  else f"{r['target_speedup']:g}x: {'met' if r['meets_target'] else 'missed'}")
        rows.append((r["method"], r["variant"], r["batch_size"], f"{r['images_per_second']:.1f}", speedup, target,
                     f"{r['peak_rss_mb']:.0f}", f"{r['rss_delta_mb']:.1f}",
                     "–" if r["peak_cuda_mb"] is None else f"{r['peak_cuda_mb']:.0f}"))
    missed = [f"{r['method']} {r['variant']} reached {r['speedup']:.2f}x of its {r['target_speedup']:g}x target"
              for r in results.iter_rows(named=True) if r["meets_target"] is False]
    parts = [about, _table(["Method", "Variant", "Batch size", "Images/s", "Speed-up", "Target", "Peak RSS (MB)",
                            "Δ RSS (MB)", "Peak CUDA (MB)"], rows, numeric_columns=(2, 3, 6, 7, 8),
                    measured_columns=(3, 4, 5, 6, 7, 8))]
    if missed:
        parts.append(_paragraph("Targets missed: " + "; ".join(missed) + ".", "warning"))
    if run["benchmark"] == "training":
        parts.append(_throughput_chart(results))
    return parts


def _throughput_section(warehouse: Warehouse) -> str:
    """The latest run of each benchmark (bench/) on each backbone, device and dataset: images/s, speed-ups against
    targets, peak memory, the machine's load."""
    has_view = warehouse.query(_BENCHMARK_VIEW_EXISTS_SQL)["n"][0] > 0
    results = warehouse.query(THROUGHPUT_SQL) if has_view else pl.DataFrame()
    if results.height == 0:
        return _section("Throughput", _paragraph(
            "No throughput benchmark recorded yet. Run `make bench` (or `.venv/bin/python -m bench.throughput`) "
            "to measure training images/s of every method with and without the feature cache, batched CoCoOp "
            "against a per-image loop, and peak memory; then rebuild this report.", "muted"))
    parts = []
    for run_id in dict.fromkeys(results["bench_run_id"].to_list()):
        parts.extend(_benchmark_run_parts(results.filter(pl.col("bench_run_id") == run_id)))
    return _section("Throughput", *parts)


# ------------------------------------------------------------------------------------------------------- entry
def build_report(
    warehouse: Warehouse,
    html_path: Path,
    title: str = "PromptLab report",
    zero_shot_method: str = "zero_shot",
) -> ReportSummary:
    """Write the HTML report of the warehouse's current results to `html_path` and return its key numbers."""
    html_path = Path(html_path)
    # Read from the snapshot with the pending runs applied (Warehouse.query): never blocked by a reader of the file.
    has_results = warehouse.exists()
    counts = (warehouse.query(RUN_COUNTS_SQL).row(0, named=True) if has_results
              else {"runs": 0, "current_runs": 0, "latest_finished_at": None})
    if counts["runs"] == 0:
        body = _paragraph(f"No runs recorded yet in {warehouse.name}. Materialize the evaluation "
                          "assets, then rebuild this report.", "empty")
        _write_atomically(html_path, _document(title, body))
        return ReportSummary(html_path, True, 0, 0, (), None, None)

    params = {"zero_shot": zero_shot_method}
    datasets = tuple(warehouse.query(DATASETS_SQL)["dataset"].to_list())
    headline, by_method, mean_zero_shot, mean_best = _headline_section(warehouse, params)
    base_to_new, harmonic_by_method = _base_to_new_section(warehouse, params)
    plural = "s" if len(datasets) != 1 else ""
    overview = _paragraph(
        f"{counts['runs']} runs recorded ({counts['current_runs']} current) over {len(datasets)} dataset{plural}; "
        f"latest run finished {counts['latest_finished_at']} UTC. Source: {warehouse.name}.",
        "muted",
    )
    body = "".join([
        overview,
        headline,
        _cross_dataset_section(warehouse, params),
        _charts_section(warehouse, params),
        _few_shot_section(warehouse, params),
        _few_shot_pattern_section(warehouse),
        _limited_label_section(warehouse),
        base_to_new,
        _published_pattern_section(warehouse),
        _transfer_section(warehouse, params, CROSS_DATASET_TRANSFER_SQL, "Cross-dataset transfer", "other dataset"),
        _transfer_section(warehouse, params, DOMAIN_GENERALIZATION_SQL, "Domain generalization",
                          "domain-shifted variant of the source"),
        _test_time_section(warehouse),
        _other_splits_section(warehouse, params),
        _pseudolabel_section(warehouse),
        _other_stages_section(warehouse),
        _throughput_section(warehouse),
        _provenance_section(warehouse),
    ])
    _write_atomically(html_path, _document(title, body))
    return ReportSummary(
        html_path=html_path,
        is_empty=False,
        num_runs=counts["runs"],
        num_current_runs=counts["current_runs"],
        datasets=datasets,
        mean_zero_shot_top1=mean_zero_shot,
        mean_best_trained_top1=mean_best,
        mean_top1_by_method=by_method,
        harmonic_mean_by_method=harmonic_by_method,
    )
