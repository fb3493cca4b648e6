"""Jobs: one per stage of the chain, so each can be launched (and partitioned) on its own."""

from __future__ import annotations

import dagster as dg

from pipelines.assets.augmentation import augmented_images
from pipelines.assets.curation import base_new_classes, dataset_files, dataset_index, fewshot_subsets
from pipelines.assets.evaluation import evaluation_metrics
from pipelines.assets.pseudolabels import pseudolabels
from pipelines.assets.report import cross_dataset_report
from pipelines.assets.training import prompt_checkpoints
from pipelines.assets.world import pretraining_corpus, tiny_clip_backbone, tiny_diffusion_model

embedded_world_job = dg.define_asset_job(
    "embedded_world_job",
    selection=dg.AssetSelection.assets(pretraining_corpus, tiny_clip_backbone, tiny_diffusion_model),
    description="Generate the corpus and pretrain tiny-clip and the tiny diffusion model (reused when current).",
)
curation_job = dg.define_asset_job(
    "curation_job",
    selection=dg.AssetSelection.assets(dataset_files, dataset_index, fewshot_subsets, base_new_classes),
    description="Write, index and validate one dataset; draw its few-shot subsets and base/new classes.",
)
experiment_job = dg.define_asset_job(
    "experiment_job",
    selection=dg.AssetSelection.assets(augmented_images, pseudolabels, prompt_checkpoints, evaluation_metrics),
    description="One experiment on one dataset: augmentation, pseudolabels, prompt training, evaluation.",
)
reevaluation_job = dg.define_asset_job(
    "reevaluation_job",
    selection=dg.AssetSelection.assets(evaluation_metrics),
    description="Re-evaluate existing prompt checkpoints (replaces their warehouse rows, keeps history).",
)
report_job = dg.define_asset_job(
    "report_job",
    selection=dg.AssetSelection.assets(cross_dataset_report),
    description="Rebuild the cross-dataset HTML report from the warehouse.",
)
