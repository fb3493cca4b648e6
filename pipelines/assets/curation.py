"""Curation: datasets on disk, their index, few-shot subsets and base/new classes; one partition per dataset."""


import json
from pathlib import Path

import dagster as dg

from models.catalog import DatasetEntry
from models.provenance import source_version, stable_hash
from models.workspace import Workspace
from pipelines.assets import sync as folders
from pipelines.assets.sync import synced
from pipelines.assets.world import is_current, mark_current
from pipelines.partitions import dataset_partitions
from pipelines.resources import PromptLabResource

FEW_SHOT_SHOTS = (1, 2, 4, 8, 16)
FEW_SHOT_SEEDS = (1, 2, 3)
BENCHMARK_CODE = source_version("models/embedded/benchmark.py", "models/embedded/corpus.py")
READER_CODE = source_version("models/data/datasets.py", "models/data/index.py", "models/data/near_duplicates.py")


def index_preview(index, rows: int = 5) -> str:
    """The index's first rows as markdown: missing text (no decode error) shows empty, not `nan`; binary columns
    (the near-duplicate thumbnail) are left out."""
    import polars as pl

    head = index.head(rows).select(pl.exclude(pl.Binary)).with_columns(pl.col(pl.String).fill_null(""))
    return head.to_pandas().to_markdown(index=False)


def dataset_source(entry: DatasetEntry, workspace: Workspace):
    """Where a catalog dataset lives: embedded ones in the workspace, real ones at their catalog root."""
    from models.data.datasets import DatasetSource

    root = workspace.embedded_dataset_dir(entry.name) if entry.source == "embedded" else Path(entry.root)
    return DatasetSource(
        name=entry.name,
        root=root,
        layout="image_folder" if entry.source == "image_folder" else "coop",
        image_dir_name=entry.image_dir,
        split_file_name=entry.split_file_name,
        seed=entry.split_seed,
    )


@dg.asset(group_name="curation", partitions_def=dataset_partitions, code_version=BENCHMARK_CODE, kinds={"python"})
@synced(writes=(folders.dataset_images,))
def dataset_files(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """The dataset's images and split file on disk (CoOp layout); embedded datasets are generated here."""
    from models.embedded.benchmark import build_embedded_dataset

    catalog, workspace = promptlab.catalog(), promptlab.workspace()
    entry = catalog.dataset(context.partition_key)
    source = dataset_source(entry, workspace)
    if entry.source == "embedded":
        settings = catalog.world["benchmark"]
        fingerprint = stable_hash({"code": BENCHMARK_CODE, "settings": settings, "name": entry.name})
        if not is_current(source.root, fingerprint):
            build_embedded_dataset(entry.name, source.root, seed=settings["seed"],
                                   images_per_class=settings["images_per_class"])
            mark_current(source.root, fingerprint)
            context.log.info(f"generated embedded dataset {entry.name} at {source.root}")
    elif not source.root.exists():
        raise FileNotFoundError(f"dataset {entry.name}: root folder {source.root} does not exist (datasets.yaml)")
    return dg.MaterializeResult(metadata={"root": str(source.root), "source": entry.source})


@dg.asset(group_name="curation", partitions_def=dataset_partitions, deps=[dataset_files], code_version=READER_CODE,
          kinds={"polars", "parquet"})
@synced(reads=(folders.dataset_images,), writes=(folders.curation,))
def dataset_index(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """One row per image: relative path, label, class name, split, size, decodability, content hash (Parquet).
    Written to a staging file: the blocking dataset checks promote it to index.parquet only when they all pass."""
    from models.data.datasets import read_dataset
    from models.data.index import build_dataset_index, conversion_summary, dataset_fingerprint
    from models.data.validated_index import stage_index

    workspace = promptlab.workspace()
    source = dataset_source(promptlab.catalog().dataset(context.partition_key), workspace)
    index = build_dataset_index(read_dataset(source), source.image_dir)
    path = stage_index(workspace, source.name, index)
    counts = {split: int(n) for split, n in index.group_by("split").len().sort("split").iter_rows()}
    return dg.MaterializeResult(
        metadata={
            "path": str(workspace.index_path(source.name)),
            "staged_path": str(path),
            "rows": index.height,
            "classes": index["classname"].n_unique(),
            "rows_per_split": dg.MetadataValue.json(counts),
            "data_hash": dataset_fingerprint(index),
            # How images became RGB (alpha composited on white, grey, CMYK) and which were decompression-bomb sized.
            "decoding": dg.MetadataValue.json(conversion_summary(index)),
            "preview": dg.MetadataValue.md(index_preview(index)),
        }
    )


@dg.asset(group_name="curation", partitions_def=dataset_partitions, deps=[dataset_index],
          code_version=source_version("models/data/fewshot.py"), kinds={"polars", "parquet"})
@synced(writes=(folders.curation,))
def fewshot_subsets(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """Deterministic K-shot subsets (K in 1,2,4,8,16; seeds 1-3), stored as relative paths."""
    import polars as pl

    from models.data.fewshot import all_few_shot_subsets
    from models.data.validated_index import read_validated_index

    workspace = promptlab.workspace()
    index = read_validated_index(workspace, context.partition_key)
    def fewest_per_class(split: str) -> int:
        return int(index.filter(pl.col("split") == split).group_by("label").len()["len"].min() or 0)

    # CoOp's protocol: K per class from train and min(K, 4) from val; larger K than the data allows are left out.
    train_available, val_available = fewest_per_class("train"), fewest_per_class("val")
    shots = tuple(k for k in FEW_SHOT_SHOTS if k <= train_available and min(k, 4) <= val_available)
    if not shots:
        raise ValueError(f"{context.partition_key}: too few images per class for any few-shot subset "
                         f"(train {train_available}, val {val_available})")
    subsets = all_few_shot_subsets(index, shots_list=shots, seeds=FEW_SHOT_SEEDS)
    path = workspace.fewshot_path(context.partition_key)
    subsets.write_parquet(path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return dg.MaterializeResult(
        metadata={"path": str(path), "rows": subsets.height, "shots": list(shots), "seeds": list(FEW_SHOT_SEEDS),
                  "subset_hash": stable_hash(subsets.select("shots", "seed", "relative_path").rows())}
    )


@dg.asset(group_name="curation", partitions_def=dataset_partitions, deps=[dataset_index],
          code_version=source_version("models/data/class_splits.py"), kinds={"json"})
@synced(writes=(folders.curation,))
def base_new_classes(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """Base and new classes: sorted labels, the first ceil(n/2) are base (the base-to-new protocol)."""
    from models.data.class_splits import split_base_new
    from models.data.datasets import expected_classnames
    from models.data.validated_index import read_validated_index

    workspace = promptlab.workspace()
    index = read_validated_index(workspace, context.partition_key)
    classnames = expected_classnames(index)
    split = split_base_new(classnames)
    payload = {
        "classnames": classnames,
        "base_labels": list(split.base_labels),
        "new_labels": list(split.new_labels),
    }
    path = workspace.class_split_path(context.partition_key)
    path.write_text(json.dumps(payload, indent=2))
    return dg.MaterializeResult(
        metadata={"path": str(path), "base": [classnames[i] for i in split.base_labels],
                  "new": [classnames[i] for i in split.new_labels]}
    )


@dg.asset(group_name="curation", partitions_def=dataset_partitions, deps=[dataset_index, base_new_classes],
          code_version=source_version("models/data/learning_settings.py"), kinds={"polars", "parquet"})
@synced(writes=(folders.curation,))
def learning_setting_splits(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """The limited-label splits of the training images (SSL, UL, TRZSL) for every setting and seed the grid uses:
    which images are labelled (train / val) and which form the unlabelled pool; checked by GX before any use."""
    import polars as pl

    from models.data.learning_settings import setting_splits_table
    from models.data.validated_index import read_validated_index

    catalog, workspace = promptlab.catalog(), promptlab.workspace()
    dataset = context.partition_key
    index = read_validated_index(workspace, dataset)
    classnames = json.loads(workspace.class_split_path(dataset).read_text())["classnames"]
    requests = sorted({(e.setting, e.seed) for e in catalog.experiments.values() if e.setting is not None})
    plan = catalog.learning_settings
    try:
        table = setting_splits_table(index.filter(pl.col("split") == "train"), classnames, requests,
                                     plan.labels_per_class, plan.trzsl_split_seeds)
    except ValueError as error:
        raise ValueError(f"{dataset}: {error}") from error
    path = workspace.setting_splits_path(dataset)
    table.write_parquet(path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    counts = (table.group_by("setting", "seed", "role").len().sort("setting", "seed", "role")
              .pivot(on="role", index=["setting", "seed"], values="len") if table.height else table)
    context.log.info(f"{dataset}: {len(requests)} learning-setting splits")
    return dg.MaterializeResult(metadata={
        "path": str(path), "splits": dg.MetadataValue.json([list(r) for r in requests]),
        "roles": dg.MetadataValue.md(counts.to_pandas().to_markdown(index=False)) if table.height else "none",
        "split_hash": stable_hash(table.rows())})
