"""A disk with less free space than the warehouse database never loses a run's rows, and reads still answer.

The disk is a small tmpfs mounted for the test where the kernel allows it (root), filled until less room is left
than the database takes; elsewhere a simulated full disk: every file copied into the warehouse folder (the
snapshot, whose size is the database's) fails with ENOSPC, while the small batch files and DuckDB's own writes
still fit, as on a real disk with a little room left.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from evaluation_synthetic import make_per_class, make_predictions, make_run, top1_metrics, warehouse_command

from pipelines.warehouse_commands import workspace_warehouse

ROOM_LEFT = 1 << 20  # room for a batch and a commit, not for a copy of the database


class SmallDisk:
    """A folder on a file system that `fill()` leaves with ROOM_LEFT bytes free and `free()` empties again."""

    def __init__(self, root: Path, mounted: bool, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root, self.mounted, self.monkeypatch = root, mounted, monkeypatch
        self.full = False

    def fill(self) -> None:
        self.full = True
        if self.mounted:
            stat = os.statvfs(self.root)
            with open(self.root / "filler", "wb") as filler:
                filler.write(bytes(stat.f_bavail * stat.f_frsize - ROOM_LEFT))
            return
        real_copyfile = shutil.copyfile

        def copyfile(source, target, *args, **kwargs):
            if self.full and Path(target).resolve().is_relative_to(self.root.resolve()):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
            return real_copyfile(source, target, *args, **kwargs)

        self.monkeypatch.setattr(shutil, "copyfile", copyfile)

    def free(self) -> None:
        self.full = False
        (self.root / "filler").unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    root = tmp_path / "disk"
    root.mkdir()
    mounted = os.geteuid() == 0 and shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(root)], capture_output=True).returncode == 0
    try:
        yield SmallDisk(root, mounted, monkeypatch)
    finally:
        if mounted:
            subprocess.run(["umount", "--lazy", str(root)], check=False)


def test_a_full_disk_keeps_the_runs_rows_pending_and_results_still_read(small_disk, monkeypatch):
    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(small_disk.root / "workspace"))
    monkeypatch.delenv("PROMPTLAB_WAREHOUSE", raising=False)
    warehouse = workspace_warehouse()
    warehouse.record_run(make_run("before", method="zero_shot", shots=0), top1_metrics(0.4))
    assert warehouse.database_path.stat().st_size > ROOM_LEFT  # the premise: less room than the database takes
    small_disk.fill()

    # What a stage does (some open the schema first): neither call may fail once the rows are computed.
    warehouse.ensure_schema()
    outcome = warehouse.record_run(make_run("during"), top1_metrics(0.625), make_per_class(), make_predictions(5))
    # Merged into the database or not (whether DuckDB found room for its log), the snapshot could not take the run,
    # so its batch stays whole on disk until it can.
    assert outcome.merged or outcome.batch_path.is_dir()
    [batch] = warehouse.pending_batches()
    assert batch.name.endswith("-during") and (batch / "metrics.parquet").exists()

    code, printed = warehouse_command("results")  # reads write nothing beside the database
    assert "62.5" in printed and "40.0" in printed
    assert warehouse.query("SELECT count(*) FROM predictions WHERE run_id = 'during'").item() == 5
    code, said = warehouse_command("warehouse", "status")
    assert code == 0 and "pending:  1 batch(es)" in said

    small_disk.free()
    assert warehouse_command("warehouse", "merge")[0] == 0
    assert warehouse.pending_batches() == []
    assert warehouse.prediction_file("during").exists()
    code, said = warehouse_command("warehouse", "status")
    assert code == 0 and "up to date with the database" in said
    assert warehouse.query("SELECT run_id FROM runs ORDER BY run_id").rows() == [("before",), ("during",)]
    assert warehouse.query("SELECT count(*) FROM predictions WHERE run_id = 'during'").item() == 5
