"""MVLPT's multitask stage (the catalog's `multitask:` section): the source runs, each trained on the pooled few-shot
sets of the sources, and the seed average of each source configuration, which the target experiments start from
(their prompt_checkpoints partitions read it; models/experiments/multitask.py)."""


import dagster as dg

from models.provenance import library_code_version
from pipelines.assets import sync as folders
from pipelines.assets.common import partition_inputs
from pipelines.assets.curation import fewshot_subsets
from pipelines.assets.features import image_features
from pipelines.assets.sync import synced
from pipelines.assets.world import tiny_clip_backbone
from pipelines.metadata import path_value
from pipelines.partitions import (multitask_average_partitions, multitask_runs_of_average,
                                  multitask_source_partitions)
from pipelines.resources import PromptLabResource


@dg.asset(
    group_name="training",
    partitions_def=multitask_source_partitions,
    # the few-shot subsets and cached features of every source
    deps=[dg.AssetDep(fewshot_subsets, partition_mapping=dg.AllPartitionMapping()),
          dg.AssetDep(image_features, partition_mapping=dg.AllPartitionMapping()), tiny_clip_backbone],
    code_version=library_code_version(),
    kinds={"pytorch", "safetensors"},
    pool="gpu",
)
@synced(reads=(folders.backbone, folders.multitask_sources, folders.features),
        writes=(folders.multitask_checkpoint, folders.features))
def multitask_prompt_checkpoints(context: dg.AssetExecutionContext,
                                 promptlab: PromptLabResource) -> dg.MaterializeResult:
    """One seed's MVLPT source prompt, trained jointly on the pooled few-shot sets of the multitask sources."""
    from models.experiments import save_prompt_checkpoint
    from models.experiments.multitask import multitask_checkpoint_dir, train_multitask_source
    from pipelines.assets.training import training_metadata

    key, sources = context.partition_key, promptlab.catalog().multitask.sources
    workspace, backbone = promptlab.workspace(), promptlab.load_backbone()
    trained = train_multitask_source([partition_inputs(promptlab, source, key) for source in sources], workspace,
                                     backbone, log=context.log.info)
    directory = save_prompt_checkpoint(multitask_checkpoint_dir(workspace, key), trained.classifier, trained.config)
    return dg.MaterializeResult(metadata={**training_metadata(trained, f"{key} on {' + '.join(sources)}"),
                                          "sources": list(sources), "path": path_value(directory)})


@dg.asset(
    group_name="training",
    partitions_def=multitask_average_partitions,
    deps=[dg.AssetDep(multitask_prompt_checkpoints, partition_mapping=multitask_runs_of_average)],
    code_version=library_code_version(),
    kinds={"safetensors"},
)
@synced(reads=(folders.multitask_runs,), writes=(folders.multitask_checkpoint,))
def multitask_source_prompts(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """The element-wise mean over seeds of one source configuration's prompts: where its MVLPT targets start."""
    from models.experiments.multitask import average_source_checkpoints, multitask_checkpoint_dir

    average, workspace = context.partition_key, promptlab.workspace()
    runs = promptlab.catalog().multitask.averages[average]
    directory = average_source_checkpoints([multitask_checkpoint_dir(workspace, run) for run in runs],
                                           multitask_checkpoint_dir(workspace, average))
    return dg.MaterializeResult(metadata={"averaged_over": list(runs), "path": path_value(directory)})
