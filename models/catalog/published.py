"""published_results.yaml: the numbers of the papers beside which the report puts PromptLab's measured ones, checked
when read.

The file has five sections: `sources` (key -> where numbers come from, with the notes' tag), `averages` (name -> the
datasets an average is over, or null when unknown), `methods_elsewhere` and `backbones_elsewhere` (names of the tables
that PromptLab's method registry and backbones.yaml do not have, each said in words), and `rows`, one published number
each. A row is refused, naming the file, the row's index and the field, when its method, backbone, dataset, protocol,
metric or source is unknown, its value is not a percentage, or another row has the same method, variant, backbone,
dataset, protocol, shots and metric. A catalog without the file has no published results.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.catalog.backbones import parse_backbones
from models.catalog.datasets import parse_datasets
from models.catalog.suites import DEFAULT_CATALOG_DIR, suite_directory, suite_names
from models.catalog.transfer import TRANSFER_PROTOCOLS
from models.catalog.validation import (CatalogError, _check_fields, _field_error, _is_integer, _nearest, _read_yaml,
                                       _shown)
from models.data.learning_settings import LEARNING_SETTINGS

PUBLISHED_RESULTS_FILE = "published_results.yaml"
SECTIONS = ("sources", "averages", "methods_elsewhere", "backbones_elsewhere", "rows")
ROW_FIELDS = ("method", "variant", "backbone", "dataset", "protocol", "shots", "metric", "value", "source")
# The protocols PromptLab runs, by the names its catalog and warehouse use (experiments' protocol, transfer stages,
# test-time runs, limited-label settings), and the metrics each reports under the warehouse's names: test top-1 of
# the protocol views; base_to_new_results' columns; the harmonic mean of seen and unseen that TRZSL scores.
PUBLISHED_METRICS = {
    "few_shot": ("top1_accuracy",),
    "base_to_new": ("base_accuracy", "new_accuracy", "harmonic_mean"),
    **{protocol: ("top1_accuracy",) for protocol in TRANSFER_PROTOCOLS},
    "test_time": ("top1_accuracy",),
    **{setting: ("harmonic_mean",) if setting == "trzsl" else ("top1_accuracy",) for setting in LEARNING_SETTINGS},
}
PUBLISHED_PROTOCOLS = tuple(PUBLISHED_METRICS)


@dataclass(frozen=True)
class PublishedResult:
    """One published number: `value` in percent as the source prints it; `row` its index in the file's rows."""

    row: int
    method: str
    variant: str | None  # how the configuration differs from the plain method (`ensemble`, `tpt`, `grip`); None: plain
    backbone: str
    dataset: str  # a dataset, or the name of an average (PublishedResults.averages)
    protocol: str
    shots: int | None
    metric: str
    value: float
    source: str  # a key of PublishedResults.sources

    @property
    def key(self) -> tuple:
        return (self.method, self.variant, self.backbone, self.dataset, self.protocol, self.shots, self.metric)


@dataclass(frozen=True)
class DatasetAverage:
    description: str
    datasets: tuple[str, ...] | None  # None: the source does not say which datasets


@dataclass(frozen=True)
class PublishedResults:
    """The checked content of a catalog's published_results.yaml; `sha256` of its bytes, None (and no rows) when
    the catalog has no such file."""

    path: Path
    sha256: str | None = None
    rows: tuple[PublishedResult, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)
    averages: dict[str, DatasetAverage] = field(default_factory=dict)
    methods_elsewhere: dict[str, str] = field(default_factory=dict)
    backbones_elsewhere: dict[str, str] = field(default_factory=dict)


def load_published_results(directory: Path | str | None = None) -> PublishedResults:
    """The published results of the catalog in `directory` ($PROMPTLAB_CATALOG, else assets_catalog/), checked
    against its backbones.yaml, its suites' datasets and PromptLab's method registry; CatalogError naming the file,
    the row and the field otherwise."""
    directory = Path(directory or os.environ.get("PROMPTLAB_CATALOG", DEFAULT_CATALOG_DIR))
    path = directory / PUBLISHED_RESULTS_FILE
    if not path.exists():
        return PublishedResults(path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    raw = _read_yaml(path)
    _check_fields(path.name, raw, SECTIONS, required=("sources", "rows"))
    sources = _text_mapping(path.name, "sources", raw["sources"])
    methods_elsewhere = _text_mapping(path.name, "methods_elsewhere", raw.get("methods_elsewhere") or {})
    backbones_elsewhere = _text_mapping(path.name, "backbones_elsewhere", raw.get("backbones_elsewhere") or {})
    datasets = _suite_datasets(directory)
    averages = _averages(path.name, raw.get("averages") or {}, datasets)
    known = _KnownNames(methods=_registered_methods() | set(methods_elsewhere),
                        backbones=_catalog_backbones(directory) | set(backbones_elsewhere),
                        datasets=datasets | set(averages), sources=set(sources))
    if not isinstance(raw["rows"], list):
        raise CatalogError(f"{path.name}: rows: expected a list of published results (`- {{method: ..., ...}}`), "
                           f"got {_shown(raw['rows'])}")
    rows: list[PublishedResult] = []
    first_row_of: dict[tuple, int] = {}
    for index, raw_row in enumerate(raw["rows"]):
        row = _published_row(path.name, index, raw_row, known)
        if row.key in first_row_of:
            raise CatalogError(f"{_where(path.name, index, raw_row)}: the same method, variant, backbone, dataset, "
                               f"protocol, shots and metric as rows[{first_row_of[row.key]}]")
        first_row_of[row.key] = index
        rows.append(row)
    for section, names, used in (("methods_elsewhere", methods_elsewhere, {row.method for row in rows}),
                                 ("backbones_elsewhere", backbones_elsewhere, {row.backbone for row in rows})):
        unused = sorted(set(names) - used)
        if unused:
            raise CatalogError(f"{path.name}: {section}: {unused} named by no row; remove them")
    return PublishedResults(path, sha256, tuple(rows), sources, averages, methods_elsewhere, backbones_elsewhere)


@dataclass(frozen=True)
class _KnownNames:
    methods: set[str]
    backbones: set[str]
    datasets: set[str]
    sources: set[str]


def _where(file: str, index: int, raw: Any) -> str:
    """How a message names a row: its index, and its method, backbone and dataset when it has them."""
    facts = [str(raw.get(name)) for name in ("method", "backbone", "dataset")
             if isinstance(raw, dict) and raw.get(name) is not None]
    return f"{file}: rows[{index}]" + (f" ({', '.join(facts)})" if facts else "")


def _named(where: str, name: str, value: Any, known: set[str], listed_in: str) -> str:
    if not isinstance(value, str) or value not in known:
        raise CatalogError(f"{where}: '{name}' {_shown(value)} is unknown{_nearest(value, known)}; known: "
                           f"{sorted(known)} ({listed_in})")
    return value


def _published_row(file: str, index: int, raw: Any, known: _KnownNames) -> PublishedResult:
    where = _where(file, index, raw)
    _check_fields(where, raw, ROW_FIELDS, required=tuple(name for name in ROW_FIELDS
                                                         if name not in ("variant", "shots")))
    if "shots" not in raw:
        raise CatalogError(f"{where}: missing required field(s) ['shots'] (null where the protocol has no shots)")
    method = _named(where, "method", raw["method"], known.methods, "PromptLab's methods, and methods_elsewhere")
    backbone = _named(where, "backbone", raw["backbone"], known.backbones, "backbones.yaml, and backbones_elsewhere")
    dataset = _named(where, "dataset", raw["dataset"], known.datasets, "the suites' datasets, and averages")
    protocol = _named(where, "protocol", raw["protocol"], set(PUBLISHED_PROTOCOLS), "PromptLab's protocols")
    metric = _named(where, "metric", raw["metric"], set(PUBLISHED_METRICS[protocol]), f"the metrics of {protocol}")
    source = _named(where, "source", raw["source"], known.sources, "the keys of sources")
    variant = raw.get("variant")
    if variant is not None and (not isinstance(variant, str) or not variant.strip()):
        raise _field_error(where, "variant", "a non-empty string, or left out for the plain method", variant)
    shots = raw["shots"]
    if shots is not None and (not _is_integer(shots) or shots < 0):
        raise _field_error(where, "shots", "an integer >= 0, or null", shots)
    value = raw["value"]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 100:
        raise _field_error(where, "value", "a percentage: a number in [0, 100]", value)
    return PublishedResult(index, method, variant, backbone, dataset, protocol, shots, metric, float(value), source)


def _text_mapping(file: str, section: str, raw: Any) -> dict[str, str]:
    """A section mapping names to a non-empty text (what a source is, what a method is)."""
    if not isinstance(raw, dict):
        raise CatalogError(f"{file}: {section}: expected a mapping of names to texts, got {_shown(raw)}")
    for name, text in raw.items():
        if not isinstance(name, str) or not name.strip():
            raise CatalogError(f"{file}: {section}: {_shown(name)} is no name")
        if not isinstance(text, str) or not text.strip():
            raise _field_error(f"{file}: {section}", str(name), "a non-empty text saying what it is", text)
    return {name: " ".join(text.split()) for name, text in raw.items()}


def _averages(file: str, raw: Any, datasets: set[str]) -> dict[str, DatasetAverage]:
    if not isinstance(raw, dict):
        raise CatalogError(f"{file}: averages: expected a mapping of names to {{description, datasets}}, got "
                           f"{_shown(raw)}")
    averages = {}
    for name, entry in raw.items():
        where = f"{file}: averages.{name}"
        if not isinstance(name, str) or name in datasets:
            raise CatalogError(f"{where}: an average needs a name of its own (not a dataset's)")
        _check_fields(where, entry, ("description", "datasets"), required=("description",))
        if "datasets" not in entry:
            raise CatalogError(f"{where}: missing required field(s) ['datasets'] (null when the source does not "
                               "say which)")
        members = entry["datasets"]
        if members is not None:
            if not isinstance(members, list) or len(members) < 2 or len(set(members)) != len(members):
                raise _field_error(where, "datasets", "a list of 2 or more distinct datasets, or null", members)
            unknown = [member for member in members if member not in datasets]
            if unknown:
                raise CatalogError(f"{where}: 'datasets' names {unknown}, not datasets of any suite"
                                   f"{_nearest(unknown[0], datasets)}")
        averages[name] = DatasetAverage(" ".join(str(entry["description"]).split()),
                                        None if members is None else tuple(members))
    return averages


def _suite_datasets(directory: Path) -> set[str]:
    return {entry.name for suite in suite_names(directory)
            for entry in parse_datasets(suite_directory(directory, suite) / "datasets.yaml")}


def _catalog_backbones(directory: Path) -> set[str]:
    path = directory / "backbones.yaml"
    return set(parse_backbones(path, _read_yaml(path))[0])


def _registered_methods() -> set[str]:
    from models.prompting.methods import METHODS

    return set(METHODS)
