"""The README's picture of the report (docs/images/report.png), rendered from the demo grid's results.

The demo's current runs are kept under tests/ui/report_picture_runs/: their run records (JSON, as a pending batch
stores one) and their metric and per-class rows (no per-image predictions). Rendering writes them as pending batches
into a fresh warehouse and merges them as a run's rows are merged, builds the report with models.report and
photographs its few-shot chart and pattern check in headless Chromium. test_report_picture.py renders it and
compares with the committed picture, so the picture cannot fall behind the report's look.

    .venv/bin/python tests/ui/report_picture.py export WORKSPACE   # after `make run`: the demo's current runs
    PROMPTLAB_UPDATE_PICTURES=1 .venv/bin/python -m pytest -m ui tests/ui/test_report_picture.py  # re-render
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import polars as pl

from models.provenance import PACKAGE_ROOT
from models.report import build_report
from models.warehouse import Warehouse
from models.warehouse.pending import _run_from_json as run_from_json
from models.warehouse.pending import _run_to_json as run_to_json
from models.warehouse.pending import write_batch
from models.warehouse.records import METRIC_SCHEMA, PER_CLASS_SCHEMA, RunRecord

RUNS = PACKAGE_ROOT / "tests" / "ui" / "report_picture_runs"
PICTURE = PACKAGE_ROOT / "docs" / "images" / "report.png"
VIEWPORT = {"width": 1100, "height": 900}
RUN_FIELDS = [name for name in RunRecord.__dataclass_fields__]


def export_current_runs(warehouse: Warehouse, folder: Path) -> int:
    """Write the warehouse's current runs under ``folder`` (replaced): their records as JSON (as a pending batch
    stores one) and their metric and per-class rows as one Parquet file each; the number of runs."""
    runs = warehouse.query(f"SELECT {', '.join(RUN_FIELDS)} FROM runs WHERE is_current ORDER BY run_id")
    current = runs.select("run_id")
    metrics = warehouse.query("SELECT * FROM metrics").join(current, on="run_id").select(
        list(METRIC_SCHEMA)).cast(dict(METRIC_SCHEMA)).sort("run_id", "split", "metric")
    per_class = warehouse.query("SELECT * FROM per_class_metrics").join(current, on="run_id").select(
        list(PER_CLASS_SCHEMA)).cast(dict(PER_CLASS_SCHEMA)).sort("run_id", "split", "label")
    records = []
    for record in runs.iter_rows(named=True):
        for name in ("options", "templates"):
            record[name] = json.loads(record[name]) if isinstance(record[name], str) else record[name]
        records.append(json.loads(run_to_json(RunRecord(**record))))
    staging = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / "runs.json").write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    metrics.write_parquet(staging / "metrics.parquet")
    per_class.write_parquet(staging / "per_class.parquet")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return len(records)


def build_picture_report(runs: Path, folder: Path) -> Path:
    """The report's HTML of the runs under ``runs``, merged as pending batches into a fresh warehouse under
    ``folder``."""
    warehouse = Warehouse(folder / "warehouse" / "promptlab.duckdb", folder / "warehouse" / "predictions")
    metrics = pl.read_parquet(runs / "metrics.parquet")
    per_class = pl.read_parquet(runs / "per_class.parquet")
    for record in json.loads((runs / "runs.json").read_text()):
        run = run_from_json(json.dumps(record))
        write_batch(warehouse.pending_dir, run, metrics.filter(pl.col("run_id") == run.run_id),
                    per_class.filter(pl.col("run_id") == run.run_id), None)
    warehouse.ensure_schema()
    warehouse.merge_pending()
    html = folder / "report.html"
    build_report(warehouse, html)
    return html


# The parts of the report the picture shows: (a section heading, the first element of this tag after it).
PARTS = (("Few-shot learning", "img"), ("Does the published few-shot pattern appear?", "table"))
_BOUNDS_JS = """([heading, tag]) => {
  const h = Array.from(document.querySelectorAll('h2')).find(e => e.textContent.trim() === heading);
  if (!h) return null;
  const after = Array.from(document.querySelectorAll(tag)).find(
      e => h.compareDocumentPosition(e) & Node.DOCUMENT_POSITION_FOLLOWING);
  if (!after) return null;
  return [h.getBoundingClientRect().top + window.scrollY, after.getBoundingClientRect().bottom + window.scrollY];
}"""


def photograph(browser, html: Path, png: Path) -> None:
    """The few-shot chart and its pattern check, as the report shows them at a fixed viewport, stacked in one PNG."""
    from PIL import Image

    page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
    try:
        page.goto(html.as_uri())
        whole = png.with_suffix(".page.png")
        page.screenshot(path=str(whole), full_page=True)
        bounds = []
        for part in PARTS:
            found = page.evaluate(_BOUNDS_JS, list(part))
            if found is None:
                raise AssertionError(f"the report has no {part[1]} under a heading {part[0]!r}")
            bounds.append((int(found[0]) - 12, int(found[1]) + 12))
    finally:
        page.close()
    with Image.open(whole) as image:
        crops = [image.crop((0, top, VIEWPORT["width"], bottom)) for top, bottom in bounds]
    picture = Image.new("RGB", (VIEWPORT["width"], sum(crop.height for crop in crops)), "white")
    offset = 0
    for crop in crops:
        picture.paste(crop, (0, offset))
        offset += crop.height
    picture.save(png, optimize=True)
    whole.unlink()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "export":
        sys.exit(__doc__)
    from models.warehouse import workspace_warehouse_of
    from models.workspace import Workspace

    count = export_current_runs(workspace_warehouse_of(Workspace(Path(sys.argv[2]))), RUNS)
    print(f"{count} runs written to {RUNS}")
