"""Multi-source domain generalisation through the pipeline: the partitions follow the catalog's multi_source section,
`promptlab run --protocol multi_source` selects them with zero-shot on each held-out domain, and one micro run on
Shapes' three domains (a process of its own: multi_source_workload.py) trains CoOp and SPG on two domains, scores the
third, writes one run each that the view and the report show, never reads the held-out images for training, and a
failure after training writes nothing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from models.catalog import DEFAULT_CATALOG_DIR, load_catalog
from models.plan.selection import run_selection

HERE = Path(__file__).parent
SHAPES_DOMAINS = ["Shapes", "ShapesSketch", "ShapesNoisy"]


def test_protocol_selects_every_split_x_experiment_and_zero_shot_on_each_held_out_domain():
    catalog = load_catalog(DEFAULT_CATALOG_DIR)
    selection = run_selection(catalog, protocol="multi_source")
    plan = catalog.multi_source
    assert list(selection.multi_source) == [(split.held_out, key) for split in plan.splits for key in plan.experiments]
    assert {key for _, key in selection.multi_source} == {f"{m}-k16-s{s}" for m in ("coop", "spg") for s in (1, 2, 3)}
    assert set(selection.partitions) == {(name, key) for name in SHAPES_DOMAINS
                                         for key in ("zeroshot", "zeroshot-ensemble")}
    assert selection.datasets == tuple(SHAPES_DOMAINS)
    assert not selection.transfers and not selection.test_time
    # a slice: one experiment, on every held-out domain; a domain left out drops every split that needs it
    assert run_selection(catalog, experiments=["spg-k16-s1"], protocol="multi_source").multi_source == tuple(
        (name, "spg-k16-s1") for name in SHAPES_DOMAINS)
    assert run_selection(catalog, datasets=["Shapes", "ShapesSketch"], protocol="multi_source").multi_source == ()
    # other protocols start no multi-source partition; the whole grid does
    assert run_selection(catalog, protocol="transfer").multi_source == ()
    assert len(run_selection(catalog).multi_source) == 18


def _micro_shapes_catalog(folder: Path) -> Path:
    """The pipeline tests' micro world (conftest.py) with Shapes' three domains, the shipped tiny-clip weights, and a
    grid of zero-shot, CoOp and SPG at 2 shots with a few epochs; ShapesSketch held out."""
    catalog = folder / "catalog"
    shutil.copytree(os.environ["PROMPTLAB_CATALOG"], catalog)
    shipped = yaml.safe_load((DEFAULT_CATALOG_DIR / "world.yaml").read_text())
    world = yaml.safe_load((catalog / "world.yaml").read_text())
    world["tiny_clip_weights"] = shipped["tiny_clip_weights"]
    (catalog / "world.yaml").write_text(yaml.safe_dump(world))
    datasets = yaml.safe_load((DEFAULT_CATALOG_DIR / "datasets.yaml").read_text())["datasets"]
    (catalog / "datasets.yaml").write_text(yaml.safe_dump(
        {"datasets": [entry for entry in datasets if entry["name"] in SHAPES_DOMAINS]}))
    grid = [{"method": "zero_shot"},
            {"method": "coop", "shots": [2], "seeds": [1], "optimization": {"epochs": 2},
             "parameters": {"n_context": 4}},
            # the last epoch's generator (no val scoring per epoch): seconds, not tens of them
            {"method": "spg", "shots": [2], "seeds": [1], "optimization": {"epochs": 2, "batch_size": 8},
             "selection": "last",
             "parameters": {"domain_prompt_epochs": 1, "domain_prompt_batch_size": 8, "generator_widths": [16, 32],
                            "discriminator_width": 16}}]
    multi_source = {"experiments": ["coop-k2-s1", "spg-k2-s1"], "splits": [{"held_out": "ShapesSketch"}]}
    (catalog / "experiments.yaml").write_text(yaml.safe_dump({"grid": grid, "multi_source": multi_source}))
    return catalog


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multi-source")
    catalog = _micro_shapes_catalog(folder)
    (folder / "dagster_home").mkdir()
    environment = {**os.environ, "PROMPTLAB_CATALOG": str(catalog), "PROMPTLAB_WORKSPACE": str(folder / "workspace"),
                   "DAGSTER_HOME": str(folder / "dagster_home"), "PROMPTLAB_GRID": "default",
                   "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")])}
    result = folder / "result.json"
    done = subprocess.run([sys.executable, str(HERE / "multi_source_workload.py"), str(result)], env=environment,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(result.read_text())


def test_the_partitions_are_the_catalogs_splits_x_experiments(micro_run):
    assert micro_run["partition_keys"] == ["coop-k2-s1|ShapesSketch", "spg-k2-s1|ShapesSketch"]
    assert micro_run["catalog_keys"] == [["ShapesSketch", "coop-k2-s1"], ["ShapesSketch", "spg-k2-s1"]]


def test_a_micro_run_writes_one_run_per_partition_on_the_held_out_domain(micro_run):
    assert micro_run["summary"]["failures"] == [] and micro_run["summary"]["skipped"] == []
    assert micro_run["runs"] == [["ShapesSketch", "Shapes+ShapesNoisy", "coop-k2-s1", "coop", 1],
                                 ["ShapesSketch", "Shapes+ShapesNoisy", "spg-k2-s1", "spg", 1]]
    assert micro_run["checkpoint_multi_source"]["sources"] == ["Shapes", "ShapesNoisy"]
    assert micro_run["report_has_table"]


def test_the_view_shows_each_configuration_beside_zero_shot_on_that_domain(micro_run):
    assert micro_run["view"] == [["ShapesSketch", None, "zero_shot", 0, True, 1, True],
                                 ["ShapesSketch", "Shapes+ShapesNoisy", "coop", 2, False, 1, True],
                                 ["ShapesSketch", "Shapes+ShapesNoisy", "spg", 2, False, 1, True]]


def test_the_held_out_domain_never_enters_training(micro_run):
    # only the sources' few-shot sets are built, and no image of the held-out domain is encoded while training
    read = micro_run["read_for_training"]
    assert [name for name in read if not name.startswith("/")] == ["Shapes", "ShapesNoisy"] * 2
    assert not [path for path in read if path.startswith(micro_run["held_out_images"])]
    assert [path for path in read if path.startswith("/")]  # the spy saw the images that were read
    assert {key.split(":")[0] for key in micro_run["composition"]} == {"Shapes", "ShapesNoisy"}


def test_a_failure_after_training_writes_nothing(micro_run):
    assert not micro_run["failure_succeeded"]
    assert micro_run["current_after_failure"] == micro_run["current_before_failure"]
    assert micro_run["runs_after_failure"] == 2
