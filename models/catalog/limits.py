"""Reading one catalog file with bounded size: what the YAML expands to is measured before any Python value is built.

YAML aliases repeat a value in place (`shots: *a9`), so a few hundred bytes can stand for a billion values: an alias
bomb. The parser itself is cheap (an alias is a reference to one node), but validation that walks, copies or
`repr()`s the expanded value takes minutes and gigabytes. Here the node graph is composed with a depth and node budget,
then measured once per distinct node (the expanded size of a node is 1 + that of its children, memoised), and a file
over any bound is refused naming the key path, before the catalog's validation sees it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

try:  # libyaml parses the catalog about five times faster than the pure-Python parser; both give the same events
    from yaml.cyaml import CParser as _Parser

    def _init_parser(loader: Any, text: str) -> None:
        _Parser.__init__(loader, text)
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser):  # type: ignore[no-redef]
        pass

    def _init_parser(loader: Any, text: str) -> None:
        Reader.__init__(loader, text)
        Scanner.__init__(loader)
        Parser.__init__(loader)

# The largest shipped file expands to about 1,400 values, 58 items in one list, 407 characters in one string and 7
# levels of nesting; the bounds leave room for long near-duplicate allow lists and hand-written suites.
MAX_FILE_BYTES = 8 << 20
MAX_VALUES = 200_000  # values of one file once every alias is expanded (a mapping entry counts its key and value)
MAX_ITEMS = 50_000  # entries of one list or mapping
MAX_STRING_LENGTH = 10_000  # characters of one scalar
MAX_DEPTH = 32  # levels of nesting

# What a value over a bound is: a catalog lists datasets, backbones, methods and grids, none of them this large.
FIX = "a catalog value this large is a mistake (or an alias bomb): check what the file holds at that key"


class CatalogLimitError(ValueError):
    """A catalog file over one of the bounds; the message names the file and the key path."""


def _key_text(index: Any) -> str:
    """How a path step reads: `.key` for a mapping value, `[i]` for a list item (Composer passes the key node)."""
    if isinstance(index, int):
        return f"[{index}]"
    if isinstance(index, ScalarNode):
        return f".{shorten(index.value, 40)}"
    return ".<key>"  # a mapping key itself (a list or mapping used as a key)


def key_path(steps: list[str]) -> str:
    return shorten("".join(steps).lstrip("."), 160) or "(the top level)"


def shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-(limit // 2) + 3:]}"


class _BoundedLoader(Composer, _Parser, SafeConstructor, Resolver):  # type: ignore[misc, valid-type]
    """PyYAML's safe loader whose composer stops at the first node past MAX_DEPTH or MAX_VALUES distinct nodes, and
    remembers where each alias is used."""

    def __init__(self, text: str, path: Path) -> None:
        _init_parser(self, text)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.path = path
        self.steps: list[str] = []
        self.nodes = 0
        self.alias_uses: list[tuple[Node, str]] = []  # (the aliased node, where the alias stands), in file order

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        is_key = parent is not None and index is None  # a mapping key stands at its mapping's depth
        if not is_key:
            self.steps.append(_key_text(index) if parent is not None else "")
        try:
            if len(self.steps) > MAX_DEPTH + 1:
                raise CatalogLimitError(f"{self.path}: {key_path(self.steps)}: nested more than {MAX_DEPTH} levels "
                                        f"deep; {FIX}")
            if self.check_event(AliasEvent):
                node = super().compose_node(parent, index)
                self.alias_uses.append((node, key_path(self.steps)))
                return node
            self.nodes += 1
            if self.nodes > MAX_VALUES:
                raise CatalogLimitError(f"{self.path}: {key_path(self.steps)}: the file holds more than "
                                        f"{MAX_VALUES:,} values; {FIX}")
            return super().compose_node(parent, index)
        finally:
            if not is_key:
                self.steps.pop()


def _measure(path: Path, root: Node) -> dict[int, int]:
    """The expanded number of values under every node reachable from `root` (by id), each distinct node walked once.
    Refuses a list, mapping or string over its bound, nesting over MAX_DEPTH once aliases are expanded, and a value
    that contains itself through an alias (infinitely large once expanded)."""
    sizes: dict[int, int] = {}
    heights: dict[int, int] = {}
    open_nodes: set[int] = set()

    def walk(node: Node, steps: list[str]) -> None:
        if id(node) in sizes:
            if len(steps) + heights[id(node)] > MAX_DEPTH:  # an alias placing a deep value deeper still
                raise CatalogLimitError(f"{path}: {key_path(steps)}: nested more than {MAX_DEPTH} levels deep once "
                                        f"its aliases are expanded; {FIX}")
            return
        if id(node) in open_nodes:
            raise CatalogLimitError(f"{path}: {key_path(steps)}: an alias refers to a value that contains it (the "
                                    "value would be infinitely deep); use a separate anchor")
        if len(steps) > MAX_DEPTH:
            raise CatalogLimitError(f"{path}: {key_path(steps)}: nested more than {MAX_DEPTH} levels deep once its "
                                    f"aliases are expanded; {FIX}")
        if isinstance(node, ScalarNode):
            if len(node.value) > MAX_STRING_LENGTH:
                raise CatalogLimitError(f"{path}: {key_path(steps)}: a value of {len(node.value):,} characters "
                                        f"({shorten(node.value)!r}), over the limit of {MAX_STRING_LENGTH:,}; {FIX}")
            sizes[id(node)], heights[id(node)] = 1, 0
            return
        if len(node.value) > MAX_ITEMS:
            kind = "list" if isinstance(node, SequenceNode) else "mapping"
            raise CatalogLimitError(f"{path}: {key_path(steps)}: a {kind} of {len(node.value):,} entries, over the "
                                    f"limit of {MAX_ITEMS:,}; {FIX}")
        open_nodes.add(id(node))
        children: list[tuple[Node, str]] = (
            [(item, f"[{position}]") for position, item in enumerate(node.value)] if isinstance(node, SequenceNode)
            else [pair for key, value in node.value for pair in ((key, None), (value, _key_text(key)))])
        total, height = 1, 0
        for child, step in children:
            walk(child, steps if step is None else [*steps, step])  # a key stands at its mapping's depth
            total += sizes[id(child)]
            height = max(height, heights[id(child)] + 1)
        open_nodes.discard(id(node))
        sizes[id(node)], heights[id(node)] = total, height

    walk(root, [])
    return sizes


def load_bounded_yaml(path: Path) -> Any:
    """The YAML document of a catalog file as Python values (None when empty), or CatalogLimitError naming the file
    and key path when it is larger than a catalog file can sensibly be; yaml.YAMLError for malformed YAML."""
    path = Path(path)
    byte_count = path.stat().st_size
    if byte_count > MAX_FILE_BYTES:
        raise CatalogLimitError(f"{path}: {byte_count:,} bytes, over the limit of {MAX_FILE_BYTES:,} for a catalog "
                                f"file; {FIX}")
    loader = _BoundedLoader(path.read_text(), path)
    try:
        try:
            root = loader.get_single_node()
        except RecursionError:  # nesting deep enough to exhaust the stack before MAX_DEPTH is reached (not expected)
            raise CatalogLimitError(f"{path}: nested too deeply to read; {FIX}") from None
        if root is None:
            return None
        sizes = _measure(path, root)
        if sizes[id(root)] > MAX_VALUES:
            raise CatalogLimitError(_expansion_message(path, sizes, root, loader.alias_uses))
        try:
            return loader.construct_document(root)
        except (ValueError, OverflowError) as error:  # e.g. an integer of more digits than Python converts
            raise CatalogLimitError(f"{path}: a value cannot be read: {shorten(str(error), 200)}") from None
    finally:
        loader.dispose()


def _expansion_message(path: Path, sizes: dict[int, int], root: Node, alias_uses: list[tuple[Node, str]]) -> str:
    """Names the alias that repeats the most (the first such one in the file): where a bomb is set off."""
    total = sizes[id(root)]
    largest = max((sizes[id(node)] for node, _ in alias_uses), default=0)
    where = next((place for node, place in alias_uses if sizes[id(node)] == largest), None)
    if where is None:  # no alias: the file is written out this large
        return f"{path}: holds {total:,} values, over the limit of {MAX_VALUES:,}; {FIX}"
    return (f"{path}: {where}: YAML aliases expand this file to {total:,} values (the alias here alone to "
            f"{largest:,}), over the limit of {MAX_VALUES:,}: an alias repeats its anchor's whole value in place; "
            "anchor a smaller value or write the values out")


__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_ITEMS", "MAX_STRING_LENGTH", "MAX_VALUES", "CatalogLimitError",
           "load_bounded_yaml"]
