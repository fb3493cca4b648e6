"""A workspace in object storage shared by two machines: machine 1 runs `promptlab run` on Shapes and zero-shot (the
micro world, the shipped backbone, curation, features, the zero-shot partition, the report) into s3://<bucket>/ws;
machine 2, with an empty working copy of its own, runs an experiment partition
that reads machine 1's curation, images, backbone and features from the store (it curates and encodes nothing), and
publishes its checkpoint. Each machine is a separate process with its own cache folder and Dagster instance; the
store is moto's S3 server on 127.0.0.1."""

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime

import duckdb
import fsspec
import pytest
import yaml

from models.catalog import DEFAULT_CATALOG_DIR
from models.provenance import PACKAGE_ROOT
from models.storage import MANIFEST_NAME, sha256_of

EXPERIMENT = "coop-k2-s1"

# Runs each `job:partition` (or `asset:name`) on an ephemeral Dagster instance, as a worker of its own would.
MACHINE = textwrap.dedent("""
    import sys
    import dagster as dg
    from pipelines.definitions import defs
    from pipelines.assets.world import tiny_clip_backbone
    from pipelines.resources import PromptLabResource

    instance = dg.DagsterInstance.ephemeral()
    for step in sys.argv[1:]:
        kind, _, name = step.partition(":")
        if kind == "asset":
            result = dg.materialize([tiny_clip_backbone], instance=instance,
                                    resources={"promptlab": PromptLabResource()})
        else:
            result = defs.get_job_def(kind).execute_in_process(partition_key=name, instance=instance)
        assert result.success, step
        for event in result.get_asset_materialization_events():
            print("materialized", event.asset_key.to_user_string(), flush=True)
""")


@pytest.fixture(scope="module")
def micro_catalog(tmp_path_factory):
    """The default catalog (shipped tiny-clip weights) with Shapes alone, 5/4/3 images per class, a micro corpus and
    diffusion model, and a one-epoch CoOp next to zero-shot."""
    catalog = tmp_path_factory.mktemp("storage-catalog") / "catalog"
    import shutil

    shutil.copytree(DEFAULT_CATALOG_DIR, catalog)
    datasets = yaml.safe_load((catalog / "datasets.yaml").read_text())["datasets"]
    (catalog / "datasets.yaml").write_text(yaml.safe_dump({"datasets": [d for d in datasets if d["name"] == "Shapes"]}))
    world = yaml.safe_load((catalog / "world.yaml").read_text())
    world["benchmark"]["images_per_class"] = {"train": 5, "val": 4, "test": 3}
    world["corpus"]["num_pairs"] = 384
    world["diffusion"].update(epochs=1, batch_size=64)
    (catalog / "world.yaml").write_text(yaml.safe_dump(world))
    grid = [{"method": "zero_shot"},
            {"method": "coop", "shots": [2], "seeds": [1], "optimization": {"epochs": 1}, "parameters": {"n_context": 4}}]
    (catalog / "experiments.yaml").write_text(yaml.safe_dump({"grid": grid}))
    return catalog


def promptlab_run(environment, cache, home, *arguments):
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", *arguments], cwd=PACKAGE_ROOT,
                            capture_output=True, text=True, timeout=600,
                            env={**environment, "PROMPTLAB_WORKSPACE_CACHE": str(cache), "DAGSTER_HOME": str(home)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


def run_machine(environment, cache, *steps):
    """(assets materialized, log) of a machine whose working copy is `cache`."""
    result = subprocess.run([sys.executable, "-c", MACHINE, *steps], cwd=PACKAGE_ROOT, capture_output=True, text=True,
                            timeout=600, env={**environment, "PROMPTLAB_WORKSPACE_CACHE": str(cache)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    materialized = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("materialized ")]
    return materialized, result.stdout + result.stderr


def local_files(root, folder):
    return {p.relative_to(root).as_posix(): sha256_of(p) for p in (root / folder).rglob("*")
            if p.is_file() and not p.name.startswith(".")}


@pytest.mark.integration
def test_an_experiment_on_machine_two_reads_the_curation_machine_one_published(s3_bucket, micro_catalog, tmp_path):
    environment = {**os.environ, "PROMPTLAB_CATALOG": str(micro_catalog), "PROMPTLAB_WORKSPACE": f"s3://{s3_bucket}/ws",
                   "PROMPTLAB_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    environment.pop("DAGSTER_HOME", None)
    one, two = tmp_path / "machine-one", tmp_path / "machine-two"

    log = promptlab_run(environment, one, tmp_path / "home-one", "--dataset", "Shapes", "--experiment", "zeroshot")
    assert f"s3://{s3_bucket}/ws: pushed" in log
    assert json.loads((one / "last_run_summary.json").read_text())["failures"] == []
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    stored = {name.split("/ws/", 1)[1] for name in fs.find(f"{s3_bucket}/ws")}
    curation = {name for name in stored if name.startswith("curation/Shapes/")}
    assert curation == {f"curation/Shapes/{name}" for name in (
        "index.parquet", "index_validation.json", "listing.json", "fewshot_subsets.parquet", "base_new_classes.json",
        "learning_setting_splits.parquet", MANIFEST_NAME)}  # the promoted index, not the staged one
    manifest = json.loads(fs.cat_file(f"{s3_bucket}/ws/curation/Shapes/{MANIFEST_NAME}"))
    assert manifest["state"] == "complete"
    assert {k: v["sha256"] for k, v in manifest["files"].items()} == local_files(one, "curation/Shapes")
    assert json.loads(fs.cat_file(f"{s3_bucket}/ws/curation/Shapes/index_validation.json"))["status"] == "passed"
    assert {"world/tiny-clip/open_clip_model.safetensors", "world/tiny-clip.fingerprint",
            f"world/tiny-clip/{MANIFEST_NAME}", f"world/corpus/{MANIFEST_NAME}", f"world/tiny-diffusion/{MANIFEST_NAME}",
            f"datasets/Shapes/{MANIFEST_NAME}", "reports/report.html",
            "experiments/Shapes/zeroshot/prompt_checkpoint/prompt_config.json"} <= stored
    shards = {name for name in stored if name.startswith("cache/features/") and "/shard-" in name}
    assert shards
    assert not [name for name in stored if name.startswith(("warehouse/", f"experiments/Shapes/{EXPERIMENT}/"))]

    assert not two.exists()
    materialized, log = run_machine(environment, two, f"experiment_job:Shapes|{EXPERIMENT}")
    # machine 2 curates and encodes nothing: it pulls
    assert sorted(materialized) == ["augmented_images", "evaluation_metrics", "prompt_checkpoints", "pseudolabels"]
    assert f"s3://{s3_bucket}/ws: pulled" in log
    # what machine 2 computed from is machine 1's curation and features, byte for byte
    assert local_files(two, "curation/Shapes") == local_files(one, "curation/Shapes")
    assert local_files(two, "world/tiny-clip") == local_files(one, "world/tiny-clip")
    assert {p.relative_to(two).as_posix() for p in (two / "cache/features").rglob("shard-*")} == shards
    with duckdb.connect(str(two / "warehouse" / "promptlab.duckdb"), read_only=True) as connection:
        rows = connection.execute("SELECT r.dataset, r.experiment_key, m.value FROM runs r JOIN metrics m USING "
                                  "(run_id) WHERE m.split = 'test' AND m.metric = 'top1_accuracy'").fetchall()
    assert [(dataset, key) for dataset, key, _ in rows] == [("Shapes", EXPERIMENT)] and 0 <= rows[0][2] <= 1
    # the warehouse stays in each working copy (not synchronised): machine 2's holds its own run only

    stored = {name.split("/ws/", 1)[1] for name in fs.find(f"{s3_bucket}/ws")}
    checkpoint = {name for name in stored if name.startswith(f"experiments/Shapes/{EXPERIMENT}/")}
    assert f"experiments/Shapes/{EXPERIMENT}/prompt_checkpoint/prompt_config.json" in checkpoint
    assert f"experiments/Shapes/{EXPERIMENT}/{MANIFEST_NAME}" in checkpoint
    assert not [name for name in stored if name.startswith("warehouse/")]


def test_an_asset_publishes_its_folders_only_when_it_succeeds(s3_bucket, tmp_path, monkeypatch):
    import dagster as dg

    from pipelines.assets import sync as folders
    from pipelines.assets.sync import synced
    from pipelines.resources import PromptLabResource

    monkeypatch.setenv("PROMPTLAB_WORKSPACE_CACHE", str(tmp_path / "copy"))
    crash = {"now": True}

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["Shapes"]))
    @synced(writes=(folders.curation,))
    def curated(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
        path = promptlab.workspace().curation_dir(context.partition_key) / "index.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("written")
        if crash["now"]:
            raise RuntimeError("crashed after writing")
        return dg.MaterializeResult()

    def materialize(location):
        return dg.materialize([curated], partition_key="Shapes", raise_on_error=False,
                              resources={"promptlab": PromptLabResource(workspace_dir=location)})

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    assert not materialize(f"s3://{s3_bucket}/ws").success
    assert fs.find(f"{s3_bucket}/ws") == []  # the store keeps what it had: nothing
    crash["now"] = False
    assert materialize(f"s3://{s3_bucket}/ws").success
    assert sorted(fs.find(f"{s3_bucket}/ws")) == [f"{s3_bucket}/ws/curation/Shapes/{MANIFEST_NAME}",
                                                  f"{s3_bucket}/ws/curation/Shapes/index.parquet"]
    # the local default: the asset writes in its folder, nothing else is written
    assert materialize(str(tmp_path / "local")).success
    assert sorted(p.relative_to(tmp_path / "local").as_posix() for p in (tmp_path / "local").rglob("*")) == [
        "curation", "curation/Shapes", "curation/Shapes/index.parquet"]


def test_an_asset_check_on_another_working_copy_reads_the_store_and_publishes_after_its_last_result(
        s3_bucket, tmp_path, monkeypatch):
    """A check runs as a step of its own (a Celery task, a pod), and yields its results: it pulls the folder it
    validates and pushes what it writes after its last result, not before its body ran."""
    import logging
    from types import SimpleNamespace

    import dagster as dg

    from pipelines.assets import sync as folders
    from pipelines.assets.sync import synced
    from pipelines.resources import PromptLabResource

    @synced(writes=(folders.curation,))
    def promote(context, promptlab: PromptLabResource):
        staged = promptlab.workspace().curation_dir(context.partition_key) / "index.staged.parquet"
        present = staged.exists()
        if present:
            staged.rename(staged.with_name("index.parquet"))
        yield dg.AssetCheckResult(check_name="staged_index_present", asset_key="curated", passed=present)

    promptlab = PromptLabResource(workspace_dir=f"s3://{s3_bucket}/ws")
    context = SimpleNamespace(has_partition_key=True, partition_key="Shapes", log=logging.getLogger("check"))
    monkeypatch.setenv("PROMPTLAB_WORKSPACE_CACHE", str(tmp_path / "copy-one"))
    staged = promptlab.workspace().curation_dir("Shapes") / "index.staged.parquet"
    staged.parent.mkdir(parents=True)
    staged.write_text("staged")
    promptlab.workspace().push([staged.parent])

    monkeypatch.setenv("PROMPTLAB_WORKSPACE_CACHE", str(tmp_path / "copy-two"))
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    results = promote(context, promptlab)
    [result] = [next(results)]
    assert result.passed  # copy two saw what copy one published
    assert f"{s3_bucket}/ws/curation/Shapes/index.staged.parquet" in fs.find(f"{s3_bucket}/ws")  # not pushed yet
    assert list(results) == []
    assert sorted(fs.find(f"{s3_bucket}/ws")) == [f"{s3_bucket}/ws/curation/Shapes/{MANIFEST_NAME}",
                                                  f"{s3_bucket}/ws/curation/Shapes/index.parquet"]


def test_every_asset_and_asset_check_of_the_graph_moves_its_folders():
    """An asset or check body that is not @synced would compute from a stale or empty working copy on a worker."""
    from pipelines.definitions import defs

    repository = defs.get_repository_def()
    assets = [repository.asset_graph.get(key).assets_def for key in repository.asset_graph.get_all_asset_keys()]
    bodies = {a.node_def.name: a.op.compute_fn.decorated_fn for a in assets if a.is_executable}
    bodies |= {c.node_def.name: c.op.compute_fn.decorated_fn for c in defs.asset_checks}
    assert len(bodies) >= 18 and {"dataset_expectations", "learning_setting_expectations"} <= set(bodies)
    assert [name for name, body in bodies.items() if not hasattr(body, "synced")] == []


def test_the_weekly_reevaluation_finds_checkpoints_in_the_store_not_in_its_own_copy(s3_bucket, tmp_path,
                                                                                    monkeypatch):
    import dagster as dg

    from pipelines.partitions import dataset_experiment_partitions
    from pipelines.resources import PromptLabResource
    from pipelines.schedules import weekly_reevaluation

    promptlab = PromptLabResource(workspace_dir=f"s3://{s3_bucket}/ws")
    trained, untrained = dataset_experiment_partitions.get_partition_keys()[:2]
    monkeypatch.setenv("PROMPTLAB_WORKSPACE_CACHE", str(tmp_path / "trainer"))
    workspace = promptlab.workspace()
    for key, name in ((trained, "prompt_config.json"), (untrained, "augmentation.json")):
        dataset, experiment = key.keys_by_dimension["dataset"], key.keys_by_dimension["experiment"]
        path = workspace.checkpoint_dir(dataset, experiment) / name
        path.parent.mkdir(parents=True)
        path.write_text("{}")
        workspace.push([workspace.experiment_dir(dataset, experiment)])

    monkeypatch.setenv("PROMPTLAB_WORKSPACE_CACHE", str(tmp_path / "daemon"))  # an empty working copy
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 12, 7, 3),
                                        resources={"promptlab": promptlab})
    requests = [r for r in weekly_reevaluation(context) if isinstance(r, dg.RunRequest)]
    assert [r.partition_key for r in requests] == [trained]
    assert not (tmp_path / "daemon").exists() or not list((tmp_path / "daemon").rglob("prompt_config.json"))
