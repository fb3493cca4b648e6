"""Rows a reader kept out of the warehouse are merged once it closes, without anyone asking.

A run whose warehouse file was held (a notebook, `duckdb -readonly`, a dashboard) leaves its rows in a pending
batch. Every later run merges earlier batches first; this sensor also merges them every 30 s while any wait, so
they land even when no run follows. It merges in the sensor itself: a run launched every 30 s while a reader holds
the file would only fill the run list.
"""

from __future__ import annotations

import dagster as dg

from pipelines.resources import PromptLabResource


@dg.sensor(name="warehouse_merge_sensor", minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Merges results left pending while a reader held the warehouse, once it is free.")
def warehouse_merge_sensor(context: dg.SensorEvaluationContext, promptlab: PromptLabResource) -> dg.SkipReason:
    from models.warehouse import workspace_warehouse_of
    from pipelines.warehouse_commands import describe_merge

    warehouse = workspace_warehouse_of(promptlab.workspace())
    waiting = warehouse.pending_batches()
    if not waiting:
        return dg.SkipReason("no pending warehouse batches")
    outcome = warehouse.merge_pending()
    summary = "; ".join(describe_merge(outcome))
    if outcome.rejected:
        context.log.error(summary)
    else:
        context.log.info(summary)
    return dg.SkipReason(summary)
