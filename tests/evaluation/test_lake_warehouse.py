"""The DuckLake warehouse: the same SQL gives the same answers as the DuckDB file (every view, every dashboard
query, the report); concurrent writers lose nothing and never leave a partition with two current runs; a reader
during the writes sees whole runs only; a writer killed before its commit leaves nothing; bad addresses and
extensions are refused by name. SQLite catalogs need no service; PostgreSQL ones start a local server (skipped,
with the reason, where PostgreSQL is not installed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from evaluation_synthetic import fill_synthetic_warehouse, make_run
from local_services import LocalPostgres, postgres_bin

from bench.reproducibility import MEASURED_CELL, TIMESTAMP
from models.report import build_report
from models.warehouse import LakeLocation, LakeWarehouse, MetricRow, Warehouse, open_warehouse
from models.warehouse import lake as lake_module
from models.warehouse.lake import LakeConfigurationError, extension_file

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def postgres():
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql): the Postgres-catalog lake is untested")
    server = LocalPostgres().start()
    yield server
    server.stop()


def sqlite_lake(root: Path) -> LakeWarehouse:
    return open_warehouse(root / "warehouse" / "promptlab.duckdb", root / "warehouse" / "predictions",
                          f"ducklake:sqlite:{root / 'catalog.sqlite'}")


def postgres_lake(server: LocalPostgres, database: str, root: Path) -> LakeWarehouse:
    return LakeWarehouse(LakeLocation.parse(f"ducklake:postgres:{server.create_database(database)}",
                                            root / "lake-data"))


def normalized_report(text: str) -> str:
    return MEASURED_CELL.sub(r"\1<measured>\2", TIMESTAMP.sub("<time>", text))


def sorted_frame(frame: pl.DataFrame) -> pl.DataFrame:
    frame = frame.with_columns(pl.col(name).cast(pl.Float64) for name, dtype in frame.schema.items()
                               if dtype.is_decimal())
    return frame.sort(frame.columns, nulls_last=True) if frame.width else frame


@pytest.fixture(scope="module")
def twin_warehouses(tmp_path_factory, request):
    """The synthetic runs recorded into a DuckDB file and into a SQLite-catalog lake."""
    root = tmp_path_factory.mktemp("twins")
    file_warehouse = Warehouse(root / "file" / "promptlab.duckdb", root / "file" / "predictions")
    lake = sqlite_lake(root / "lake")
    fill_synthetic_warehouse(file_warehouse)
    fill_synthetic_warehouse(lake)
    return file_warehouse, lake


def view_names(warehouse: Warehouse) -> list[str]:
    return warehouse.query("SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY view_name"
                           )["view_name"].to_list()


def test_every_view_gives_the_same_answers_on_both_backends(twin_warehouses):
    file_warehouse, lake = twin_warehouses
    views = view_names(file_warehouse)
    assert {"current_results", "results_by_config", "few_shot_results", "base_to_new_results",
            "cross_dataset_results", "domain_generalization_results", "predictions", "test_time_seed_results",
            "latest_benchmark"} <= set(views)
    non_empty = 0
    for view in views:
        expected = sorted_frame(file_warehouse.query(f"SELECT * FROM {view}"))
        found = sorted_frame(lake.query(f"SELECT * FROM {view}"))
        assert found.columns == expected.columns, view
        assert found.equals(expected), f"{view}: the lake answers differently\n{found}\n{expected}"
        non_empty += expected.height > 0
    assert non_empty >= 8  # the comparison compared rows, not empty tables
    for table in ("experiments", "metrics", "metrics_history", "per_class_metrics", "per_class_metrics_history"):
        sql = f"SELECT * EXCLUDE (superseded_at) FROM {table}" if "history" in table else f"SELECT * FROM {table}"
        assert sorted_frame(lake.query(sql)).equals(sorted_frame(file_warehouse.query(sql))), table


@pytest.mark.parametrize("sql_file", sorted(DASHBOARDS.glob("*.sql")), ids=lambda path: path.name)
def test_every_dashboard_query_gives_the_same_answers_on_both_backends(twin_warehouses, sql_file):
    file_warehouse, lake = twin_warehouses
    sql = sql_file.read_text(encoding="utf-8")
    wall_clock = ["superseded_at"]  # when the later run was recorded: differs between any two recordings
    expected = sorted_frame(file_warehouse.query(sql).drop(wall_clock, strict=False))
    assert expected.height, f"{sql_file.name} returned nothing on the synthetic warehouse"
    assert sorted_frame(lake.query(sql).drop(wall_clock, strict=False)).equals(expected)


def test_the_report_is_the_same_on_both_backends(twin_warehouses, tmp_path):
    file_warehouse, lake = twin_warehouses
    file_summary = build_report(file_warehouse, tmp_path / "file.html")
    lake_summary = build_report(lake, tmp_path / "lake.html")
    assert lake_summary.num_runs == file_summary.num_runs > 0
    file_html = normalized_report((tmp_path / "file.html").read_text()).replace(file_warehouse.name, "SOURCE")
    lake_html = normalized_report((tmp_path / "lake.html").read_text()).replace(lake.name, "SOURCE")
    assert lake_html == file_html


def test_a_process_with_another_data_path_uses_the_one_the_catalog_was_created_with(tmp_path):
    """Another host or working copy has another default data path: it reads and writes the creator's files."""
    creator = sqlite_lake(tmp_path)
    creator.record_run(make_run("first"), [MetricRow("test", "top1_accuracy", 0.5)])
    elsewhere = LakeWarehouse(LakeLocation.parse(f"ducklake:{creator.location.catalog}", tmp_path / "elsewhere"))
    assert elsewhere.query("SELECT run_id FROM runs").rows() == [("first",)]
    elsewhere.record_run(make_run("second", dataset="oxford_pets"),
                         [MetricRow("test", "top1_accuracy", 0.6), MetricRow("test", "macro_f1", 0.5)])
    assert sorted(creator.query("SELECT run_id FROM runs")["run_id"]) == ["first", "second"]
    assert not [p for p in (tmp_path / "elsewhere").rglob("*") if p.is_file()]
    assert [p for p in Path(creator.location.data_path).rglob("*.parquet")]


def test_a_reader_on_a_sqlite_catalog_keeps_its_snapshot_and_blocks_no_writer(tmp_path):
    """In SQLite's default rollback-journal mode this writer's commits fail with `database is locked` (after 30 s
    of retries) while the reader's transaction is open: the catalog is switched to WAL mode on first use."""
    import sqlite3

    lake = sqlite_lake(tmp_path)
    lake.record_run(make_run("first"), [MetricRow("test", "top1_accuracy", 0.5)])
    with sqlite3.connect(tmp_path / "catalog.sqlite") as catalog:
        assert catalog.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with lake.read_connection() as reader:
        assert reader.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        started = time.perf_counter()
        lake.record_run(make_run("second", dataset="oxford_pets"), [MetricRow("test", "top1_accuracy", 0.6)])
        assert time.perf_counter() - started < 10
        assert reader.execute("SELECT count(*) FROM current_results").fetchone()[0] == 1  # still its snapshot
    assert lake.query("SELECT count(*) AS n FROM runs")["n"][0] == 2


def test_a_reader_on_a_postgres_catalog_keeps_its_snapshot_and_blocks_no_writer(postgres, tmp_path):
    lake = postgres_lake(postgres, "reader", tmp_path)
    lake.record_run(make_run("first"), [MetricRow("test", "top1_accuracy", 0.5)])
    with lake.read_connection() as reader:
        assert reader.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        lake.record_run(make_run("second", dataset="oxford_pets"), [MetricRow("test", "top1_accuracy", 0.6)])
        assert reader.execute("SELECT count(*) FROM current_results").fetchone()[0] == 1  # still its snapshot
    assert lake.query("SELECT count(*) AS n FROM runs")["n"][0] == 2


WRITER = """
import sys, json
from pathlib import Path
sys.path[:0] = [{tests!r}, {evaluation!r}]
from evaluation_synthetic import make_run
from models.warehouse import LakeLocation, LakeWarehouse, MetricRow
lake = LakeWarehouse(LakeLocation.parse({url!r}, {data!r}))
name, count = sys.argv[1], int(sys.argv[2])
for index in range(count):
    # every writer records its own partitions, and both record the shared partition (index 0) once
    dataset = "shared" if index == 0 else f"{{name}}-{{index}}"
    run = make_run(f"{{name}}-{{index}}", dataset=dataset, start_minute=index)
    lake.record_run(run, [MetricRow("test", "top1_accuracy", 0.5), MetricRow("test", "macro_f1", 0.4),
                          MetricRow("test", "expected_calibration_error", 0.1)])
print(json.dumps({{"done": count}}))
"""


def concurrent_writers_and_a_reader(lake: LakeWarehouse, tmp_path: Path, runs_each: int = 12) -> list[tuple]:
    lake.ensure_schema()
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(TESTS), evaluation=str(TESTS / "evaluation"),
                                    url="ducklake:" + lake.location.catalog, data=lake.location.data_path))
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    writers = [subprocess.Popen([sys.executable, str(script), name, str(runs_each)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=environment, cwd=Path(__file__).parents[2])
               for name in ("writer-a", "writer-b")]
    seen = []
    while any(writer.poll() is None for writer in writers):
        with lake.read_connection() as reader:  # one snapshot per block
            seen.append(reader.execute(
                """SELECT (SELECT count(*) FROM runs),
                          (SELECT count(*) FROM metrics),
                          (SELECT count(*) FROM runs AS r WHERE is_current
                             AND (SELECT count(*) FROM metrics AS m WHERE m.run_id = r.run_id) <> 3),
                          (SELECT count(*) FROM runs WHERE is_current AND dataset = 'shared')""").fetchone())
        time.sleep(0.05)
    for writer in writers:
        out, err = writer.communicate()
        assert writer.returncode == 0, err[-3000:]
    return seen


def check_nothing_lost(lake: LakeWarehouse, seen: list[tuple], runs_each: int = 12) -> None:
    runs = lake.query("SELECT run_id, dataset, is_current FROM runs")
    assert runs.height == 2 * runs_each
    assert runs["run_id"].n_unique() == runs.height  # each exactly once
    assert runs.filter(pl.col("dataset") == "shared")["is_current"].sum() == 1  # one current run per partition
    assert lake.query("SELECT count(*) AS n FROM metrics")["n"][0] == 3 * (2 * runs_each - 1)
    assert lake.query("SELECT count(*) AS n FROM metrics_history")["n"][0] == 3
    assert len(seen) >= 3, "the reader never read during the writes"
    for runs_count, _metrics, incomplete, shared_current in seen:
        assert incomplete == 0 and shared_current <= 1  # whole runs only, never two current
    assert [row[0] for row in seen] == sorted(row[0] for row in seen)  # snapshots only move forward


def test_two_processes_writing_at_once_to_a_sqlite_catalog_lose_nothing(tmp_path):
    lake = sqlite_lake(tmp_path)
    check_nothing_lost(lake, concurrent_writers_and_a_reader(lake, tmp_path))


def test_two_processes_writing_at_once_to_a_postgres_catalog_lose_nothing(postgres, tmp_path):
    lake = postgres_lake(postgres, "concurrent", tmp_path)
    check_nothing_lost(lake, concurrent_writers_and_a_reader(lake, tmp_path))


FIRST_WRITER = """
import sys, time
sys.path[:0] = [{tests!r}, {evaluation!r}]
from evaluation_synthetic import make_run
from models.warehouse import LakeLocation, LakeWarehouse, MetricRow
lake = LakeWarehouse(LakeLocation.parse({url!r}, {data!r}))
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # every writer attaches at the same moment
lake.record_run(make_run(sys.argv[1], dataset=sys.argv[1]), [MetricRow("test", "top1_accuracy", 0.5)])
"""


def test_writers_that_find_an_empty_postgres_catalog_at_once_all_record(postgres, tmp_path):
    """Each creates DuckLake's tables in the empty catalog; all but one fail (a duplicate key in PostgreSQL) and
    must then attach the lake the winner created (seen with two Celery workers starting on a fresh catalog)."""
    for attempt in range(3):
        url = f"ducklake:postgres:{postgres.create_database(f'fresh{attempt}')}"
        script = tmp_path / "first.py"
        script.write_text(FIRST_WRITER.format(tests=str(TESTS), evaluation=str(TESTS / "evaluation"), url=url,
                                              data=str(tmp_path / f"data{attempt}")))
        start = time.time() + 4  # after the imports of every writer
        writers = [subprocess.Popen([sys.executable, str(script), f"writer{index}", str(start)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    cwd=Path(__file__).parents[2]) for index in range(3)]
        for writer in writers:
            _, err = writer.communicate(timeout=120)
            assert writer.returncode == 0, err[-3000:]
        lake = LakeWarehouse(LakeLocation.parse(url, tmp_path / f"data{attempt}"))
        assert sorted(lake.query("SELECT run_id FROM runs")["run_id"]) == ["writer0", "writer1", "writer2"]


KILLED_WRITER = """
import sys, time
sys.path[:0] = [{tests!r}, {evaluation!r}]
from evaluation_synthetic import make_run
from models.warehouse import LakeLocation, LakeWarehouse, MetricRow, writes
original = writes.insert_rows
def insert_then_hang(connection, table, rows):
    original(connection, table, rows)
    if table == "metrics":  # the run row and its metrics are in the transaction, not committed
        print("inside", flush=True)
        time.sleep(600)
writes.insert_rows = insert_then_hang
lake = LakeWarehouse(LakeLocation.parse({url!r}, {data!r}))
lake.record_run(make_run("killed", dataset="caltech101"), [MetricRow("test", "top1_accuracy", 0.9)])
"""


def test_a_writer_killed_before_its_commit_leaves_nothing_and_the_run_records_again(postgres, tmp_path):
    lake = postgres_lake(postgres, "killed", tmp_path)
    lake.record_run(make_run("earlier", dataset="caltech101"), [MetricRow("test", "top1_accuracy", 0.5)])
    script = tmp_path / "killed.py"
    script.write_text(KILLED_WRITER.format(tests=str(TESTS), evaluation=str(TESTS / "evaluation"),
                                           url="ducklake:" + lake.location.catalog, data=lake.location.data_path))
    writer = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parents[2])
    assert writer.stdout.readline().strip() == "inside"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert lake.query("SELECT run_id, is_current FROM runs").rows() == [("earlier", True)]
    assert set(lake.query("SELECT run_id FROM metrics")["run_id"]) == {"earlier"}
    assert lake.query("SELECT count(*) AS n FROM metrics_history")["n"][0] == 0
    lake.record_run(make_run("killed", dataset="caltech101"), [MetricRow("test", "top1_accuracy", 0.9)])
    assert lake.query("SELECT run_id FROM runs WHERE is_current").rows() == [("killed",)]


def test_the_same_run_id_twice_is_refused_and_writes_nothing(tmp_path):
    lake = sqlite_lake(tmp_path)
    lake.record_run(make_run("once"), [MetricRow("test", "top1_accuracy", 0.5)])
    with pytest.raises(ValueError, match="already recorded"):
        lake.record_run(make_run("once", dataset="oxford_pets"), [MetricRow("test", "top1_accuracy", 0.7)])
    with pytest.raises(ValueError, match=r"metrics\[0\]\.value"):
        lake.record_run(make_run("bad"), [MetricRow("test", "top1_accuracy", float("nan"))])
    assert lake.query("SELECT run_id FROM runs").rows() == [("once",)]


@pytest.mark.parametrize(("url", "message"), [
    ("ducklake:", "expected ducklake:postgres"),
    ("ducklake:duckdb:/tmp/catalog.ducklake", "admits one process"),
    ("ducklake:mysql:host=x", "expected ducklake:postgres"),
    ("postgres://x", "PROMPTLAB_WAREHOUSE"),
])
def test_bad_addresses_are_refused_by_name(tmp_path, url, message):
    with pytest.raises(ValueError, match=message):
        open_warehouse(tmp_path / "promptlab.duckdb", tmp_path / "predictions", url)


def test_the_default_is_the_duckdb_file_and_the_environment_picks_the_lake(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMPTLAB_WAREHOUSE", raising=False)
    assert isinstance(open_warehouse(tmp_path / "a.duckdb", tmp_path / "p"), Warehouse)
    monkeypatch.setenv("PROMPTLAB_WAREHOUSE", f"ducklake:sqlite:{tmp_path / 'c.sqlite'}")
    monkeypatch.setenv("PROMPTLAB_WAREHOUSE_DATA_PATH", str(tmp_path / "shared-data"))
    lake = open_warehouse(tmp_path / "a.duckdb", tmp_path / "p")
    assert isinstance(lake, LakeWarehouse) and lake.location.data_path == str(tmp_path / "shared-data") + "/"


def test_an_unreachable_catalog_names_the_lake_without_its_password(tmp_path):
    lake = LakeWarehouse(LakeLocation.parse("ducklake:postgres:dbname=x host=127.0.0.1 port=1 password=secret",
                                            tmp_path))
    with pytest.raises(lake_module.LakeUnavailableError, match=r"password=\*\*\*") as raised:
        lake.ensure_schema()
    assert "secret" not in str(raised.value).split("cannot be opened")[0]


def test_an_extension_built_for_another_duckdb_is_refused_with_the_fix(monkeypatch):
    assert extension_file("ducklake").exists()
    monkeypatch.setattr(lake_module.duckdb, "__version__", "9.9.9")
    with pytest.raises(LakeConfigurationError, match=r"built for DuckDB v1\.5\.5.*duckdb-extension-ducklake==9\.9\.9"):
        extension_file("ducklake")


def test_init_sql_opens_the_lake_read_only_with_every_view(tmp_path):
    import duckdb

    lake = sqlite_lake(tmp_path)
    lake.record_run(make_run("one"), [MetricRow("test", "top1_accuracy", 0.5)])
    with duckdb.connect() as connection:
        connection.execute(lake.init_sql())
        assert connection.execute("SELECT count(*) FROM current_results").fetchone()[0] == 1
        with pytest.raises(duckdb.Error, match="read-only|read only"):
            connection.execute("DELETE FROM runs")
    status = lake.status()
    assert (status.location, status.runs, status.current_runs) == (lake.name, 1, 1)
    assert status.snapshots == 3 and status.latest_snapshot_at  # the catalog's, the schema's, the run's
