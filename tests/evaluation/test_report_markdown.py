"""`promptlab report --markdown`: the report's few-shot, base-to-new and transfer tables as Markdown, with the same
cells as the HTML report and the provenance of the runs (docs/results.md is this output)."""

import re

from report_numbers import numbers_by_section

from models.report import build_report, markdown_results
from pipelines.cli import build_parser


def test_the_markdown_tables_hold_the_html_reports_cells_and_say_where_they_come_from(synthetic_results, tmp_path):
    text = markdown_results(synthetic_results.warehouse, preface="Synthetic runs.")
    assert text.startswith("# Results\n\nSynthetic runs.\n\nFrom ")
    provenance = text.split("\n\n")[2]
    for fact in ("git commit 0123abcd", "machine cpu fp32, not recorded", "tiny-clip (weights sha256 feedbeef)",
                 "caltech101, oxford_pets", "2025-01-01"):
        assert fact in provenance
    build_report(synthetic_results.warehouse, tmp_path / "report.html")
    page = numbers_by_section((tmp_path / "report.html").read_text(encoding="utf-8"))
    for title in ("Few-shot learning", "Base-to-new generalization", "Cross-dataset transfer", "Domain generalization"):
        body = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.DOTALL | re.MULTILINE).group(1)
        lines = body.splitlines()
        rows = [line for index, line in enumerate(lines)  # the header is the line above |---|
                if line.startswith("| ") and not (index + 1 < len(lines) and lines[index + 1].startswith("|---"))]
        cells = [re.sub(r"\\(.)", r"\1", cell.strip("| ")) for row in rows for cell in row.split(" | ")]
        numbers = sorted(cell for cell in cells if re.match(r"^[+\-]?\d", cell))
        assert numbers == page[title], title
    assert "data:image" not in text and "<table>" not in text


def test_promptlab_report_writes_the_html_or_the_markdown_of_the_workspace(tmp_path, monkeypatch, capsys):
    from pipelines.report_command import run_report_command

    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(tmp_path / "workspace"))
    assert run_report_command(build_parser().parse_args(["report"])) == 0
    assert "(no runs yet)" in capsys.readouterr().out
    assert "No runs recorded yet" in (tmp_path / "workspace" / "reports" / "report.html").read_text(encoding="utf-8")
    assert run_report_command(build_parser().parse_args(["report", "--markdown", str(tmp_path / "r.md")])) == 0
    assert (tmp_path / "r.md").read_text(encoding="utf-8").startswith("# Results\n\nNo runs recorded yet")
