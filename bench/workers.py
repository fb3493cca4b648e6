"""`promptlab run --workers N` against one worker (issue 12): wall time and the warehouse compared to the bit.

    .venv/bin/python -m bench.workers --grid quick --dataset Shapes ... --world <a workspace with a built world>

Three fresh workspaces, each with a copy of the same world, run the same selection one after another (never at the
same time, so each has the machine to itself):
- `1 worker` with torch's default threads (all cores): what `promptlab run` does without --workers, the baseline;
- `1 worker, T threads` and `N workers, T threads each` (T = cores / N): the same thread count, so the warehouses
  must hold the same bits (bench.reproducibility.warehouse_contents; differences listed); float results depend on
  the thread count in their last bits, which is why the baseline is compared for wall time only.
Output: bench/results/workers-latest.json (wall times, ratio, load averages, differences) and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from bench.reproducibility import (add_selection_arguments, differences, prepared_selection, promptlab_run,
                                  warehouse_contents)
from models.provenance import PACKAGE_ROOT, git_commit
from pipelines.parallel import default_threads

DEFAULT_OUTPUT = PACKAGE_ROOT / "bench" / "results" / "workers-latest.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_selection_arguments(parser, default_grid="quick")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    arguments = parser.parse_args(argv)
    if arguments.world is None:
        parser.error("--world: give a workspace with a built world (every pass copies it)")
    scratch, catalog, datasets, experiments = prepared_selection(arguments)
    threads = default_threads(arguments.workers)
    passes = {"1 worker, default threads": (),
              f"1 worker, {threads} thread(s)": ("--workers", "1", "--threads", str(threads)),
              f"{arguments.workers} workers, {threads} thread(s) each": ("--workers", str(arguments.workers),
                                                                         "--threads", str(threads))}
    seconds, loads, contents = {}, {}, {}
    for number, (name, extra) in enumerate(passes.items()):
        workspace = scratch / f"pass-{number}"
        shutil.copytree(arguments.world / "world", workspace / "world")
        loads[name] = os.getloadavg()[0]
        seconds[name] = promptlab_run(workspace, catalog, arguments.grid, datasets, experiments,
                                      scratch / "runs.log", extra)
        contents[name] = warehouse_contents(workspace / "warehouse" / "promptlab.duckdb",
                                            workspace / "warehouse" / "predictions")
    names = list(passes)
    found = differences(contents[names[1]], contents[names[2]])
    result = {
        "benchmark": "workers", "finished_at": datetime.now(UTC).isoformat(), "git_commit": git_commit(),
        "cpu_count": os.cpu_count(), "grid": arguments.grid, "datasets": datasets, "experiments": experiments,
        "max_test_images": arguments.max_test_images, "wall_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "load_average_1min_before": loads,
        "speedup_over_default": round(seconds[names[0]] / seconds[names[2]], 3),
        "speedup_over_same_threads": round(seconds[names[1]] / seconds[names[2]], 3),
        "runs_with_predictions": sum(n.startswith("predictions:") for n in contents[names[2]]),
        "differences_same_threads": found, "identical_same_threads": not found,
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(result, indent=2) + "\n")
    for name in names:
        print(f"{name:<32} {seconds[name]:8.1f} s   (1-min load before {loads[name]:.2f})")
    print(f"{names[2]} over {names[0]}: {result['speedup_over_default']:.2f}x; over {names[1]}: "
          f"{result['speedup_over_same_threads']:.2f}x; warehouses of the same thread count "
          f"{'identical' if not found else 'DIFFER: ' + '; '.join(found)}")
    return 0 if not found else 1


if __name__ == "__main__":
    raise SystemExit(main())
