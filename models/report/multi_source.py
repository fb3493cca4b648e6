"""The report's multi-source domain generalisation table (view multi_source_results): per held-out domain, the test
top-1 of each configuration trained on the other domains of its split (mean ± std over seeds), beside zero-shot's
own evaluation on that domain, the reference row."""

from __future__ import annotations

import polars as pl

from models.report.blocks import Paragraph, Section, Table, table
from models.report.formatting import percent_pm
from models.warehouse import Warehouse

MULTI_SOURCE_SQL = """
SELECT dataset, source_dataset, backbone, method, shots, options, is_reference, mean, std, n_seeds
FROM multi_source_results
ORDER BY NOT is_reference, method, options, shots, dataset
"""


def multi_source_table(warehouse: Warehouse, names) -> Table | None:
    """Rows: configurations (the reference rows, zero-shot, first); columns: each held-out domain, headed by the sources it was
    trained on; cells mean ± std over seeds ("–" where a configuration did not run), and the most seeds of a row."""
    results = warehouse.query(MULTI_SOURCE_SQL)
    trained = results.filter(~pl.col("is_reference"))
    if trained.height == 0:
        return None
    columns = sorted(set(trained.select("dataset", "source_dataset").iter_rows()))
    rows = []
    for _, group in results.group_by("backbone", "method", "options", "shots", "is_reference", maintain_order=True):
        first = group.row(0, named=True)
        # a reference row scores each held-out domain whatever the sources; a trained one its split's
        cells = {(row["dataset"], row["source_dataset"]): row for row in group.iter_rows(named=True)}
        found = [cells.get((dataset, None if first["is_reference"] else sources)) for dataset, sources in columns]
        rows.append([names.with_shots(first),
                     *["–" if cell is None else percent_pm(cell["mean"], cell["std"]) for cell in found],
                     group["n_seeds"].max()])
    header = ["Configuration", *[f"{dataset}, from {sources.replace('+', ' + ')}" for dataset, sources in columns],
              "Seeds"]
    return table(header, rows, numeric=range(1, len(header)), title="Held-out domains")


def multi_source(warehouse: Warehouse, names) -> Section | None:
    """The section, or None when the warehouse holds no multi-source run."""
    frame = multi_source_table(warehouse, names)
    if frame is None:
        return None
    return Section("Multi-source domain generalization", [
        Paragraph("Test top-1 (%) on each held-out domain of prompts trained on the union of the other domains' "
                  "few-shot subsets (all classes; SPG learns a prompt per source domain, CoOp pools them), mean ± "
                  "std over seeds. The held-out domain's images never enter training. Zero-shot learned nothing: its "
                  "row is its own evaluation on each domain.", "muted"),
        frame,
    ])
