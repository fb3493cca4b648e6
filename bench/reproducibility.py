"""Same results whatever was cached before, and in whichever order (issue 13): `promptlab run` in three workspaces,
their warehouses and reports compared to the bit.

    .venv/bin/python -m bench.reproducibility --grid quick --dataset Shapes --dataset ShapesSketch ...

- `cold`: a fresh workspace (the embedded world built there, or copied from `--world`), the selection run as
  `promptlab run` runs it: every cache starts empty.
- `reordered`: another workspace with a copy of that world. First a different subset of the grid (a seeded sample
  of the experiments, datasets in reverse order) is run; then its image-feature cache is emptied and refilled with
  seeded random subsets of every dataset's images, each request in a random order and with a random view; its
  warehouse and report are removed; then the whole selection is run with datasets and experiments in reverse order.
  Every cache (image features, text features, test-time views, DiffTPT's generated views) now holds a different
  mixture, filled in a different order, when the partitions read it.
- `warm`: the cold workspace again with its warehouse and report removed and every cache kept: the same selection
  reads what the first run cached.

Compared (`warehouse_contents`, `report_contents`): every table of the warehouse, every column, floats by their bits,
with the fields that name a run rather than its result normalised: run ids (replaced by the run's stage, dataset,
partition and source), Dagster run ids and timestamps (dropped), the values of timing metrics (test-time tuning's
images_per_second: the row must be there, its value is a wall-clock measurement); the predictions of every current run (Parquet files,
by the run's key); the report's HTML with timestamps, run ids,
commits and its measured cells (class "measured": images/s, memory) masked. Any other difference fails the check, listed
by table, key and column. `git_commit` is dropped too: a commit made while the passes run changes it, and
`code_version` (the library's code, kept) is what results depend on. Figures (wall time per pass) go to bench/results/reproducibility-latest.json.

A DiffTPT run generates 63 views per test image (about 1 s per image on 2 cores): `--max-test-images` caps the
test-time runs' images in a copy of the catalog (the default catalog takes 400; the cap is recorded).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from models.provenance import PACKAGE_ROOT, git_commit

DEFAULT_OUTPUT = PACKAGE_ROOT / "bench" / "results" / "reproducibility-latest.json"
# columns that say when or under which id a run happened, not what it computed
VOLATILE_COLUMNS = {"dagster_run_id", "started_at", "finished_at", "superseded_at", "merged_at", "batch",
                    "git_commit"}
RUN_ID_COLUMNS = {"run_id", "superseded_by_run_id"}
# tables whose rows are bookkeeping of how results were merged, not results
BOOKKEEPING_TABLES = {"merged_batches"}
# metrics that measure how fast a run went (test-time tuning's images/s), not what it computed: their rows must be
# there, their values are not compared
TIMING_METRICS = {"images_per_second"}
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?(\+00:00)?")
MEASURED_CELL = re.compile(r'(<td class="[^"]*\bmeasured\b[^"]*">)[^<]*(</td>)')  # models/report.py _table


# ------------------------------------------------------------------------------------------------ contents
def _float_bits(value: float) -> str:
    return "nan" if math.isnan(value) else struct.pack(">d", value).hex()


def _canonical(value: Any) -> Any:
    if isinstance(value, float):
        return _float_bits(value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in sorted(value.items())}
    return value


def run_keys(connection) -> dict[str, str]:
    """run_id -> what the run was: stage|dataset|partition_key|source_dataset, with `#n` for the n-th run of that
    partition in recording order (a partition may hold history)."""
    rows = connection.execute("SELECT run_id, stage, dataset, partition_key, coalesce(source_dataset, '') "
                              "FROM runs ORDER BY started_at, run_id").fetchall()
    keys, seen = {}, {}
    for run_id, stage, dataset, partition, source in rows:
        base = f"{stage}|{dataset}|{partition}|{source}"
        seen[base] = seen.get(base, 0) + 1
        keys[run_id] = f"{base}#{seen[base]}"
    return keys


def warehouse_contents(database: Path, predictions_dir: Path) -> dict[str, list]:
    """Every table's rows (sorted), run ids replaced by run keys, volatile columns dropped, floats as their bits; and
    `predictions:<run key>` -> that run's prediction rows."""
    import duckdb
    import polars as pl

    from models.warehouse import Warehouse

    outcome = Warehouse(database, predictions_dir).merge_pending()  # results still waiting in pending batches
    if outcome.rejected or outcome.pending or outcome.blocked_by:
        raise RuntimeError(f"{database}: not every pending batch merged: {outcome}")
    connection = duckdb.connect(str(database), read_only=True)
    try:
        keys = run_keys(connection)
        tables = [name for (name,) in connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema = 'main' ORDER BY table_name").fetchall() if name not in BOOKKEEPING_TABLES]
        contents = {}
        for table in tables:
            frame = connection.execute(f'SELECT * FROM "{table}"').pl()
            frame = frame.drop([c for c in frame.columns if c in VOLATILE_COLUMNS])
            rows = []
            for row in frame.iter_rows(named=True):
                if row.get("metric") in TIMING_METRICS and "value" in row:
                    row["value"] = "timing, not compared"
                rows.append(json.dumps({c: (keys.get(v, f"unknown run {v}") if c in RUN_ID_COLUMNS and v else
                                            _canonical(v)) for c, v in row.items()}, sort_keys=True, default=str))
            contents[f"table:{table}"] = sorted(rows)
    finally:
        connection.close()
    for path in sorted(Path(predictions_dir).glob("run_id=*.parquet")):
        run_id = path.stem.removeprefix("run_id=")
        if run_id == "__empty__":
            continue
        frame = pl.read_parquet(path).drop("run_id", strict=False)
        rows = sorted(json.dumps(_canonical(row), sort_keys=True) for row in frame.iter_rows(named=True))
        contents[f"predictions:{keys.get(run_id, f'unknown run {run_id}')}"] = rows
    return contents


def report_contents(report: Path, database: Path) -> str:
    """The report's HTML with timestamps and run ids masked."""
    import duckdb

    connection = duckdb.connect(str(database), read_only=True)
    try:
        keys = run_keys(connection)
        commits = [value for (value,) in connection.execute(
            "SELECT DISTINCT git_commit FROM runs WHERE git_commit IS NOT NULL").fetchall()]
    finally:
        connection.close()
    text = report.read_text()
    for commit in sorted(commits, key=len, reverse=True):
        text = text.replace(commit, "<commit>")
    for run_id in sorted(keys, key=len, reverse=True):
        text = text.replace(run_id, f"<run {keys[run_id]}>")
    return MEASURED_CELL.sub(r"\1<measured>\2", TIMESTAMP.sub("<time>", text))


def differences(one: dict[str, list], other: dict[str, list], limit: int = 20) -> list[str]:
    """What differs between two warehouse_contents, at most `limit` lines."""
    found = []
    for name in sorted(set(one) | set(other)):
        if name not in one or name not in other:
            found.append(f"{name}: only in the {'first' if name in one else 'second'}")
            continue
        if one[name] == other[name]:
            continue
        only_one = sorted(set(one[name]) - set(other[name]))
        only_other = sorted(set(other[name]) - set(one[name]))
        found.append(f"{name}: {len(only_one)} rows only in the first, {len(only_other)} only in the second; e.g. "
                     f"{(only_one or ['-'])[0][:400]} | {(only_other or ['-'])[0][:400]}")
    return found[:limit]


def report_differences(one: str, other: str) -> list[str]:
    if one == other:
        return []
    lines_one, lines_other = one.splitlines(), other.splitlines()
    for number, (a, b) in enumerate(zip(lines_one, lines_other), start=1):
        if a != b:
            at = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y) if a[:len(b)] != b[:len(a)] else min(
                len(a), len(b))
            return [f"report line {number}, column {at}: {a[max(0, at - 80):at + 120]!r} | "
                    f"{b[max(0, at - 80):at + 120]!r}"]
    return [f"report: {len(lines_one)} lines against {len(lines_other)}"]


# -------------------------------------------------------------------------------------------------- passes
def _environment(workspace: Path, catalog: Path | None) -> dict[str, str]:
    environment = {**os.environ, "PROMPTLAB_WORKSPACE": str(workspace),
                   "DAGSTER_HOME": str(workspace / ".dagster_home"), "PYTHONUNBUFFERED": "1"}
    if catalog is not None:
        environment["PROMPTLAB_CATALOG"] = str(catalog)
    return environment


def promptlab_run(workspace: Path, catalog: Path | None, grid: str, datasets: list[str], experiments: list[str],
                  log_path: Path, extra: tuple[str, ...] = ()) -> float:
    command = [sys.executable, "-m", "pipelines.cli", "run", "--grid", grid, *extra]
    for name in datasets:
        command += ["--dataset", name]
    for key in experiments:
        command += ["--experiment", key]
    started = time.perf_counter()
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        completed = subprocess.run(command, cwd=PACKAGE_ROOT, env=_environment(workspace, catalog), stdout=log,
                                   stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    summary_path = workspace / "last_run_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if completed.returncode != 0 or summary.get("failures"):
        raise RuntimeError(f"promptlab run in {workspace} failed (exit {completed.returncode}, failures "
                           f"{summary.get('failures')}); its log: {log_path}")
    print(f"  {workspace.name}: {len(datasets)} datasets x {len(experiments)} experiments in {seconds:.0f} s",
          flush=True)
    return seconds


PRIME_SCRIPT = """
import json, random, sys
import polars as pl
from models.data.validated_index import read_validated_index
from models.experiments import features_for_images
from models.prompting.features import ImageSet
from pipelines.assets.curation import dataset_source
from pipelines.resources import PromptLabResource

datasets, seed = json.loads(sys.argv[1]), int(sys.argv[2])
resource = PromptLabResource()
catalog, workspace = resource.catalog(), resource.workspace()
backbone = resource.load_backbone()
rng = random.Random(seed)
for dataset in datasets:
    index = read_validated_index(workspace, dataset)
    image_set = ImageSet.of_index(dataset_source(catalog.dataset(dataset), workspace).image_dir, index)
    rows = list(zip(index["relative_path"].to_list(), index["content_sha256"].to_list()))
    for request in range(3):
        chosen = rng.sample(rows, max(1, len(rows) // 5))
        paths, hashes = [p for p, _ in chosen], [h for _, h in chosen]
        features_for_images(backbone, image_set, paths, hashes, workspace.feature_cache_dir,
                            with_mirror=rng.random() < 0.5)
        print(f"primed {dataset}: {len(chosen)} images in a random order", flush=True)
"""


def prime_feature_cache(workspace: Path, catalog: Path | None, datasets: list[str], seed: int,
                        log_path: Path) -> None:
    with log_path.open("a") as log:
        completed = subprocess.run([sys.executable, "-c", PRIME_SCRIPT, json.dumps(datasets), str(seed)],
                                   cwd=PACKAGE_ROOT, env=_environment(workspace, catalog), stdout=log,
                                   stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        raise RuntimeError(f"priming the feature cache of {workspace} failed; its log: {log_path}")


def forget_results(workspace: Path) -> None:
    """Remove the warehouse and the report (and the Dagster instance's runs); keep every cache."""
    for path in (workspace / "warehouse", workspace / "reports", workspace / ".dagster_home"):
        shutil.rmtree(path, ignore_errors=True)


def capped_catalog(scratch: Path, max_test_images: int | None) -> Path | None:
    """A copy of the catalog with the test-time runs' images capped, or None for the catalog as it is."""
    if max_test_images is None:
        return None
    import yaml

    from models.catalog import DEFAULT_CATALOG_DIR

    target = scratch / "catalog"
    shutil.copytree(DEFAULT_CATALOG_DIR, target)
    path = target / "experiments.yaml"
    text = path.read_text()
    data = yaml.safe_load(text)
    if "test_time" not in data:
        return target
    pattern = re.compile(r"^(  max_test_images:\s*)\d+", re.MULTILINE)
    if not pattern.search(text):
        raise RuntimeError(f"{path}: no `max_test_images:` line under test_time to cap")
    path.write_text(pattern.sub(lambda m: f"{m.group(1)}{max_test_images}", text, count=1))
    return target


def selection(catalog: Path | None, grid: str, datasets: list[str] | None) -> tuple[list[str], list[str]]:
    environment = _environment(Path("/nonexistent"), catalog)
    code = ("import json; from pipelines.resources import PromptLabResource; c = PromptLabResource().catalog(); "
            "print(json.dumps([list(c.datasets), list(c.experiments)]))")
    completed = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE_ROOT, capture_output=True, text=True,
                               env={**environment, "PROMPTLAB_GRID": grid})
    if completed.returncode != 0:
        raise RuntimeError(f"cannot read the catalog's {grid} grid: {completed.stderr[-2000:]}")
    all_datasets, experiments = json.loads(completed.stdout.strip().splitlines()[-1])
    for name in datasets or []:
        if name not in all_datasets:
            raise SystemExit(f"--dataset {name}: not in the catalog ({', '.join(all_datasets)})")
    return datasets or all_datasets, experiments


def add_selection_arguments(parser: argparse.ArgumentParser, default_grid: str) -> None:
    """What to run (grid, datasets, experiments, test-time cap) and where (scratch, the world to copy)."""
    parser.add_argument("--grid", default=default_grid, help=f"a grid of assets_catalog/grids.yaml (default "
                                                              f"{default_grid})")
    parser.add_argument("--dataset", action="append", default=None, help="only these datasets (default: all)")
    parser.add_argument("--experiment", action="append", default=None,
                        help="only these experiment keys of the grid (default: all)")
    parser.add_argument("--scratch", type=Path, required=True, help="an empty folder for the workspaces")
    parser.add_argument("--world", type=Path, default=None,
                        help="a workspace whose world/ (corpus, tiny-clip, diffusion model) is copied instead of "
                             "built again")
    parser.add_argument("--max-test-images", type=int, default=None,
                        help="cap the test-time runs' images (a copy of the catalog; default: the catalog's)")


def prepared_selection(arguments: argparse.Namespace) -> tuple[Path, Path | None, list[str], list[str]]:
    """(scratch folder, catalog copy or None, datasets, experiments) of add_selection_arguments' options."""
    scratch = arguments.scratch.resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    catalog = capped_catalog(scratch, arguments.max_test_images)
    datasets, experiments = selection(catalog, arguments.grid, arguments.dataset)
    if arguments.experiment:
        unknown = sorted(set(arguments.experiment) - set(experiments))
        if unknown:
            raise SystemExit(f"--experiment {', '.join(unknown)}: not in the {arguments.grid} grid")
        experiments = [key for key in experiments if key in arguments.experiment]
    return scratch, catalog, datasets, experiments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_selection_arguments(parser, default_grid="standard")
    parser.add_argument("--seed", type=int, default=0, help="seed of the reordered workspace's subsets and orders")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args(argv)
    scratch, catalog, datasets, experiments = prepared_selection(arguments)
    cold, reordered = scratch / "cold", scratch / "reordered"
    for workspace in (cold, reordered):
        if workspace.exists():
            raise SystemExit(f"{workspace} exists: give an empty --scratch")
        workspace.mkdir()
    log_path = scratch / "runs.log"
    rng = random.Random(arguments.seed)
    seconds: dict[str, float] = {}
    print(f"{len(datasets)} datasets x {len(experiments)} experiments of grid {arguments.grid}; log {log_path}",
          flush=True)
    if arguments.world is not None:
        shutil.copytree(arguments.world / "world", cold / "world")
    seconds["cold"] = promptlab_run(cold, catalog, arguments.grid, datasets, experiments, log_path)
    cold_contents = warehouse_contents(cold / "warehouse" / "promptlab.duckdb", cold / "warehouse" / "predictions")
    cold_report = report_contents(cold / "reports" / "report.html", cold / "warehouse" / "promptlab.duckdb")

    shutil.copytree(cold / "world", reordered / "world")
    subset = rng.sample(experiments, max(1, len(experiments) // 4))
    seconds["reordered: a subset first"] = promptlab_run(reordered, catalog, arguments.grid, datasets[::-1], subset,
                                                         log_path)
    shutil.rmtree(reordered / "cache" / "features", ignore_errors=True)
    prime_feature_cache(reordered, catalog, datasets[::-1], arguments.seed, log_path)
    forget_results(reordered)
    seconds["reordered"] = promptlab_run(reordered, catalog, arguments.grid, datasets[::-1], experiments[::-1],
                                         log_path)
    reordered_contents = warehouse_contents(reordered / "warehouse" / "promptlab.duckdb",
                                            reordered / "warehouse" / "predictions")
    reordered_report = report_contents(reordered / "reports" / "report.html",
                                       reordered / "warehouse" / "promptlab.duckdb")

    forget_results(cold)
    seconds["warm"] = promptlab_run(cold, catalog, arguments.grid, datasets, experiments, log_path)
    warm_contents = warehouse_contents(cold / "warehouse" / "promptlab.duckdb", cold / "warehouse" / "predictions")
    warm_report = report_contents(cold / "reports" / "report.html", cold / "warehouse" / "promptlab.duckdb")

    comparisons = {
        "cold vs reordered": differences(cold_contents, reordered_contents) + report_differences(cold_report,
                                                                                              reordered_report),
        "cold vs warm": differences(cold_contents, warm_contents) + report_differences(cold_report, warm_report),
    }
    runs = sum(1 for name in cold_contents if name.startswith("predictions:"))
    result = {
        "benchmark": "reproducibility", "finished_at": datetime.now(UTC).isoformat(), "git_commit": git_commit(),
        "grid": arguments.grid, "datasets": datasets, "experiments": len(experiments),
        "max_test_images": arguments.max_test_images, "reordered_subset_first": subset,
        "runs_with_predictions": runs, "tables": sorted(n for n in cold_contents if n.startswith("table:")),
        "rows": {name: len(rows) for name, rows in cold_contents.items() if name.startswith("table:")},
        "report_bytes": len(cold_report), "wall_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "load_average_1min_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "differences": comparisons, "identical": not any(comparisons.values()),
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(result, indent=2) + "\n")
    for name, found in comparisons.items():
        print(f"{name}: {'identical' if not found else f'{len(found)} differences'}")
        for line in found:
            print(f"  {line}")
    print(f"{runs} runs with predictions, {sum(result['rows'].values())} warehouse rows; wall "
          f"{result['wall_seconds']}; written to {arguments.output}")
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
