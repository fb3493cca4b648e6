"""The `learning_settings:` section of experiments.yaml: the data of the limited-label settings (SSL's labelled
images per class, TRZSL's split seeds), as a `LearningSettingsPlan`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.catalog.grid import ExperimentConfig
from models.catalog.validation import CatalogError, _check_fields, _is_integer, _shown


@dataclass(frozen=True)
class LearningSettingsPlan:
    """The `learning_settings:` section of experiments.yaml: the data of Menghini et al.'s limited-label settings
    (models/data/learning_settings.py). labels_per_class: SSL's labelled images per class (2); trzsl_split_seeds:
    experiment seed -> the split seed that draws TRZSL's seen classes (the authors' 500, 0, 200)."""

    labels_per_class: int = 2
    trzsl_split_seeds: dict[int, int] = field(default_factory=lambda: {1: 500, 2: 0, 3: 200})

    def split_seed(self, seed: int) -> int:
        if seed not in self.trzsl_split_seeds:
            raise CatalogError(f"learning_settings.trzsl_split_seeds has no split seed for experiment seed {seed}; "
                               f"it has {sorted(self.trzsl_split_seeds)}")
        return self.trzsl_split_seeds[seed]


def parse_learning_settings(path: Path, raw: Any, experiments: dict[str, ExperimentConfig]) -> LearningSettingsPlan:
    """The `learning_settings:` section (defaults when absent); every trzsl experiment's seed needs a split seed."""
    where = f"{path.name}: learning_settings"
    raw = raw or {}
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected a mapping, got {_shown(raw)}")
    _check_fields(where, raw, ("labels_per_class", "trzsl_split_seeds"))
    defaults = LearningSettingsPlan()
    labels_per_class = raw.get("labels_per_class", defaults.labels_per_class)
    if not isinstance(labels_per_class, int) or isinstance(labels_per_class, bool) or labels_per_class < 1:
        raise CatalogError(f"{where}.labels_per_class: expected an integer >= 1, got {_shown(labels_per_class)}")
    split_seeds = raw.get("trzsl_split_seeds", defaults.trzsl_split_seeds)
    if not isinstance(split_seeds, dict) or not all(
            _is_integer(k) and _is_integer(v) and k >= 0 and v >= 0 for k, v in split_seeds.items()):
        raise CatalogError(f"{where}.trzsl_split_seeds: expected a mapping of experiment seed to split seed "
                           f"(integers), got {_shown(split_seeds)}")
    plan = LearningSettingsPlan(labels_per_class, dict(split_seeds))
    for key, experiment in experiments.items():
        if experiment.setting == "trzsl" and experiment.seed not in plan.trzsl_split_seeds:
            raise CatalogError(f"{where}.trzsl_split_seeds: experiment {_shown(key)} has seed {experiment.seed}, which "
                               f"has no split seed (have {sorted(plan.trzsl_split_seeds)})")
    return plan
