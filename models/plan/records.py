"""Plans and the runs that followed them, side by side, under <workspace>/plans/.

`save_plan` writes plan-<timestamp>.json (what `promptlab plan` printed); `record_actual` writes
run-<timestamp>.json: the plan a run was given, the run's stage_seconds and wall_seconds (its summary), and per run
stage the estimate beside the measured time, so the cost model can be checked against what runs took.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# The run's stage labels (pipelines/cli.py: the text before the first ':') and the plan stages each one runs.
RUN_STAGES = {
    "curation + features": ("curation", "features"),
    "experiments": ("training", "evaluation"),
    "transfer": ("transfer",),
    "test-time tuning": ("test_time",),
}


def _timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def _write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(payload, indent=2))
    os.replace(temporary, path)
    return path


def save_plan(plan: dict[str, Any], directory: Path) -> Path:
    """Write a plan (RunPlan.as_dict()) to <directory>/plan-<timestamp>.json."""
    return _write_json(Path(directory) / f"plan-{_timestamp()}.json",
                       {"created_at": datetime.now(timezone.utc).isoformat(), **plan})


def estimated_by_run_stage(plan: dict[str, Any]) -> dict[str, float]:
    """The plan's seconds per run stage label (RUN_STAGES)."""
    by_stage = plan.get("totals", {}).get("by_stage", {})
    return {label: round(sum(by_stage.get(stage, 0.0) for stage in stages), 1) for label, stages in RUN_STAGES.items()}


def record_actual(plan: Path | str | dict[str, Any], summary: dict[str, Any], directory: Path | None = None) -> Path:
    """Write <plans>/run-<timestamp>.json: the plan (a plan JSON file or its dict), the run's summary times
    (stage_seconds, wall_seconds) and, per run stage, estimated and actual seconds with their ratio. `directory`:
    default <workspace>/plans."""
    plan_path = None
    if not isinstance(plan, dict):
        plan_path = Path(plan)
        plan = json.loads(plan_path.read_text())
    if directory is None:
        from models.plan.costs import default_plans_directory

        directory = default_plans_directory()
    estimated = estimated_by_run_stage(plan)
    actual_by_label: dict[str, float] = {}
    for label, seconds in (summary.get("stage_seconds") or {}).items():
        short = label.split(":", 1)[0].strip()
        actual_by_label[short] = actual_by_label.get(short, 0.0) + float(seconds)
    comparison = []
    for label in dict.fromkeys([*RUN_STAGES, *actual_by_label]):
        estimate, actual = estimated.get(label), actual_by_label.get(label)
        comparison.append({"run_stage": label, "estimated_seconds": estimate, "actual_seconds": actual,
                           "actual_over_estimated": round(actual / estimate, 3) if actual and estimate else None})
    total = plan.get("totals", {}).get("seconds")
    wall = summary.get("wall_seconds")
    payload = {
        "recorded_at": datetime.now(timezone.utc).isoformat(),
        "plan_path": None if plan_path is None else str(plan_path),
        "plan": plan,
        "actual": {"stage_seconds": summary.get("stage_seconds") or {}, "wall_seconds": wall,
                   "failures": summary.get("failures") or [], "skipped": summary.get("skipped") or []},
        "comparison": comparison,
        "total": {"estimated_seconds": total, "wall_seconds": wall,
                  "wall_over_estimated": round(wall / total, 3) if wall and total else None},
    }
    return _write_json(Path(directory) / f"run-{_timestamp()}.json", payload)
