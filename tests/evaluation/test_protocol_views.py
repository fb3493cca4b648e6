"""The protocol views of the warehouse (few-shot, base-to-new, cross-dataset, domain generalization) on known rows,
the transfer runs' place in the replace-with-history identity, and warehouses written before source_dataset."""

import statistics
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest
from evaluation_synthetic import make_run

from models.evaluation.metrics import harmonic_mean
from models.warehouse import MetricRow, Warehouse


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "promptlab.duckdb", tmp_path / "predictions")


def record(warehouse, run_id, dataset, method, shots, seed, values, stage="evaluation", source=None, options=None):
    """One run; transfer runs carry the source's partition key, as the transfer asset writes them."""
    run = replace(make_run(run_id, stage=stage, dataset=dataset, method=method, shots=shots, seed=seed,
                           options=options), source_dataset=source,
                  partition_key=f"{source or dataset}|{method}-{shots}shots-seed{seed}")
    warehouse.record_run(run, [MetricRow(split, "top1_accuracy", value) for split, value in values.items()])


def rows(warehouse, sql):
    return warehouse.query(sql).rows(named=True)


def test_few_shot_results_average_seeds_per_shot_count_and_leave_base_to_new_out(warehouse):
    record(warehouse, "zs", "pets", "zero_shot", 0, 0, {"test": 0.40})
    values = {(1, 1): 0.50, (1, 2): 0.54, (1, 3): 0.49, (4, 1): 0.60, (4, 2): 0.66}
    for (shots, seed), value in values.items():
        record(warehouse, f"coop-{shots}-{seed}", "pets", "coop", shots, seed, {"test": value})
    record(warehouse, "b2n", "pets", "coop", 16, 1, {"test": 0.7, "base": 0.8, "new": 0.5},
           options={"settings_hash": "0a1b2c3d", "protocol": "base_to_new"})
    record(warehouse, "xd", "pets", "coop", 16, 1, {"test": 0.3}, stage="cross_dataset", source="cars")
    found = {r["shots"]: r for r in rows(warehouse, "SELECT * FROM few_shot_results")}
    assert sorted(found) == [0, 1, 4]  # zero-shot at 0 shots; neither base_to_new nor transfer runs
    for shots in (1, 4):
        seeds = [v for (k, _), v in values.items() if k == shots]
        assert found[shots]["mean"] == pytest.approx(statistics.mean(seeds))
        assert found[shots]["std"] == pytest.approx(statistics.stdev(seeds))
        assert found[shots]["n_seeds"] == len(seeds)
    assert (found[0]["mean"], found[0]["std"], found[0]["n_seeds"]) == (pytest.approx(0.40), 0.0, 1)


def test_base_to_new_views_keep_base_to_new_training_and_zero_shot_and_take_the_hm_of_averages(warehouse):
    b2n = {"settings_hash": "0a1b2c3d", "protocol": "base_to_new"}
    data = {"pets": {1: (0.80, 0.50), 2: (0.84, 0.56)}, "cars": {1: (0.70, 0.30), 2: (0.72, 0.36)}}
    for dataset, by_seed in data.items():
        record(warehouse, f"{dataset}-zs", dataset, "zero_shot", 0, 0, {"test": 0.5, "base": 0.6, "new": 0.62})
        # every evaluation scores base and new; an all-classes CoOp has seen the "new" classes
        record(warehouse, f"{dataset}-all", dataset, "coop", 16, 1, {"test": 0.7, "base": 0.9, "new": 0.9})
        for seed, (base, new) in by_seed.items():
            record(warehouse, f"{dataset}-b2n-{seed}", dataset, "coop", 16, seed, {"base": base, "new": new},
                   options=b2n)
    per_dataset = rows(warehouse, "SELECT * FROM base_to_new_results ORDER BY dataset, method")
    assert [(r["dataset"], r["method"]) for r in per_dataset] == [("cars", "coop"), ("cars", "zero_shot"),
                                                                  ("pets", "coop"), ("pets", "zero_shot")]
    for r in per_dataset:
        if r["method"] == "coop":
            base = statistics.mean(b for b, _ in data[r["dataset"]].values())
            new = statistics.mean(n for _, n in data[r["dataset"]].values())
            assert (r["base_accuracy"], r["new_accuracy"]) == (pytest.approx(base), pytest.approx(new))
            assert r["harmonic_mean"] == pytest.approx(harmonic_mean(base, new))  # HM of the seed means
    average = rows(warehouse, "SELECT * FROM base_to_new_averages WHERE method = 'coop'")[0]
    base = statistics.mean(statistics.mean(b for b, _ in d.values()) for d in data.values())
    new = statistics.mean(statistics.mean(n for _, n in d.values()) for d in data.values())
    assert average["harmonic_mean"] == pytest.approx(harmonic_mean(base, new))
    mean_of_hms = statistics.mean(r["harmonic_mean"] for r in per_dataset if r["method"] == "coop")
    assert average["harmonic_mean"] != pytest.approx(mean_of_hms)  # the HM of the averages, as the papers


def _fill_transfer(warehouse):
    """Source pets; cross-dataset targets cars and dtd, DG target pets_sketch; two CoOp seeds, zero-shot."""
    in_domain = {"pets": 0.80, "cars": 0.50, "dtd": 0.40, "pets_sketch": 0.45, "flowers": 0.9}
    for dataset, value in in_domain.items():
        record(warehouse, f"zs-{dataset}", dataset, "zero_shot", 0, 0, {"test": value})
    transfer = {("cross_dataset", "cars"): {1: 0.52, 2: 0.58}, ("cross_dataset", "dtd"): {1: 0.30, 2: 0.44},
                ("domain_generalization", "pets_sketch"): {1: 0.61, 2: 0.65}}
    source = {1: 0.90, 2: 0.94, 3: 0.99}  # seed 3 was never transferred: it stays out of the source column
    for seed, value in source.items():
        record(warehouse, f"coop-pets-{seed}", "pets", "coop", 16, seed, {"test": value})
    for (stage, target), by_seed in transfer.items():
        for seed, value in by_seed.items():
            record(warehouse, f"{stage}-{target}-{seed}", target, "coop", 16, seed, {"test": value}, stage=stage,
                   source="pets")
    return in_domain, transfer, source


def test_cross_dataset_results_compute_mean_and_std_over_seeds_per_target_and_the_average(warehouse):
    in_domain, transfer, source = _fill_transfer(warehouse)
    table = {(r["method"], r["role"], r["dataset"]): r
             for r in rows(warehouse, "SELECT * FROM cross_dataset_results WHERE source_dataset = 'pets'")}
    assert set(table) == {(m, role, d) for m in ("coop", "zero_shot")
                          for role, d in (("source", "pets"), ("target", "cars"), ("target", "dtd"),
                                          ("average", None))}
    for target in ("cars", "dtd"):
        values = list(transfer[("cross_dataset", target)].values())
        cell = table[("coop", "target", target)]
        assert (cell["mean"], cell["std"], cell["n_seeds"]) == (
            pytest.approx(statistics.mean(values)), pytest.approx(statistics.stdev(values)), 2)
        assert table[("zero_shot", "target", target)]["mean"] == pytest.approx(in_domain[target])
    on_source = table[("coop", "source", "pets")]
    assert on_source["mean"] == pytest.approx(statistics.mean([source[1], source[2]]))
    assert on_source["n_seeds"] == 2
    per_seed_averages = [statistics.mean([transfer[("cross_dataset", t)][seed] for t in ("cars", "dtd")])
                         for seed in (1, 2)]
    average = table[("coop", "average", None)]
    assert (average["mean"], average["std"], average["n_targets"]) == (
        pytest.approx(statistics.mean(per_seed_averages)), pytest.approx(statistics.stdev(per_seed_averages)), 2)
    assert table[("zero_shot", "average", None)]["mean"] == pytest.approx(statistics.mean([0.50, 0.40]))
    assert table[("zero_shot", "source", "pets")]["mean"] == pytest.approx(in_domain["pets"])


def test_domain_generalization_results_hold_only_the_shifted_targets(warehouse):
    in_domain, transfer, _ = _fill_transfer(warehouse)
    table = {(r["method"], r["role"], r["dataset"]): r["mean"]
             for r in rows(warehouse, "SELECT * FROM domain_generalization_results")}
    assert {d for _, role, d in table if role == "target"} == {"pets_sketch"}
    assert table[("coop", "target", "pets_sketch")] == pytest.approx(0.63)
    assert table[("coop", "average", None)] == pytest.approx(0.63)
    assert table[("zero_shot", "target", "pets_sketch")] == pytest.approx(in_domain["pets_sketch"])


def test_transfer_runs_never_replace_in_domain_runs_and_replace_their_own(warehouse):
    record(warehouse, "in-domain", "cars", "coop", 16, 1, {"test": 0.7})
    # the same stage, dataset and partition key, from another source: source_dataset keeps them apart
    run = make_run("transfer-a", stage="evaluation", dataset="cars", seed=1)
    warehouse.record_run(replace(run, source_dataset="pets"), [MetricRow("test", "top1_accuracy", 0.3)])
    warehouse.record_run(replace(make_run("transfer-b", stage="evaluation", dataset="cars", seed=1),
                                 source_dataset="dtd"), [MetricRow("test", "top1_accuracy", 0.2)])
    current = {r["run_id"] for r in rows(warehouse, "SELECT run_id FROM runs WHERE is_current")}
    assert current == {"in-domain", "transfer-a", "transfer-b"}
    warehouse.record_run(replace(make_run("transfer-a2", stage="evaluation", dataset="cars", seed=1,
                                          start_minute=5), source_dataset="pets"),
                         [MetricRow("test", "top1_accuracy", 0.35)])
    current = {r["run_id"] for r in rows(warehouse, "SELECT run_id FROM runs WHERE is_current")}
    assert current == {"in-domain", "transfer-a2", "transfer-b"}
    history = rows(warehouse, "SELECT run_id, superseded_by_run_id FROM metrics_history")
    assert history == [{"run_id": "transfer-a", "superseded_by_run_id": "transfer-a2"}]
    with pytest.raises(ValueError, match="run.source_dataset"):
        warehouse.record_run(replace(make_run("self"), source_dataset="caltech101"), [])


def test_a_warehouse_written_before_source_dataset_gains_the_column(warehouse):
    with duckdb.connect(str(warehouse.database_path)) as connection:  # the runs table as it was
        connection.execute("""
            CREATE TABLE runs (run_id VARCHAR PRIMARY KEY, stage VARCHAR NOT NULL, dataset VARCHAR NOT NULL,
                experiment_key VARCHAR NOT NULL, partition_key VARCHAR NOT NULL, method VARCHAR NOT NULL,
                shots INTEGER NOT NULL, seed INTEGER NOT NULL, options JSON NOT NULL, dagster_run_id VARCHAR,
                code_version VARCHAR, config_hash VARCHAR NOT NULL, git_commit VARCHAR, backbone VARCHAR NOT NULL,
                backbone_weights_sha256 VARCHAR, data_hash VARCHAR, templates JSON NOT NULL,
                started_at TIMESTAMP NOT NULL, finished_at TIMESTAMP NOT NULL, is_current BOOLEAN NOT NULL);
            CREATE TABLE metrics (run_id VARCHAR NOT NULL, dataset VARCHAR NOT NULL, experiment_key VARCHAR NOT NULL,
                split VARCHAR NOT NULL, metric VARCHAR NOT NULL, value DOUBLE NOT NULL,
                PRIMARY KEY (run_id, split, metric));
            INSERT INTO runs VALUES ('old', 'evaluation', 'pets', 'coop-16shots-seed1', 'pets|coop-16shots-seed1',
                'coop', 16, 1, '{"settings_hash":"0a1b2c3d"}', NULL, 'v0', 'c', NULL, 'tiny-clip', NULL, NULL, '[]',
                '2024-01-01', '2024-01-01', true);
            INSERT INTO metrics VALUES ('old', 'pets', 'coop-16shots-seed1', 'test', 'top1_accuracy', 0.9);
        """)
    warehouse.ensure_schema()
    assert rows(warehouse, "SELECT run_id, source_dataset FROM runs") == [{"run_id": "old", "source_dataset": None}]
    record(warehouse, "new", "cars", "coop", 16, 1, {"test": 0.4}, stage="cross_dataset", source="pets")
    found = rows(warehouse, "SELECT role, dataset, mean FROM cross_dataset_results WHERE method = 'coop' "
                            "ORDER BY role")
    assert [(r["role"], r["dataset"]) for r in found] == [("average", None), ("source", "pets"), ("target", "cars")]
