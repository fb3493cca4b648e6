"""Data written into Markdown as literal text: the one escaping every Markdown table built from data goes through
(the Dagster UI's metadata, the results tables, the methods page). The UI renders Markdown with its HTML, so a class
named `<svg onload=...>` would become an element, `<script>` would vanish into its text, and a `|` in a path would
shift every column of a table."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\]()#!|~{}$])")
_HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}


def markdown_text(value) -> str:
    """A value as literal text inside Markdown (a table cell, an image's alt text): Markdown's punctuation
    backslash-escaped, HTML's `& < > "` as entities, line breaks as spaces (a table row is one line); None is empty."""
    if value is None:
        return ""
    text = _MARKDOWN_PUNCTUATION.sub(r"\\\1", " ".join(str(value).splitlines()))
    return "".join(_HTML_ENTITIES.get(character, character) for character in text)


def markdown_rows(header: Sequence, rows: Iterable[Sequence]) -> str:
    """A Markdown table of `header` and `rows`, every header and cell escaped (markdown_text)."""
    lines = ["| " + " | ".join(markdown_text(name) for name in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(markdown_text(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_table(frame) -> str:
    """A polars DataFrame as a Markdown table, every header and cell escaped (markdown_text)."""
    return markdown_rows(frame.columns, frame.iter_rows())
