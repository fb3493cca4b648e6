"""Scheduled re-evaluation: weekly, off by default (turn it on in the UI)."""


import dagster as dg

from pipelines.jobs import reevaluation_job
from pipelines.partitions import dataset_experiment_partitions
from pipelines.resources import PromptLabResource


@dg.schedule(job=reevaluation_job, cron_schedule="0 3 * * 1", default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Every Monday 03:00: re-evaluate every trained checkpoint of the grid.")
def weekly_reevaluation(context: dg.ScheduleEvaluationContext, promptlab: PromptLabResource):
    """Every checkpoint the workspace holds: in the store for a remote workspace (the daemon's copy may be empty)."""
    workspace = promptlab.workspace()
    requested = 0
    for key in dataset_experiment_partitions.get_partition_keys():
        dataset, experiment = key.keys_by_dimension["dataset"], key.keys_by_dimension["experiment"]
        checkpoint = workspace.checkpoint_dir(dataset, experiment) / "prompt_config.json"
        if workspace.is_file_published(checkpoint, workspace.experiment_dir(dataset, experiment)):
            requested += 1
            yield dg.RunRequest(run_key=f"{context.scheduled_execution_time:%Y%m%d}-{key}", partition_key=key)
    if not requested:
        yield dg.SkipReason("no trained prompt checkpoints to re-evaluate yet")
