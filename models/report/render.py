"""The report as HTML (templates/report.html.j2, Jinja2 with autoescaping: every value from the warehouse is text),
written atomically."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import jinja2

from models.report.blocks import Section


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("models.report", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def html_page(title: str, sections: Sequence[Section], preamble: Sequence = ()) -> str:
    return _environment().get_template("report.html.j2").render(title=title, sections=sections, preamble=preamble)


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
