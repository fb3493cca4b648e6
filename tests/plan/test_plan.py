"""Run plans (models/plan, pipelines/plan_command.py): the work enumerated is what `promptlab run` executes on the
coop suite, estimates scale with the measured costs, calibrations are cached and redone on request, and the command
prints a plan (text and JSON). Priced with made-up costs, except the calibration tests (tiny-clip's architecture)."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from models.catalog import DEFAULT_CATALOG_DIR, EVALUATION_PROTOCOLS, load_catalog
from models.plan import LinearCost, MeasuredCosts, calibrated_costs, calibration_path, plan_run, record_actual
from models.plan import costs as costs_module
from models.plan import selection
from models.plan.sizes import DatasetSize
from pipelines.plan_command import main as plan_command

TEST_ONLY = {"ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"}
pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def coop_catalog():
    return load_catalog(suite="coop")


def made_up_costs(**changes) -> MeasuredCosts:
    costs = MeasuredCosts(
        architecture="tiny-clip", device="cpu", device_name="test CPU", threads=1, torch_version="test",
        measured_on="2026-01-01", embed_dim=512, image_forward=LinearCost(0.001, 0.01),
        image_train=LinearCost(0.002, 0.03), text_forward=LinearCost(0.001, 0.002),
        text_train=LinearCost(0.002, 0.005), decode_seconds=0.002, cpu_float64_flops=1e10)
    return dataclasses.replace(costs, **changes)


def rows_of(plan, stage=None, method=None, protocol=None):
    return [row for row in plan.rows if (stage is None or row.stage == stage)
            and (method is None or row.method == method) and (protocol is None or row.protocol == protocol)]


# ------------------------------------------------------------------------------------------- enumeration
@pytest.mark.parametrize("protocol", [None, *EVALUATION_PROTOCOLS])
def test_the_selection_is_the_pipelines_partitions(coop_catalog, protocol):
    from pipelines import partitions

    catalog = coop_catalog
    # one rule, not two copies: the pipeline's partitions are the library's selection
    assert partitions.protocol_experiment_partitions is selection.protocol_experiment_partitions
    assert partitions.transfer_partition_keys is selection.transfer_partition_keys
    assert partitions.test_time_partition_keys is selection.test_time_partition_keys
    chosen = selection.run_selection(catalog, protocol=protocol)
    if protocol is None:
        assert set(chosen.datasets) == set(catalog.datasets)
        assert len(chosen.partitions) == sum(catalog.runs_on(name, key) for name in catalog.datasets
                                             for key in catalog.experiments)


def test_a_slice_runs_what_it_names():
    """`--experiment zeroshot` starts no test-time run (minutes each); naming the test-time run, or the test-time
    protocol, does, and naming only a test-time run selects the partition it starts from on its source."""
    catalog = load_catalog()
    run = next(key for key, value in catalog.test_time.runs.items() if value.start == "zeroshot")
    source = catalog.test_time.sources[0]
    zero_shot = selection.run_selection(catalog, experiments=["zeroshot"])
    assert zero_shot.test_time == () and ("Shapes", "zeroshot") in zero_shot.partitions
    named = selection.run_selection(catalog, experiments=[run])
    assert named.test_time == ((source, run),) and named.partitions == ((source, "zeroshot"),)
    assert named.transfers == ()
    assert set(named.datasets) == {source, *catalog.test_time.targets[source]}
    by_protocol = selection.run_selection(catalog, experiments=["zeroshot"], protocol="test_time")
    assert (source, run) in by_protocol.test_time
    whole = selection.run_selection(catalog)
    assert len(whole.test_time) == len(catalog.test_time.sources) * len(catalog.test_time.runs)
    with pytest.raises(Exception, match="unknown experiment"):
        selection.run_selection(catalog, experiments=["tpt-nothing"])


def test_the_demo_grid_runs_its_three_datasets_and_no_other():
    """`make run` (the demo grid): the three Shapes datasets curated, 25 experiments on each, the 16-shot CoOp
    prompts of its 3 seeds transferred from Shapes, 3 TPT runs from zero-shot, and the plan prices 200 test images
    per dataset for them, not the section's 400."""
    catalog = load_catalog(DEFAULT_CATALOG_DIR, grid="demo")  # not a micro catalog of PROMPTLAB_CATALOG
    chosen = selection.run_selection(catalog)
    shapes = ("Shapes", "ShapesSketch", "ShapesNoisy")
    assert chosen.datasets == shapes
    assert len(chosen.partitions) == 3 * 25 and {name for name, _ in chosen.partitions} == set(shapes)
    assert chosen.transfers == tuple(("Shapes", f"coop-k16-s{seed}") for seed in (1, 2, 3))
    assert chosen.test_time == tuple(("Shapes", f"tpt-zeroshot-s{seed}") for seed in (1, 2, 3))
    plan = plan_run(catalog, made_up_costs())
    (test_time,) = rows_of(plan, stage="test_time")
    assert test_time.partitions == 3 and test_time.images == 3 * 3 * 200  # runs x datasets x test images


def test_few_shot_draws_are_the_curation_assets(coop_catalog):
    from models.plan.sizes import FEW_SHOT_SEEDS, FEW_SHOT_SHOTS
    from pipelines.assets import curation

    assert (FEW_SHOT_SHOTS, FEW_SHOT_SEEDS) == (curation.FEW_SHOT_SHOTS, curation.FEW_SHOT_SEEDS)


def test_the_coop_suite_plan_counts_every_partition_the_run_executes(coop_catalog):
    plan = plan_run(coop_catalog, made_up_costs())
    trainable = [name for name in coop_catalog.datasets if name not in TEST_ONLY]
    assert len(trainable) == 11
    # few-shot CoOp: 11 datasets x 5 shots x 3 seeds, nothing trained on ImageNet's shifts
    (coop,) = rows_of(plan, "training", "coop", "few_shot")
    assert coop.partitions == 11 * 5 * 3 and set(coop.datasets) == set(trainable)
    assert not [row for row in rows_of(plan, "training") if TEST_ONLY & set(row.datasets)]
    assert {row.method: row.partitions for row in rows_of(plan, "training", protocol="base_to_new")} == {
        method: 11 * 3 for method in ("cocoop", "coop", "kgcoop", "maple", "promptsrc")}
    (zero_shot,) = rows_of(plan, "evaluation", "zero_shot")
    assert zero_shot.partitions == 15 and zero_shot.protocol == "zero_shot"
    # transfer: 1 source x 15 experiments (5 methods x 3 seeds), each on the 10 other datasets and the 4 shifts
    transfer = rows_of(plan, "transfer")
    assert sum(row.partitions for row in transfer) == 15 and {row.sources for row in transfer} == {("ImageNet",)}
    assert all(len(row.datasets) == 14 and "ImageNet" not in row.datasets for row in transfer)
    # test-time: TPT from zero-shot (seed 1) and from CoOp's three 16-shot checkpoints, on ImageNet and its shifts
    test_time = {row.method: row for row in rows_of(plan, "test_time")}
    assert {method: row.partitions for method, row in test_time.items()} == {"tpt (zero_shot start)": 1,
                                                                              "tpt (coop start)": 3}
    assert set(test_time["tpt (coop start)"].datasets) == {"ImageNet", *TEST_ONLY}
    assert plan.partitions_by_protocol() == {"zero_shot": 15, "few_shot": 165 + 165 + 4 * 33, "base_to_new": 165,
                                             "transfer": 15, "test_time": 4}
    # curation: ImageNet inspects its test split and the expected union of the 15 few-shot draws, not 1.28 M
    (curation,) = rows_of(plan, "curation")
    imagenet = plan.sizes["ImageNet"]
    inspected = curation.images - sum(plan.sizes[name].train + plan.sizes[name].val + plan.sizes[name].test
                                      for name in coop_catalog.datasets if name != "ImageNet")
    assert imagenet.test + 90_000 < inspected < imagenet.test + 93_000
    assert plan.total_seconds == pytest.approx(sum(plan.totals_by_protocol().values()))


def test_training_steps_are_epochs_times_batches_of_shots_times_classes(coop_catalog):
    plan = plan_run(coop_catalog, made_up_costs(), datasets=["EuroSAT"], experiments=["coop-k16-s1", "coop-k1-s1",
                                                                                         "cocoop-k16-s1"])
    steps = {row.method: row.steps for row in rows_of(plan, "training")}
    # CoOp: 200 epochs at 16 shots (ceil(16 x 10 / 32) = 5 steps) + 50 epochs at 1 shot (1 step); CoCoOp: batch 1
    assert steps == {"coop": 200 * 5 + 50 * 1, "cocoop": 10 * 160}
    assert {row.stage for row in plan.rows} == {"curation", "features", "training", "evaluation"}


@pytest.mark.parametrize("protocol, expected", [
    ("few_shot", {"zero_shot", "few_shot"}), ("base_to_new", {"zero_shot", "base_to_new"}),
    ("transfer", {"zero_shot", "transfer"}),
    # a test-time run also scores its source's transfer checkpoints on the shifts (TPT's table rows)
    ("test_time", {"zero_shot", "transfer", "test_time"})])
def test_a_protocol_plans_only_its_partitions(coop_catalog, protocol, expected):
    plan = plan_run(coop_catalog, made_up_costs(), protocol=protocol)
    assert {row.protocol for row in plan.rows} - {"data"} == expected
    if protocol == "transfer":  # the source's checkpoints, trained for transfer
        assert {row.datasets for row in rows_of(plan, "training")} == {("ImageNet",)}
        assert sum(row.partitions for row in rows_of(plan, "training")) == 15


# -------------------------------------------------------------------------------------------------- scaling
def test_doubling_the_measured_costs_doubles_the_training_estimate(coop_catalog):
    base = made_up_costs()
    doubled = made_up_costs(**{name: getattr(base, name).scaled(2) for name in
                               ("image_forward", "image_train", "text_forward", "text_train")},
                            cpu_float64_flops=base.cpu_float64_flops / 2)
    single, double = (plan_run(coop_catalog, costs, datasets=["EuroSAT", "ImageNet"]) for costs in (base, doubled))
    for method, seconds in _training_seconds(single).items():
        assert _training_seconds(double)[method] == pytest.approx(2 * seconds), method
    # only the text costs doubled: CoOp's training doubles, MaPLe's (images too) grows by less
    text_only = made_up_costs(text_forward=base.text_forward.scaled(2), text_train=base.text_train.scaled(2))
    priced = _training_seconds(plan_run(coop_catalog, text_only, datasets=["EuroSAT"]))
    reference = _training_seconds(plan_run(coop_catalog, base, datasets=["EuroSAT"]))
    assert priced["coop"] == pytest.approx(2 * reference["coop"])
    assert reference["maple"] < priced["maple"] < 2 * reference["maple"]


def test_more_classes_cost_more_text(coop_catalog):
    costs = made_up_costs(text_forward=LinearCost(0.0, 0.002), text_train=LinearCost(0.0, 0.005))

    def plan_with(classes: int):
        size = DatasetSize("EuroSAT", classes, 1350 * classes, 540 * classes, 810 * classes, "published")
        return plan_run(coop_catalog, costs, datasets=["EuroSAT"], experiments=["zeroshot", "coop-k16-s1"],
                        sizes={"EuroSAT": size})

    small, large = plan_with(10), plan_with(40)
    (small_train,), (large_train,) = rows_of(small, "training"), rows_of(large, "training")
    # 4x the classes: 4x the samples (steps) and 4x the prompts in every step
    assert large_train.steps == 4 * small_train.steps
    assert large_train.seconds / large_train.steps == pytest.approx(4 * small_train.seconds / small_train.steps)
    small_zero, large_zero = (rows_of(plan, "evaluation", "zero_shot")[0].seconds for plan in (small, large))
    assert large_zero == pytest.approx(4 * small_zero)
    # past one text pass (128 prompts), a training step recomputes each pass's forward in the backward
    chunked = plan_with(200)
    (chunked_train,) = rows_of(chunked, "training")
    per_prompt = chunked_train.seconds / chunked_train.steps / 200
    assert per_prompt == pytest.approx(0.005 + 0.002)


# ------------------------------------------------------------------------------------------- calibration
def test_the_calibration_is_cached_and_redone_on_request(tmp_path, monkeypatch):
    monkeypatch.setattr(costs_module, "MAX_RETIMINGS", 0)  # what is timed, not how well: no second rounds
    measured = calibrated_costs("tiny-clip", "cpu", directory=tmp_path)
    path = calibration_path(tmp_path, "tiny-clip", measured.device_name, measured.threads)
    saved = json.loads(path.read_text())
    assert saved["torch_version"] == measured.torch_version and saved["measured_on"] == measured.measured_on
    assert path.name.startswith("costs-tiny-clip-") and path.name.endswith("-1threads.json")
    for name in ("image_forward", "image_train", "text_forward", "text_train"):
        assert getattr(measured, name).per_item > 0, name
    assert measured.decode_seconds > 0 and measured.cpu_float64_flops > 0 and measured.embed_dim == 64

    calls = []

    def remeasured(architecture, device, quick_gelu=False):
        calls.append(architecture)
        return dataclasses.replace(measured, calibration_seconds=-1.0)

    monkeypatch.setattr(costs_module, "measure_costs", remeasured)
    assert calibrated_costs("tiny-clip", "cpu", directory=tmp_path) == measured and calls == []
    assert calibrated_costs("tiny-clip", "cpu", directory=tmp_path, recalibrate=True).calibration_seconds == -1.0
    assert calls == ["tiny-clip"] and json.loads(path.read_text())["calibration_seconds"] == -1.0
    # a calibration taken with another torch version is measured again
    path.write_text(json.dumps({**saved, "torch_version": "0.0"}))
    calibrated_costs("tiny-clip", "cpu", directory=tmp_path)
    assert calls == ["tiny-clip", "tiny-clip"]


def test_stalled_calibration_calls_are_timed_again_until_the_sizes_agree(monkeypatch):
    # A busy neighbour stalls the first calls (here both sizes of the image forward by 0.4 s: they agree with each
    # other, so only the later rounds find them out); the fit must come from the calls that did not stall.
    real_timed, stalled = costs_module._timed, []

    def timed(run, repetitions, device, **kwargs):
        seconds = real_timed(run, repetitions, device, **kwargs)
        if len(stalled) < 2:
            stalled.append(seconds)
            return seconds + 0.4
        return seconds

    monkeypatch.setattr(costs_module, "_timed", timed)
    measured = costs_module.measure_costs("tiny-clip", "cpu")
    assert len(stalled) == 2
    assert measured.image_forward.seconds(2) < 0.1, measured.image_forward
    assert "image_forward" not in measured.sizes["inconsistent"]
    assert set(measured.sizes["fastest_seconds"]["image_forward"]) >= {"2", "8"}


def test_a_calibration_taken_beside_busy_cores_says_so_in_the_plan():
    from models.plan.rendering import render_plan

    catalog = load_catalog(DEFAULT_CATALOG_DIR)
    busy = plan_run(catalog, made_up_costs(load_average=7.35, cpu_count=2), datasets=["Shapes"],
                    experiments=["zeroshot"])
    quiet = plan_run(catalog, made_up_costs(load_average=0.4, cpu_count=2), datasets=["Shapes"],
                     experiments=["zeroshot"])
    assert "calibrated while other processes kept the cores busy (load 7.35 on 2 CPUs)" in render_plan(busy)
    assert "Warning" not in render_plan(quiet) and "Warning" not in render_plan(
        plan_run(catalog, made_up_costs(), datasets=["Shapes"], experiments=["zeroshot"]))  # older calibrations
    assert MeasuredCosts.from_dict(made_up_costs(load_average=7.35, cpu_count=2).as_dict()).taken_beside_load


def test_timings_consistent_wants_a_fixed_plus_per_item_cost():
    assert costs_module.timings_consistent({2: 0.002, 8: 0.008, 32: 0.03})
    assert not costs_module.timings_consistent({2: 0.003, 8: 0.4})  # a hundredfold the cost per item
    assert not costs_module.timings_consistent({2: 0.43, 8: 0.008})  # the smaller call took longer
    assert not costs_module.timings_consistent({3: 0.006, 12: 0.14, 1: 0.012})  # one pair of three disagrees


# ---------------------------------------------------------------------------------------------- command
def test_the_command_prints_a_plan_and_its_json(tmp_path, monkeypatch, capsys):
    for name in ("PROMPTLAB_SUITE", "PROMPTLAB_GRID", "PROMPTLAB_BACKBONE", "PROMPTLAB_TORCH_THREADS"):
        # set, then deleted: monkeypatch records (and restores) only a variable it changed, and the command sets
        # these in os.environ
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(tmp_path))
    monkeypatch.setattr(costs_module, "MAX_RETIMINGS", 0)  # the command's output, not the calibration's quality
    assert plan_command(["plan", "--suite", "coop", "--grid", "quick", "--backbone", "tiny-clip"]) == 0
    text = capsys.readouterr().out
    assert os.environ["PROMPTLAB_SUITE"] == "coop" and os.environ["PROMPTLAB_GRID"] == "quick"
    assert "few-shot: coop on 11 datasets (22 partitions" in text and "Total: about" in text and "tiny-clip" in text
    assert "Not modelled" in text

    assert plan_command(["plan", "--suite", "coop", "--grid", "quick", "--backbone", "tiny-clip", "--protocol",
                         "transfer", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["protocol"] == "transfer" and printed["suite"] == "coop" and printed["architecture"] == "tiny-clip"
    # quick: the five methods' 16-shot seed-1 checkpoints on ImageNet, each then on the 14 targets
    assert sum(row["partitions"] for row in printed["rows"] if row["stage"] == "transfer") == 5
    assert printed["totals"]["partitions_by_protocol"]["transfer"] == 5 + 5
    assert printed["totals"]["seconds"] == pytest.approx(sum(row["seconds"] for row in printed["rows"]), rel=1e-3)
    assert len(list((tmp_path / "plans").glob("costs-tiny-clip-*.json"))) == 1  # measured once, then reused
    assert len(list((tmp_path / "plans").glob("plan-*.json"))) == 2

    summary = {"wall_seconds": 120.0, "stage_seconds": {"world: corpus + tiny-clip + diffusion": 5.0,
                                                        "curation + features: every image once per view": 15.0,
                                                        "experiments: augmentation + pseudolabels + training": 90.0}}
    recorded = json.loads(record_actual(printed["saved_to"], summary).read_text())
    assert recorded["plan"]["totals"] == printed["totals"] and recorded["actual"]["wall_seconds"] == 120.0
    comparison = {row["run_stage"]: row for row in recorded["comparison"]}
    assert comparison["experiments"]["actual_seconds"] == 90.0 and comparison["experiments"]["estimated_seconds"] > 0
    assert comparison["world"]["estimated_seconds"] is None

    assert plan_command(["plan", "--suite", "nonesuch"]) == 2
    assert "unknown suite 'nonesuch'" in capsys.readouterr().err


def _training_seconds(plan) -> dict[str, float]:
    totals: dict[str, float] = {}
    for row in rows_of(plan, "training"):
        totals[row.method] = totals.get(row.method, 0.0) + row.seconds
    return totals
