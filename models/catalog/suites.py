"""Where a catalog's files are: the shipped catalog folder (assets_catalog/) and its suites.

A suite (suites/<name>/) is a benchmark with its own datasets.yaml, experiments.yaml and grids.yaml beside the
catalog's world, backbones and methods; its suite.yaml says what it is, the backbone it runs with unless one is
named, and the environment variable that says where its data lives.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from models.catalog.validation import CatalogError, _check_fields, _field_error, _nearest, _read_yaml, _shown


DEFAULT_CATALOG_DIR = Path(__file__).resolve().parents[2] / "assets_catalog"
SUITES_DIR_NAME = "suites"


def suite_names(directory: Path | str | None = None) -> list[str]:
    """The suites of a catalog: folders of assets_catalog/suites/ holding their own datasets.yaml and
    experiments.yaml (the benchmark's datasets under $PROMPTLAB_DATA and the papers' grids)."""
    folder = Path(directory or os.environ.get("PROMPTLAB_CATALOG", DEFAULT_CATALOG_DIR)) / SUITES_DIR_NAME
    return sorted(entry.name for entry in folder.iterdir() if (entry / "datasets.yaml").is_file()) if folder.is_dir() \
        else []


@dataclass(frozen=True)
class SuiteInfo:
    """suite.yaml of a suite: what it is, the backbone it is run with unless one is named, where its data lives."""

    name: str
    description: str = ""
    backbone: str | None = None
    data_variable: str = "PROMPTLAB_DATA"


def suite_directory(directory: Path, suite: str) -> Path:
    folder = directory / SUITES_DIR_NAME / suite
    if not (folder / "datasets.yaml").is_file():
        known = suite_names(directory)
        raise CatalogError(f"unknown suite {_shown(suite)}{_nearest(suite, known)}; the catalog has {known} "
                           f"(folders of {directory / SUITES_DIR_NAME} with a datasets.yaml)")
    return folder


def parse_suite_info(folder: Path) -> SuiteInfo:
    path = folder / "suite.yaml"
    raw = _read_yaml(path) if path.exists() else {}
    _check_fields(path.name, raw, ("description", "backbone", "data_variable"))
    for text_field in ("description", "backbone"):
        if raw.get(text_field) is not None and not isinstance(raw[text_field], str):
            raise _field_error(path.name, text_field, "a string", raw[text_field])
    variable = raw.get("data_variable", "PROMPTLAB_DATA")
    if not isinstance(variable, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", variable):
        raise _field_error(path.name, "data_variable", "an environment variable's name", variable)
    return SuiteInfo(name=folder.name, description=str(raw.get("description", "")).strip(),
                     backbone=raw.get("backbone"), data_variable=raw.get("data_variable", "PROMPTLAB_DATA"))
