"""`promptlab run`: materialize the default graph through Dagster, with runs recorded in the project's instance.

Stages run as Dagster jobs in this process: the embedded world once, curation per dataset, each experiment
partition, each transfer partition (a source's checkpoint on its target datasets), then the report. `--protocol`
runs only the partitions one evaluation protocol needs. Every run is visible afterwards in `dagster dev` (same
DAGSTER_HOME).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from models.provenance import PACKAGE_ROOT


def ensure_dagster_home() -> Path:
    """A persistent instance inside the project, so runs survive `dagster dev` restarts."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(PACKAGE_ROOT / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    return home


def run_graph(datasets: list[str] | None, experiments: list[str] | None, log=print,
              protocol: str | None = None) -> dict:
    """Materialize the selected datasets x experiments (all by default; `protocol` keeps the partitions of one
    evaluation protocol), then the transfer partitions whose source and experiment are selected, then the report."""
    ensure_dagster_home()
    import dagster as dg

    from pipelines.definitions import defs
    from pipelines.partitions import (multi_partition_key, protocol_experiment_partitions, test_time_partition_keys,
                                      transfer_partition_keys)
    from pipelines.resources import PromptLabResource

    resource = PromptLabResource()
    catalog = resource.catalog()
    datasets = datasets or list(catalog.datasets)
    experiments = experiments or list(catalog.experiments)
    for name in datasets:
        catalog.dataset(name)
    for key in experiments:
        catalog.experiment(key)
    partitions = (protocol_experiment_partitions(catalog, protocol) if protocol
                  else [(name, key) for name in datasets for key in experiments])
    partitions = [(name, key) for name, key in partitions if name in datasets and key in experiments]
    transfers = [(name, key) for name, key in transfer_partition_keys(catalog)
                 if name in datasets and key in experiments and protocol in (None, "transfer", "test_time")]
    test_time = [(name, key) for name, key in test_time_partition_keys(catalog)
                 if name in datasets and catalog.test_time.runs[key].start in experiments
                 and protocol in (None, "test_time")]
    if protocol:  # curate only what the protocol reads
        needed = {name for name, _ in partitions + transfers}
        needed |= {target for source, _ in test_time for target in catalog.test_time.targets[source]}
        datasets = [name for name in datasets if name in needed]
    instance = dg.DagsterInstance.get()
    stage_seconds: dict[str, float] = {}
    failures: list[str] = []
    skipped: list[str] = []

    def execute(job_name: str, stage: str, partition_key=None) -> bool:
        started = time.perf_counter()
        job = defs.resolve_job_def(job_name)
        result = job.execute_in_process(instance=instance, partition_key=partition_key, raise_on_error=False)
        stage_seconds[stage] = stage_seconds.get(stage, 0.0) + time.perf_counter() - started
        label = f"{job_name}[{partition_key}]" if partition_key else job_name
        if not result.success:
            failures.append(label)
            log(f"FAILED {label} (run {result.run_id}); see `dagster dev` for its logs")
            return False
        log(f"ok     {label} ({time.perf_counter() - started:.1f}s)")
        return True

    started = time.perf_counter()
    if not execute("embedded_world_job", "world: corpus + tiny-clip + diffusion"):
        return {"failures": failures, "stage_seconds": stage_seconds}
    curated = [name for name in datasets if execute("curation_job", "curation", name)]
    failed_partitions = set()
    for name, key in partitions:
        if name in curated and not execute("experiment_job", "experiments: augmentation + pseudolabels + training + "
                                           "evaluation", multi_partition_key(name, key)):
            failed_partitions.add((name, key))
    workspace = resource.workspace()

    def not_ready(source: str, key: str) -> list[str]:
        """Why a transfer partition cannot run: its checkpoint failed or a target is not curated."""
        reasons = ([f"source {source} is not curated"] if source not in curated else
                   [f"checkpoint {source}|{key} failed"] if (source, key) in failed_partitions else [])
        for target in {t for targets in catalog.transfer.targets_of(source).values() for t in targets}:
            if target in curated or (target not in datasets and workspace.class_split_path(target).exists()):
                continue
            reasons.append(f"target {target} is not curated")
        return sorted(reasons)

    for source, key in transfers:
        reasons = not_ready(source, key)
        if reasons:
            skipped.append(f"transfer_job[{source}|{key}]: {'; '.join(reasons)}")
            log(f"skip   {skipped[-1]}")
            continue
        execute("transfer_job", "transfer: cross-dataset + domain generalization", multi_partition_key(source, key))
    for source, key in test_time:
        start = catalog.test_time.runs[key].start
        reasons = ([f"checkpoint {source}|{start} failed"] if (source, start) in failed_partitions else [])
        reasons += [f"{name} is not curated" for name in catalog.test_time.targets[source]
                    if name not in curated and not workspace.class_split_path(name).exists()]
        if reasons:
            skipped.append(f"test_time_job[{source}|{key}]: {'; '.join(sorted(reasons))}")
            log(f"skip   {skipped[-1]}")
            continue
        execute("test_time_job", "test-time tuning: TPT + DiffTPT", multi_partition_key(source, key))
    execute("report_job", "report")
    summary = {
        "wall_seconds": round(time.perf_counter() - started, 1),
        "stage_seconds": {k: round(v, 1) for k, v in stage_seconds.items()},
        "grid": catalog.grid,
        "failures": failures,
        "skipped": skipped,
        "report": str(workspace.report_path),
        "warehouse": str(workspace.warehouse_path),
    }
    (workspace.root / "last_run_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def print_accuracy_table(log=print) -> None:
    from models.warehouse import Warehouse
    from pipelines.resources import PromptLabResource

    workspace = PromptLabResource().workspace()
    table = Warehouse(workspace.warehouse_path, workspace.predictions_dir).query(
        """
        SELECT dataset, method, shots, round(avg(value) * 100, 2) AS top1, count(*) AS runs
        FROM current_results
        WHERE stage = 'evaluation' AND split = 'test' AND metric = 'top1_accuracy'
          AND experiment_key NOT LIKE '%-aug' AND experiment_key NOT LIKE '%-fpl'
        GROUP BY ALL ORDER BY dataset, method, shots
        """
    )
    with_config = __import__("polars").Config(tbl_rows=200, tbl_cols=10)
    with with_config:
        log(str(table))


def main(argv: list[str] | None = None) -> int:
    from models.catalog import DEFAULT_CATALOG_DIR, DEFAULT_GRID, EVALUATION_PROTOCOLS, grid_subset_names

    catalog_dir = Path(os.environ.get("PROMPTLAB_CATALOG", DEFAULT_CATALOG_DIR))
    parser = argparse.ArgumentParser(prog="promptlab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="materialize the default graph (embedded world, every dataset x experiment)")
    run.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
    run.add_argument("--experiment", action="append", help="only this experiment key (repeatable)")
    run.add_argument("--protocol", choices=EVALUATION_PROTOCOLS,
                     help="only the partitions of this evaluation protocol (zero-shot included as its reference)")
    run.add_argument("--grid", choices=[DEFAULT_GRID, *grid_subset_names(catalog_dir)],
                     help="a named subset of the experiment grid (assets_catalog/grids.yaml; default: $PROMPTLAB_GRID "
                          "or the whole grid)")
    run.add_argument("--retrain-world", action="store_true",
                     help="pretrain tiny-clip from the catalog's recipe (world.yaml tiny_clip) instead of installing "
                          "the shipped weights; about 33 minutes on 2 CPU cores")
    commands.add_parser("results", help="print test top-1 per dataset, method and shots from the warehouse")
    arguments = parser.parse_args(argv)
    if arguments.command == "results":
        print_accuracy_table()
        return 0
    if getattr(arguments, "retrain_world", False):
        os.environ["PROMPTLAB_RETRAIN_WORLD"] = "1"
    if arguments.grid:  # before the definitions are imported: the partitions are read from the catalog then
        os.environ["PROMPTLAB_GRID"] = arguments.grid
    from models.catalog import CatalogError

    try:
        summary = run_graph(arguments.dataset, arguments.experiment, protocol=arguments.protocol)
    except CatalogError as error:  # a bad --dataset / --experiment or catalog file: say so, no traceback
        print(f"promptlab run: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    if "report" in summary:
        print_accuracy_table()
        print(f"\nReport:    {summary['report']}\nWarehouse: {summary['warehouse']}")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
