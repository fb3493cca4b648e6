"""The benchmark suites end to end on a miniature of the real datasets (tests/suites/mini_benchmark.py): the coop
suite's own dataset entries read ImageNet (1000 classes), its four shifts, Caltech101 and FGVC Aircraft from their
real layouts, and `promptlab run --suite` runs the four protocols and TPT on them with tiny-clip; the domainbed suite
runs one leave-one-domain-out split. `promptlab data check` is the gate before both."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from models.catalog import DEFAULT_CATALOG_DIR
from models.storage import read_parquet_file

sys.path.insert(0, str(Path(__file__).parent))
from mini_benchmark import write_mini_benchmark  # noqa: E402

CODE = Path(__file__).resolve().parents[2]
MINI_DATASETS = ["ImageNet", "Caltech101", "FGVCAircraft", "ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]
FAST_COOP = {"method": "coop", "shots": [1], "seeds": [1], "optimization": {"epochs": 1, "batch_size": 256},
             "parameters": {"n_context": 4, "context_init": "a photo of a"}}


def _write_catalog(root: Path) -> Path:
    """The shipped catalog, with a micro world (shipped tiny-clip weights, a short diffusion recipe) and a `mini`
    suite: the coop suite's dataset entries for the minis, and a one-seed, one-shot grid of every protocol."""
    catalog = root / "catalog"
    shutil.copytree(DEFAULT_CATALOG_DIR, catalog)
    world = yaml.safe_load((catalog / "world.yaml").read_text())
    world["corpus"]["num_pairs"] = 256
    world["diffusion"].update(epochs=1, batch_size=64)
    (catalog / "world.yaml").write_text(yaml.safe_dump(world))
    coop = yaml.safe_load((catalog / "suites" / "coop" / "datasets.yaml").read_text())["datasets"]
    mini = catalog / "suites" / "mini"
    mini.mkdir()
    (mini / "suite.yaml").write_text(yaml.safe_dump({"description": "the coop suite's entries on minis",
                                                     "backbone": "tiny-clip"}))
    entries = [entry for entry in coop if entry["name"] in MINI_DATASETS]
    (mini / "datasets.yaml").write_text(yaml.safe_dump({"datasets": entries}))
    grid = [{"method": "zero_shot"}, FAST_COOP, {**FAST_COOP, "protocol": "base_to_new"},
            {"method": "linear_probe", "shots": [1], "seeds": [1]}]
    (mini / "experiments.yaml").write_text(yaml.safe_dump({
        "grid": grid,
        "transfer": {"experiments": ["coop-k1-s1"], "cross_dataset": {"sources": ["ImageNet"]},
                     "domain_generalization": {"sources": ["ImageNet"]}},
        "test_time": {"sources": ["ImageNet"], "max_test_images": 4, "modes": {"tpt": {"n_views": 4}},
                      "runs": [{"mode": "tpt", "start": "zeroshot", "seeds": [1]}]}}))
    domainbed = catalog / "suites" / "domainbed"
    experiments = yaml.safe_load((domainbed / "experiments.yaml").read_text())
    experiments["grid"] = [{"method": "zero_shot"}, {**FAST_COOP, "shots": [2]}]
    (domainbed / "experiments.yaml").write_text(yaml.safe_dump(experiments))
    return catalog


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    # the data, the catalog and the workspace in a folder named with glob characters (a user's `proj [v2]`): each
    # file must be read by its literal path (no `?`: see tests/pipelines/conftest.py). Dagster's home stays outside.
    root = tmp_path_factory.mktemp("suites") / "we'ird [x]{a,b} *"
    data = write_mini_benchmark(root / "data")
    environment = {**os.environ, "PROMPTLAB_CATALOG": str(_write_catalog(root)), "PROMPTLAB_DATA": str(data),
                   "PROMPTLAB_WORKSPACE": str(root / "workspace"),
                   "DAGSTER_HOME": str(tmp_path_factory.mktemp("suites-dagster-home")),
                   "PROMPTLAB_TORCH_THREADS": "2"}
    for name in ("PROMPTLAB_SUITE", "PROMPTLAB_GRID", "PROMPTLAB_BACKBONE", "PROMPTLAB_WAREHOUSE"):
        environment.pop(name, None)

    def promptlab(*arguments: str, timeout: int = 900) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipelines.cli", *arguments], cwd=CODE, env=environment,
                              capture_output=True, text=True, timeout=timeout)

    return promptlab, root


def _query(root: Path, sql: str):
    with duckdb.connect(str(root / "workspace" / "warehouse" / "promptlab.duckdb"), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def test_data_check_reads_every_mini_with_the_real_entries(benchmark):
    promptlab, _ = benchmark
    result = promptlab("data", "check", "--suite", "mini", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = {check["name"]: check for check in json.loads(result.stdout)}
    assert {name: check["status"] for name, check in checks.items()} == {name: "found" for name in MINI_DATASETS}
    assert checks["ImageNet"]["counts"] == {"classes": 1000, "train": 1000, "val": 0, "test": 1000}
    assert checks["ImageNetA"]["counts"]["classes"] == checks["ImageNetR"]["counts"]["classes"] == 200
    # a miniature is not the published dataset: said, not refused
    assert any("1000 found, 1281167 published" in warning for warning in checks["ImageNet"]["warnings"])
    # CLIP's two duplicate names are the reference list's, kept with a warning
    assert any("missile" in warning and "sunglasses" in warning for warning in checks["ImageNet"]["warnings"])


def test_a_dry_run_prints_the_plan_and_runs_nothing(benchmark):
    promptlab, root = benchmark
    result = promptlab("run", "--suite", "mini", "--dry-run", "--protocol", "few_shot")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "few-shot: coop on 3 datasets (3 partitions" in result.stdout  # ImageNet, Caltech101, FGVCAircraft
    assert "Total: about" in result.stdout and "tiny-clip" in result.stdout
    assert not (root / "workspace" / "curation").exists()


@pytest.mark.integration
def test_the_coop_suite_runs_every_protocol_on_the_minis(benchmark):
    promptlab, root = benchmark
    result = promptlab("run", "--suite", "mini", timeout=1500)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    # the estimate before the run, and the actual stage times recorded beside it after
    assert "plan   about" in result.stdout
    recorded = sorted((root / "workspace" / "plans").glob("run-*.json"))
    assert recorded, "the run recorded no plan"
    record = json.loads(recorded[-1].read_text())
    assert record["total"]["estimated_seconds"] > 0 and record["total"]["wall_seconds"] > 0
    assert {row["run_stage"] for row in record["comparison"]} >= {"experiments", "transfer"}
    assert all(row["actual_seconds"] is not None for row in record["comparison"])
    rows = _query(root, """SELECT dataset, experiment_key, split, count(*) FROM current_results
                           WHERE stage = 'evaluation' AND metric = 'top1_accuracy' GROUP BY ALL""")
    evaluated = {(dataset, key) for dataset, key, _, _ in rows}
    trainable = ["ImageNet", "Caltech101", "FGVCAircraft"]
    # zero-shot everywhere; training only where there are training images
    assert {(name, "zeroshot") for name in MINI_DATASETS} <= evaluated
    assert {(name, key) for name in trainable for key in ("coop-k1-s1", "coop-k1-s1-b2n", "linearprobe-k1-s1")} \
        <= evaluated
    assert not any(key != "zeroshot" for name, key in evaluated if name not in trainable)
    splits = {(dataset, key, split) for dataset, key, split, _ in rows}
    assert ("ImageNet", "coop-k1-s1-b2n", "new") in splits  # base-to-new on 1000 classes: 500 / 500
    # cross-dataset (the two other minis) and domain generalization (the four shifts, A and R with their 200 names)
    transfers = _query(root, """SELECT DISTINCT dataset FROM current_results WHERE source_dataset = 'ImageNet'
                                AND experiment_key = 'coop-k1-s1' AND metric = 'top1_accuracy'""")
    assert {name for (name,) in transfers} == {"Caltech101", "FGVCAircraft", "ImageNetV2", "ImageNetSketch",
                                               "ImageNetA", "ImageNetR"}
    test_time = _query(root, "SELECT DISTINCT dataset FROM current_results WHERE stage = 'test_time'")
    assert {name for (name,) in test_time} >= {"ImageNetV2", "ImageNetA"}


@pytest.mark.integration
def test_the_domainbed_suite_holds_one_domain_out(benchmark):
    promptlab, root = benchmark
    result = promptlab("run", "--suite", "domainbed", "--backbone", "tiny-clip", "--dataset", "PACS_sketch",
                       timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    index = read_parquet_file(root / "workspace" / "curation" / "PACS_sketch" / "index.parquet")
    test_domains = {path.split("/")[0] for path in index.filter(index["split"] == "test")["relative_path"]}
    train_domains = {path.split("/")[0] for path in index.filter(index["split"] != "test")["relative_path"]}
    assert test_domains == {"sketch"} and train_domains == {"art_painting", "cartoon", "photo"}
    rows = _query(root, """SELECT experiment_key FROM current_results WHERE dataset = 'PACS_sketch'
                           AND stage = 'evaluation' AND metric = 'top1_accuracy' AND split = 'test'""")
    assert sorted(key for (key,) in rows) == ["coop-k2-s1", "zeroshot"]


def test_run_refuses_a_suite_whose_data_has_a_problem(benchmark):
    promptlab, root = benchmark
    shutil.move(root / "data" / "imagenet-sketch" / "images", root / "data" / "imagenet-sketch" / "sketch")
    try:
        result = promptlab("run", "--suite", "mini", "--dataset", "ImageNetSketch")
    finally:
        shutil.move(root / "data" / "imagenet-sketch" / "sketch", root / "data" / "imagenet-sketch" / "images")
    assert result.returncode == 2
    assert "rename" in result.stdout and "sketch" in result.stdout
    assert "refused" in result.stderr
