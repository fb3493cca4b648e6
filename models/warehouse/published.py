"""The published results in the warehouse: the catalog's published_results.yaml (models/catalog/published.py) as
three tables, replaced whole, the same SQL on both backends, inside the caller's transaction.

- `published_results`: one row per published number (file_row: its index in the file's rows; value as a fraction,
  like every accuracy of the warehouse, and value_percent as the source prints it; source_key and the source's text).
- `published_averages` (average, dataset): the datasets each named average is over (none for an average whose
  datasets the source does not list).
- `published_results_file` (catalog_file, sha256, n_rows): the file the rows came from; sha256 NULL when the catalog
  has no such file.

Both backends replace them in `ensure_schema` and `sync_published_results` (database.py's Queries), from the catalog
$PROMPTLAB_CATALOG names. Whether the tables hold that file already is told by its sha256 alone, without reading the
catalog package (which imports every method, and torch): the file is read and checked only when it changed, and the
tables are written only then.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import polars as pl

from models.warehouse.writes import insert_rows

if TYPE_CHECKING:
    from models.catalog.published import PublishedResults

logger = logging.getLogger(__name__)

PUBLISHED_TABLES = ("published_results", "published_averages", "published_results_file")
RECORDED_FILE_SQL = "SELECT catalog_file, sha256 FROM published_results_file"

PUBLISHED_RESULT_SCHEMA = {
    "file_row": pl.Int32, "method": pl.String, "variant": pl.String, "backbone": pl.String, "dataset": pl.String,
    "protocol": pl.String, "shots": pl.Int32, "metric": pl.String, "value": pl.Float64,
    "value_percent": pl.Float64, "source_key": pl.String, "source": pl.String,
}


def catalog_published_file() -> Path:
    """Where the catalog's published_results.yaml is: in $PROMPTLAB_CATALOG, else assets_catalog/, as
    models.catalog.published.load_published_results reads it (tests/evaluation/test_published_results_report.py
    checks they agree)."""
    from models.provenance import PACKAGE_ROOT

    return Path(os.environ.get("PROMPTLAB_CATALOG") or PACKAGE_ROOT / "assets_catalog") / "published_results.yaml"


def file_sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def catalog_file_name(path: Path) -> str:
    """A file as the warehouse records it: relative to the project when inside it (the same in every clone)."""
    from models.provenance import PACKAGE_ROOT

    path = Path(path).resolve()
    return str(path.relative_to(PACKAGE_ROOT)) if path.is_relative_to(PACKAGE_ROOT) else str(path)


def holds_file(recorded: pl.DataFrame, path: Path, sha256: str | None) -> bool:
    """Whether `recorded` (the rows of RECORDED_FILE_SQL) names the file at `path` with that sha256."""
    return recorded.rows() == [(catalog_file_name(path), sha256)]


def catalog_published_results() -> PublishedResults:
    """The catalog's published results, read and checked (CatalogError when the file is malformed)."""
    from models.catalog.published import load_published_results

    return load_published_results(catalog_published_file().parent)


def catalog_published_results_or_log() -> PublishedResults | None:
    """The catalog's published results, or None (logged) when the file is malformed: a schema is never refused for
    it; the report, which shows them, raises instead."""
    try:
        return catalog_published_results()
    except ValueError as error:  # CatalogError
        logger.error("published results not loaded into the warehouse: %s", error)
        return None


def published_frames(published: PublishedResults) -> dict[str, pl.DataFrame]:
    """The three tables' rows."""
    results = pl.DataFrame(
        [{"file_row": row.row, "method": row.method, "variant": row.variant, "backbone": row.backbone,
          "dataset": row.dataset, "protocol": row.protocol, "shots": row.shots, "metric": row.metric,
          "value": row.value / 100.0, "value_percent": row.value, "source_key": row.source,
          "source": published.sources[row.source]} for row in published.rows],
        schema=PUBLISHED_RESULT_SCHEMA)
    averages = pl.DataFrame([{"average": name, "dataset": dataset} for name, average in published.averages.items()
                             for dataset in average.datasets or ()],
                            schema={"average": pl.String, "dataset": pl.String})
    file = pl.DataFrame([(catalog_file_name(published.path), published.sha256, len(published.rows))], orient="row",
                        schema={"catalog_file": pl.String, "sha256": pl.String, "n_rows": pl.Int32})
    return {"published_results": results, "published_averages": averages, "published_results_file": file}


def replace_published_results(connection: duckdb.DuckDBPyConnection, published: PublishedResults) -> bool:
    """Replace the tables' rows with `published`'s, in the caller's transaction (the tables exist: SCHEMA_TABLES).
    False, writing nothing, when they hold that file already (same file name and sha256)."""
    recorded = connection.execute(RECORDED_FILE_SQL).pl()
    if holds_file(recorded, published.path, published.sha256):
        return False
    frames = published_frames(published)
    for table in PUBLISHED_TABLES:
        connection.execute(f"DELETE FROM {table}")
        insert_rows(connection, table, frames[table])
    return True
