"""The README stays a front door that tells the truth: at most 200 lines, every command in its shell blocks parses
(a `promptlab` command with the CLI's own parser, a `make` command names a target of the Makefile), its SQL runs
on the warehouse's schema, and every page it links to exists."""

from __future__ import annotations

import re
import shlex

import pytest

from models.provenance import PACKAGE_ROOT

README = PACKAGE_ROOT / "README.md"


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def shell_commands(text: str) -> list[list[str]]:
    commands = []
    for block in fenced_blocks(text, "bash"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def test_the_readme_is_short():
    assert len(README.read_text().splitlines()) <= 200


def test_the_readme_shows_its_commands_and_they_exist():
    commands = shell_commands(README.read_text())
    programs = {words[0] for words in commands}
    assert {"make", "promptlab"} <= programs, programs
    assert programs <= {"make", "promptlab", "export"}, f"a command the test cannot check: {programs}"


@pytest.mark.parametrize("words", [words for words in shell_commands(README.read_text()) if words[0] == "make"],
                         ids=shlex.join)
def test_each_make_command_names_a_target(words):
    targets = set(re.findall(r"^([\w-]+):", (PACKAGE_ROOT / "Makefile").read_text(), flags=re.MULTILINE))
    named = [word for word in words[1:] if "=" not in word]
    assert named and set(named) <= targets, f"{shlex.join(words)}: no such target in the Makefile"


@pytest.mark.parametrize("words", [words for words in shell_commands(README.read_text()) if words[0] == "promptlab"],
                         ids=shlex.join)
def test_each_promptlab_command_parses(words, monkeypatch):
    from models.catalog import DEFAULT_CATALOG_DIR
    from pipelines.cli import build_parser

    monkeypatch.setenv("PROMPTLAB_CATALOG", str(DEFAULT_CATALOG_DIR))  # the shipped catalog's grids and suites
    try:
        build_parser().parse_args(words[1:])
    except SystemExit as exit:
        pytest.fail(f"`{shlex.join(words)}` does not parse (exit {exit.code})")


def test_the_readme_sql_runs_on_the_warehouse_schema(tmp_path):
    from models.warehouse import Warehouse

    warehouse = Warehouse(tmp_path / "promptlab.duckdb", tmp_path / "predictions")
    warehouse.ensure_schema()
    blocks = fenced_blocks(README.read_text(), "sql")
    assert blocks
    for block in blocks:
        for statement in filter(str.strip, block.split(";")):
            warehouse.query(statement)


def test_every_linked_page_exists():
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README.read_text())
    assert any(link.startswith("docs/") for link in links)
    missing = [link for link in links if not (PACKAGE_ROOT / link).exists()]
    assert not missing, missing
