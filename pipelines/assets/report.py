"""The cross-dataset report: SQL over the warehouse, one self-contained HTML file."""


import dagster as dg

from models.provenance import PACKAGE_ROOT, source_version
from pipelines.assets import sync as folders
from pipelines.assets.evaluation import evaluation_metrics
from pipelines.assets.multi_source import multi_source_metrics
from pipelines.assets.pseudolabels import pseudolabels
from pipelines.assets.sync import synced
from pipelines.assets.transfer import transfer_metrics
from pipelines.resources import PromptLabResource

# The report package (queries, sections, charts, templates), what names its configurations, and the published
# numbers it puts beside the measured ones.
REPORT_SOURCES = (*sorted(str(path.relative_to(PACKAGE_ROOT)) for path in (PACKAGE_ROOT / "models/report").rglob("*")
                          if path.suffix in (".py", ".j2")),
                  "models/evaluation/configurations.py", "models/warehouse/schema.py",
                  "models/warehouse/published.py", "assets_catalog/published_results.yaml")


@dg.asset(group_name="report", deps=[evaluation_metrics, transfer_metrics, pseudolabels, multi_source_metrics],
          code_version=source_version(*REPORT_SOURCES), kinds={"duckdb", "html"})
@synced(writes=(folders.reports,))
def cross_dataset_report(context: dg.AssetExecutionContext, promptlab: PromptLabResource) -> dg.MaterializeResult:
    """Dataset x method x shots (mean ± std over seeds), plots, base/new/HM and provenance, as HTML."""
    from models.report import build_report
    from models.warehouse import workspace_warehouse_of

    workspace = promptlab.workspace()
    warehouse = workspace_warehouse_of(workspace)
    warehouse.ensure_schema()
    # The report reads the snapshot with the pending runs applied: a reader holding the file changes nothing here.
    pending = warehouse.pending_batches()
    if pending:
        context.log.warning(f"{len(pending)} run(s) not merged into {warehouse.name} yet (the file is held "
                            f"by another process); the report includes them from {warehouse.pending_dir}")
    summary = build_report(warehouse, workspace.report_path)
    context.log.info(f"report written to {workspace.report_path}")
    # "report" opens in the browser (served by `make ui`, else a file:// URL); "path" is the file to copy
    return dg.MaterializeResult(metadata={"report": dg.MetadataValue.url(promptlab.report_link(workspace.report_path)),
                                          "path": dg.MetadataValue.path(str(workspace.report_path)),
                                          "warehouse": dg.MetadataValue.path(warehouse.address)})
