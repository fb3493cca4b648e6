"""What one run records: its RunRecord, metric rows, per-class rows and predictions, each validated into a typed
frame before anything is written (ValueError naming the field or row)."""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


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


def canonical_json(value: Any, field_name: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{field_name}: not JSON serialisable ({error})") from error


def as_utc_naive(moment: datetime, field_name: str) -> datetime:
    if not isinstance(moment, datetime):
        raise ValueError(f"{field_name}: expected a datetime, got {type(moment).__name__}")
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment  # naive datetimes are taken to be UTC already


def is_finite_number(value: Any) -> bool:
    # numbers.Real also admits numpy scalars (np.float32 is not a float subclass).
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_non_negative_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


def validate_run(run: RunRecord) -> None:
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
    if not RUN_ID_PATTERN.match(run.run_id):
        raise ValueError(f"run.run_id: {run.run_id!r} may only hold letters, digits and . _ + = - "
                         "(it names the predictions file)")
    for name in ("shots", "seed"):
        value = getattr(run, name)
        if not is_non_negative_integer(value):
            raise ValueError(f"run.{name}: expected a non-negative integer, got {value!r}")
    if not isinstance(run.options, dict):
        raise ValueError(f"run.options: expected a dict, got {type(run.options).__name__}")
    if not isinstance(run.templates, (dict, list)):
        raise ValueError(f"run.templates: expected a dict or list, got {type(run.templates).__name__}")
    canonical_json(run.options, "run.options")
    canonical_json(run.templates, "run.templates")
    started_at = as_utc_naive(run.started_at, "run.started_at")
    finished_at = as_utc_naive(run.finished_at, "run.finished_at")
    if finished_at < started_at:
        raise ValueError(f"run.finished_at: {finished_at} is before run.started_at {started_at}")


# The rows of the metrics and per_class_metrics tables, as recorded and as a pending batch stores them.
METRIC_SCHEMA = pl.Schema({"run_id": pl.String, "dataset": pl.String, "experiment_key": pl.String,
                           "split": pl.String, "metric": pl.String, "value": pl.Float64})
PER_CLASS_SCHEMA = pl.Schema({"run_id": pl.String, "dataset": pl.String, "split": pl.String, "label": pl.Int32,
                              "classname": pl.String, "accuracy": pl.Float64, "f1": pl.Float64,
                              "support": pl.Int32})


def metric_frame(run: RunRecord, metrics: Sequence[MetricRow]) -> pl.DataFrame:
    seen: set[tuple[str, str]] = set()
    for index, row in enumerate(metrics):
        if not isinstance(row, MetricRow):
            raise ValueError(f"metrics[{index}]: expected a MetricRow, got {type(row).__name__}")
        if not isinstance(row.split, str) or not row.split.strip():
            raise ValueError(f"metrics[{index}].split: expected a non-empty string, got {row.split!r}")
        if not isinstance(row.metric, str) or not row.metric.strip():
            raise ValueError(f"metrics[{index}].metric: expected a non-empty metric name, got {row.metric!r}")
        if not is_finite_number(row.value):
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
        schema=METRIC_SCHEMA,
    )


def per_class_frame(run: RunRecord, per_class: Sequence[PerClassRow]) -> pl.DataFrame:
    seen: set[tuple[str, int]] = set()
    for index, row in enumerate(per_class):
        if not isinstance(row, PerClassRow):
            raise ValueError(f"per_class[{index}]: expected a PerClassRow, got {type(row).__name__}")
        if not isinstance(row.split, str) or not row.split.strip():
            raise ValueError(f"per_class[{index}].split: expected a non-empty string, got {row.split!r}")
        for name in ("label", "support"):
            value = getattr(row, name)
            if not is_non_negative_integer(value):
                raise ValueError(f"per_class[{index}].{name}: expected a non-negative integer, got {value!r}")
        if not isinstance(row.classname, str):
            raise ValueError(f"per_class[{index}].classname: expected a string, got {row.classname!r}")
        for name in ("accuracy", "f1"):
            value = getattr(row, name)
            if value is not None and not (is_finite_number(value) and 0.0 <= value <= 1.0):
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
        schema=PER_CLASS_SCHEMA,
    )


def prediction_frame(run: RunRecord, predictions: pl.DataFrame) -> pl.DataFrame:
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

