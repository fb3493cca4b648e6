"""Newly trained checkpoints are evaluated automatically: the one mechanism is checkpoint_evaluation_sensor, an
automation-condition sensor that evaluates `evaluation_metrics`' eager condition (a partition whose checkpoint is
newer than its metrics, and not being evaluated already, is launched). No other schedule, sensor or legacy
auto-materialize daemon materializes it; `experiment_job` evaluates what it trains in the same run."""

from __future__ import annotations

import dagster as dg

from pipelines.assets.evaluation import evaluation_metrics

checkpoint_evaluation_sensor = dg.AutomationConditionSensorDefinition(
    "checkpoint_evaluation_sensor",
    target=dg.AssetSelection.assets(evaluation_metrics),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="The automation of evaluation_metrics (its eager condition, checked every 60 s): evaluates every "
                "prompt checkpoint partition that was (re)trained since its last evaluation, e.g. by "
                "`promptlab run` or a partial run; runs launched by experiment_job evaluate in the same run.",
)
