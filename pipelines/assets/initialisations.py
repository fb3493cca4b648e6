"""Upstream initialisations (the catalog's `initialisations:` section): GRAM's meta-learned prompt and gradient
regulator and PVP's pre-trained prompt, each learned on the embedded corpus; the experiments that name one start from
it (their prompt_checkpoints partitions read it; models/experiments/initialisations.py)."""

import dagster as dg

from models.provenance import library_code_version
from pipelines.assets import sync as folders
from pipelines.assets.sync import synced
from pipelines.assets.world import pretraining_corpus, tiny_clip_backbone
from pipelines.metadata import path_value
from pipelines.partitions import initialisation_partitions
from pipelines.resources import PromptLabResource


@dg.asset(
    group_name="training",
    partitions_def=initialisation_partitions,
    deps=[pretraining_corpus, tiny_clip_backbone],
    code_version=library_code_version(),
    kinds={"pytorch", "safetensors"},
    pool="gpu",
)
@synced(reads=(folders.corpus, folders.backbone), writes=(folders.initialisation_checkpoint,))
def prompt_initialisations(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """One upstream prompt (GRAM or PVP) learned on the image-caption corpus, where its experiments start."""
    from models.experiments.initialisations import initialisation_dir, save_initialisation, train_initialisation

    entry = promptlab.catalog().initialisations.entries[context.partition_key]
    workspace = promptlab.workspace()
    state, record = train_initialisation(entry, workspace.corpus_dir, promptlab.load_backbone(), log=context.log.info)
    directory = save_initialisation(initialisation_dir(workspace, entry.name), state, record)
    return dg.MaterializeResult(metadata={"method": entry.method, "pairs": record["pairs"],
                                          "caption_classes": record["caption_classes"], "domains": record["domains"],
                                          "path": path_value(directory)})
