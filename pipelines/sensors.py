"""Newly trained checkpoints are evaluated automatically (evaluation_metrics has an eager automation condition)."""

from __future__ import annotations

import dagster as dg

from pipelines.assets.evaluation import evaluation_metrics

checkpoint_evaluation_sensor = dg.AutomationConditionSensorDefinition(
    "checkpoint_evaluation_sensor",
    target=dg.AssetSelection.assets(evaluation_metrics),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Requests evaluation of every prompt checkpoint partition that was (re)trained.",
)
