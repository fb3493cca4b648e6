"""`promptlab run`: materialize the default graph through Dagster, with runs recorded in the project's instance.

Stages run as Dagster jobs in this process: the embedded world once, curation per dataset, each experiment
partition, each transfer partition (a source's checkpoint on its target datasets), then the report. `--protocol`
runs only the partitions one evaluation protocol needs. Every run is visible afterwards in `dagster dev` (same
DAGSTER_HOME). One `promptlab run` at a time holds the instance and the workspace (pipelines/run_guard.py);
SIGINT / SIGTERM stop it after failing the run in progress.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from models.provenance import PACKAGE_ROOT
from pipelines.job_runner import CONSOLE_RUN_CONFIG, failure_details, run_job  # noqa: F401 (the CLI's own names)


DAGSTER_HOME_TEMPLATE = Path(__file__).with_name("dagster_home_template.yaml")
TELEMETRY_ONLY_CONFIG = "telemetry:\n  enabled: false\n"  # what earlier versions wrote; replaced by the template
LOCK_HELD_EXIT_CODE = 3


def ensure_dagster_home() -> Path:
    """A persistent instance inside the project, so runs survive `dagster dev` restarts; its dagster.yaml is the
    project's template (pipelines/dagster_home_template.yaml) unless someone wrote their own."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(PACKAGE_ROOT / ".dagster_home")))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() or config.read_text().strip() == TELEMETRY_ONLY_CONFIG.strip():
        # written before the run lock is taken: renamed into place, so a concurrent reader never sees half a file
        temporary = home / f".dagster.yaml.{os.getpid()}"
        temporary.write_text(DAGSTER_HOME_TEMPLATE.read_text() if DAGSTER_HOME_TEMPLATE.exists()
                             else TELEMETRY_ONLY_CONFIG)
        os.replace(temporary, config)
    return home


def prepared_instance(home: Path, log=print):
    """The instance, created and migrated here once (the caller holds the run lock: two processes creating or
    migrating the schema at once left two alembic heads), with runs abandoned by killed processes marked failed."""
    import contextlib
    import io

    import dagster as dg

    from pipelines.run_guard import fail_abandoned_runs

    instance = dg.DagsterInstance.get()
    migrated = home / ".promptlab_migrated"
    if not migrated.exists() or migrated.read_text() != dg.__version__:
        with contextlib.redirect_stdout(io.StringIO()):  # its progress lines are not ours to print
            instance.upgrade()
        migrated.write_text(dg.__version__)
    fail_abandoned_runs(instance, log)
    return instance


def run_graph(datasets: list[str] | None, experiments: list[str] | None, log=print,
              protocol: str | None = None, wait: bool = False, stop_check=None, workers: int = 1,
              gpu_slots: int | None = None) -> dict:
    """Materialize the selected datasets x experiments (all by default; `protocol` keeps the partitions of one
    evaluation protocol), then the transfer partitions whose source and experiment are selected, then the report.
    Holds the instance's and the workspace's run locks throughout (LockHeld when another run has them, unless
    `wait`); `stop_check` is called after every job (the CLI's: raise StopRequested when a signal arrived).
    With `workers` > 1, independent partitions (curation of each dataset, experiments, transfers, test-time runs)
    run on that many worker processes (pipelines/parallel.py), each stage after the one it reads."""
    from models.plan.selection import check_selection_names
    from models.workspace import default_workspace_root
    from pipelines.resources import PromptLabResource
    from pipelines.run_guard import StopRequested, fail_abandoned_runs, run_locks

    catalog = PromptLabResource().catalog()  # a bad catalog, --dataset or --experiment: refused before any lock
    check_selection_names(catalog, datasets, experiments)
    home = ensure_dagster_home()
    with run_locks(home, default_workspace_root(), wait=wait, log=log):
        instance = prepared_instance(home, log)
        try:
            return _materialize_graph(instance, datasets, experiments, log, protocol, stop_check or (lambda: None),
                                      workers, gpu_slots)
        except StopRequested:
            fail_abandoned_runs(instance, log, include_own_pid=True)  # a run the signal caught outside its steps
            raise


def _materialize_graph(instance, datasets, experiments, log, protocol, stop_check, workers: int = 1,
                       gpu_slots: int | None = None) -> dict:
    from models.plan.selection import run_selection
    from pipelines.resources import PromptLabResource
    from pipelines.run_guard import StopRequested
    from pipelines.terminal import stage_progress

    resource = PromptLabResource()
    catalog = resource.catalog()
    selected = run_selection(catalog, datasets, experiments, protocol)  # the plan's selection, the same decisions
    datasets, partitions = list(selected.datasets), list(selected.partitions)
    transfers, test_time = list(selected.transfers), list(selected.test_time)
    stage_seconds: dict[str, float] = {}
    failures: list[str] = []
    skipped: list[str] = []

    def execute(job_name: str, stage: str, partition_key=None, progress=None) -> bool:
        """One job; its line is logged, or with a progress line (a quiet run) said only when it failed."""
        started = time.perf_counter()
        lines: list[str] = []
        result = run_job(instance, job_name, partition_key, log if progress is None else lines.append)
        if progress is not None and not result.success:
            progress.say(*lines)
        stage_seconds[stage] = stage_seconds.get(stage, 0.0) + time.perf_counter() - started
        label = f"{job_name}[{partition_key}]" if partition_key else job_name
        try:
            stop_check()  # a signal during this job: it failed the run; start nothing more
        except StopRequested as stop:
            # the signal came while the job ran; its last step may still have finished it
            stop.during = (f" after {label} (run {result.run_id}) finished" if result.success
                           else f" during {label} (run {result.run_id}), which is marked failed")
            raise
        if not result.success:
            failures.append(label)
        return result.success

    pool = None

    def execute_all(job_names: tuple[str, ...], stage: str, partition_keys: list) -> set:
        """Each partition's chain of jobs (stopping at its first failure), on the worker pool when there is one;
        the partitions whose every job succeeded."""
        with stage_progress(stage, len(partition_keys)) as progress:
            if pool is None:
                succeeded = set()
                for key in partition_keys:
                    success = all(execute(job, stage, key, progress) for job in job_names)
                    if progress is not None:
                        progress.advance(success)
                    if success:
                        succeeded.add(key)
                return succeeded
            started, outcomes = time.perf_counter(), {}

            def on_outcome(outcome) -> None:
                results = outcomes.setdefault(outcome.partition_key, [])
                results.append(outcome.success)
                if not outcome.success:
                    failures.append(f"{outcome.job_name}[{outcome.partition_key}]")
                if progress is None:
                    for line in outcome.lines:
                        log(line)
                    return
                if not outcome.success:
                    progress.say(*outcome.lines)
                if not outcome.success or len(results) == len(job_names):  # the partition's chain ended
                    progress.advance(outcome.success)

            try:
                pool.map_chains([(job_names, key) for key in partition_keys], on_outcome, stop_check)
            except StopRequested as stop:
                stop.during = (f" during {stage} on {pool.workers} workers (their runs in progress), which is "
                               "marked failed")
                raise
            finally:
                stage_seconds[stage] = stage_seconds.get(stage, 0.0) + time.perf_counter() - started
            return {key for key, results in outcomes.items() if len(results) == len(job_names) and all(results)}

    def execute_one(job_name: str, stage: str) -> bool:
        """An unpartitioned job (the world, the report) as a stage of its own."""
        with stage_progress(stage, 1) as progress:
            success = execute(job_name, stage, None, progress)
            if progress is not None:
                progress.advance(success)
            return success

    started = time.perf_counter()
    if not execute_one("embedded_world_job", "world: corpus + tiny-clip + diffusion"):
        return {"failures": failures, "stage_seconds": stage_seconds}
    if workers > 1:
        from pipelines.job_runner import THREADS_ENV
        from pipelines.parallel import WorkerPool

        pool = WorkerPool(workers, gpu_slots)
        log(f"{workers} workers, {os.environ.get(THREADS_ENV, 'default')} torch threads each"
            + (f", {gpu_slots} GPU slot(s)" if gpu_slots else ""))
    try:
        return _materialize_partitions(execute_one, execute_all, resource, catalog, datasets, partitions,
                                       transfers, test_time, stage_seconds, failures, skipped, started, log,
                                       multi_source=list(selected.multi_source),
                                       multitask=list(selected.multitask))
    except BaseException:
        if pool is not None:
            pool.close(kill=True)
            pool = None
        raise
    finally:
        if pool is not None:
            pool.close()


def _materialize_partitions(execute_one, execute_all, resource, catalog, datasets, partitions, transfers, test_time,
                            stage_seconds, failures, skipped, started, log, multi_source=(),
                            multitask=()) -> dict:
    """Curation (+ features) per dataset, MVLPT's multitask source runs and their averages, then the experiment
    partitions, the transfer, test-time and multi-source partitions whose inputs succeeded, then the report; each
    stage's partitions through `execute_all`."""
    from models.warehouse import workspace_warehouse_of
    from pipelines.partitions import multi_partition_key, multi_source_partition_key

    done = execute_all(("curation_job", "features_job"), "curation + features: every image once per view",
                       datasets)
    curated = [name for name in datasets if name in done]
    keys = {multi_partition_key(name, key): (name, key) for name, key in partitions if name in curated}
    unstarted = _multitask_stages(execute_all, catalog, multitask, curated, skipped, log)
    for key, (name, experiment) in list(keys.items()):  # MVLPT targets whose source prompt is missing
        if catalog.multitask.average_of(experiment) in unstarted:
            skipped.append(f"experiment_job[{name}|{experiment}]: its source prompt "
                           f"{catalog.multitask.average_of(experiment)} was not written")
            log(f"skip   {skipped[-1]}")
            del keys[key]
    # the upstream initialisations (GRAM, PVP) the experiments to run start from, learned on the corpus first
    needed = sorted({entry.name for _, experiment in keys.values()
                     if (entry := catalog.initialisations.of(experiment)) is not None})
    learned = (execute_all(("initialisation_job",), "initialisations: GRAM / PVP prompts on the corpus", needed)
               if needed else set())
    for key, (name, experiment) in list(keys.items()):
        entry = catalog.initialisations.of(experiment)
        if entry is not None and entry.name not in learned:
            skipped.append(f"experiment_job[{name}|{experiment}]: its initialisation {entry.name} was not written")
            log(f"skip   {skipped[-1]}")
            del keys[key]
    succeeded = execute_all(("experiment_job",), "experiments: augmentation + pseudolabels + training + evaluation",
                            list(keys))
    failed_partitions = {keys[key] for key in keys if key not in succeeded}
    workspace = resource.workspace()

    def not_ready(source: str, key: str) -> list[str]:
        """Why a transfer partition cannot run: its checkpoint failed or a target is not curated."""
        reasons = ([f"source {source} is not curated"] if source not in curated else
                   [f"checkpoint {source}|{key} failed"] if (source, key) in failed_partitions else [])
        for target in {t for targets in catalog.transfer.targets_of(source).values() for t in targets}:
            if target in curated or (target not in datasets and workspace.is_published(workspace.curation_dir(target))):
                continue
            reasons.append(f"target {target} is not curated")
        return sorted(reasons)

    def uncurated(names) -> list[str]:
        return [f"{name} is not curated" for name in names
                if name not in curated and not workspace.is_published(workspace.curation_dir(name))]

    def run_ready(job: str, title: str, partitions, reasons_of, key_of) -> None:
        """Execute the partitions of `job` that nothing holds back; the others are skipped, saying why."""
        ready = []
        for partition in partitions:
            reasons = reasons_of(*partition)
            if reasons:
                skipped.append(f"{job}[{'|'.join(partition)}]: {'; '.join(reasons)}")
                log(f"skip   {skipped[-1]}")
                continue
            ready.append(key_of(*partition))
        execute_all((job,), title, ready)

    run_ready("transfer_job", "transfer: cross-dataset + domain generalization", transfers, not_ready,
              multi_partition_key)
    run_ready("test_time_job", "test-time tuning: TPT + DiffTPT", test_time,
              lambda source, key: sorted(
                  ([f"checkpoint {source}|{catalog.test_time.runs[key].start} failed"]
                   if (source, catalog.test_time.runs[key].start) in failed_partitions else [])
                  + uncurated(catalog.test_time.targets[source])),
              multi_partition_key)
    run_ready("multi_source_job", "multi-source domain generalisation: sources -> held-out domain", multi_source,
              lambda held_out, key: uncurated((held_out, *catalog.multi_source.split_of(held_out).sources)),
              multi_source_partition_key)
    execute_one("report_job", "report")
    summary = {
        "wall_seconds": round(time.perf_counter() - started, 1),
        "stage_seconds": {k: round(v, 1) for k, v in stage_seconds.items()},
        "grid": catalog.grid,
        "failures": failures,
        "skipped": skipped,
        "report": str(workspace.report_path),
        "warehouse": workspace_warehouse_of(workspace).address,
    }
    (workspace.root / "last_run_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _multitask_stages(execute_all, catalog, runs, curated, skipped, log) -> set[str]:
    """MVLPT's source runs (every source curated first), then the seed averages whose runs all succeeded; returns the
    averages left unwritten, whose targets cannot start."""
    if not runs:
        return set()
    plan = catalog.multitask
    uncurated = [name for name in plan.sources if name not in curated]
    trained: set = set()
    if uncurated:
        for run in runs:
            skipped.append(f"multitask_job[{run}]: sources {uncurated} are not curated")
            log(f"skip   {skipped[-1]}")
    else:
        trained = execute_all(("multitask_job",), "multitask: MVLPT source prompts on the pooled sources", list(runs))
    averages = [average for average, members in plan.averages.items() if any(run in runs for run in members)]
    ready = [average for average in averages if all(run in trained for run in plan.averages[average])]
    for average in averages:
        if average not in ready:
            skipped.append(f"multitask_average_job[{average}]: a source run of {list(plan.averages[average])} failed")
            log(f"skip   {skipped[-1]}")
    written = execute_all(("multitask_average_job",), "averages: the seed averages of MVLPT's source prompts", ready)
    return set(averages) - set(written)


def run_summary_line(summary: dict, event_log) -> str:
    """The end of a quiet run in a few lines: wall time, each stage's time, what failed or was skipped (the whole
    summary is workspace/last_run_summary.json)."""
    from pipelines.terminal import format_seconds

    stages = ", ".join(f"{stage.split(':')[0]} {format_seconds(seconds)}"
                       for stage, seconds in summary.get("stage_seconds", {}).items())
    lines = [f"done   in {format_seconds(summary.get('wall_seconds', 0.0))} ({stages})"]
    if summary.get("failures"):
        lines.append(f"failed {len(summary['failures'])}: {', '.join(summary['failures'][:10])}"
                     + (" ..." if len(summary["failures"]) > 10 else "") + f" (events: {event_log})")
    if summary.get("skipped"):
        lines.append(f"skipped {len(summary['skipped'])} (their inputs failed; see last_run_summary.json)")
    return "\n".join(lines)


def print_accuracy_table(log=print, fmt: str = "text") -> None:
    """Test top-1 per dataset and configuration (in words), mean ± std over seeds with the number of seeds, and
    base / new / HM for base-to-new configurations (models/evaluation/results_table.py), read from the warehouse's
    snapshot with its pending runs: a reader holding the database file (a notebook, `duckdb -readonly`) changes
    nothing here. `fmt`: text, csv, json or markdown."""
    import polars as pl

    from models.evaluation.results_table import RESULTS_SQL, format_results, results_rows
    from pipelines.warehouse_commands import workspace_warehouse

    warehouse = workspace_warehouse()
    try:
        rows = results_rows(warehouse.query(RESULTS_SQL))
    except FileNotFoundError:  # no warehouse yet
        rows = results_rows(pl.DataFrame())
    if rows.is_empty() and fmt == "text":
        log(f"No results yet in {warehouse.address} (run `promptlab run` first).")
        return
    log(format_results(rows, fmt).rstrip("\n"))
    pending = warehouse.pending_batches()
    if pending and fmt == "text":
        log(f"({len(pending)} run(s) above are not merged into {warehouse.name} yet: another process "
            "holds it; `promptlab warehouse status` says more)")


def run_data_check(suite: str | None, datasets: list[str] | None, as_json: bool, quiet_when_ok: bool = False,
                   on_disk_only: bool = False, found: list | None = None) -> int:
    """`promptlab data check`: each dataset found / missing / unreadable, counts against the published ones, and
    the fix for each known mistake; 2 when a dataset has a problem (nothing is written either way). `on_disk_only`
    leaves the embedded datasets out, and says nothing when none is left (the run's own check)."""
    from models.catalog import CatalogError, load_catalog
    from models.data.preflight import check_catalog, format_checks

    try:
        catalog = load_catalog(suite=suite)
        names = [name for name in datasets or catalog.datasets
                 if not on_disk_only or catalog.dataset(name).source != "embedded"]
        if on_disk_only and not names:
            return 0
        checks = check_catalog(catalog, names)
    except CatalogError as error:
        if on_disk_only:  # the run's own check: the run reports a bad catalog itself
            return 0
        print(f"promptlab data check: error: {error}", file=sys.stderr)
        return 2
    if found is not None:  # the caller reuses what was read (the run's plan: the counts on disk)
        found.extend(checks)
    problem = any(check.has_problem for check in checks)
    if as_json:
        print(json.dumps([check.as_dict() for check in checks], indent=2))
    elif problem or not quiet_when_ok:
        print(format_checks(checks, catalog.suite.data_variable if catalog.suite else "PROMPTLAB_DATA"))
    else:
        found = [check.name for check in checks]
        print(f"datasets checked: {', '.join(found)}")
    return 2 if problem else 0


def sizes_on_disk(checks: list) -> dict:
    """The plan's dataset sizes from the data check's counts (the lists are read once, not again for the plan)."""
    from models.data.preflight import FOUND
    from models.plan import DatasetSize

    return {check.name: DatasetSize(check.name, check.counts["classes"], check.counts["train"], check.counts["val"],
                                    check.counts["test"], "on disk")
            for check in checks if check.status == FOUND}


def run_estimate(arguments, checked: list | None = None) -> dict | None:
    """The run's plan (`promptlab plan`: what runs, and its time estimated from costs measured on this device),
    printed in full for --dry-run and as its total otherwise; None when it cannot be made (the run goes on)."""
    from models.catalog import CatalogError, load_catalog
    from models.plan import plan_for_backbone
    from models.plan.rendering import format_duration

    quiet = (lambda line: None) if not arguments.dry_run else print
    try:
        plan = plan_for_backbone(load_catalog(), arguments.backbone or os.environ.get("PROMPTLAB_BACKBONE") or None,
                                 log=quiet, datasets=arguments.dataset, experiments=arguments.experiment,
                                 protocol=arguments.protocol, sizes=sizes_on_disk(checked or []))
    except Exception as error:  # an estimate that cannot be made never stops the run itself
        if arguments.dry_run and not isinstance(error, (CatalogError, ValueError, OSError)):
            raise
        print(f"plan   not estimated: {type(error).__name__}: {' '.join(str(error).split())}",
              file=sys.stderr if arguments.dry_run else sys.stdout)
        return None
    if arguments.dry_run:
        print(plan.render())
    else:
        print(f"plan   about {format_duration(plan.total_seconds)} on this device (`promptlab run --dry-run`: "
              "what runs, and where the time goes)")
    return plan.as_dict()


def main(argv: list[str] | None = None) -> int:
    """`promptlab`: every failure ends in one line on stderr and a non-zero exit code (2: bad input, 3: another run
    holds the lock, 128 + n: stopped by signal n, 1: anything else, its traceback saved to last_error.txt)."""
    from pipelines.run_guard import LockHeld, SignalWatch, StopRequested, exit_code_for

    command = f"promptlab {(argv if argv is not None else sys.argv[1:] or ['?'])[0]}"
    try:
        with SignalWatch() as signals:
            return _run_command(argv, signals)
    except StopRequested as stop:
        print(f"{command}: stopped by {stop.signal_name}{stop.during}; nothing after it ran", file=sys.stderr)
        return exit_code_for(stop.signal_name)
    except LockHeld as error:
        print(f"{command}: refused: {error}", file=sys.stderr)
        return LOCK_HELD_EXIT_CODE
    except Exception as error:  # the one place that turns any failure into one line
        saved = _save_traceback()
        print(f"{command}: error: {type(error).__name__}: {' '.join(str(error).split())}"
              + (f" (traceback in {saved})" if saved else ""), file=sys.stderr)
        return 1


def _save_traceback() -> Path | None:
    import traceback

    from models.workspace import default_workspace_root

    try:
        path = default_workspace_root() / "last_error.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(traceback.format_exc())
    except Exception:  # a workspace that cannot be resolved (the error being reported, perhaps) or written
        return None
    return path


def build_parser() -> argparse.ArgumentParser:
    """`promptlab`'s commands and options (grids and suites are the catalog's: $PROMPTLAB_CATALOG)."""
    from models.catalog import DEFAULT_CATALOG_DIR, DEFAULT_GRID, EVALUATION_PROTOCOLS, grid_subset_names, suite_names
    from pipelines.plan_command import add_plan_parser
    from pipelines.report_command import add_report_parser
    from pipelines.warehouse_commands import add_warehouse_parser

    catalog_dir = Path(os.environ.get("PROMPTLAB_CATALOG", DEFAULT_CATALOG_DIR))
    parser = argparse.ArgumentParser(prog="promptlab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="materialize the default graph (embedded world, every dataset x experiment)")
    run.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
    run.add_argument("--experiment", action="append",
                     help="only this experiment key, or test-time run key (tpt-zeroshot-s1), repeatable; test-time "
                          "runs start only when named or with --protocol test_time")
    run.add_argument("--protocol", choices=EVALUATION_PROTOCOLS,
                     help="only the partitions of this evaluation protocol (zero-shot included as its reference)")
    grid_names = dict.fromkeys([DEFAULT_GRID, *grid_subset_names(catalog_dir),  # the catalog's and every suite's
                                *(name for suite in suite_names(catalog_dir)
                                  for name in grid_subset_names(catalog_dir / "suites" / suite))])
    run.add_argument("--grid", choices=list(grid_names),
                     help="a named subset of the experiment grid (assets_catalog/grids.yaml; default: $PROMPTLAB_GRID "
                          "or the whole grid)")
    run.add_argument("--retrain-world", action="store_true",
                     help="pretrain tiny-clip and the tiny diffusion model from the catalog's recipes (world.yaml "
                          "tiny_clip, diffusion) instead of installing the shipped weights; about 33 + 6 minutes on 2 "
                          "CPU cores")
    run.add_argument("--wait", action="store_true",
                     help="when another `promptlab run` holds the workspace or the Dagster instance, wait for it "
                          "instead of refusing at once")
    run.add_argument("--workers", type=int, default=1,
                     help="run independent partitions on this many worker processes (default 1: one after another "
                          "in this process)")
    run.add_argument("--threads", type=int, default=None,
                     help="torch threads of every job ($PROMPTLAB_TORCH_THREADS; default: torch's, all cores, with one "
                          "worker, else the cores divided by --workers). Results depend on it in their last bits and "
                          "record it (runs.compute)")
    run.add_argument("--gpu-slots", type=int, default=None,
                     help="at most this many partitions on the GPU at once (default 1 on a CUDA machine)")
    run.add_argument("--suite", choices=suite_names(catalog_dir),
                     help="run a benchmark suite of the catalog (assets_catalog/suites/: its datasets under "
                          "$PROMPTLAB_DATA and the papers' grids; also $PROMPTLAB_SUITE) instead of the embedded world; "
                          "its datasets are checked first (`promptlab data check`)")
    run.add_argument("--backbone", help="the backbone to run with (backbones.yaml; default: the suite's, else the "
                                        "catalog's default)")
    run.add_argument("--verbose", action="store_true",
                     help="print Dagster's event lines (RUN_START, STEP_OUTPUT, ...) and every job's line instead of "
                          "one progress line per stage (they go to workspace/logs/run-*.log otherwise)")
    run.add_argument("--dry-run", action="store_true",
                     help="print what the run would do and how long it would take on this device (`promptlab plan`) "
                          "and stop")
    results = commands.add_parser("results", help="print test top-1 per dataset and configuration (mean ± std over "
                                                  "seeds, shots, seeds) from the warehouse")
    results.add_argument("--format", choices=["text", "csv", "json", "markdown"], default="text",
                         help="text (default: aligned columns), csv or json (one row per dataset, configuration, "
                              "shots and split), or a Markdown table")
    data = commands.add_parser("data", help="the datasets on disk")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    check = data_commands.add_parser(
        "check", help="for each dataset of the catalog (or a suite): found, missing or unreadable, its counts against "
                      "the published ones, and the fix for each known mistake; exit 2 on a problem")
    check.add_argument("--suite", choices=suite_names(catalog_dir), help="check this suite's datasets")
    check.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
    check.add_argument("--json", action="store_true", help="print the checks as JSON")
    add_warehouse_parser(commands)
    add_plan_parser(commands)
    add_report_parser(commands)
    commands.add_parser("methods", help="print the methods page (docs/methods.md): each method's paper, where it "
                                        "hooks, its parameters and how it is verified")
    return parser


def _run_command(argv: list[str] | None, signals) -> int:
    from pipelines.plan_command import run_plan_command
    from pipelines.warehouse_commands import merge_after_run, run_warehouse_command

    arguments = build_parser().parse_args(argv)
    if arguments.command == "methods":
        from models.catalog import DEFAULT_CATALOG_DIR
        from models.methods_page import methods_page

        print(methods_page(Path(os.environ.get("PROMPTLAB_CATALOG", DEFAULT_CATALOG_DIR))), end="")
        return 0
    if arguments.command == "plan":
        return run_plan_command(arguments)
    if arguments.command == "data":
        return run_data_check(arguments.suite, arguments.dataset, arguments.json)
    if arguments.command == "results":
        print_accuracy_table(fmt=arguments.format)
        return 0
    if arguments.command == "warehouse":
        return run_warehouse_command(arguments)
    if arguments.command == "report":
        from pipelines.report_command import run_report_command

        return run_report_command(arguments)
    if getattr(arguments, "retrain_world", False):
        os.environ["PROMPTLAB_RETRAIN_WORLD"] = "1"
    if arguments.grid:  # before the definitions are imported: the partitions are read from the catalog then
        os.environ["PROMPTLAB_GRID"] = arguments.grid
    if arguments.suite:
        os.environ["PROMPTLAB_SUITE"] = arguments.suite
    if arguments.backbone:  # read by the promptlab resource in this process and in workers
        os.environ["PROMPTLAB_BACKBONE"] = arguments.backbone
    # datasets on the user's disk (a suite's, or real ones in the catalog) are checked before any stage runs
    checked: list = []
    status = run_data_check(os.environ.get("PROMPTLAB_SUITE") or None, arguments.dataset, as_json=False,
                            quiet_when_ok=True, on_disk_only=True, found=checked)
    if status:
        print("promptlab run: refused: fix the datasets above (or leave them out with --dataset)", file=sys.stderr)
        return status
    for name in ("workers", "threads", "gpu_slots"):
        value = getattr(arguments, name)
        if value is not None and value < 1:
            print(f"promptlab run: error: --{name.replace('_', '-')} must be at least 1, got {value}", file=sys.stderr)
            return 2
    from pipelines.job_runner import THREADS_ENV
    from pipelines.parallel import default_threads, gpu_slot_count

    threads = arguments.threads or (default_threads(arguments.workers) if arguments.workers > 1 else None)
    if threads:  # read by every job, here and in the workers (PromptLabResource.load_backbone)
        os.environ[THREADS_ENV] = str(threads)
    gpu_slots = arguments.gpu_slots or gpu_slot_count()
    from models.catalog import CatalogError, load_catalog
    from models.plan.selection import check_selection_names

    try:  # a bad catalog, --dataset or --experiment: one line and exit 2 before anything is written
        catalog = load_catalog()
        check_selection_names(catalog, arguments.dataset, arguments.experiment)
    except CatalogError as error:
        print(f"promptlab run: error: {error}", file=sys.stderr)
        return 2
    if arguments.dry_run:
        return 0 if run_estimate(arguments, checked) is not None else 2
    from models.catalog import CatalogError
    from models.workspace import default_workspace_root
    from pipelines.terminal import quiet_terminal

    if not arguments.wait:  # another run holds the locks: refused at once, before the estimate's calibration
        from pipelines.run_guard import run_locks

        with run_locks(ensure_dagster_home(), default_workspace_root(), wait=False, log=lambda _: None):
            pass
    try:
        with quiet_terminal(default_workspace_root(), arguments.verbose) as event_log:
            # estimated inside the quiet terminal: a first calibration's library logging (open_clip's) would
            # otherwise set up Python's default stderr handler, and GX's INFO lines would reach the terminal
            plan = run_estimate(arguments, checked)
            if event_log is not None:
                print(f"events {event_log} (`--verbose` prints them here)")
            summary = run_graph(arguments.dataset, arguments.experiment, protocol=arguments.protocol,
                                wait=arguments.wait, stop_check=signals.check, workers=arguments.workers,
                                gpu_slots=gpu_slots)
    except CatalogError as error:  # a bad --dataset / --experiment or catalog file: say so, no traceback
        print(f"promptlab run: error: {error}", file=sys.stderr)
        return 2
    if plan is not None:  # the run's actual stage times beside the estimate (workspace/plans/run-*.json)
        from pipelines.plan_command import record_actual

        summary["plan"] = str(record_actual(plan, summary))
    if arguments.verbose:
        print(json.dumps(summary, indent=2))
    else:
        print(run_summary_line(summary, event_log))
    merge_after_run()  # rows its stages left pending while a reader held the warehouse
    if "report" in summary:
        print_accuracy_table()
        print(f"\nReport:    {summary['report']}\nWarehouse: {summary['warehouse']}")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
