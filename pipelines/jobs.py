"""Jobs: one per stage of the chain, so each can be launched (and partitioned) on its own, and one per evaluation
protocol. The few-shot and base-to-new protocols are sets of experiment partitions of the same assets (which ones:
pipelines.partitions.protocol_experiment_partitions; `promptlab run --protocol` launches exactly those); transfer
has assets and partitions of its own (source dataset x experiment of the catalog's `transfer:` section).

Every job runs its steps with the executor $PROMPTLAB_EXECUTOR selects (pipelines/executors.py). The default,
in_process, runs them one after another in one process, as `promptlab run` does: torch and open_clip are imported
once per run, and two torch trainings never share the cores. Runs from the UI queue one at a time
(dagster_home_template.yaml); multiprocess, Celery and Kubernetes spread steps over processes, workers or pods."""

from __future__ import annotations

import dagster as dg

from pipelines.assets.augmentation import augmented_images
from pipelines.assets.curation import (base_new_classes, dataset_files, dataset_index, fewshot_subsets,
                                       learning_setting_splits)
from pipelines.assets.evaluation import evaluation_metrics
from pipelines.assets.features import image_features
from pipelines.assets.multi_source import multi_source_metrics
from pipelines.assets.pseudolabels import pseudolabels
from pipelines.assets.report import cross_dataset_report
from pipelines.assets.testtime import test_time_metrics
from pipelines.assets.training import prompt_checkpoints
from pipelines.assets.transfer import transfer_metrics
from pipelines.assets.world import pretraining_corpus, tiny_clip_backbone, tiny_diffusion_model
from pipelines.executors import selected_executor

EXECUTOR = selected_executor()  # in_process unless $PROMPTLAB_EXECUTOR says otherwise

embedded_world_job = dg.define_asset_job(
    "embedded_world_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.assets(pretraining_corpus, tiny_clip_backbone, tiny_diffusion_model),
    description="Generate the corpus and pretrain tiny-clip and the tiny diffusion model (reused when current).",
)
curation_job = dg.define_asset_job(
    "curation_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.assets(dataset_files, dataset_index, fewshot_subsets, base_new_classes,
                                       learning_setting_splits),
    description="Write, index and validate one dataset; draw its few-shot subsets and base/new classes.",
)
features_job = dg.define_asset_job(
    "features_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.assets(image_features),
    description="Encode every image of one curated dataset once per view with the frozen image tower, in the "
                "dataset's canonical batches, into the feature cache (needs the backbone and the dataset's passed "
                "checks); the experiments then read the cached features.",
)
experiment_job = dg.define_asset_job(
    "experiment_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.assets(augmented_images, pseudolabels, prompt_checkpoints, evaluation_metrics),
    description="One experiment on one dataset (pick a dataset x experiment partition): augmentation, pseudolabels, "
                "prompt training and its evaluation in one run. The general job for any partition; the protocol "
                "jobs below select the same or fewer assets and differ only in which partitions they are meant "
                "for and their `promptlab/protocol` tag.",
)
reevaluation_job = dg.define_asset_job(
    "reevaluation_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.assets(evaluation_metrics),
    description="Re-evaluate existing prompt checkpoints (replaces their warehouse rows, keeps history); launched "
                "by the weekly_reevaluation schedule. Newly trained checkpoints need no job: "
                "checkpoint_evaluation_sensor evaluates them.",
)
report_job = dg.define_asset_job(
    "report_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.assets(cross_dataset_report),
    description="Rebuild the cross-dataset HTML report from the warehouse.",
)

# ----------------------------------------------------------------------------------------- evaluation protocols
few_shot_job = dg.define_asset_job(
    "few_shot_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.assets(augmented_images, pseudolabels, prompt_checkpoints, evaluation_metrics),
    description="Few-shot protocol (view few_shot_results): the same assets as experiment_job, tagged "
                "promptlab/protocol=few_shot; launch it (or a backfill) on the partitions of the experiments "
                "trained on all classes (K x seeds of the grid) and zero-shot, as `promptlab run --protocol "
                "few_shot` does.",
    tags={"promptlab/protocol": "few_shot"},
)
base_to_new_job = dg.define_asset_job(
    "base_to_new_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.assets(prompt_checkpoints, evaluation_metrics),
    description="Base-to-new protocol (views base_to_new_results / _averages): prompt training and evaluation only "
                "(base_to_new experiments use no augmentation or pseudolabels), tagged "
                "promptlab/protocol=base_to_new; launch on the partitions of the base_to_new experiments and "
                "zero-shot, as `promptlab run --protocol base_to_new` does.",
    tags={"promptlab/protocol": "base_to_new"},
)
transfer_job = dg.define_asset_job(
    "transfer_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.assets(transfer_metrics),
    description="Cross-dataset and domain-generalization transfer (views cross_dataset_results / "
                "domain_generalization_results): a source's checkpoint on every target of the catalog's transfer "
                "section; needs the source checkpoint and the targets curated.",
)
test_time_job = dg.define_asset_job(
    "test_time_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.assets(test_time_metrics),
    description="Test-time tuning (TPT, DiffTPT; view test_time_results): one run of the catalog's test_time section "
                "on a source dataset and its shifted variants; needs the starting checkpoint and the datasets curated.",
)
multi_source_job = dg.define_asset_job(
    "multi_source_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.assets(multi_source_metrics),
    description="Multi-source domain generalisation (view multi_source_results): one experiment trained on the "
                "source domains of a split of the catalog's multi_source section and scored on the held-out domain; "
                "needs every domain of the split curated.",
)

# ----------------------------------------------------------------------------------------- MVLPT's multitask stage
from pipelines.assets.multitask import multitask_prompt_checkpoints, multitask_source_prompts  # noqa: E402

multitask_job = dg.define_asset_job(
    "multitask_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.assets(multitask_prompt_checkpoints),
    description="MVLPT's source prompt of one source run (pick it): trained jointly on the pooled few-shot sets of "
                "the catalog's multitask sources (curated first).",
)
multitask_average_job = dg.define_asset_job(
    "multitask_average_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.assets(multitask_source_prompts),
    description="The seed average of one MVLPT source configuration (needs its source runs), which its target "
                "experiments start from; run it before their experiment_job.",
)

# ------------------------------------------------------------------------------- upstream initialisations (GRAM, PVP)
from pipelines.assets.initialisations import prompt_initialisations  # noqa: E402

initialisation_job = dg.define_asset_job(
    "initialisation_job",
    executor_def=EXECUTOR,
    selection=dg.AssetSelection.assets(prompt_initialisations),
    description="One upstream prompt initialisation (pick it: GRAM or PVP, experiments.yaml initialisations), learned "
                "on the corpus; run it before the experiment_job of the experiments that name it.",
)
