"""`promptlab warehouse status | sql-init` on both backends: the status of a DuckLake warehouse, and SQL that opens
either one read-only, with the views, in a DuckDB session of its own."""

import duckdb
import pytest
from evaluation_synthetic import fill_synthetic_warehouse

from models.warehouse import LakeWarehouse, Warehouse, workspace_warehouse_of
from models.workspace import Workspace
from pipelines import cli

QUESTION = "SELECT count(*) FROM current_results WHERE metric = 'top1_accuracy'"


@pytest.fixture(scope="module", params=["duckdb", "ducklake:sqlite"])
def filled_workspace(request, tmp_path_factory):
    """(workspace folder, $PROMPTLAB_WAREHOUSE) holding the synthetic runs in the backend of the parameter."""
    root = tmp_path_factory.mktemp(request.param.replace(":", "-"))
    backend = request.param if request.param == "duckdb" else f"{request.param}:{root / 'catalog.sqlite'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROMPTLAB_WAREHOUSE", backend)
        warehouse = workspace_warehouse_of(Workspace(root / "workspace"))
    fill_synthetic_warehouse(warehouse)
    if isinstance(warehouse, Warehouse):
        warehouse.merge_pending()  # refreshes the snapshot readers open
    return root / "workspace", backend


@pytest.fixture
def workspace_warehouse(filled_workspace, monkeypatch):
    """The filled workspace's warehouse, with the environment the CLI reads pointing at it."""
    folder, backend = filled_workspace
    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(folder))
    monkeypatch.setenv("PROMPTLAB_WAREHOUSE", backend)
    return workspace_warehouse_of(Workspace(folder))


def test_sql_init_opens_the_results_read_only_with_their_views(workspace_warehouse, tmp_path, capsys):
    expected = workspace_warehouse.query(QUESTION).item()
    assert expected > 0
    init = tmp_path / "init.sql"
    assert cli.main(["warehouse", "sql-init", "--output", str(init)]) == 0
    assert f"duckdb -init {init}" in capsys.readouterr().out
    with duckdb.connect() as session:  # what `duckdb -init init.sql` runs first
        for statement in duckdb.extract_statements(init.read_text()):
            session.execute(statement.query)
        assert session.execute(QUESTION).fetchone()[0] == expected
        with pytest.raises(duckdb.Error, match="read-only|read only"):
            session.execute("DELETE FROM metrics")


def test_status_says_what_each_backend_holds(workspace_warehouse, capsys):
    assert cli.main(["warehouse", "status"]) == 0
    out = capsys.readouterr().out
    if isinstance(workspace_warehouse, LakeWarehouse):
        runs = workspace_warehouse.query("SELECT count(*) FILTER (WHERE is_current) AS c, count(*) AS n FROM runs")
        assert f"runs:     {runs['n'][0]} ({runs['c'][0]} current)" in out and "pending:  none" in out
        assert "lake:     ducklake:sqlite:" in out
    else:
        assert "pending:  0 batch(es)" in out and "up to date with the database" in out


def test_sql_init_before_any_run_names_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.delenv("PROMPTLAB_WAREHOUSE", raising=False)
    assert cli.main(["warehouse", "sql-init"]) == 1
    assert "promptlab-snapshot.duckdb does not exist yet: run `promptlab run`" in capsys.readouterr().err
