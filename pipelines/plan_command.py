"""`promptlab plan`: what `promptlab run` would execute for a suite, grid, protocol and backbone, and about how long it
takes on this machine's device, before the run spends it.

    promptlab plan --suite coop --backbone ViT-B-16-openai [--grid quick] [--protocol few_shot] [--dataset D ...]
                   [--experiment K ...] [--counts-from-disk] [--recalibrate] [--json]

The first plan on a machine measures the backbone's architecture (random weights; under a minute for ViT-B-16 on a
CPU), cached in <workspace>/plans/. Every plan is saved there as plan-<timestamp>.json; `record_actual` writes a
finished run's stage times beside the plan it was given (run-<timestamp>.json). Exit codes: 0, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from models.catalog import EVALUATION_PROTOCOLS


def add_plan_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("plan", help="what `promptlab run` would execute and about how long it takes on this "
                                 "device (measured once per backbone architecture)")
    parser.add_argument("--suite", help="a benchmark suite (assets_catalog/suites/<name>; default: $PROMPTLAB_SUITE, "
                                        "else the embedded world)")
    parser.add_argument("--grid", help="a named subset of the grid (the suite's grids.yaml; default: $PROMPTLAB_GRID, "
                                       "else the whole grid)")
    parser.add_argument("--backbone", help="a backbone of backbones.yaml (default: $PROMPTLAB_BACKBONE, else the "
                                           "suite's or the catalog's default)")
    parser.add_argument("--protocol", choices=EVALUATION_PROTOCOLS,
                        help="only the partitions of this evaluation protocol, as `promptlab run --protocol`")
    parser.add_argument("--dataset", action="append", help="only this dataset (repeatable)")
    parser.add_argument("--experiment", action="append", help="only this experiment key (repeatable)")
    parser.add_argument("--device", help="price on this torch device (default: CUDA when available, else the CPU)")
    parser.add_argument("--counts-from-disk", action="store_true",
                        help="count each dataset's images in its folder where it exists (slow for ImageNet) instead "
                             "of its published counts")
    parser.add_argument("--recalibrate", action="store_true",
                        help="measure the backbone's costs on this device again instead of using the cached figures")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON (rows, totals, costs, notes)")


def run_plan_command(arguments: argparse.Namespace, log: Callable[[str], None] = print) -> int:
    """Print the plan (text or JSON) and save it under <workspace>/plans/; 2 on a bad suite, grid, backbone or name."""
    # before anything reads the catalog from the environment (the run's partitions are read from it too)
    if arguments.suite:
        os.environ["PROMPTLAB_SUITE"] = arguments.suite
    if arguments.grid:
        os.environ["PROMPTLAB_GRID"] = arguments.grid
    from models.catalog import CatalogError, load_catalog
    from models.plan import default_plans_directory, plan_for_backbone, save_plan

    _apply_torch_threads()
    progress = (lambda line: print(line, file=sys.stderr)) if arguments.json else log
    try:
        catalog = load_catalog()
        backbone = arguments.backbone or os.environ.get("PROMPTLAB_BACKBONE") or None
        plan = plan_for_backbone(catalog, backbone, device=arguments.device, recalibrate=arguments.recalibrate,
                                 log=progress, datasets=arguments.dataset, experiments=arguments.experiment,
                                 protocol=arguments.protocol, counts_from_disk=arguments.counts_from_disk)
    except CatalogError as error:
        print(f"promptlab plan: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    described = plan.as_dict()
    saved = save_plan(described, default_plans_directory())
    if arguments.json:
        log(json.dumps({**described, "saved_to": str(saved)}, indent=2))
    else:
        log(plan.render())
        log(f"\nSaved: {saved}")
    return 0


def record_actual(plan_json_path: Path | str | dict[str, Any], summary: dict[str, Any],
                  directory: Path | None = None) -> Path:
    """After `promptlab run`: <workspace>/plans/run-<timestamp>.json with the plan it was given (a plan JSON file, as
    `promptlab plan` saved it, or its dict), the run's stage_seconds and wall_seconds, and per run stage the estimate
    beside the actual time."""
    from models.plan.records import record_actual as record

    return record(plan_json_path, summary, directory)


def _apply_torch_threads() -> None:
    """$PROMPTLAB_TORCH_THREADS, as the run's jobs apply it (pipelines/resources.py): costs are cached per thread
    count, so the plan is priced at the threads the run will use."""
    from pipelines.job_runner import THREADS_ENV

    value = os.environ.get(THREADS_ENV, "").strip()
    if value.isdigit() and int(value) >= 1:
        import torch

        torch.set_num_threads(int(value))


def main(argv: list[str] | None = None) -> int:
    """`python -m pipelines.plan_command plan ...` (the same command as `promptlab plan`)."""
    parser = argparse.ArgumentParser(prog="promptlab")
    commands = parser.add_subparsers(dest="command", required=True)
    add_plan_parser(commands)
    return run_plan_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
