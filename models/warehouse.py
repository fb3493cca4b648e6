"""The results warehouse: one DuckDB file plus one Parquet file of predictions per run.

Every result PromptLab produces is written through `Warehouse.record_run`, one row per fact with its full
provenance, so reports and dashboards are SQL over these tables and never parse logs.

Concurrency. DuckDB allows a single writing process, and a process holding the file read-only (a dashboard, the
DuckDB CLI) blocks writers. So no connection is ever kept open: every write opens the file, runs ONE short
transaction and closes it (closing checkpoints the write-ahead log, so readers see a complete file); every query
opens it read-only and closes it. When the file is locked by another process the open is retried with exponential
backoff and then fails with `WarehouseLockedError`, which names the file.

Schema (all accuracy-like values are fractions in [0, 1]; timestamps are UTC without a time zone):

- `experiments` (experiment_key PK, method, shots, seed, options JSON, config_hash): one row per experiment
  configuration, upserted by every run of it.
- `runs` (run_id PK, stage, dataset, experiment_key, partition_key, method, shots, seed, options JSON,
  dagster_run_id, code_version, config_hash, git_commit, backbone, backbone_weights_sha256, data_hash,
  templates JSON, started_at, finished_at, is_current, source_dataset, compute): every run ever recorded. Recording a
  run of a (stage, dataset, partition_key, source_dataset) marks the earlier runs of it `is_current = false`;
  they are kept. Recording a run whose backbone_weights_sha256 differs from that of current runs of the same
  backbone name (the backbone was retrained) supersedes those runs the same way, on every partition: results of
  old weights become history and never mix with the new ones (runs with a NULL hash are left alone).
  `source_dataset` is NULL for in-domain runs and names the dataset a prompt was trained on for transfer runs
  (stage `cross_dataset` / `domain_generalization`, dataset = the target). Warehouses written before the column
  existed get it (NULL: in-domain) the next time the schema is ensured. `compute` says where
  and at which precision the run was computed ("cpu fp32"; on CUDA the GPU and its autocast dtypes); NULL for
  runs recorded before the column existed.
- `metrics` (run_id, dataset, experiment_key, split, metric, value): rows of CURRENT runs only, so a query over
  it never double counts a re-materialized partition. PK (run_id, split, metric).
- `metrics_history`: the same columns + superseded_at, superseded_by_run_id: rows of superseded runs.
- `per_class_metrics` (run_id, dataset, split, label, classname, accuracy, f1, support) and
  `per_class_metrics_history` (+ superseded_at, superseded_by_run_id). accuracy / f1 are NULL where undefined
  (no support / neither support nor predictions).
- predictions: `<predictions_dir>/run_id=<run_id>.parquet` per run (run_id, dataset, split, relative_path,
  label, predicted_label, confidence), exposed by the view `predictions` over the current runs' files. The
  directory always holds an empty, typed `run_id=__empty__.parquet` so the view works before any run wrote one.
  The view stores the directory's absolute path: after moving the workspace, call `ensure_schema()` again.

Views: `current_results` (current runs joined with their metrics), `results_by_config` (mean / sample std /
number of seeds over the seeds of each configuration: stage, dataset, source_dataset, backbone, method, shots,
options, split, metric; std is 0 for a single seed). Protocol views (test top-1): `few_shot_results` (in-domain
configurations trained on all classes, and zero-shot at 0 shots, per dataset and shots), `base_to_new_results`
(per dataset, base_to_new configurations and zero-shot: mean base and new top-1 and the harmonic mean of those
means), `base_to_new_averages` (the same averaged over datasets, harmonic mean of the averages as the papers
report it), `base_to_new_seed_averages` (per configuration and seed, base and new averaged over datasets and their
harmonic mean: the seed spread behind those averages), `cross_dataset_results` and
`domain_generalization_results` (per configuration and source: the source's own test split, each target, and the
average over targets; mean / std over seeds; zero-shot and other 0-shot configurations appear with their own
evaluation on each dataset as the reference). Macros
`harmonic_mean(base, new)`, `transfer_seed_results(stage)`, `transfer_results(stage)`. `test_time_seed_results`: TPT
and DiffTPT runs (stage `test_time`) per seed and dataset, with their untuned reference rows (zero-shot, the
ensemble, the checkpoints they start from). `dashboards/README.md`
has examples.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

PREDICTIONS_FILE_PREFIX = "run_id="
EMPTY_PREDICTIONS_FILE = "run_id=__empty__.parquet"
PREDICTION_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "dataset": pl.String(),
    "split": pl.String(),
    "relative_path": pl.String(),
    "label": pl.Int64(),
    "predicted_label": pl.Int64(),
    "confidence": pl.Float64(),
}
# run_id becomes part of a file name, so it is limited to characters that are safe on every file system.
_RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


class WarehouseLockedError(RuntimeError):
    """The database file stayed locked by another process through every retry."""


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    stage: str  # 'evaluation' | 'pseudolabels' | ...
    dataset: str
    experiment_key: str
    partition_key: str
    method: str
    shots: int
    seed: int
    options: dict
    dagster_run_id: str | None
    code_version: str | None
    config_hash: str
    git_commit: str | None
    backbone: str
    backbone_weights_sha256: str | None
    data_hash: str | None
    templates: dict | list
    started_at: datetime
    finished_at: datetime
    # Transfer runs: the dataset the prompt was trained on (`dataset` is the target evaluated); None: in-domain.
    source_dataset: str | None = None
    # Where and at which precision it was computed (models.precision.compute_description), e.g. "cpu fp32".
    compute: str | None = None


@dataclass(frozen=True)
class MetricRow:
    split: str  # 'test' | 'base' | 'new' | 'all' | ...
    metric: str  # e.g. 'top1_accuracy', 'macro_f1', 'expected_calibration_error'
    value: float


@dataclass(frozen=True)
class PerClassRow:
    split: str
    label: int
    classname: str
    accuracy: float | None
    f1: float | None
    support: int


def metric_rows(split: str, values: Mapping[str, float]) -> list[MetricRow]:
    """MetricRows of one split from a {metric: value} mapping (e.g. ClassificationMetrics.scalar_metrics())."""
    return [MetricRow(split=split, metric=metric, value=float(value)) for metric, value in values.items()]


def per_class_rows(split: str, records: Iterable[Any]) -> list[PerClassRow]:
    """PerClassRows of one split from records with label, classname, accuracy, f1 and support attributes
    (e.g. ClassificationMetrics.per_class)."""
    return [
        PerClassRow(split, int(r.label), str(r.classname), r.accuracy, r.f1, int(r.support)) for r in records
    ]


_SCHEMA_TABLES = """
CREATE TABLE IF NOT EXISTS experiments (
    experiment_key VARCHAR PRIMARY KEY,
    method VARCHAR NOT NULL,
    shots INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    options JSON NOT NULL,
    config_hash VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    stage VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    experiment_key VARCHAR NOT NULL,
    partition_key VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    shots INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    options JSON NOT NULL,
    dagster_run_id VARCHAR,
    code_version VARCHAR,
    config_hash VARCHAR NOT NULL,
    git_commit VARCHAR,
    backbone VARCHAR NOT NULL,
    backbone_weights_sha256 VARCHAR,
    data_hash VARCHAR,
    templates JSON NOT NULL,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP NOT NULL,
    is_current BOOLEAN NOT NULL
);
ALTER TABLE runs ADD COLUMN IF NOT EXISTS source_dataset VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS compute VARCHAR;
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    experiment_key VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    value DOUBLE NOT NULL,
    PRIMARY KEY (run_id, split, metric)
);
CREATE TABLE IF NOT EXISTS metrics_history (
    run_id VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    experiment_key VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    value DOUBLE NOT NULL,
    superseded_at TIMESTAMP NOT NULL,
    superseded_by_run_id VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS per_class_metrics (
    run_id VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    label INTEGER NOT NULL,
    classname VARCHAR NOT NULL,
    accuracy DOUBLE,
    f1 DOUBLE,
    support INTEGER NOT NULL,
    PRIMARY KEY (run_id, split, label)
);
CREATE TABLE IF NOT EXISTS per_class_metrics_history (
    run_id VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    label INTEGER NOT NULL,
    classname VARCHAR NOT NULL,
    accuracy DOUBLE,
    f1 DOUBLE,
    support INTEGER NOT NULL,
    superseded_at TIMESTAMP NOT NULL,
    superseded_by_run_id VARCHAR NOT NULL
);
"""

_SCHEMA_VIEWS = """
CREATE OR REPLACE MACRO harmonic_mean(base, new) AS
    CASE WHEN base + new = 0 THEN 0.0 ELSE 2.0 * base * new / (base + new) END;
CREATE OR REPLACE VIEW current_results AS
    SELECT r.run_id, r.stage, r.dataset, r.experiment_key, r.partition_key, r.method, r.shots, r.seed,
           CAST(r.options AS VARCHAR) AS options, r.backbone, r.config_hash, r.code_version, r.git_commit,
           r.started_at, r.finished_at, m.split, m.metric, m.value, r.source_dataset
    FROM runs AS r JOIN metrics AS m ON m.run_id = r.run_id
    WHERE r.is_current;
CREATE OR REPLACE VIEW results_by_config AS
    SELECT stage, dataset, source_dataset, backbone, method, shots, options, split, metric,
           avg(value) AS mean,
           coalesce(stddev_samp(value), 0.0) AS std,
           count(DISTINCT seed) AS n_seeds,
           count(*) AS n_runs
    FROM current_results
    GROUP BY stage, dataset, source_dataset, backbone, method, shots, options, split, metric;
-- Few-shot protocol: in-domain test top-1 of every configuration trained on all classes (its options carry no
-- protocol), per shot count; zero-shot appears at 0 shots.
CREATE OR REPLACE VIEW few_shot_results AS
    SELECT dataset, backbone, method, shots, options, mean, std, n_seeds
    FROM results_by_config
    WHERE stage = 'evaluation' AND source_dataset IS NULL AND split = 'test' AND metric = 'top1_accuracy'
      AND json_extract_string(options, '$.protocol') IS NULL AND json_extract_string(options, '$.setting') IS NULL;
CREATE OR REPLACE VIEW base_to_new_results AS
    WITH per_config AS (
        SELECT dataset, backbone, method, shots, options,
               max(mean) FILTER (WHERE split = 'base') AS base_accuracy,
               max(std) FILTER (WHERE split = 'base') AS base_std,
               max(mean) FILTER (WHERE split = 'new') AS new_accuracy,
               max(std) FILTER (WHERE split = 'new') AS new_std,
               least(max(n_seeds) FILTER (WHERE split = 'base'), max(n_seeds) FILTER (WHERE split = 'new'))
                   AS n_seeds
        FROM results_by_config
        -- every evaluation scores base and new, but only base_to_new training leaves the new classes unseen;
        -- 0-shot configurations (zero-shot) saw no class and are the reference
        WHERE stage = 'evaluation' AND source_dataset IS NULL AND metric = 'top1_accuracy'
          AND split IN ('base', 'new')
          AND (shots = 0 OR json_extract_string(options, '$.protocol') = 'base_to_new')
          AND json_extract_string(options, '$.setting') IS NULL
        GROUP BY dataset, backbone, method, shots, options
    )
    SELECT *, harmonic_mean(base_accuracy, new_accuracy) AS harmonic_mean
    FROM per_config
    WHERE base_accuracy IS NOT NULL AND new_accuracy IS NOT NULL;
CREATE OR REPLACE VIEW base_to_new_averages AS
    SELECT backbone, method, shots, options,
           avg(base_accuracy) AS base_accuracy,
           avg(new_accuracy) AS new_accuracy,
           harmonic_mean(avg(base_accuracy), avg(new_accuracy)) AS harmonic_mean,
           count(*) AS n_datasets
    FROM base_to_new_results
    GROUP BY backbone, method, shots, options;
-- The seed spread behind base_to_new_averages: per configuration and seed, base and new top-1 averaged over the
-- datasets that seed was scored on (n_datasets), and the harmonic mean of those averages.
CREATE OR REPLACE VIEW base_to_new_seed_averages AS
    WITH per_dataset AS (
        SELECT dataset, backbone, method, shots, options, seed,
               avg(value) FILTER (WHERE split = 'base') AS base_accuracy,
               avg(value) FILTER (WHERE split = 'new') AS new_accuracy
        FROM current_results
        WHERE stage = 'evaluation' AND source_dataset IS NULL AND metric = 'top1_accuracy'
          AND split IN ('base', 'new')
          AND (shots = 0 OR json_extract_string(options, '$.protocol') = 'base_to_new')
          AND json_extract_string(options, '$.setting') IS NULL
        GROUP BY dataset, backbone, method, shots, options, seed
    )
    SELECT backbone, method, shots, options, seed,
           avg(base_accuracy) AS base_accuracy,
           avg(new_accuracy) AS new_accuracy,
           harmonic_mean(avg(base_accuracy), avg(new_accuracy)) AS harmonic_mean,
           count(*) AS n_datasets
    FROM per_dataset
    WHERE base_accuracy IS NOT NULL AND new_accuracy IS NOT NULL
    GROUP BY backbone, method, shots, options, seed;
-- Transfer protocols, one row per seed: the transferred checkpoints on each target (stage = the protocol), the same
-- checkpoints on their source's own test split, and 0-shot configurations (zero-shot), which learned nothing from
-- the source, with their own evaluation on the source and on every target of those transfers.
CREATE OR REPLACE MACRO transfer_seed_results(transfer_stage) AS TABLE
    WITH top1 AS (
        SELECT * FROM current_results WHERE split = 'test' AND metric = 'top1_accuracy'
    ),
    transferred AS (
        SELECT backbone, method, shots, options, seed, experiment_key, source_dataset, dataset, value
        FROM top1 WHERE stage = transfer_stage AND source_dataset IS NOT NULL
    ),
    in_domain AS (
        SELECT * FROM top1 WHERE stage = 'evaluation' AND source_dataset IS NULL
    ),
    on_source AS (
        SELECT i.backbone, i.method, i.shots, i.options, i.seed, i.experiment_key, i.dataset AS source_dataset,
               i.dataset, i.value
        FROM in_domain AS i
        SEMI JOIN (SELECT DISTINCT backbone, experiment_key, source_dataset FROM transferred) AS t
            ON i.backbone = t.backbone AND i.experiment_key = t.experiment_key AND i.dataset = t.source_dataset
    ),
    evaluated AS (
        SELECT DISTINCT backbone, source_dataset, dataset FROM transferred
        UNION SELECT DISTINCT backbone, source_dataset, source_dataset FROM transferred
    ),
    untrained AS (
        SELECT i.backbone, i.method, i.shots, i.options, i.seed, i.experiment_key, e.source_dataset, i.dataset,
               i.value
        FROM in_domain AS i JOIN evaluated AS e ON i.backbone = e.backbone AND i.dataset = e.dataset
        WHERE i.shots = 0 AND json_extract_string(i.options, '$.setting') IS NULL
    )
    SELECT *, dataset = source_dataset AS is_source
    FROM (SELECT * FROM transferred UNION ALL SELECT * FROM on_source UNION ALL SELECT * FROM untrained);
-- Per configuration and source: role 'source' (dataset = the source), 'target' (dataset = a target) and
-- 'average' (dataset NULL: per seed the mean over that seed's targets, then mean / std over seeds; n_targets).
CREATE OR REPLACE MACRO transfer_results(transfer_stage) AS TABLE
    WITH per_seed AS (
        SELECT * FROM transfer_seed_results(transfer_stage)
    ),
    seed_averages AS (
        SELECT backbone, method, shots, options, source_dataset, seed, avg(value) AS value,
               count(DISTINCT dataset) AS n_targets
        FROM per_seed WHERE NOT is_source
        GROUP BY backbone, method, shots, options, source_dataset, seed
    ),
    cells AS (
        SELECT backbone, method, shots, options, source_dataset, dataset,
               CASE WHEN is_source THEN 'source' ELSE 'target' END AS role, seed, value, NULL::BIGINT AS n_targets
        FROM per_seed
        UNION ALL
        SELECT backbone, method, shots, options, source_dataset, NULL, 'average', seed, value, n_targets
        FROM seed_averages
    )
    SELECT backbone, method, shots, options, source_dataset, dataset, role,
           avg(value) AS mean, coalesce(stddev_samp(value), 0.0) AS std, count(DISTINCT seed) AS n_seeds,
           max(n_targets) AS n_targets
    FROM cells
    GROUP BY backbone, method, shots, options, source_dataset, dataset, role;
CREATE OR REPLACE VIEW cross_dataset_results AS SELECT * FROM transfer_results('cross_dataset');
-- Limited-label settings (Menghini et al.), one row per run: SSL and UL score test top-1 on all classes, TRZSL the
-- harmonic mean of seen and unseen top-1 (both scored among all classes). strategy: the pseudolabel strategy, 'none'
-- without one. Plain zero-shot (no setting, no variant) is the reference row of SSL and UL; zero-shot with setting
-- trzsl (one run per split seed) that of TRZSL.
CREATE OR REPLACE VIEW limited_label_seed_results AS
    WITH scored AS (
        SELECT dataset, backbone, method, shots, seed, options,
               json_extract_string(options, '$.setting') AS run_setting,
               coalesce(json_extract_string(options, '$.pseudolabels.strategy'), 'none') AS strategy,
               max(value) FILTER (WHERE split = 'test' AND metric = 'top1_accuracy') AS top1,
               max(value) FILTER (WHERE split = 'seen' AND metric = 'top1_accuracy') AS seen_top1,
               max(value) FILTER (WHERE split = 'unseen' AND metric = 'top1_accuracy') AS unseen_top1,
               max(value) FILTER (WHERE split = 'seen_unseen' AND metric = 'harmonic_mean') AS seen_unseen_hm
        FROM current_results
        WHERE stage = 'evaluation' AND source_dataset IS NULL
        GROUP BY dataset, backbone, method, shots, seed, options
    )
    SELECT dataset, backbone, method, strategy, run_setting AS setting, seed, options,
           CASE WHEN run_setting = 'trzsl' THEN seen_unseen_hm ELSE top1 END AS score,
           top1, seen_top1, unseen_top1, seen_unseen_hm
    FROM scored WHERE run_setting IS NOT NULL
    UNION ALL
    SELECT dataset, backbone, method, strategy, reference.setting, seed, options, top1, top1, NULL, NULL, NULL
    FROM scored CROSS JOIN (VALUES ('ssl'), ('ul')) AS reference(setting)
    WHERE run_setting IS NULL AND shots = 0 AND method = 'zero_shot'
      AND json_extract_string(options, '$.variant') IS NULL;
CREATE OR REPLACE VIEW limited_label_results AS
    SELECT dataset, backbone, method, strategy, setting, options,
           avg(score) AS mean, coalesce(stddev_samp(score), 0.0) AS std, count(DISTINCT seed) AS n_seeds,
           avg(seen_top1) AS seen_top1, avg(unseen_top1) AS unseen_top1
    FROM limited_label_seed_results
    GROUP BY dataset, backbone, method, strategy, setting, options;
-- Averages over datasets: per seed the mean over the datasets that seed ran on, then mean and std over seeds.
CREATE OR REPLACE VIEW limited_label_averages AS
    WITH per_seed AS (
        SELECT backbone, method, strategy, setting, options, seed, avg(score) AS score,
               count(DISTINCT dataset) AS n_datasets
        FROM limited_label_seed_results
        GROUP BY backbone, method, strategy, setting, options, seed
    )
    SELECT backbone, method, strategy, setting, options, avg(score) AS mean,
           coalesce(stddev_samp(score), 0.0) AS std, count(*) AS n_seeds, min(n_datasets) AS n_datasets
    FROM per_seed
    GROUP BY backbone, method, strategy, setting, options;
-- Pseudolabel quality per round of every iterative run (accuracy against the pool's hidden labels, coverage,
-- calibration): `SELECT round, avg(value) FROM pseudolabel_rounds WHERE metric = 'pseudolabel_accuracy' ...`.
CREATE OR REPLACE VIEW pseudolabel_rounds AS
    SELECT dataset, backbone, method, experiment_key, seed,
           json_extract_string(options, '$.setting') AS setting,
           json_extract_string(options, '$.pseudolabels.strategy') AS strategy,
           CAST(substr(split, 7) AS INTEGER) AS round, metric, value, run_id
    FROM current_results
    WHERE stage = 'evaluation' AND starts_with(split, 'round_');
CREATE OR REPLACE VIEW domain_generalization_results AS SELECT * FROM transfer_results('domain_generalization');
"""


# Created after the `predictions` view, which it reads.
_TEST_TIME_VIEWS = """
-- Test-time tuning (TPT, DiffTPT), one row per seed and dataset: the tuned runs (stage test_time; mode, and the
-- checkpoint they start from: start, start_method), and as reference rows on the same datasets the untuned
-- 0-shot configurations (zero-shot, the ensemble) and the trained checkpoints the runs start from (in domain on
-- the source, transferred to the shifted variants by domain_generalization). mode is NULL for reference rows.
-- A test-time run may score a subset of the test images (test_time.max_test_images): the reference rows are
-- scored from their predictions on the images the test-time runs of that dataset scored, so every row of TPT's
-- table counts the same images.
CREATE OR REPLACE VIEW test_time_seed_results AS
    WITH tuned_runs AS (
        SELECT run_id, backbone, coalesce(source_dataset, dataset) AS source_dataset, dataset,
               json_extract_string(options, '$.test_time.mode') AS mode, method AS start_method,
               experiment_key AS start, seed
        FROM runs WHERE is_current AND stage = 'test_time'
    ),
    tuned AS (
        SELECT t.backbone, t.source_dataset, t.dataset, t.mode, t.start_method, t.start, t.seed, m.value
        FROM tuned_runs AS t JOIN metrics AS m ON m.run_id = t.run_id
        WHERE m.split = 'test' AND m.metric = 'top1_accuracy'
    ),
    scored_images AS (
        SELECT DISTINCT t.backbone, t.source_dataset, p.dataset, p.relative_path
        FROM tuned_runs AS t JOIN predictions AS p ON p.run_id = t.run_id WHERE p.split = 'test'
    ),
    scored_datasets AS (SELECT DISTINCT backbone, source_dataset, dataset FROM tuned_runs),
    reference_runs AS (
        SELECT DISTINCT r.run_id, r.backbone, s.source_dataset, r.dataset, r.method, r.experiment_key, r.seed
        FROM runs AS r JOIN scored_datasets AS s ON r.backbone = s.backbone AND r.dataset = s.dataset
        WHERE r.is_current AND (
            (r.stage = 'evaluation' AND r.source_dataset IS NULL AND r.shots = 0
             AND json_extract_string(r.options, '$.setting') IS NULL)
            OR (r.shots > 0
                AND r.experiment_key IN (SELECT start FROM tuned_runs WHERE start_method <> 'zero_shot')
                AND ((r.stage = 'evaluation' AND r.source_dataset IS NULL AND r.dataset = s.source_dataset)
                     OR (r.stage = 'domain_generalization' AND r.source_dataset = s.source_dataset))))
    ),
    untuned AS (
        SELECT c.backbone, c.source_dataset, c.dataset, NULL AS mode, c.method AS start_method,
               c.experiment_key AS start, c.seed, avg(CASE WHEN p.predicted_label = p.label THEN 1.0 ELSE 0.0 END) AS value
        FROM reference_runs AS c
        JOIN predictions AS p ON p.run_id = c.run_id AND p.split = 'test'
        JOIN scored_images AS i ON i.backbone = c.backbone AND i.source_dataset = c.source_dataset
                               AND i.dataset = p.dataset AND i.relative_path = p.relative_path
        GROUP BY ALL
    )
    SELECT * FROM tuned UNION ALL SELECT * FROM untuned;
"""

def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _canonical_json(value: Any, field_name: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{field_name}: not JSON serialisable ({error})") from error


def _as_utc_naive(moment: datetime, field_name: str) -> datetime:
    if not isinstance(moment, datetime):
        raise ValueError(f"{field_name}: expected a datetime, got {type(moment).__name__}")
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment  # naive datetimes are taken to be UTC already


def _is_finite_number(value: Any) -> bool:
    # numbers.Real also admits numpy scalars (np.float32 is not a float subclass).
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_non_negative_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


def _validate_run(run: RunRecord) -> None:
    if not isinstance(run, RunRecord):
        raise ValueError(f"run: expected a RunRecord, got {type(run).__name__}")
    required_text = ("run_id", "stage", "dataset", "experiment_key", "partition_key", "method", "config_hash",
                     "backbone")
    optional_text = ("dagster_run_id", "code_version", "git_commit", "backbone_weights_sha256", "data_hash")
    for name in required_text:
        value = getattr(run, name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"run.{name}: expected a non-empty string, got {value!r}")
    for name in optional_text:
        value = getattr(run, name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"run.{name}: expected a string or None, got {value!r}")
    if run.source_dataset is not None and (not isinstance(run.source_dataset, str) or not run.source_dataset.strip()
                                           or run.source_dataset == run.dataset):
        raise ValueError(f"run.source_dataset: expected None (in-domain) or the name of another dataset than "
                         f"run.dataset {run.dataset!r}, got {run.source_dataset!r}")
    if not _RUN_ID_PATTERN.match(run.run_id):
        raise ValueError(f"run.run_id: {run.run_id!r} may only hold letters, digits and . _ + = - "
                         "(it names the predictions file)")
    for name in ("shots", "seed"):
        value = getattr(run, name)
        if not _is_non_negative_integer(value):
            raise ValueError(f"run.{name}: expected a non-negative integer, got {value!r}")
    if not isinstance(run.options, dict):
        raise ValueError(f"run.options: expected a dict, got {type(run.options).__name__}")
    if not isinstance(run.templates, (dict, list)):
        raise ValueError(f"run.templates: expected a dict or list, got {type(run.templates).__name__}")
    _canonical_json(run.options, "run.options")
    _canonical_json(run.templates, "run.templates")
    started_at = _as_utc_naive(run.started_at, "run.started_at")
    finished_at = _as_utc_naive(run.finished_at, "run.finished_at")
    if finished_at < started_at:
        raise ValueError(f"run.finished_at: {finished_at} is before run.started_at {started_at}")


def _metric_frame(run: RunRecord, metrics: Sequence[MetricRow]) -> pl.DataFrame:
    seen: set[tuple[str, str]] = set()
    for index, row in enumerate(metrics):
        if not isinstance(row, MetricRow):
            raise ValueError(f"metrics[{index}]: expected a MetricRow, got {type(row).__name__}")
        if not isinstance(row.split, str) or not row.split.strip():
            raise ValueError(f"metrics[{index}].split: expected a non-empty string, got {row.split!r}")
        if not isinstance(row.metric, str) or not row.metric.strip():
            raise ValueError(f"metrics[{index}].metric: expected a non-empty metric name, got {row.metric!r}")
        if not _is_finite_number(row.value):
            raise ValueError(f"metrics[{index}].value: {row.metric} on {row.split} is {row.value!r}, "
                             "expected a finite number")
        if (row.split, row.metric) in seen:
            raise ValueError(f"metrics[{index}]: duplicate metric {row.metric!r} for split {row.split!r}")
        seen.add((row.split, row.metric))
    return pl.DataFrame(
        {
            "run_id": [run.run_id] * len(metrics),
            "dataset": [run.dataset] * len(metrics),
            "experiment_key": [run.experiment_key] * len(metrics),
            "split": [row.split for row in metrics],
            "metric": [row.metric for row in metrics],
            "value": [float(row.value) for row in metrics],
        },
        schema={"run_id": pl.String, "dataset": pl.String, "experiment_key": pl.String, "split": pl.String,
                "metric": pl.String, "value": pl.Float64},
    )


def _per_class_frame(run: RunRecord, per_class: Sequence[PerClassRow]) -> pl.DataFrame:
    seen: set[tuple[str, int]] = set()
    for index, row in enumerate(per_class):
        if not isinstance(row, PerClassRow):
            raise ValueError(f"per_class[{index}]: expected a PerClassRow, got {type(row).__name__}")
        if not isinstance(row.split, str) or not row.split.strip():
            raise ValueError(f"per_class[{index}].split: expected a non-empty string, got {row.split!r}")
        for name in ("label", "support"):
            value = getattr(row, name)
            if not _is_non_negative_integer(value):
                raise ValueError(f"per_class[{index}].{name}: expected a non-negative integer, got {value!r}")
        if not isinstance(row.classname, str):
            raise ValueError(f"per_class[{index}].classname: expected a string, got {row.classname!r}")
        for name in ("accuracy", "f1"):
            value = getattr(row, name)
            if value is not None and not (_is_finite_number(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"per_class[{index}].{name}: expected None or a number in [0, 1], got {value!r}")
        if (row.split, row.label) in seen:
            raise ValueError(f"per_class[{index}]: duplicate label {row.label} for split {row.split!r}")
        seen.add((row.split, row.label))
    return pl.DataFrame(
        {
            "run_id": [run.run_id] * len(per_class),
            "dataset": [run.dataset] * len(per_class),
            "split": [row.split for row in per_class],
            "label": [int(row.label) for row in per_class],
            "classname": [row.classname for row in per_class],
            "accuracy": [None if row.accuracy is None else float(row.accuracy) for row in per_class],
            "f1": [None if row.f1 is None else float(row.f1) for row in per_class],
            "support": [int(row.support) for row in per_class],
        },
        schema={"run_id": pl.String, "dataset": pl.String, "split": pl.String, "label": pl.Int32,
                "classname": pl.String, "accuracy": pl.Float64, "f1": pl.Float64, "support": pl.Int32},
    )


def _prediction_frame(run: RunRecord, predictions: pl.DataFrame) -> pl.DataFrame:
    """The predictions in the warehouse's column order and types; run_id / dataset are filled from the run."""
    if not isinstance(predictions, pl.DataFrame):
        raise ValueError(f"predictions: expected a polars DataFrame, got {type(predictions).__name__}")
    required = ("split", "relative_path", "label", "predicted_label", "confidence")
    missing = [name for name in required if name not in predictions.columns]
    if missing:
        raise ValueError(f"predictions: missing column(s) {missing}; expected {list(PREDICTION_SCHEMA)}")
    unknown = [name for name in predictions.columns if name not in PREDICTION_SCHEMA]
    if unknown:
        raise ValueError(f"predictions: unknown column(s) {unknown}; expected {list(PREDICTION_SCHEMA)}")
    for name, expected in (("run_id", run.run_id), ("dataset", run.dataset)):
        if name in predictions.columns:
            mismatched = predictions.with_row_index("row").filter(pl.col(name) != expected)
            if mismatched.height:
                raise ValueError(f"predictions.{name}: row {mismatched['row'][0]} holds "
                                 f"{mismatched[name][0]!r}, the run's {name} is {expected!r}")
    for name in required:
        dtype = predictions.schema[name]
        wanted = PREDICTION_SCHEMA[name]
        if wanted == pl.Int64 and not dtype.is_integer():
            raise ValueError(f"predictions.{name}: expected integer labels, got {dtype}")
        if wanted == pl.String and dtype != pl.String:
            raise ValueError(f"predictions.{name}: expected strings, got {dtype}")
        if wanted == pl.Float64 and not dtype.is_numeric():
            raise ValueError(f"predictions.{name}: expected numbers, got {dtype}")
        null_rows = predictions.with_row_index("row").filter(pl.col(name).is_null())
        if null_rows.height:
            raise ValueError(f"predictions.{name}: null value at row {null_rows['row'][0]}")
    for name in ("label", "predicted_label"):
        negative = predictions.with_row_index("row").filter(pl.col(name) < 0)
        if negative.height:
            raise ValueError(f"predictions.{name}: negative label at row {negative['row'][0]}")
    confidence = predictions["confidence"].cast(pl.Float64)
    bad_confidence = predictions.with_row_index("row").filter(
        ~(confidence.is_finite() & (confidence >= 0.0) & (confidence <= 1.0))
    )
    if bad_confidence.height:
        raise ValueError(f"predictions.confidence: row {bad_confidence['row'][0]} holds "
                         f"{bad_confidence['confidence'][0]!r}, expected a probability in [0, 1]")
    return predictions.select(
        pl.lit(run.run_id, dtype=pl.String).alias("run_id"),
        pl.lit(run.dataset, dtype=pl.String).alias("dataset"),
        *(pl.col(name).cast(PREDICTION_SCHEMA[name]) for name in required),
    )


# ------------------------------------------------------------------------------------------ throughput benchmark
# `benchmark_results`: one row per measurement of a benchmark run (bench/throughput.py), each carrying the run's
# provenance (time, git commit, code version, device, torch version, backbone and weights hash), so a row read
# alone says what was measured where. `latest_benchmark`: the rows of the most recent run, with each row's
# speed-up over its baseline variant of the same method (cached over re-encoded, batched over per-image) and
# whether that speed-up meets the row's target.
BENCHMARK_VARIANTS = ("cached", "re-encoded", "image-prompted", "batched", "per-image")

_BENCHMARK_SCHEMA = """
CREATE TABLE IF NOT EXISTS benchmark_results (
    bench_run_id VARCHAR NOT NULL,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP NOT NULL,
    git_commit VARCHAR,
    code_version VARCHAR,
    device VARCHAR NOT NULL,
    torch_version VARCHAR NOT NULL,
    backbone VARCHAR NOT NULL,
    backbone_weights_sha256 VARCHAR NOT NULL,
    weights_source VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    variant VARCHAR NOT NULL,
    batch_size INTEGER NOT NULL,
    n_images INTEGER NOT NULL,
    seconds DOUBLE NOT NULL,
    images_per_second DOUBLE NOT NULL,
    peak_rss_mb DOUBLE NOT NULL,
    rss_delta_mb DOUBLE NOT NULL,
    peak_cuda_mb DOUBLE,
    baseline_variant VARCHAR,
    target_speedup DOUBLE,
    details JSON NOT NULL,
    PRIMARY KEY (bench_run_id, method, variant)
);
CREATE OR REPLACE VIEW latest_benchmark AS
    WITH latest AS (
        SELECT bench_run_id FROM benchmark_results
        ORDER BY finished_at DESC, bench_run_id DESC LIMIT 1
    )
    SELECT b.*,
           b.images_per_second / base.images_per_second AS speedup,
           CASE WHEN b.target_speedup IS NULL OR base.images_per_second IS NULL THEN NULL
                ELSE b.images_per_second / base.images_per_second >= b.target_speedup END AS meets_target
    FROM benchmark_results AS b
    LEFT JOIN benchmark_results AS base
        ON base.bench_run_id = b.bench_run_id AND base.method = b.method AND base.variant = b.baseline_variant
    WHERE b.bench_run_id = (SELECT bench_run_id FROM latest);
"""


@dataclass(frozen=True)
class BenchmarkRun:
    """Provenance shared by every measurement of one benchmark run."""

    bench_run_id: str
    started_at: datetime
    finished_at: datetime
    git_commit: str | None
    code_version: str | None
    device: str  # e.g. "cpu (2 threads)", "cuda (NVIDIA H100)"
    torch_version: str
    backbone: str
    backbone_weights_sha256: str
    weights_source: str  # where the weights came from, e.g. "workspace" or "random (seed 0)"
    dataset: str


@dataclass(frozen=True)
class BenchmarkRow:
    """One measurement: a method in one variant (BENCHMARK_VARIANTS)."""

    method: str
    variant: str
    batch_size: int
    n_images: int  # images processed in one timed repeat
    seconds: float  # median time of one repeat
    images_per_second: float
    peak_rss_mb: float  # peak resident memory of the measuring process
    rss_delta_mb: float  # that peak minus the process's resident memory before the measurement
    peak_cuda_mb: float | None = None  # torch.cuda.max_memory_allocated, on a GPU
    baseline_variant: str | None = None  # the variant of the same method this one's speed-up is taken over
    target_speedup: float | None = None  # the speed-up over baseline_variant this variant should reach
    details: dict = field(default_factory=dict)  # epochs, repeats, all timings, ...


def _validate_benchmark_run(run: BenchmarkRun) -> None:
    if not isinstance(run, BenchmarkRun):
        raise ValueError(f"run: expected a BenchmarkRun, got {type(run).__name__}")
    for name in ("bench_run_id", "device", "torch_version", "backbone", "backbone_weights_sha256",
                 "weights_source", "dataset"):
        value = getattr(run, name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"run.{name}: expected a non-empty string, got {value!r}")
    for name in ("git_commit", "code_version"):
        value = getattr(run, name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"run.{name}: expected a string or None, got {value!r}")
    if not _RUN_ID_PATTERN.match(run.bench_run_id):
        raise ValueError(f"run.bench_run_id: {run.bench_run_id!r} may only hold letters, digits and . _ + = -")
    started_at = _as_utc_naive(run.started_at, "run.started_at")
    if _as_utc_naive(run.finished_at, "run.finished_at") < started_at:
        raise ValueError(f"run.finished_at: {run.finished_at} is before run.started_at {run.started_at}")


def _benchmark_frame(run: BenchmarkRun, rows: Sequence[BenchmarkRow]) -> pl.DataFrame:
    """The rows as a typed frame, after checking every field (ValueError naming rows[i].field)."""
    _validate_benchmark_run(run)
    if not rows:
        raise ValueError("rows: a benchmark run needs at least one measurement")
    variants_by_method: dict[str, set[str]] = {}
    for index, row in enumerate(rows):
        where = f"rows[{index}]"
        if not isinstance(row, BenchmarkRow):
            raise ValueError(f"{where}: expected a BenchmarkRow, got {type(row).__name__}")
        if not isinstance(row.method, str) or not row.method.strip():
            raise ValueError(f"{where}.method: expected a non-empty string, got {row.method!r}")
        if row.variant not in BENCHMARK_VARIANTS:
            raise ValueError(f"{where}.variant: {row.variant!r} is not one of {BENCHMARK_VARIANTS}")
        for name in ("batch_size", "n_images"):
            value = getattr(row, name)
            if not _is_non_negative_integer(value) or value == 0:
                raise ValueError(f"{where}.{name}: expected a positive integer, got {value!r}")
        for name in ("seconds", "images_per_second"):
            value = getattr(row, name)
            if not _is_finite_number(value) or value <= 0:
                raise ValueError(f"{where}.{name}: expected a positive finite number, got {value!r}")
        for name, required in (("peak_rss_mb", True), ("rss_delta_mb", True), ("peak_cuda_mb", False),
                               ("target_speedup", False)):
            value = getattr(row, name)
            if value is None and not required:
                continue
            if not _is_finite_number(value) or (value < 0 and name != "rss_delta_mb"):
                raise ValueError(f"{where}.{name}: expected a finite number"
                                 f"{'' if name == 'rss_delta_mb' else ' >= 0'}, got {value!r}")
        if row.baseline_variant is not None and (row.baseline_variant not in BENCHMARK_VARIANTS
                                                 or row.baseline_variant == row.variant):
            raise ValueError(f"{where}.baseline_variant: {row.baseline_variant!r} must be another of "
                             f"{BENCHMARK_VARIANTS}")
        if row.target_speedup is not None and row.baseline_variant is None:
            raise ValueError(f"{where}.target_speedup: a target needs a baseline_variant to compare with")
        if not isinstance(row.details, dict):
            raise ValueError(f"{where}.details: expected a dict, got {type(row.details).__name__}")
        _canonical_json(row.details, f"{where}.details")
        seen = variants_by_method.setdefault(row.method, set())
        if row.variant in seen:
            raise ValueError(f"{where}: duplicate measurement of method {row.method!r}, variant {row.variant!r}")
        seen.add(row.variant)
    for index, row in enumerate(rows):
        if row.baseline_variant is not None and row.baseline_variant not in variants_by_method[row.method]:
            raise ValueError(f"rows[{index}].baseline_variant: no {row.baseline_variant!r} measurement of method "
                             f"{row.method!r} in this run")
    shared = {
        "bench_run_id": run.bench_run_id,
        "started_at": _as_utc_naive(run.started_at, "run.started_at"),
        "finished_at": _as_utc_naive(run.finished_at, "run.finished_at"),
        "git_commit": run.git_commit, "code_version": run.code_version, "device": run.device,
        "torch_version": run.torch_version, "backbone": run.backbone,
        "backbone_weights_sha256": run.backbone_weights_sha256, "weights_source": run.weights_source,
        "dataset": run.dataset,
    }
    records = [
        {**shared, "method": row.method, "variant": row.variant, "batch_size": int(row.batch_size),
         "n_images": int(row.n_images), "seconds": float(row.seconds),
         "images_per_second": float(row.images_per_second), "peak_rss_mb": float(row.peak_rss_mb),
         "rss_delta_mb": float(row.rss_delta_mb),
         "peak_cuda_mb": None if row.peak_cuda_mb is None else float(row.peak_cuda_mb),
         "baseline_variant": row.baseline_variant,
         "target_speedup": None if row.target_speedup is None else float(row.target_speedup),
         "details": _canonical_json(row.details, "details")}
        for row in rows
    ]
    return pl.DataFrame(records, schema={
        "bench_run_id": pl.String, "started_at": pl.Datetime("us"), "finished_at": pl.Datetime("us"),
        "git_commit": pl.String, "code_version": pl.String, "device": pl.String, "torch_version": pl.String,
        "backbone": pl.String, "backbone_weights_sha256": pl.String, "weights_source": pl.String,
        "dataset": pl.String, "method": pl.String, "variant": pl.String, "batch_size": pl.Int32,
        "n_images": pl.Int32, "seconds": pl.Float64, "images_per_second": pl.Float64, "peak_rss_mb": pl.Float64,
        "rss_delta_mb": pl.Float64, "peak_cuda_mb": pl.Float64, "baseline_variant": pl.String,
        "target_speedup": pl.Float64, "details": pl.String,
    })


# One writer per database file inside this process too: DuckDB shares one database instance between the
# connections of a process, and two overlapping write transactions on the same rows would conflict.
_process_write_locks: dict[Path, threading.Lock] = {}
_process_write_locks_guard = threading.Lock()


def _process_write_lock(database_path: Path) -> threading.Lock:
    with _process_write_locks_guard:
        return _process_write_locks.setdefault(database_path, threading.Lock())


def _is_lock_conflict(error: duckdb.Error) -> bool:
    message = str(error)
    # Another process holds the file lock, or this process holds it with the other access mode.
    return "Could not set lock" in message or "different configuration" in message


@contextlib.contextmanager
def _transaction(connection: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Commit when the block succeeds, roll back on any error (a failing rollback never hides the cause)."""
    connection.begin()
    try:
        yield
        connection.commit()
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            connection.rollback()
        raise


class Warehouse:
    """The DuckDB results database and its predictions directory. Holds paths only, never a connection."""

    def __init__(
        self,
        database_path: Path,
        predictions_dir: Path,
        *,
        lock_retries: int = 6,
        lock_backoff_seconds: float = 0.1,
    ) -> None:
        self.database_path = Path(database_path).absolute()
        self.predictions_dir = Path(predictions_dir).absolute()
        self.lock_retries = lock_retries
        self.lock_backoff_seconds = lock_backoff_seconds

    # ----------------------------------------------------------------------------------------- connections
    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        if read_only and not self.database_path.exists():
            raise FileNotFoundError(
                f"warehouse database {self.database_path} does not exist; record a run or call ensure_schema()"
            )
        if not read_only:
            self.database_path.parent.mkdir(parents=True, exist_ok=True)
        last_error: duckdb.Error | None = None
        for attempt in range(self.lock_retries + 1):
            try:
                return duckdb.connect(str(self.database_path), read_only=read_only)
            except (duckdb.IOException, duckdb.ConnectionException) as error:
                if not _is_lock_conflict(error):
                    raise
                last_error = error
                if attempt < self.lock_retries:
                    time.sleep(self.lock_backoff_seconds * 2**attempt)
        raise WarehouseLockedError(
            f"warehouse database {self.database_path} is locked by another connection "
            f"(tried {self.lock_retries + 1} times; close read-only sessions such as the DuckDB CLI): {last_error}"
        )

    # ---------------------------------------------------------------------------------------------- schema
    def prediction_file(self, run_id: str) -> Path:
        """Where the predictions of `run_id` live once recorded."""
        return self.predictions_dir / f"{PREDICTIONS_FILE_PREFIX}{run_id}.parquet"

    def _ensure_empty_predictions_file(self) -> None:
        empty_file = self.predictions_dir / EMPTY_PREDICTIONS_FILE
        if empty_file.exists():
            return
        self.predictions_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.predictions_dir / f".tmp-{uuid.uuid4().hex}.parquet"
        pl.DataFrame(schema=PREDICTION_SCHEMA).write_parquet(temporary)
        os.replace(temporary, empty_file)

    def _create_schema(self, connection: duckdb.DuckDBPyConnection) -> None:
        connection.execute(_SCHEMA_TABLES)
        connection.execute(_SCHEMA_VIEWS)
        connection.execute(_BENCHMARK_SCHEMA)
        columns = ", ".join(PREDICTION_SCHEMA)
        files = _sql_string(str(self.predictions_dir / f"{PREDICTIONS_FILE_PREFIX}*.parquet"))
        # The glob always matches the empty typed file; the filter keeps the current runs only (superseded
        # runs keep their files for history).
        connection.execute(
            f"CREATE OR REPLACE VIEW predictions AS SELECT {columns} "
            f"FROM read_parquet({files}, hive_partitioning = false) "
            "WHERE run_id IN (SELECT run_id FROM runs WHERE is_current)"
        )
        connection.execute(_TEST_TIME_VIEWS)

    def ensure_schema(self) -> None:
        """Create the tables, views and the predictions directory if missing; safe to call any number of times."""
        self._ensure_empty_predictions_file()
        with _process_write_lock(self.database_path), self._connect(read_only=False) as connection:
            with _transaction(connection):
                self._create_schema(connection)

    # ---------------------------------------------------------------------------------------------- writes
    def record_run(
        self,
        run: RunRecord,
        metrics: Sequence[MetricRow],
        per_class: Sequence[PerClassRow] = (),
        predictions: pl.DataFrame | None = None,
    ) -> None:
        """Record one run, all or nothing, replacing the current run of its (stage, dataset, partition_key) and
        every current run of its backbone name with other (non-NULL) weights.

        Inputs are validated before anything is written (ValueError naming the field). The predictions go to a
        temporary Parquet file, the database changes happen in one transaction, and the file is renamed into
        place only after the commit; on any failure the transaction is rolled back and the file deleted.
        """
        _validate_run(run)
        metric_frame = _metric_frame(run, list(metrics))
        per_class_frame = _per_class_frame(run, list(per_class))
        prediction_frame = None if predictions is None else _prediction_frame(run, predictions)

        self._ensure_empty_predictions_file()
        temporary_file: Path | None = None
        try:
            if prediction_frame is not None:
                temporary_file = self.predictions_dir / f".tmp-{uuid.uuid4().hex}-{run.run_id}.parquet"
                prediction_frame.write_parquet(temporary_file)
            with _process_write_lock(self.database_path), self._connect(read_only=False) as connection:
                with _transaction(connection):
                    self._create_schema(connection)
                    self._write_run(connection, run, metric_frame, per_class_frame)
            if temporary_file is not None:
                os.replace(temporary_file, self.prediction_file(run.run_id))
                temporary_file = None
        finally:
            if temporary_file is not None:
                temporary_file.unlink(missing_ok=True)

    def _write_run(
        self,
        connection: duckdb.DuckDBPyConnection,
        run: RunRecord,
        metric_frame: pl.DataFrame,
        per_class_frame: pl.DataFrame,
    ) -> None:
        existing = connection.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run.run_id]).fetchone()
        if existing[0]:
            raise ValueError(f"run.run_id: {run.run_id!r} is already recorded in {self.database_path}")
        self._upsert_experiment(connection, run)
        self._supersede_current_runs(connection, run)
        self._insert_run(connection, run)
        self._insert_metric_rows(connection, metric_frame)
        self._insert_per_class_rows(connection, per_class_frame)

    @staticmethod
    def _upsert_experiment(connection: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
        connection.execute(
            """
            INSERT INTO experiments (experiment_key, method, shots, seed, options, config_hash)
            VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT (experiment_key) DO UPDATE SET
                method = excluded.method, shots = excluded.shots, seed = excluded.seed,
                options = excluded.options, config_hash = excluded.config_hash
            """,
            [run.experiment_key, run.method, int(run.shots), int(run.seed),
             _canonical_json(run.options, "run.options"), run.config_hash],
        )

    @staticmethod
    def _supersede_current_runs(connection: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
        superseded_at = datetime.now(UTC).replace(tzinfo=None)
        # Two kinds of run leave the current results: the earlier runs of the same partition, and every run of the
        # same backbone name computed with other weights (the backbone was retrained; its old results must not mix
        # with the new ones). A NULL hash is unknown, never "other weights": `<>` with NULL is not true.
        connection.execute(
            """
            CREATE OR REPLACE TEMP TABLE superseded_runs AS
            SELECT run_id FROM runs
            WHERE is_current
              AND ((stage = $stage AND dataset = $dataset AND partition_key = $partition_key
                    AND source_dataset IS NOT DISTINCT FROM $source_dataset)
                   OR (backbone = $backbone AND backbone_weights_sha256 <> $weights))
            """,
            {"stage": run.stage, "dataset": run.dataset, "partition_key": run.partition_key,
             "source_dataset": run.source_dataset, "backbone": run.backbone, "weights": run.backbone_weights_sha256},
        )
        for table, columns in (
            ("metrics", "run_id, dataset, experiment_key, split, metric, value"),
            ("per_class_metrics", "run_id, dataset, split, label, classname, accuracy, f1, support"),
        ):
            connection.execute(
                f"INSERT INTO {table}_history SELECT {columns}, ?, ? FROM {table} "
                "WHERE run_id IN (SELECT run_id FROM superseded_runs)",
                [superseded_at, run.run_id],
            )
            connection.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT run_id FROM superseded_runs)")
        connection.execute(
            "UPDATE runs SET is_current = false WHERE run_id IN (SELECT run_id FROM superseded_runs)"
        )
        connection.execute("DROP TABLE superseded_runs")

    @staticmethod
    def _insert_run(connection: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
        connection.execute(
            """
            INSERT INTO runs (run_id, stage, dataset, experiment_key, partition_key, method, shots, seed, options,
                              dagster_run_id, code_version, config_hash, git_commit, backbone,
                              backbone_weights_sha256, data_hash, templates, started_at, finished_at, is_current,
                              source_dataset, compute)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, true, ?, ?)
            """,
            [
                run.run_id, run.stage, run.dataset, run.experiment_key, run.partition_key, run.method, int(run.shots),
                int(run.seed), _canonical_json(run.options, "run.options"), run.dagster_run_id, run.code_version,
                run.config_hash, run.git_commit, run.backbone, run.backbone_weights_sha256, run.data_hash,
                _canonical_json(run.templates, "run.templates"),
                _as_utc_naive(run.started_at, "run.started_at"), _as_utc_naive(run.finished_at, "run.finished_at"),
                run.source_dataset, run.compute,
            ],
        )

    @staticmethod
    def _insert_metric_rows(connection: duckdb.DuckDBPyConnection, metric_frame: pl.DataFrame) -> None:
        if metric_frame.height:
            connection.register("incoming_metrics", metric_frame.to_arrow())
            connection.execute("INSERT INTO metrics BY NAME SELECT * FROM incoming_metrics")
            connection.unregister("incoming_metrics")

    @staticmethod
    def _insert_per_class_rows(connection: duckdb.DuckDBPyConnection, per_class_frame: pl.DataFrame) -> None:
        if per_class_frame.height:
            connection.register("incoming_per_class", per_class_frame.to_arrow())
            connection.execute("INSERT INTO per_class_metrics BY NAME SELECT * FROM incoming_per_class")
            connection.unregister("incoming_per_class")

    def record_benchmark(self, run: BenchmarkRun, rows: Sequence[BenchmarkRow]) -> None:
        """Record every measurement of one benchmark run in one transaction, all or nothing.

        Every row is validated first (ValueError naming rows[i].field); a run id already recorded fails.
        """
        frame = _benchmark_frame(run, list(rows))
        self._ensure_empty_predictions_file()
        with _process_write_lock(self.database_path), self._connect(read_only=False) as connection:
            with _transaction(connection):
                self._create_schema(connection)
                existing = connection.execute(
                    "SELECT count(*) FROM benchmark_results WHERE bench_run_id = ?", [run.bench_run_id]).fetchone()
                if existing[0]:
                    raise ValueError(f"run.bench_run_id: {run.bench_run_id!r} is already recorded in "
                                     f"{self.database_path}")
                connection.register("incoming_benchmark", frame.to_arrow())
                connection.execute("INSERT INTO benchmark_results BY NAME SELECT * FROM incoming_benchmark")
                connection.unregister("incoming_benchmark")

    # ----------------------------------------------------------------------------------------------- reads
    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> pl.DataFrame:
        """Run `sql` on a read-only connection that is opened and closed around it."""
        with self._connect(read_only=True) as connection:
            result = connection.execute(sql, params) if params is not None else connection.execute(sql)
            return result.pl()


__all__ = [
    "BENCHMARK_VARIANTS",
    "BenchmarkRow",
    "BenchmarkRun",
    "EMPTY_PREDICTIONS_FILE",
    "MetricRow",
    "PerClassRow",
    "PREDICTION_SCHEMA",
    "RunRecord",
    "Warehouse",
    "WarehouseLockedError",
    "metric_rows",
    "per_class_rows",
]
