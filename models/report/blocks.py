"""What a report section is made of, as data: the HTML template (templates/report.html.j2) and the Markdown writer
(markdown.py) render the same blocks, so that both print the same numbers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Paragraph:
    kind: ClassVar[str] = "paragraph"
    text: str
    style: str = ""  # a CSS class: muted, warning, empty


@dataclass(frozen=True)
class Heading:
    kind: ClassVar[str] = "heading"
    text: str


@dataclass(frozen=True)
class Table:
    """`measured` columns hold the machine's measurements (times, speeds, memory; CSS class "measured"): the only
    cells that may differ between two runs of the same results (bench/reproducibility.py masks them)."""

    kind: ClassVar[str] = "table"
    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]
    numeric: frozenset[int] = frozenset()
    measured: frozenset[int] = frozenset()
    title: str = ""  # shown as an <h3> right above the table

    def cell_class(self, index: int) -> str:
        return " ".join(name for name, columns in (("num", self.numeric), ("measured", self.measured))
                        if index in columns)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] = (),
          measured: Iterable[int] = (), title: str = "") -> Table:
    return Table(list(headers), [list(row) for row in rows], frozenset(numeric), frozenset(measured), title)


@dataclass(frozen=True)
class Image:
    """A chart: a PNG as a data URI (figures.py), so the page needs no other file."""

    kind: ClassVar[str] = "image"
    alt: str
    source: str


@dataclass(frozen=True)
class Tiles:
    """Small titled tables side by side, as the papers print one small table per dataset."""

    kind: ClassVar[str] = "tiles"
    tables: Sequence[Table]


@dataclass(frozen=True)
class Section:
    title: str
    blocks: Sequence[Any] = field(default_factory=list)

    def tables(self) -> list[Table]:
        """Every table of the section, tiles included, in page order."""
        found = []
        for block in self.blocks:
            found += list(block.tables) if isinstance(block, Tiles) else [block] if isinstance(block, Table) else []
        return found
