"""One self-contained HTML report over the results warehouse, and its tables as Markdown (docs/results.md).

Every number comes from a SQL query over the warehouse views (queries.py); sections.py turns their rows into
sections of paragraphs, tables and charts (blocks.py, figures.py), which render.py writes as HTML through a Jinja2
template and markdown.py as Markdown. The page has inline CSS, PNG charts as data URIs, no scripts and no external
links, so it opens anywhere offline; it is written atomically and holds no generation timestamp: the same warehouse
content gives the same bytes.

Conventions: accuracies are stored as fractions and shown in percent as "mean ± std (n seeds)" over the seeds of a
configuration (sample std, 0 for one seed). A configuration is named in words (method, variant, protocol, setting,
pseudolabels, augmentation; models/evaluation/configurations.py), prefixed by its backbone when the warehouse holds
several, with its shots where rows of several shot counts share a table. Tables are grouped by protocol: the
headline compares few-shot configurations with zero-shot; learning settings and base-to-new have their own tables.
Zero-shot results are the evaluation runs whose method is `zero_shot_method`; every other method counts as trained.
Where the catalog's published results (assets_catalog/published_results.yaml, loaded into the warehouse before the
report reads it) have a number for a row's method, backbone, shots and datasets, the few-shot and base-to-new tables
show it and the difference beside the measured one; without such a number they have no such columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.report import queries, sections
from models.report.blocks import Paragraph
from models.report.formatting import format_mean_std
from models.report.markdown import markdown_results
from models.report.multi_source import multi_source
from models.report.render import html_page, write_atomically
from models.warehouse import Warehouse

__all__ = ["ReportSummary", "build_report", "format_mean_std", "markdown_results"]


@dataclass(frozen=True)
class ReportSummary:
    """Where the report went and its key numbers (fractions, not percent) for callers and logs."""

    html_path: Path
    is_empty: bool
    num_runs: int
    num_current_runs: int
    datasets: tuple[str, ...]
    mean_zero_shot_top1: float | None  # test top-1 of zero-shot averaged over datasets
    mean_best_trained_top1: float | None  # per dataset the best few-shot configuration, averaged over datasets
    # "<configuration>, <shots> shots" -> test top-1 averaged over the datasets that configuration ran on
    mean_top1_by_method: dict[str, float] = field(default_factory=dict)
    # "<configuration>, <shots> shots" -> harmonic mean of the dataset-averaged base and new top-1
    harmonic_mean_by_method: dict[str, float] = field(default_factory=dict)


def build_report(
    warehouse: Warehouse,
    html_path: Path,
    title: str = "PromptLab report",
    zero_shot_method: str = "zero_shot",
) -> ReportSummary:
    """Write the HTML report of the warehouse's current results to `html_path` and return its key numbers."""
    html_path = Path(html_path)
    # Read from the snapshot with the pending runs applied (Warehouse.query): never blocked by a reader of the file.
    has_results = warehouse.exists()
    counts = (warehouse.query(queries.RUN_COUNTS_SQL).row(0, named=True) if has_results
              else {"runs": 0, "current_runs": 0, "latest_finished_at": None})
    if counts["runs"] == 0:
        empty = Paragraph(f"No runs recorded yet in {warehouse.name}. Materialize the evaluation assets, then "
                          "rebuild this report.", "empty")
        write_atomically(html_path, html_page(title, [], [empty]))
        return ReportSummary(html_path, True, 0, 0, (), None, None)

    sections.sync_published_results(warehouse)
    params = {"zero_shot": zero_shot_method}
    names = sections.ConfigurationNames(warehouse)
    datasets = tuple(warehouse.query(queries.DATASETS_SQL)["dataset"].to_list())
    headline, numbers = sections.headline(warehouse, params, names)
    base_to_new, harmonic_by_method = sections.base_to_new(warehouse, params, names)
    plural = "s" if len(datasets) != 1 else ""
    overview = Paragraph(
        f"{counts['runs']} runs recorded ({counts['current_runs']} current) over {len(datasets)} dataset{plural}; "
        f"latest run finished {counts['latest_finished_at']} UTC. Source: {warehouse.name}.", "muted")
    page = [
        headline,
        sections.results_per_dataset(warehouse, params, names),
        sections.few_shot(warehouse, params, names),
        sections.few_shot_pattern(warehouse),
        sections.few_shot_averages(warehouse, params, names),
        sections.limited_labels(warehouse),
        base_to_new,
        sections.base_to_new_pattern(warehouse),
        sections.claims(warehouse),
        *(sections.transfer(warehouse, params, names, sql, title, targets)
          for _, sql, title, targets in sections.TRANSFERS),
        sections.test_time(warehouse),
        multi_source(warehouse, names),
        sections.other_splits(warehouse, params, names),
        sections.pseudolabel_quality(warehouse),
        sections.other_stages(warehouse),
        sections.throughput(warehouse),
        sections.provenance(warehouse),
    ]
    write_atomically(html_path, html_page(title, [section for section in page if section is not None], [overview]))
    return ReportSummary(
        html_path=html_path,
        is_empty=False,
        num_runs=counts["runs"],
        num_current_runs=counts["current_runs"],
        datasets=datasets,
        mean_zero_shot_top1=numbers["mean_zero_shot_top1"],
        mean_best_trained_top1=numbers["mean_best_trained_top1"],
        mean_top1_by_method=numbers["mean_top1_by_method"],
        harmonic_mean_by_method=harmonic_by_method,
    )
