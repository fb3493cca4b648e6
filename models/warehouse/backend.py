"""Which warehouse a workspace writes to: the DuckDB file (default) or a DuckLake catalog, chosen by
$PROMPTLAB_WAREHOUSE (unset or `duckdb`: the file; `ducklake:postgres:<connection string>` or
`ducklake:sqlite:<file>`: the lake, its Parquet files where its catalog says (set when it is created, from
$PROMPTLAB_WAREHOUSE_DATA_PATH, default `<workspace>/warehouse/lake-data/`). Both have the same API, tables and
views."""

from __future__ import annotations

import os
from pathlib import Path

from models.warehouse.database import Warehouse
from models.warehouse.lake import LakeLocation, LakeWarehouse, lake_data_path_from_environment

WAREHOUSE_ENV = "PROMPTLAB_WAREHOUSE"
ResultsWarehouse = Warehouse | LakeWarehouse


def open_warehouse(database_path: Path, predictions_dir: Path, url: str | None = None) -> ResultsWarehouse:
    """The warehouse `url` names (default: $PROMPTLAB_WAREHOUSE); the DuckDB file at `database_path` when none."""
    url = (os.environ.get(WAREHOUSE_ENV, "") if url is None else url).strip()
    if url in ("", "duckdb"):
        return Warehouse(database_path, predictions_dir)
    if url.startswith("ducklake:"):
        return LakeWarehouse(LakeLocation.parse(url, lake_data_path_from_environment(database_path)))
    raise ValueError(f"${WAREHOUSE_ENV}: expected 'duckdb', 'ducklake:postgres:<connection string>' or "
                     f"'ducklake:sqlite:<file>', got {url!r}")


def workspace_warehouse_of(workspace) -> ResultsWarehouse:
    """The warehouse of a `models.workspace.Workspace`."""
    return open_warehouse(workspace.warehouse_path, workspace.predictions_dir)

