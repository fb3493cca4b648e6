"""PromptLab's Dagster definitions: `dagster dev -m pipelines.definitions` (see README)."""

from __future__ import annotations

import dagster as dg

from pipelines.assets import (augmentation, curation, evaluation, features, multi_source, pseudolabels, report,
                              testtime, training, transfer, world)
from pipelines.checks import dataset_expectations, learning_setting_expectations
from pipelines.jobs import (EXECUTOR, base_to_new_job, curation_job, embedded_world_job, experiment_job,
                           features_job, few_shot_job, multi_source_job, reevaluation_job, report_job, test_time_job,
                           transfer_job)
from pipelines.assets import multitask
from pipelines.jobs import multitask_average_job, multitask_job
from pipelines.assets import initialisations
from pipelines.jobs import initialisation_job
from pipelines.resources import PromptLabResource
from pipelines.schedules import weekly_reevaluation
from pipelines.sensors import checkpoint_evaluation_sensor
from pipelines.terminal import console_logger
from pipelines.warehouse_sensors import warehouse_merge_sensor

ALL_ASSETS = dg.load_assets_from_modules([world, curation, features, augmentation, pseudolabels, training, evaluation,
                                          transfer, testtime, report, multi_source, multitask,
                                          initialisations])

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=[dataset_expectations, learning_setting_expectations],
    jobs=[embedded_world_job, curation_job, features_job, experiment_job, reevaluation_job, report_job, few_shot_job,
          base_to_new_job, transfer_job, test_time_job, multi_source_job, multitask_job, multitask_average_job,
          initialisation_job],
    schedules=[weekly_reevaluation],
    sensors=[checkpoint_evaluation_sensor, warehouse_merge_sensor],
    resources={"promptlab": PromptLabResource()},
    # Dagster's console output, or progress lines and an event log file in a quiet `promptlab run`
    loggers={"console": console_logger},
    # materializing from the asset graph uses the jobs' executor ($PROMPTLAB_EXECUTOR, pipelines/executors.py)
    executor=EXECUTOR,
)
