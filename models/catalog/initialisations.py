"""The `initialisations:` section of experiments.yaml: prompts learned upstream, on the embedded image-caption corpus,
before any downstream task (GRAM's meta-learned prompt and gradient regulator, models/prompting/methods/gram.py; PVP's
pre-trained prompt, pvp.py), as an `InitialisationPlan`.

    initialisations:
      gram-coop:                      # the name grid entries give as `initialisation:`
        method: gram_coop             # an upstream method: gram_coop, gram_vpt, pvp_coop, pvp_vpt
        seed: 1                       # optional (1): the upstream run's seed (tasks, batches, clustering)
        corpus_pairs: 2000            # optional (null: all): the first pairs of the corpus it trains on
        parameters: {n_context: 16}   # optional: the prompt's, over methods.yaml's defaults
        meta: {n_domains: 4, ...}     # GRAM only: GRAMMetaSchedule's fields
        optimization: {epochs: 10}    # PVP only (required): the pre-training schedule, as a grid entry's

Every grid experiment of an upstream method names one initialisation (`initialisation:`), of the same method and the
same prompt parameters (the prompt it starts from has its shapes); no other experiment names one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.catalog.grid import ExperimentConfig, _check_optimization
from models.catalog.validation import (CatalogError, _check_dataclass_fields, _check_fields, _field_error,
                                       _integer_value, _nearest, _shown)

# upstream method -> how it learns upstream
UPSTREAM_METHODS = {"gram_coop": "gram", "gram_vpt": "gram", "pvp_coop": "pvp", "pvp_vpt": "pvp"}
ENTRY_FIELDS = ("method", "seed", "corpus_pairs", "parameters", "meta", "optimization")


@dataclass(frozen=True)
class InitialisationEntry:
    name: str
    method: str
    seed: int
    corpus_pairs: int | None
    parameters: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)  # GRAM's GRAMMetaSchedule overrides
    optimization: dict[str, Any] = field(default_factory=dict)  # PVP's pre-training schedule

    @property
    def kind(self) -> str:
        return UPSTREAM_METHODS[self.method]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method, "seed": self.seed, "corpus_pairs": self.corpus_pairs,
                "parameters": self.parameters, "meta": self.meta, "optimization": self.optimization}


@dataclass(frozen=True)
class InitialisationPlan:
    entries: dict[str, InitialisationEntry] = field(default_factory=dict)
    starts: dict[str, str] = field(default_factory=dict)  # experiment key -> the initialisation it starts from

    def of(self, experiment: str) -> InitialisationEntry | None:
        name = self.starts.get(experiment)
        return None if name is None else self.entries[name]

    def on_experiments(self, keys) -> "InitialisationPlan":
        """The initialisations a grid subset's experiments start from."""
        starts = {key: name for key, name in self.starts.items() if key in keys}
        return InitialisationPlan({name: self.entries[name] for name in sorted(set(starts.values()))}, starts)


def parse_initialisations(path: Path, raw: Any, methods: dict[str, dict[str, Any]],
                          experiments: dict[str, ExperimentConfig]) -> InitialisationPlan:
    """Validate the section (module docstring) and which initialisation every grid experiment starts from."""
    from models.prompting.methods import parse_method_parameters
    from models.prompting.methods.gram import GRAMMetaSchedule

    entries: dict[str, InitialisationEntry] = {}
    if raw is not None and not isinstance(raw, dict):
        raise CatalogError(f"{path.name}: initialisations: expected a mapping of name to entry, got {_shown(raw)}")
    for name, entry in (raw or {}).items():
        where = f"{path.name}: initialisations.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
            raise CatalogError(f"{where}: a name is lower-case letters, digits, '-' or '_'")
        _check_fields(where, entry, ENTRY_FIELDS, required=("method",))
        method = entry["method"]
        if not isinstance(method, str) or method not in UPSTREAM_METHODS:
            raise _field_error(where, "method", f"an upstream method, one of {sorted(UPSTREAM_METHODS)}", method)
        if method not in methods:
            raise CatalogError(f"{where}.method: {_shown(method)} is not listed in methods.yaml")
        seed = _integer_value(where, "seed", entry.get("seed", 1), 0)
        pairs = entry.get("corpus_pairs")
        if pairs is not None:
            pairs = _integer_value(where, "corpus_pairs", pairs, 2)
        for section in ("parameters", "meta", "optimization"):
            if entry.get(section) is not None and not isinstance(entry[section], dict):
                raise _field_error(where, section, "a mapping", entry[section])
        parameters = {**(methods[method].get("parameters") or {}), **(entry.get("parameters") or {})}
        _check_dataclass_fields(where, entry.get("parameters") or {}, _parameters_type(method),
                                prefix="parameters.")
        try:
            parse_method_parameters(method, parameters)
        except ValueError as error:
            raise CatalogError(f"{where}: {error}") from error
        meta, optimization = dict(entry.get("meta") or {}), dict(entry.get("optimization") or {})
        if UPSTREAM_METHODS[method] == "gram":
            if optimization:
                raise CatalogError(f"{where}.optimization: GRAM meta-trains on `meta:` (GRAMMetaSchedule); remove "
                                   "'optimization'")
            _check_dataclass_fields(where, meta, GRAMMetaSchedule, prefix="meta.")
            try:
                GRAMMetaSchedule(**meta)
            except ValueError as error:
                raise CatalogError(f"{where}.meta.{error}") from error
        else:
            if meta:
                raise CatalogError(f"{where}.meta: only GRAM meta-trains; PVP pre-trains on 'optimization'")
            if optimization.get("epochs") is None:
                raise CatalogError(f"{where}.optimization.epochs: PVP's pre-training needs its number of epochs")
            _check_optimization(where, optimization, closed_form=False)
        entries[name] = InitialisationEntry(name, method, seed, pairs, parameters, meta, optimization)
    starts = {}
    for key, experiment in experiments.items():
        named = experiment.initialisation
        if named is None:
            if experiment.method in UPSTREAM_METHODS:
                raise CatalogError(f"{experiment.where}.initialisation: {experiment.method} starts from a prompt "
                                   f"learned upstream; name one of {path.name}'s initialisations {sorted(entries)}")
            continue
        if named not in entries:
            raise CatalogError(f"{experiment.where}.initialisation: unknown initialisation {_shown(named)}"
                               f"{_nearest(named, entries)}; {path.name} has {sorted(entries)}")
        entry = entries[named]
        if experiment.method != entry.method:
            raise CatalogError(f"{experiment.where}.initialisation: {named} is a {entry.method} prompt, the "
                               f"experiment trains {experiment.method}; the method must be the initialisation's")
        if experiment.parameters != entry.parameters:
            raise CatalogError(f"{experiment.where}.parameters: {experiment.parameters} differ from initialisation "
                               f"{named}'s {entry.parameters}; the prompt starts from its shapes and settings")
        starts[key] = named
    return InitialisationPlan(entries, starts)


def _parameters_type(method: str) -> type:
    from models.prompting.methods import get_method

    return get_method(method).parameters_type
