"""A method trained for a fixed number of steps (CLIP-LoRA: optimization.iterations_per_shot x shots, epochs unset)
is planned with those steps, each priced as one of its epochs' steps, not as zero epochs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from models.catalog import DEFAULT_CATALOG_DIR, load_catalog
from models.catalog.grid import expand_grid
from models.plan import plan_run
from tests.plan.test_plan import made_up_costs, rows_of

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_fixed_step_training_is_planned_with_its_steps():
    catalog = load_catalog(suite="coop")
    experiments = expand_grid(Path("grids.yaml"), [{"method": "clip_lora", "shots": [16, 1], "seeds": [1]}],
                              catalog.methods)
    catalog = dataclasses.replace(catalog, experiments={**catalog.experiments, **experiments})
    plan = plan_run(catalog, made_up_costs(), datasets=["EuroSAT"], experiments=sorted(experiments))
    (row,) = rows_of(plan, "training")
    # 500 iterations per shot: 8000 at 16 shots, 500 at 1 shot
    assert row.method == "clip_lora" and row.steps == 500 * 16 + 500 * 1
    one_shot = plan_run(catalog, made_up_costs(), datasets=["EuroSAT"], experiments=["cliplora-k1-s1"])
    (one_shot_row,) = rows_of(one_shot, "training")
    assert 0 < one_shot_row.seconds < row.seconds


def test_a_black_box_method_is_priced_by_its_queries_not_left_at_zero():
    """BlackVIP trains by SPSA outside the loop: each of its epochs' max(1, N // batch) steps runs 2 x
    perturbation_samples forward passes of a batch through the image tower (no backward); more samples per step cost
    proportionally more."""
    catalog = load_catalog(suite="coop")
    experiments = expand_grid(Path("grids.yaml"), [
        {"method": "blackvip", "shots": [16], "seeds": [1], "optimization": {"epochs": 10}},
        {"method": "blackvip", "shots": [16], "seeds": [1], "name": "ten", "optimization": {"epochs": 10},
         "parameters": {"perturbation_samples": 10}}], catalog.methods)
    catalog = dataclasses.replace(catalog, experiments={**catalog.experiments, **experiments})
    costs = made_up_costs()
    plan = plan_run(catalog, costs, datasets=["EuroSAT"], experiments=["blackvip-k16-s1"])
    (row,) = rows_of(plan, "training")
    # EuroSAT: 10 classes x 16 shots = 160 images, batch 128: one step per epoch
    assert row.method == "blackvip" and row.steps == 10
    queries = 10 * 2 * 5 * costs.image_forward.seconds(128, 1)
    coordinator = costs.image_forward.seconds(320, 1)  # both views of each image once, in one batch
    assert row.seconds == pytest.approx(queries + coordinator)
    ten = plan_run(catalog, costs, datasets=["EuroSAT"], experiments=["blackvip-k16-s1-ten"])
    (ten_row,) = rows_of(ten, "training")
    assert ten_row.seconds == pytest.approx(2 * queries + coordinator)


def test_nola_is_priced_by_its_whole_unlabelled_pool():
    """NoLA labels every training image (zero-shot scores and the labeller encoder's features, once), then trains its
    prompted image tower over the whole pool each epoch: not one training on labels_per_class labelled images."""
    catalog = load_catalog(suite="coop")
    experiments = expand_grid(Path("grids.yaml"), [
        {"method": "nola", "setting": "ul", "seeds": [1], "optimization": {"epochs": 5}},
        {"method": "nola", "setting": "ul", "seeds": [1], "name": "ten", "optimization": {"epochs": 10}}],
        catalog.methods)
    catalog = dataclasses.replace(catalog, experiments={**catalog.experiments, **experiments})
    costs = made_up_costs()
    five_key, ten_key = sorted(experiments, key=lambda key: key.endswith("-ten"))
    five = plan_run(catalog, costs, datasets=["EuroSAT"], experiments=[five_key])
    ten = plan_run(catalog, costs, datasets=["EuroSAT"], experiments=[ten_key])
    (five_row,), (ten_row,) = rows_of(five, "training"), rows_of(ten, "training")
    pool, batches = five.sizes["EuroSAT"].train, -(-five.sizes["EuroSAT"].train // 512)
    assert five_row.method == "nola" and five_row.steps == 5 * batches and ten_row.steps == 10 * batches
    labelling = 2 * costs.image_forward.seconds(pool, -(-pool // 1024))
    assert five_row.seconds == pytest.approx(labelling + 5 * costs.image_train.seconds(pool, batches))
    assert ten_row.seconds == pytest.approx(labelling + 10 * costs.image_train.seconds(pool, batches))


def test_mvlpt_source_runs_are_priced_on_their_pooled_sources():
    """A target brings the source runs of every seed its average is over; each trains on the pooled few-shot sets of
    the multitask sources, its text pass over all their classes at every step."""
    catalog = load_catalog(DEFAULT_CATALOG_DIR)
    costs = made_up_costs()
    plan = plan_run(catalog, costs, datasets=["Digits"], experiments=["mvlptcoop-k16-s1"])
    (row,) = rows_of(plan, "training", protocol="multitask")
    sources = [plan.sizes[name] for name in catalog.multitask.sources]
    classes = sum(size.classes for size in sources)
    source_run = catalog.experiment("mvlptcoop-k16-s1-source")
    from models.experiments import optimization_config

    optimization = optimization_config(source_run)
    per_run = optimization.epochs * -(-classes * 16 // optimization.batch_size)
    assert row.method == "mvlpt_coop" and row.partitions == 3 and row.steps == 3 * per_run
    assert not any("source runs" in note for note in plan.notes)


def test_upstream_initialisations_are_priced_once_before_the_experiments_that_start_from_them():
    """GRAM's meta-training (outer steps x tasks x support and query passes) and PVP's pre-training epochs over the
    corpus pairs are priced once per initialisation, however many experiments start from it."""
    catalog = load_catalog(DEFAULT_CATALOG_DIR)
    plan = plan_run(catalog, made_up_costs(), datasets=["Digits"],
                    experiments=["gramcoop-k1-s1", "gramcoop-k4-s2", "pvpvpt-k16-s1"])
    rows = {row.method: row for row in rows_of(plan, "training", protocol="initialisations")}
    gram, pvp = catalog.initialisations.entries["gram-coop"], catalog.initialisations.entries["pvp-vpt"]
    assert rows["gram_coop"].partitions == 1
    assert rows["gram_coop"].steps == gram.meta["outer_steps"] * gram.meta["tasks_per_step"] * 2
    assert rows["pvp_vpt"].steps == pvp.optimization["epochs"] * -(-pvp.corpus_pairs // pvp.optimization["batch_size"])
    assert rows["gram_coop"].seconds > 0 and rows["pvp_vpt"].seconds > 0
