"""`promptlab report`: the HTML report of the workspace's warehouse, rebuilt without running anything; with
`--markdown [PATH]`, its measured tables as Markdown (few-shot, base-to-new, transfer, test-time; mean ± std with
seeds, under the commits, machines, backbones and dates they come from), the text of docs/results.md."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_report_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("report", help="rebuild the HTML report from the warehouse (workspace/reports/"
                                                "report.html), or write its tables as Markdown")
    parser.add_argument("--markdown", nargs="?", const="-", metavar="PATH",
                        help="write the few-shot, base-to-new, transfer and test-time tables as Markdown to PATH "
                             "(default: print them), with the git commits, machines, backbones and dates of the runs")
    parser.add_argument("--note", default="",
                        help="a paragraph under the Markdown title, e.g. which grid and datasets the runs cover")


def run_report_command(arguments: argparse.Namespace) -> int:
    from models.report import build_report, markdown_results
    from models.warehouse import workspace_warehouse_of
    from pipelines.resources import PromptLabResource

    workspace = PromptLabResource().workspace()
    warehouse = workspace_warehouse_of(workspace)
    if arguments.markdown is None:
        summary = build_report(warehouse, workspace.report_path)
        print(f"Report:    {summary.html_path}" + (" (no runs yet)" if summary.is_empty else "")
              + f"\nWarehouse: {warehouse.address}")
        return 0
    text = markdown_results(warehouse, preface=arguments.note)
    if arguments.markdown == "-":
        print(text, end="")
    else:
        Path(arguments.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(arguments.markdown).write_text(text, encoding="utf-8")
        print(f"Markdown:  {arguments.markdown}\nWarehouse: {warehouse.address}")
    return 0
