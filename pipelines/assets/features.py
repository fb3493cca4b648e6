"""Image features: every image of a dataset encoded once per view by the frozen image tower, in the dataset's
canonical batches (models.prompting.features), into the workspace's feature cache, before any experiment reads them.

One partition per dataset; the backbone is the resource's. Every split's original view and the training split's
mirrored view (the flip the training stages read) are encoded; the experiments of every method, shot count, seed and
protocol then read the same bits from the cache.
"""


import time

import dagster as dg

from models.provenance import library_code_version
from models.markdown import markdown_table
from pipelines.assets import sync as folders
from pipelines.assets.curation import dataset_index, image_root
from pipelines.assets.sync import synced
from pipelines.assets.world import tiny_clip_backbone
from pipelines.partitions import dataset_partitions
from pipelines.resources import PromptLabResource

# (split, view) pairs the asset encodes: what the training, pseudolabel and evaluation stages read.
ENCODED_VIEWS = (("train", "original"), ("val", "original"), ("test", "original"), ("train", "mirrored"))


@dg.asset(group_name="curation", partitions_def=dataset_partitions, deps=[dataset_index, tiny_clip_backbone],
          code_version=library_code_version(), kinds={"pytorch", "safetensors"}, pool="gpu")
@synced(reads=(folders.backbone, folders.dataset_images, folders.curation), writes=(folders.features,))
def image_features(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """Every image of the dataset through the frozen image tower, once per view, in canonical batches, cached."""
    import polars as pl

    from models.data.validated_index import read_validated_index
    from models.experiments import features_for_images
    from models.prompting.features import ImageSet

    catalog, workspace = promptlab.catalog(), promptlab.workspace()
    dataset = context.partition_key
    index = read_validated_index(workspace, dataset)
    image_set = ImageSet.of_index(image_root(catalog.dataset(dataset), workspace), index)
    backbone = promptlab.load_backbone()
    rows, started_all = [], time.perf_counter()
    for split, view in ENCODED_VIEWS:
        part = index.filter(pl.col("split") == split)
        if part.height == 0:
            continue
        started = time.perf_counter()
        features = features_for_images(backbone, image_set, part["relative_path"].to_list(),
                                       part["content_sha256"].to_list(), workspace.feature_cache_dir,
                                       with_mirror=view == "mirrored")
        seconds = time.perf_counter() - started
        rows.append({"split": split, "view": view, "images": part.height, "seconds": round(seconds, 2),
                     "images_per_second": round(part.height / max(seconds, 1e-9), 1)})
        context.log.info(f"{dataset}: {split} {view}: {part.height} images in {seconds:.1f} s "
                         f"({part.height / max(seconds, 1e-9):.0f} images/s, cached ones read)")
    table = pl.DataFrame(rows)
    return dg.MaterializeResult(metadata={
        "backbone": backbone.spec.name,
        "backbone_weights_sha256": backbone.weights_sha256,
        "image_set": image_set.key,
        "batching": image_set.batching,
        "feature_width": int(features.shape[-1]),
        "images": len(image_set.content_hashes),
        "seconds": round(time.perf_counter() - started_all, 2),
        "views": dg.MetadataValue.md(markdown_table(table)),
        "cache": dg.MetadataValue.path(str(workspace.feature_cache_dir)),
    })
