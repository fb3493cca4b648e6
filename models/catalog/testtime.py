"""The `test_time:` section of experiments.yaml: which test-time runs exist, on which datasets.

    test_time:
      sources: [Shapes]            # each is evaluated with its shifted variants (domain_shift_of), as TPT's table
      max_test_images: null        # a seeded random subset per dataset (DiffTPT's protocol: 1,000); null = all
      modes:                       # settings over the published defaults (testtime_settings.py)
        tpt: {}
        difftpt: {diffusion_backbone: embedded-ddpm}
      runs:
        - {mode: tpt, start: zeroshot, seeds: [1, 2, 3]}   # a start without a seed takes `seeds` (the views' seed)
        - {mode: tpt, start: "coop-k16-s?"}                # a checkpoint's own seed draws the views

A run key reads `<mode>-<start experiment>[-s<seed>]` (tpt-zeroshot-s1, tpt-coop-k16-s1). One partition per source
x run; it evaluates the source and each of its shifted variants, one warehouse run per dataset.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.catalog.datasets import DatasetEntry, _dataset_names
from models.catalog.grid import ExperimentConfig
from models.catalog.testtime_settings import published_settings
from models.catalog.validation import CatalogError, _check_fields, _field_error
from models.prompting.methods import METHODS

MODE_FIELDS_OUTSIDE_SETTINGS = ("diffusion_backbone", "diffusion")


@dataclass(frozen=True)
class TestTimeRun:
    __test__ = False  # not a pytest test class, despite its name

    key: str
    mode: str  # tpt | difftpt
    start: str  # the experiment whose checkpoint the run starts from (zero-shot's too)
    seed: int  # draws the views (and the generated views' seeds)
    settings: dict[str, Any]  # overrides of the mode's published defaults (models.testtime.tuning)
    diffusion_backbone: str | None = None  # difftpt: the catalog's diffusion backbone; None: the default
    diffusion: dict[str, Any] = field(default_factory=dict)  # difftpt: generation overrides (strength, steps, ...)

    def lineage(self) -> dict[str, Any]:
        return {"test_time_run": self.key, "mode": self.mode, "start": self.start, "seed": self.seed,
                "settings": self.settings, "diffusion_backbone": self.diffusion_backbone,
                "diffusion": self.diffusion}


@dataclass(frozen=True)
class TestTimePlan:
    __test__ = False  # not a pytest test class, despite its name

    runs: dict[str, TestTimeRun] = field(default_factory=dict)
    targets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # source -> (source, shifted variants...)
    max_test_images: int | None = None

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self.targets)

    def run(self, key: str) -> TestTimeRun:
        if key not in self.runs:
            raise CatalogError(f"unknown test-time run {key!r}; the catalog has {sorted(self.runs)}")
        return self.runs[key]

    def lineage(self, key: str) -> dict[str, Any]:
        """What a run's results depend on in the catalog: the run and how many test images per dataset it scores
        (a grid subset may score fewer than the section: its rows are another configuration, not the same one)."""
        return {**self.run(key).lineage(), "max_test_images": self.max_test_images}

    def restricted_to(self, experiments: dict[str, ExperimentConfig], seeds: list[int] | None,
                      datasets: Collection[str] | None = None, modes: list[str] | None = None,
                      starts: list[str] | None = None, max_test_images: int | None = None,
                      where: str = "grids.yaml: test_time") -> "TestTimePlan":
        """What a grid subset keeps: the runs whose start survives it and whose seed its `seeds` filter keeps; with
        its `test_time:` block, only the runs of those `modes` and `starts` (keys or shell-style patterns), scoring
        `max_test_images` (instead of the section's; part of each run's recorded configuration); with its `datasets`
        filter, the sources and targets among them. A `starts` pattern matching no run's start, and a block that
        keeps no run, are refused naming `where` (the block)."""
        known_starts = sorted({run.start for run in self.runs.values()})
        for pattern in starts or []:
            if not any(fnmatch.fnmatchcase(start, pattern) for start in known_starts):
                raise CatalogError(f"{where}.starts: {pattern!r} matches no start of a test-time run of "
                                   f"experiments.yaml ({known_starts})")
        runs = {key: run for key, run in self.runs.items()
                if run.start in experiments and (seeds is None or run.seed in seeds)
                and (modes is None or run.mode in modes)
                and (starts is None or any(fnmatch.fnmatchcase(run.start, pattern) for pattern in starts))}
        targets = {source: tuple(name for name in names if datasets is None or name in datasets)
                   for source, names in self.targets.items() if datasets is None or source in datasets}
        if (modes, starts, max_test_images) != (None, None, None) and not (runs and targets):
            raise CatalogError(f"{where}: keeps no test-time run (experiments.yaml's runs {sorted(self.runs)} on "
                               f"{list(self.sources)}, restricted to the subset's experiments, seeds and datasets)")
        if not (runs and targets):
            return TestTimePlan()
        return TestTimePlan(runs, targets, max_test_images or self.max_test_images)


def parse_test_time(path: Path, raw: Any, datasets: dict[str, DatasetEntry],
                    experiments: dict[str, ExperimentConfig], diffusion_backbones: dict[str, Any] | None = None,
                    default_diffusion_backbone: str | None = None) -> TestTimePlan:
    if raw is None:
        return TestTimePlan()
    where = f"{path.name}: test_time"
    _check_fields(where, raw, ("sources", "max_test_images", "modes", "runs"))
    sources = _dataset_names(f"{where}.sources", raw.get("sources"), datasets)
    targets = {source: (source, *(name for name, entry in datasets.items() if entry.domain_shift_of == source))
               for source in sources}
    max_images = raw.get("max_test_images")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise CatalogError(f"{where}.max_test_images: expected a positive integer or null, got {max_images!r}")
    modes = raw.get("modes") or {}
    if not isinstance(modes, dict):
        raise CatalogError(f"{where}.modes: expected a mapping of mode -> settings, got {modes!r}")
    for mode, settings in modes.items():
        settings = dict(settings or {})
        try:
            published_settings(mode, {k: v for k, v in settings.items() if k not in MODE_FIELDS_OUTSIDE_SETTINGS})
        except (ValueError, TypeError) as error:
            raise CatalogError(f"{where}.modes.{mode}: {error}") from error
        if mode == "difftpt" and diffusion_backbones is not None:
            name = settings.get("diffusion_backbone") or default_diffusion_backbone
            if name not in diffusion_backbones:
                raise CatalogError(f"{where}.modes.{mode}.diffusion_backbone: {name!r} is not a diffusion backbone of "
                                   f"backbones.yaml ({sorted(diffusion_backbones)})")
            diffusion_backbones[name].overridden(settings.get("diffusion"), f"{where}.modes.{mode}.diffusion")
    entries = raw.get("runs")
    if not isinstance(entries, list) or not entries:
        raise CatalogError(f"{where}.runs: expected a non-empty list of {{mode, start, seeds}}, got {entries!r}")
    runs: dict[str, TestTimeRun] = {}
    for index, entry in enumerate(entries):
        place = f"{where}.runs[{index}]"
        _check_fields(place, entry, ("mode", "start", "seeds"))
        mode = entry.get("mode")
        if mode not in modes:
            raise CatalogError(f"{place}: mode {mode!r} is not one of test_time.modes {list(modes)}")
        pattern = entry.get("start")
        matched = [key for key in experiments if isinstance(pattern, str) and fnmatch.fnmatchcase(key, pattern)]
        if not matched:
            raise CatalogError(f"{place}: start {pattern!r} matches no experiment of the grid")
        settings = dict(modes[mode] or {})
        outside = {k: settings.pop(k) for k in MODE_FIELDS_OUTSIDE_SETTINGS if k in settings}
        for key in matched:
            experiment = experiments[key]
            spec = METHODS[experiment.method]
            if spec.trains_prompts and not spec.transfers_to_other_classes(experiment.parameters):
                raise CatalogError(f"{place}: {key} learns a state per class; a shifted variant's classes cannot "
                                   "use it")
            if spec.trains_prompts and experiment.protocol != "all_classes":
                raise CatalogError(f"{place}: {key} was trained on base classes only ({experiment.protocol})")
            if experiment.seed is not None:
                if entry.get("seeds") is not None:
                    raise CatalogError(f"{place}: {key} has its own seed {experiment.seed}; `seeds` is for starts "
                                       "without one (zero-shot)")
                seeds = [experiment.seed]
            else:
                seeds = entry.get("seeds") or [1]
                if not isinstance(seeds, list) or any(not isinstance(s, int) for s in seeds):
                    raise CatalogError(f"{place}.seeds: expected a list of integers, got {seeds!r}")
            for seed in seeds:
                run_key = f"{mode}-{key}" + ("" if experiment.seed is not None else f"-s{seed}")
                if run_key in runs:
                    raise CatalogError(f"{place}: run {run_key} is listed twice")
                runs[run_key] = TestTimeRun(run_key, mode, key, int(seed), settings,
                                            outside.get("diffusion_backbone"), dict(outside.get("diffusion") or {}))
    return TestTimePlan(runs, targets, max_images)


def _check_test_time_shapes(path: Path, raw: Any) -> None:
    """The shapes parse_test_time reads without checking: each mode's settings a mapping
    and its diffusion_backbone a name; each run's mode and start strings. A list or a string there is refused naming
    the field, not met later as a TypeError."""
    if not isinstance(raw, dict):
        return  # parse_test_time refuses it, naming the section
    where = f"{path.name}: test_time"
    modes = raw.get("modes")
    for mode, settings in (modes.items() if isinstance(modes, dict) else ()):
        if settings is not None and not isinstance(settings, dict):
            raise _field_error(f"{where}.modes", str(mode), "a mapping of the mode's settings", settings)
        backbone = (settings or {}).get("diffusion_backbone")
        if backbone is not None and not isinstance(backbone, str):
            raise _field_error(f"{where}.modes.{mode}", "diffusion_backbone", "a diffusion backbone's name", backbone)
    runs = raw.get("runs")
    for index, entry in enumerate(runs if isinstance(runs, list) else ()):
        for text_field in ("mode", "start"):
            value = entry.get(text_field) if isinstance(entry, dict) else None
            if value is not None and not isinstance(value, str):
                raise _field_error(f"{where}.runs[{index}]", text_field, "a string", value)
