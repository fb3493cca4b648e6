import re
from pathlib import Path

import duckdb
import pytest

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
SQL_FILES = sorted(DASHBOARDS.glob("*.sql"))


def test_dashboards_folder_has_the_documented_queries():
    names = {path.name for path in SQL_FILES}
    assert {"cross_dataset_table.sql", "coop_vs_zero_shot_gain.sql", "partition_run_history.sql",
            "run_confusion_counts.sql", "worst_classes.sql"} <= names
    readme = (DASHBOARDS / "README.md").read_text(encoding="utf-8")
    for name in names:
        assert name in readme, f"{name} is not described in dashboards/README.md"


@pytest.mark.parametrize("sql_file", SQL_FILES, ids=[path.name for path in SQL_FILES])
def test_dashboard_query_runs_read_only_and_returns_rows(synthetic_results, sql_file):
    connection = duckdb.connect(str(synthetic_results.warehouse.database_path), read_only=True)
    try:
        result = connection.execute(sql_file.read_text(encoding="utf-8"))
        rows = result.fetchall()
        columns = [description[0] for description in result.description]
    finally:
        connection.close()
    assert rows, f"{sql_file.name} returned no rows on the synthetic warehouse"
    assert len(columns) >= 3


def test_specific_dashboard_answers(synthetic_results):
    def run(name: str) -> list[dict]:
        connection = duckdb.connect(str(synthetic_results.warehouse.database_path), read_only=True)
        try:
            result = connection.execute((DASHBOARDS / name).read_text(encoding="utf-8"))
            columns = [description[0] for description in result.description]
            return [dict(zip(columns, row)) for row in result.fetchall()]
        finally:
            connection.close()

    gains = run("coop_vs_zero_shot_gain.sql")
    caltech_4 = next(row for row in gains if row["dataset"] == "caltech101" and row["shots"] == 4)
    expected = sum(synthetic_results.test_top1[("caltech101", "coop", 4)].values()) / 3
    expected -= synthetic_results.test_top1[("caltech101", "zero_shot", 0)][1]
    assert caltech_4["gain_points"] == pytest.approx(100 * expected, abs=0.005)

    # The most recent run is the rerun of caltech101 coop 1-shot seed 1: its history shows both runs.
    history = run("partition_run_history.sql")
    assert {row["run_id"] for row in history} == {"caltech101-coop-1-1", "caltech101-coop-1-1-rerun"}
    assert {row["run_id"]: row["is_current"] for row in history}["caltech101-coop-1-1-rerun"] is True

    confusion = run("run_confusion_counts.sql")
    assert sum(row["images"] for row in confusion) == 6
    assert {row["true_classname"] for row in confusion} == {"cat", "dog", "owl"}


def test_readme_example_queries_run(synthetic_results):
    readme = (DASHBOARDS / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sql\n(.*?)```", readme, flags=re.DOTALL)
    statements = [statement.strip() for block in blocks for statement in block.split(";") if statement.strip()]
    assert len(statements) >= 5
    connection = duckdb.connect(str(synthetic_results.warehouse.database_path), read_only=True)
    try:
        for statement in statements:
            connection.execute(statement).fetchall()
    finally:
        connection.close()
