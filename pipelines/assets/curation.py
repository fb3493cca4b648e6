"""Curation: datasets on disk, their index, few-shot subsets and base/new classes; one partition per dataset."""


import dataclasses
import json
import os
from pathlib import Path

import dagster as dg

from models.catalog import DatasetEntry
from models.markdown import markdown_table
from models.provenance import source_version, stable_hash
from models.workspace import Workspace
from pipelines.assets import sync as folders
from pipelines.assets.sync import synced
from pipelines.assets.world import is_current, mark_current
from pipelines.partitions import dataset_partitions
from pipelines.resources import PromptLabResource

from models.data.fewshot import PROTOCOL_SEEDS as FEW_SHOT_SEEDS  # noqa: E402
from models.data.fewshot import PROTOCOL_SHOTS as FEW_SHOT_SHOTS  # noqa: E402
BENCHMARK_CODE = source_version("models/embedded/benchmark.py", "models/embedded/corpus.py")
READER_CODE = source_version("models/data/datasets.py", "models/data/index.py", "models/data/near_duplicates.py",
                             "models/data/curation.py", *sorted(f"models/data/layouts/{path.name}" for path in
                                                                (Path(__file__).resolve().parents[2] / "models" /
                                                                 "data" / "layouts").glob("*.py")))


def index_preview(index, rows: int = 5) -> str:
    """The index's first rows as markdown, class names and paths escaped (a `<svg>` or `|` in a name shows as
    itself); missing text (no decode error) shows empty; binary columns (the near-duplicate thumbnail) are left
    out."""
    import polars as pl

    return markdown_table(index.head(rows).select(pl.exclude(pl.Binary)))


def dataset_root(entry: DatasetEntry, workspace: Workspace) -> Path:
    """Where a catalog dataset lives: embedded ones in the workspace, real ones at their catalog root."""
    return workspace.embedded_dataset_dir(entry.name) if entry.source == "embedded" else Path(entry.root)


def image_root(entry: DatasetEntry, workspace: Workspace) -> Path:
    """The folder the index's relative paths start from, as the layout reader recorded it at curation."""
    from models.data.curation import read_listing_record

    recorded = read_listing_record(workspace.listing_path(entry.name)).get("image_dir")
    if recorded is None:  # curated before listings were recorded: the split_zhou / image_folder image folder
        return dataset_source(entry, workspace).image_dir
    return dataset_root(entry, workspace) / recorded


def dataset_source(entry: DatasetEntry, workspace: Workspace):
    """The embedded dataset's (or an older catalog's coop / image_folder dataset's) root, layout and split file."""
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
    """One row per image: relative path, label, class name, split, size, decodability, content hash (Parquet), as
    the dataset's layout reader lists it (models/data/layouts). At ImageNet scale only what experiments read is
    decoded and hashed (models.data.curation). Written to a staging file: the blocking dataset checks promote it to
    index.parquet only when they all pass."""
    from models.data.curation import dataset_listing, rows_experiments_read, write_listing_record
    from models.data.index import build_dataset_index, conversion_summary, dataset_fingerprint
    from models.data.validated_index import stage_index

    catalog, workspace = promptlab.catalog(), promptlab.workspace()
    entry = catalog.dataset(context.partition_key)
    root = dataset_root(entry, workspace)
    listing = dataset_listing(entry, root)
    for note in listing.notes:
        context.log.warning(f"{entry.name}: {note}")
    inspect = None if entry.test_only else rows_experiments_read(
        listing, FEW_SHOT_SHOTS, FEW_SHOT_SEEDS, entry.few_shot_sampling,
        whole_training_set=any(e.setting is not None for e in catalog.experiments.values()))
    if inspect is not None:
        context.log.info(f"{entry.name}: {listing.records.height} images listed; decoding the {len(inspect)} that "
                         "experiments read (few-shot draws, val, test)")

    def progress(done: int, total: int) -> None:
        if done % 10_000 == 0 or done == total:
            context.log.info(f"{entry.name}: inspected {done}/{total} images")

    index = build_dataset_index(listing.records, listing.image_root, inspect=inspect,
                                workers=min(8, os.cpu_count() or 1), progress=progress)
    write_listing_record(workspace.listing_path(entry.name), listing, entry.layout or "split_zhou", root)
    path = stage_index(workspace, entry.name, index)
    counts = {split: int(n) for split, n in index.group_by("split").len().sort("split").iter_rows()}
    return dg.MaterializeResult(
        metadata={
            "path": str(workspace.index_path(entry.name)),
            "staged_path": str(path),
            "rows": index.height,
            "inspected_rows": index.height if inspect is None else len(inspect),
            "classes": len(listing.classnames),
            "rows_per_split": dg.MetadataValue.json(counts),
            "structure": dg.MetadataValue.json(dataclasses.asdict(listing.structure)),
            "notes": dg.MetadataValue.json(list(listing.notes)),
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
    """Deterministic K-shot subsets (K in 1,2,4,8,16; seeds 1-3), stored as relative paths; drawn as the dataset's
    catalog entry says (few_shot_sampling: per_class, or dassl: the images the papers' code draws). A test-only
    dataset has none (an empty table); where val is test (ImageNet) only training images are drawn."""
    from models.data.curation import read_listing_record
    from models.data.fewshot import all_few_shot_subsets, servable_shots
    from models.data.validated_index import read_validated_index

    catalog, workspace = promptlab.catalog(), promptlab.workspace()
    entry = catalog.dataset(context.partition_key)
    structure = read_listing_record(workspace.listing_path(entry.name))["structure"]
    index = read_validated_index(workspace, context.partition_key, listed_rows=True)
    path = workspace.fewshot_path(context.partition_key)

    if structure.test_only:
        subsets = all_few_shot_subsets(index, shots_list=(), seeds=FEW_SHOT_SEEDS)
        shots: tuple[int, ...] = ()
        context.log.info(f"{entry.name}: test-only, no few-shot subsets")
    else:
        # CoOp's protocol: K per class from train and min(K, 4) from val. A K the data cannot serve is left out,
        # unless an experiment of the grid trains on it: then curation is refused, saying which class falls short.
        requested: dict[int, list[str]] = {}
        for key, experiment in catalog.experiments.items():
            if experiment.shots and experiment.setting is None and catalog.runs_on(entry.name, key):
                requested.setdefault(experiment.shots, []).append(key)
        shots = servable_shots(index, FEW_SHOT_SHOTS, val_is_test=structure.val_is_test, dataset=entry.name,
                               requested=requested)
        subsets = all_few_shot_subsets(index, shots_list=shots, seeds=FEW_SHOT_SEEDS,
                                       sampling=entry.few_shot_sampling, val_is_test=structure.val_is_test)
    subsets.write_parquet(path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return dg.MaterializeResult(
        metadata={"path": str(path), "rows": subsets.height, "shots": list(shots), "seeds": list(FEW_SHOT_SEEDS),
                  "sampling": entry.few_shot_sampling,
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

    from models.data.curation import read_listing_record

    workspace = promptlab.workspace()
    index = read_validated_index(workspace, context.partition_key)
    # the reader's names by label when it recorded them (every class, also one the index holds no image of)
    classnames = (read_listing_record(workspace.listing_path(context.partition_key))["classnames"]
                  or expected_classnames(index))
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
    # only the settings the grid runs, and none on a test-only dataset (nothing trains there)
    requests = [] if catalog.dataset(dataset).test_only else sorted(
        {(e.setting, e.seed) for e in catalog.experiments.values() if e.setting is not None})
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
        "roles": dg.MetadataValue.md(markdown_table(counts)) if table.height else "none",
        "split_hash": stable_hash(table.rows())})
