"""Metadata tables built from data show the data as written: the UI renders Markdown with its HTML (GFM tables), so
a class name or a path holding `<script>`, `<svg ...>` or `|` must come out as the same text in the same column."""

import polars as pl
from markdown_it import MarkdownIt

from pipelines.assets.curation import index_preview
from models.markdown import markdown_table

HOSTILE = ["<script>alert(1)</script>", "<svg onload=alert(1)>", "a|b", "cat_*dog*", "[x](javascript:y)", "&lt;"]


def _rendered_rows(markdown: str) -> list[list[str]]:
    """The table's rows as the UI's renderer lays them out (CommonMark with raw HTML on, GFM tables): each cell's
    text, or the raw element it became."""
    rows, cells = [], None
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    assert [t.type for t in tokens if t.type in ("html_block", "html_inline")] == []
    for token in tokens:
        if token.type == "tr_open":
            cells = []
        elif token.type == "tr_close":
            rows.append(cells)
        elif token.type == "inline" and cells is not None:
            assert all(child.type in ("text", "softbreak") for child in token.children or []), token.children
            cells.append("".join(child.content for child in token.children or []))
    return rows


def test_the_index_preview_shows_hostile_names_and_paths_as_text_in_their_own_columns():
    index = pl.DataFrame({
        "relative_path": [f"{name}/0.png" for name in HOSTILE], "label": list(range(len(HOSTILE))),
        "classname": HOSTILE, "split": ["train"] * len(HOSTILE), "decode_error": [None] * len(HOSTILE),
        "thumbnail": [b"\x00"] * len(HOSTILE)})
    header, *body = _rendered_rows(index_preview(index, rows=len(HOSTILE)))
    assert header == ["relative_path", "label", "classname", "split", "decode_error"]  # binary column left out
    assert body == [[f"{name}/0.png", str(label), name, "train", ""] for label, name in enumerate(HOSTILE)]


def test_any_frame_table_escapes_its_headers_and_cells():
    frame = pl.DataFrame({"k|<b>": HOSTILE, "n": [1.5] * len(HOSTILE)})
    header, *body = _rendered_rows(markdown_table(frame))
    assert header == ["k|<b>", "n"] and body == [[name, "1.5"] for name in HOSTILE]
