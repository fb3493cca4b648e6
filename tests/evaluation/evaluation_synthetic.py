"""A synthetic warehouse shared by the report and dashboard tests, and record factories (imported by tests)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import polars as pl

from models.warehouse import MetricRow, PerClassRow, RunRecord, Warehouse

DATASETS = ("caltech101", "oxford_pets")
CLASSNAMES = ("cat", "dog", "owl")


def make_run(
    run_id: str,
    *,
    stage: str = "evaluation",
    dataset: str = "caltech101",
    method: str = "coop",
    shots: int = 16,
    seed: int = 1,
    options: dict | None = None,
    code_version: str = "code-v1",
    start_minute: int = 0,
) -> RunRecord:
    """A run whose partition key is (dataset, method, shots, seed), as a multi-partitioned asset would have."""
    started_at = datetime(2025, 1, 1) + timedelta(minutes=start_minute)
    return RunRecord(
        run_id=run_id,
        stage=stage,
        dataset=dataset,
        experiment_key=f"{method}-{shots}shots-seed{seed}",
        partition_key=f"{dataset}|{method}-{shots}shots-seed{seed}",
        method=method,
        shots=shots,
        seed=seed,
        # as ExperimentConfig.variant_options writes them: a settings hash, plus the protocol when not all_classes
        options=options if options is not None else {"settings_hash": "0a1b2c3d"},
        dagster_run_id=f"dagster-{run_id}",
        code_version=code_version,
        config_hash=f"config-{method}-{shots}",
        git_commit="0123abcd",
        backbone="tiny-clip",
        backbone_weights_sha256="feedbeef",
        data_hash=f"data-{dataset}",
        templates={dataset: "a photo of a {}."},
        started_at=started_at,
        finished_at=started_at + timedelta(seconds=30),
        compute="cpu fp32" if code_version == "code-v1" else None,  # runs of older code did not record it
    )


def make_predictions(count: int = 6) -> pl.DataFrame:
    labels = [index % len(CLASSNAMES) for index in range(count)]
    return pl.DataFrame({
        "split": ["test"] * count,
        "relative_path": [f"images/{index:03d}.png" for index in range(count)],
        "label": labels,
        "predicted_label": [(label + (index % 2)) % len(CLASSNAMES) for index, label in enumerate(labels)],
        "confidence": [0.5 + 0.05 * index for index in range(count)],
    })


def make_per_class(split: str = "test", accuracy: float = 0.5) -> list[PerClassRow]:
    return [PerClassRow(split, label, name, accuracy, accuracy, 2) for label, name in enumerate(CLASSNAMES)]


@dataclass
class SyntheticResults:
    """What the synthetic warehouse holds, for the tests to recompute the expected numbers independently."""

    warehouse: Warehouse
    # (dataset, method, shots) -> {seed: test top-1}
    test_top1: dict[tuple[str, str, int], dict[int, float]] = field(default_factory=dict)
    # (dataset, method) -> (base top-1 over seeds, new top-1 over seeds)
    base_new: dict[tuple[str, str], tuple[list[float], list[float]]] = field(default_factory=dict)
    code_versions: set[str] = field(default_factory=set)
    num_runs: int = 0
    # (stage, source, target, method, shots) -> {seed: test top-1} of the transfer runs
    transfer: dict[tuple[str, str, str, str, int], dict[int, float]] = field(default_factory=dict)


def _test_top1(dataset_index: int, method: str, shots: int, seed: int) -> float:
    if method == "zero_shot":
        return 0.40 + 0.05 * dataset_index
    gain = {"coop": 0.02, "cocoop": 0.015}[method] * shots
    return 0.40 + 0.05 * dataset_index + gain + 0.01 * seed * seed


def fill_synthetic_warehouse(warehouse: Warehouse) -> SyntheticResults:
    results = SyntheticResults(warehouse)
    minute = 0

    def record(run: RunRecord, metrics: list[MetricRow], per_class=(), predictions=None) -> None:
        nonlocal minute
        warehouse.record_run(run, metrics, per_class, predictions)
        results.code_versions.add(run.code_version)
        results.num_runs += 1
        minute += 1

    for dataset_index, dataset in enumerate(DATASETS):
        grid = [("zero_shot", 0, (1,)), ("coop", 1, (1, 2, 3)), ("coop", 4, (1, 2, 3)), ("cocoop", 4, (1, 2))]
        for method, shots, seeds in grid:
            for seed in seeds:
                top1 = _test_top1(dataset_index, method, shots, seed)
                results.test_top1.setdefault((dataset, method, shots), {})[seed] = top1
                run = make_run(f"{dataset}-{method}-{shots}-{seed}", dataset=dataset, method=method, shots=shots,
                               seed=seed, start_minute=minute)
                metrics = [MetricRow("test", "top1_accuracy", top1), MetricRow("test", "macro_f1", top1 - 0.03),
                           MetricRow("test", "expected_calibration_error", 0.05 + 0.01 * seed)]
                with_predictions = method == "coop" and shots == 4 and seed == 1
                record(run, metrics, make_per_class(accuracy=round(top1 - 0.1 * dataset_index, 3)),
                       make_predictions() if with_predictions else None)
        # Base-to-new protocol: trained on base classes, evaluated on base and new separately.
        for method, seeds in (("zero_shot", (1,)), ("coop", (1, 2))):
            base_values, new_values = [], []
            for seed in seeds:
                base = 0.60 + 0.1 * (method == "coop") + 0.02 * seed + 0.01 * dataset_index
                new = 0.55 - 0.05 * (method == "coop") + 0.01 * seed
                base_values.append(base)
                new_values.append(new)
                run = replace(make_run(f"{dataset}-{method}-b2n-{seed}", dataset=dataset, method=method,
                                       shots=16 if method == "coop" else 0, seed=seed, start_minute=minute,
                                       options={"settings_hash": "0a1b2c3d", "protocol": "base_to_new"}
                                       if method == "coop" else None),
                              partition_key=f"{dataset}|{method}-base2new-seed{seed}",
                              experiment_key=f"{method}-base2new-seed{seed}")
                record(run, [MetricRow("base", "top1_accuracy", base), MetricRow("new", "top1_accuracy", new)])
            results.base_new[(dataset, method)] = (base_values, new_values)
        pseudolabel_run = make_run(f"{dataset}-pseudolabels-1", stage="pseudolabels", dataset=dataset,
                                   method="fpl", shots=0, seed=1, start_minute=minute)
        record(pseudolabel_run, [MetricRow("unlabeled", "pseudolabel_accuracy", 0.8125),
                                 MetricRow("unlabeled", "num_pseudolabels", 48.0)])

    # Transfer: the 4-shot CoOp checkpoints of one dataset evaluated on the other (stage = the protocol, dataset =
    # the target); the source column and zero-shot come from the in-domain runs above.
    for stage, source, target, seeds in (("cross_dataset", DATASETS[0], DATASETS[1], (1, 2, 3)),
                                         ("domain_generalization", DATASETS[1], DATASETS[0], (1, 2))):
        for seed in seeds:
            top1 = 0.30 + 0.04 * seed + 0.1 * (stage == "domain_generalization")
            results.transfer.setdefault((stage, source, target, "coop", 4), {})[seed] = top1
            run = replace(make_run(f"{stage}-{source}-{target}-coop-4-{seed}", stage=stage, dataset=target,
                                   method="coop", shots=4, seed=seed, start_minute=minute),
                          source_dataset=source, partition_key=f"{source}|coop-4shots-seed{seed}")
            record(run, [MetricRow("test", "top1_accuracy", top1), MetricRow("test", "macro_f1", top1 - 0.02)])

    # Re-materialize one partition with newer code: the older run must leave the current results.
    dataset, method, shots, seed = DATASETS[0], "coop", 1, 1
    top1 = _test_top1(0, method, shots, seed) + 0.005
    results.test_top1[(dataset, method, shots)][seed] = top1
    rerun = make_run(f"{dataset}-{method}-{shots}-{seed}-rerun", dataset=dataset, method=method, shots=shots,
                     seed=seed, code_version="code-v2", start_minute=minute)
    record(rerun, [MetricRow("test", "top1_accuracy", top1), MetricRow("test", "macro_f1", top1 - 0.03),
                   MetricRow("test", "expected_calibration_error", 0.06)], make_per_class(accuracy=0.25))
    return results


def top1_metrics(top1: float) -> list[MetricRow]:
    """A run's test top-1 and macro-F1 rows."""
    return [MetricRow("test", "top1_accuracy", top1), MetricRow("test", "macro_f1", top1 - 0.05)]


def warehouse_command(*words: str) -> tuple[int, str]:
    """`promptlab results` or `promptlab warehouse <command>`: its exit code and output (the command's function,
    without the CLI's signal guard)."""
    import argparse

    from pipelines.cli import print_accuracy_table
    from pipelines.warehouse_commands import run_warehouse_command

    lines: list[str] = []
    if words == ("results",):
        print_accuracy_table(log=lines.append)
        return 0, "\n".join(lines)
    code = run_warehouse_command(argparse.Namespace(warehouse_command=words[1]), log=lines.append)
    return code, "\n".join(lines)
