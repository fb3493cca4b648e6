"""The numbers of the report's tables, section by section: what the report tests compare with
data/report_numbers_before.json, the same numbers written once by the single-file models/report.py (commit 374b70c)
before it became a package whose labels and charts changed by design, on three warehouses of known runs: the
synthetic one (evaluation_synthetic.py), the limited-label one (test_limited_label_report.py) and the test-time one
(test_test_time_view.py).

A number is a table cell whose text starts with a digit or a sign ("62.50", "+10.0", "61.00 ± 1.00 (2 seeds)", "2",
a timestamp); labels (configurations, datasets, claims) are not compared. Regenerating the JSON with today's code
would compare the code with itself: `python tests/evaluation/report_numbers.py` is kept for a deliberate change of
numbers only."""

from __future__ import annotations

import json
import re
from pathlib import Path

BEFORE = Path(__file__).parent / "data" / "report_numbers_before.json"
_NUMBER = re.compile(r"^[+\-−]?\d")


def numbers_by_section(page: str) -> dict[str, list[str]]:
    """Section title -> the sorted number cells of its tables (a section without numbers is left out)."""
    found = {}
    for title, body in re.findall(r"<section><h2>(.*?)</h2>(.*?)</section>", page, flags=re.DOTALL):
        cells = [cell.strip() for cell in re.findall(r"<td[^>]*>([^<]*)</td>", body)]
        numbers = sorted(cell for cell in cells if _NUMBER.match(cell))
        if numbers:
            found[title] = numbers
    return found


def numbers_before(warehouse: str) -> dict[str, list[str]]:
    """numbers_by_section of the single-file report over `warehouse` (synthetic, limited_label, test_time)."""
    return json.loads(BEFORE.read_text(encoding="utf-8"))[warehouse]


def _write_before() -> None:
    import tempfile

    from evaluation_synthetic import fill_synthetic_warehouse
    from test_limited_label_report import fill_limited_label_warehouse
    from test_test_time_view import fill_test_time_warehouse

    from models.report import build_report
    from models.warehouse import Warehouse

    fills = {"synthetic": fill_synthetic_warehouse, "limited_label": fill_limited_label_warehouse,
             "test_time": fill_test_time_warehouse}
    numbers = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, fill in fills.items():
            warehouse = Warehouse(Path(folder) / name / "promptlab.duckdb", Path(folder) / name / "predictions")
            warehouse.ensure_schema()
            fill(warehouse)
            build_report(warehouse, Path(folder) / name / "report.html")
            numbers[name] = numbers_by_section((Path(folder) / name / "report.html").read_text(encoding="utf-8"))
    BEFORE.write_text(json.dumps(numbers, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    _write_before()
