"""A catalog file is bounded when it loads (models/catalog/limits.py): a YAML alias bomb, a list, string or nesting
beyond any sensible catalog is refused in milliseconds naming the file and the key path, and values in messages are
shortened. Before: `shots: *a9` or `near_duplicates: {allow: *a9}` took 90-180 s and 4 GB before a MemoryError with
an empty message (the validation repr()s the whole value), a 20,000-character template was accepted, and a bad list
of 5,000 items was printed whole in the error."""

import contextlib
import io
import multiprocessing
import re
import time
import tracemalloc

import pytest
import yaml

from models.catalog import DEFAULT_CATALOG_DIR, CatalogError, load_catalog
from models.catalog.limits import MAX_DEPTH, MAX_ITEMS, MAX_STRING_LENGTH
from tests.catalog.catalog_editing import catalog_copy, edit  # noqa: F401 (fixture)

# "lol" repeated 9**10 times once expanded: ten anchors, each a list of nine aliases of the one before.
ANCHORS = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]\n" for level in range(1, 10))
CHILD_TIMEOUT_S = 20  # the old loader needed minutes and gigabytes; the child is killed instead


def _coop_index(content) -> int:
    return next(index for index, entry in enumerate(content["grid"]) if entry.get("method") == "coop")


def _with_yaml(path, change, replacements: dict[str, str], prefix: str = "") -> None:
    """Edit a catalog file, then put YAML that safe_dump cannot write (anchors, aliases) where placeholders stand."""
    edit(path, change)
    text = path.read_text()
    for placeholder, replacement in replacements.items():
        text = text.replace(placeholder, replacement)
    path.write_text(prefix + text)


def _in_child(function):
    """function() in a forked process (what it returns, or what it raised, as text): an unbounded loader cannot
    exhaust this process, and is killed after CHILD_TIMEOUT_S."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)

    def child() -> None:
        try:
            sender.send(function())
        except BaseException as error:  # noqa: BLE001 - reported to the test
            sender.send(f"{type(error).__name__}: {error}"[:2000])

    process = context.Process(target=child)
    process.start()
    try:
        if not receiver.poll(CHILD_TIMEOUT_S):
            pytest.fail(f"not refused within {CHILD_TIMEOUT_S} s")
        return receiver.recv()
    finally:
        process.kill()
        process.join()


def _refusal(directory):
    tracemalloc.start()
    started = time.perf_counter()
    try:
        load_catalog(directory)
    except CatalogError as error:
        return str(error), time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    return "loaded", time.perf_counter() - started, tracemalloc.get_traced_memory()[1]


def _bomb_in_shots(directory):
    path = directory / "experiments.yaml"
    index = _coop_index(yaml.safe_load(path.read_text()))
    _with_yaml(path, lambda c: c["grid"][index].update(shots="BOMB"), {"BOMB": "*a9"}, ANCHORS)
    return rf"experiments.yaml: grid\[{index}\].shots: YAML aliases expand this file to [\d,]+ values"


def _bomb_in_allow_list(directory):
    _with_yaml(directory / "datasets.yaml", lambda c: c["datasets"][0].update(near_duplicates={"allow": "BOMB"}),
               {"BOMB": "*a9"}, ANCHORS)
    return r"datasets.yaml: datasets\[0\].near_duplicates.allow: YAML aliases expand this file to [\d,]+ values"


@pytest.mark.parametrize("plant", [_bomb_in_shots, _bomb_in_allow_list], ids=["shots", "near_duplicates.allow"])
def test_an_alias_bomb_is_refused_in_milliseconds_naming_file_and_key_path(catalog_copy, plant):
    load_catalog(DEFAULT_CATALOG_DIR)  # the modules a catalog load imports, imported before the load is timed
    expected = plant(catalog_copy)
    message, seconds, peak_bytes = _in_child(lambda: _refusal(catalog_copy))
    assert re.search(expected, message), message
    assert len(message) < 600, message
    assert seconds < 1.0 and peak_bytes < 20 << 20, (seconds, peak_bytes)  # whole load_catalog up to the refusal


def test_promptlab_exits_2_with_one_line_on_an_alias_bomb(catalog_copy, monkeypatch, tmp_path):
    from pipelines.cli import main

    _bomb_in_allow_list(catalog_copy)
    monkeypatch.setenv("PROMPTLAB_CATALOG", str(catalog_copy))
    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(tmp_path / "workspace"))

    def check():
        errors = io.StringIO()
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            code = main(["data", "check"])
        return code, errors.getvalue()

    code, errors = _in_child(check)
    lines = errors.strip().splitlines()
    assert code == 2 and len(lines) == 1, errors
    assert lines[0].startswith("promptlab data check: error: ") and "datasets[0].near_duplicates.allow" in lines[0]


def _nested(depth):
    return {"level": _nested(depth - 1)} if depth else 1


BOUNDS = [  # (change to the coop grid entry, YAML put in place of "PLACEHOLDER", what the message must say)
    ("list", lambda e: e.update(shots=[0] * (MAX_ITEMS + 1)), None,
     rf"grid\[\d+\].shots: a list of {MAX_ITEMS + 1:,} entries, over the limit of {MAX_ITEMS:,}"),
    ("string", lambda e: e.update(templates=["{}" + "x" * MAX_STRING_LENGTH]), None,
     rf"grid\[\d+\].templates\[0\]: a value of {MAX_STRING_LENGTH + 2:,} characters"),
    ("nesting", lambda e: e.update(parameters=_nested(MAX_DEPTH)), None,
     rf"grid\[\d+\].parameters.level.*: nested more than {MAX_DEPTH} levels deep"),
    ("alias-loop", lambda e: e.update(shots="PLACEHOLDER"), "&loop [1, *loop]",
     r"grid\[\d+\].shots\[1\]: an alias refers to a value that contains it"),
]


@pytest.mark.parametrize("change, replacement, message", [case[1:] for case in BOUNDS], ids=[c[0] for c in BOUNDS])
def test_a_value_beyond_the_bounds_is_refused_naming_the_key_path(catalog_copy, change, replacement, message):
    path = catalog_copy / "experiments.yaml"
    index = _coop_index(yaml.safe_load(path.read_text()))
    _with_yaml(path, lambda c: change(c["grid"][index]), {"PLACEHOLDER": replacement} if replacement else {})
    with pytest.raises(CatalogError) as raised:
        load_catalog(catalog_copy)
    assert re.search(rf"experiments.yaml: {message}", str(raised.value)), str(raised.value)[:1000]
    assert len(str(raised.value)) < 600


def test_a_long_bad_value_is_shortened_in_the_message(catalog_copy):
    edit(catalog_copy / "experiments.yaml", lambda c: c["grid"][_coop_index(c)].update(shots=[0] * 5000))
    with pytest.raises(CatalogError) as raised:
        load_catalog(catalog_copy)
    message = str(raised.value)
    assert "'shots' must be a non-empty list of distinct integers >= 1" in message and len(message) < 400, message
    assert message.endswith("got [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, ...]"), message
