"""A value of the wrong kind anywhere in the catalog (a string where a mapping or list is expected, a list where a
name is) is refused when the catalog loads as a CatalogError naming the file, the entry and the field, and the CLI
exits 2 with that one line. Before: a `datasets:` entry written as a plain string gave `AttributeError: 'str' object
has no attribute 'get'` (exit 1, naming nothing); a list as a backbone default, a grid method, a grid subset's method
or a suite's backbone gave `TypeError: unhashable type`; a string as a test-time mode's settings a ValueError."""

import re
import shutil
from pathlib import Path

import pytest
import yaml

from models.catalog import DEFAULT_CATALOG_DIR, CatalogError, load_catalog
from tests.catalog.catalog_editing import catalog_copy, edit  # noqa: F401 (fixture)


def _coop(content):
    return next(entry for entry in content["grid"] if entry.get("method") == "coop")


CASES = [  # (suite, file, change, what the message must say)
    ("", "datasets.yaml", lambda c: c["datasets"].append("caltech101"),
     r"^datasets.yaml: datasets\[7\]: expected a mapping of the dataset's fields .*got 'caltech101'"),
    ("", "datasets.yaml", lambda c: c.update(datasets={"Shapes": {"source": "embedded"}}),
     r"^datasets.yaml: datasets: expected a list of dataset entries"),
    ("", "datasets.yaml", lambda c: c["datasets"][0].update(name=7),
     r"^datasets.yaml: datasets\[0\]: 'name' must be letters, digits or underscores, got 7"),
    ("", "backbones.yaml", lambda c: c.update(default=["tiny-clip"]),
     r"^backbones.yaml: 'default' must be the name of a listed backbone, got \['tiny-clip'\]"),
    ("", "backbones.yaml", lambda c: c.update(diffusion_default={"name": "embedded-ddpm"}),
     r"^backbones.yaml: 'diffusion_default' must be the name of a listed diffusion backbone"),
    ("", "experiments.yaml", lambda c: _coop(c).update(method=["coop"]),
     r"^experiments.yaml: grid\[\d+\]: 'method' must be a method name, one of .*got \['coop'\]"),
    ("", "experiments.yaml", lambda c: c["test_time"]["modes"].update(tpt="crop_scale_min"),
     r"^experiments.yaml: test_time.modes: 'tpt' must be a mapping of the mode's settings, got 'crop_scale_min'"),
    ("", "experiments.yaml", lambda c: c["test_time"]["runs"][0].update(mode=["tpt"]),
     r"^experiments.yaml: test_time.runs\[0\]: 'mode' must be a string, got \['tpt'\]"),
    ("", "grids.yaml", lambda c: c["grids"]["quick"].update(methods=[["coop"]]),
     r"^grids.yaml: grids.quick: 'methods\[0\]' must be a string, got \['coop'\]"),
    ("coop", "suites/coop/suite.yaml", lambda c: c.update(backbone=["ViT-B-16-openai"]),
     r"^suite.yaml: 'backbone' must be a string, got \['ViT-B-16-openai'\]"),
    ("coop", "suites/coop/suite.yaml", lambda c: c.update(data_variable="$PROMPTLAB_DATA"),
     r"^suite.yaml: 'data_variable' must be an environment variable's name, got '\$PROMPTLAB_DATA'"),
]


@pytest.mark.parametrize("suite, file_name, change, message", CASES,
                         ids=[f"{case[1]}:{re.sub(r'[^a-z_]+', '_', case[3][1:40])}" for case in CASES])
def test_a_value_of_the_wrong_kind_is_refused_naming_file_entry_and_field(catalog_copy, suite, file_name, change,
                                                                          message):
    edit(catalog_copy / file_name, change)
    with pytest.raises(CatalogError) as raised:
        load_catalog(catalog_copy, suite=suite or None)
    assert re.search(message, str(raised.value)), str(raised.value)


def test_promptlab_exits_2_with_one_line_on_a_dataset_written_as_a_string(catalog_copy, monkeypatch, capsys, tmp_path):
    from pipelines.cli import main

    edit(catalog_copy / "datasets.yaml", lambda c: c["datasets"].append("caltech101"))
    monkeypatch.setenv("PROMPTLAB_CATALOG", str(catalog_copy))
    monkeypatch.setenv("PROMPTLAB_WORKSPACE", str(tmp_path / "workspace"))
    assert main(["data", "check"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("promptlab data check: error: datasets.yaml: datasets[7]: "), lines


# Every position of every shipped catalog file where a mapping, a list or a string stands gets a value of another
# kind (a mapping or list: a string; a string: a list). Keys under these sections name entries of the same shape
# (methods.coop, grids.quick, test_time.modes.tpt): the first of each is enough.
NAMED_ENTRIES = {"methods", "grids", "modes"}
CATALOG_FILES = [("", name) for name in ("world.yaml", "datasets.yaml", "backbones.yaml", "methods.yaml",
                                         "experiments.yaml", "grids.yaml")] + [
    (suite, f"suites/{suite}/{name}") for suite in ("coop", "domainbed")
    for name in ("suite.yaml", "datasets.yaml", "experiments.yaml", "grids.yaml")
    if (DEFAULT_CATALOG_DIR / "suites" / suite / name).exists()]


def _positions(value, path=()):
    yield path, value
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _positions(child, (*path, key))


def _shape(path):
    """A position with list indexes and named entries generalised: one position stands for all of its shape."""
    return tuple("[]" if isinstance(step, int) else "*" if index and path[index - 1] in NAMED_ENTRIES else step
                 for index, step in enumerate(path))


def _replaced(document, path, value):
    document = yaml.safe_load(yaml.safe_dump(document))
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return document


@pytest.fixture(scope="module")
def shared_copy(tmp_path_factory):
    directory = tmp_path_factory.mktemp("catalog") / "catalog"
    shutil.copytree(DEFAULT_CATALOG_DIR, directory, ignore=shutil.ignore_patterns("pretrained"))
    return directory


@pytest.mark.parametrize("suite, file_name", CATALOG_FILES, ids=[case[1] for case in CATALOG_FILES])
def test_every_mapping_list_and_string_of_a_catalog_file_is_type_checked(shared_copy, suite, file_name):
    path = shared_copy / file_name
    original = path.read_text()
    document = yaml.safe_load(original)
    shapes, escaped = set(), []
    try:
        for position, value in _positions(document):
            if not position or _shape(position) in shapes or not isinstance(value, (dict, list, str)):
                continue
            shapes.add(_shape(position))
            path.write_text(yaml.safe_dump(_replaced(document, position, ["x"] if isinstance(value, str) else "x")))
            try:
                load_catalog(shared_copy, suite=suite or None)
            except CatalogError as error:
                if Path(file_name).name not in str(error):
                    escaped.append(f"{position}: the message does not name the file: {error}")
            except Exception as error:  # noqa: BLE001 - what the test is for: anything but a CatalogError
                escaped.append(f"{position}: {type(error).__name__}: {error}")
    finally:
        path.write_text(original)
    assert shapes, file_name
    assert not escaped, "\n".join(escaped)

