"""One benchmark run into a workspace's warehouse, from the result dict the benches write (bench_run_id, started_at,
finished_at, git_commit, code_version, device, torch_version, load_average_1min_before) and their rows."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any


def record_bench_run(result: dict[str, Any], rows: list, workspace: Path | None, *, benchmark: str, backbone: str,
                     weights_sha256: str, weights_source: str, dataset: str) -> str:
    """The rows (models.warehouse.BenchmarkRow) as one `benchmark` run in the workspace's warehouse (None: the
    default workspace); returns the warehouse's address."""
    from models.warehouse import BenchmarkRun, workspace_warehouse_of
    from models.workspace import Workspace, default_workspace_root

    run = BenchmarkRun(
        bench_run_id=result["bench_run_id"], started_at=datetime.fromisoformat(result["started_at"]),
        finished_at=datetime.fromisoformat(result["finished_at"]), git_commit=result["git_commit"],
        code_version=result["code_version"], device=result["device"], torch_version=result["torch_version"],
        backbone=backbone, backbone_weights_sha256=weights_sha256, weights_source=weights_source, dataset=dataset,
        benchmark=benchmark, load_average=result["load_average_1min_before"])
    warehouse = workspace_warehouse_of(Workspace(Path(workspace) if workspace else default_workspace_root()))
    warehouse.record_benchmark(run, rows)
    return warehouse.address
