"""Test-time tuning settings: the published defaults of TPT and DiffTPT, and the catalog's overrides.

A mode's settings (`TestTimeSettings`) and the recipe of its conventional views (`ViewRecipe`) are plain data that
validate themselves; they live in the catalog, which checks the `test_time:` section's modes with them, and
models/testtime (views, selection, tuning) runs them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

TEST_TIME_MODES = ("tpt", "difftpt")
DIFFTPT_FILTERS = ("code", "paper")
VIEW_AUGMENTATIONS = ("random_resized_crop", "augmix")  # models/testtime/views.py draws them
CROP_SCALE = (0.08, 1.0)


def check_fraction(name: str, value: float) -> float:
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"test-time setting {name} must be in (0, 1], got {value}")
    return float(value)


@dataclass(frozen=True)
class ViewRecipe:
    """How the conventional views of one image are drawn (recorded in the lineage and the feature-cache key)."""

    n_views: int = 64  # including the original v0
    augmentation: str = "random_resized_crop"
    crop_scale_min: float = CROP_SCALE[0]  # the smallest crop, as a fraction of the image area
    horizontal_flip: bool = True

    def __post_init__(self) -> None:
        if self.augmentation not in VIEW_AUGMENTATIONS:
            raise ValueError(f"view augmentation must be one of {VIEW_AUGMENTATIONS}, got {self.augmentation!r}")
        if self.n_views < 1:
            raise ValueError(f"n_views must be at least 1 (the original view), got {self.n_views}")
        if not 0.0 < self.crop_scale_min <= 1.0:
            raise ValueError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")


@dataclass(frozen=True)
class TestTimeSettings:
    """One test-time mode's settings; `published_settings(mode, overrides)` fills the published defaults."""

    __test__ = False  # not a pytest test class, despite its name

    mode: str
    n_views: int  # the original + conventional augmentations
    view_augmentation: str  # random_resized_crop | augmix (models/testtime/views.py)
    steps: int
    learning_rate: float = 5e-3
    weight_decay: float = 0.01  # torch AdamW's default, which the authors keep
    selection_fraction: float = 0.1  # TPT: lowest-entropy fraction of the views
    n_generated_views: int = 0  # DiffTPT: generated variations per image
    cosine_fraction: float = 0.8  # DiffTPT: views kept by the cosine filter
    entropy_fraction: float = 0.3  # DiffTPT: of those, the lowest-entropy fraction
    filter: str = "code"  # DiffTPT: "code" (authors' code: serial, logit cosine) | "paper" (parallel, image cosine)
    # the zero-shot start's context: "template" (the dataset template's words before the class name; start.py) or
    # words (TPT's --ctx_init a_photo_of_a)
    context_init: str = "template"
    seed: int = 1
    # DiffTPT: the seed the generated views are drawn from (per image, with its content hash). The authors generate
    # each image's pool once, offline, and tune with it under every seed; None: the run's seed.
    generation_seed: int | None = 0
    crop_scale_min: float = 0.08  # the random resized crops' smallest area fraction (torchvision's default)
    horizontal_flip: bool = True

    def __post_init__(self) -> None:
        if self.mode not in TEST_TIME_MODES:
            raise ValueError(f"test-time mode must be one of {TEST_TIME_MODES}, got {self.mode!r}")
        ViewRecipe(self.n_views, self.view_augmentation, self.crop_scale_min, self.horizontal_flip)  # validates
        if self.steps < 0:
            raise ValueError(f"test-time setting steps must be >= 0, got {self.steps}")
        for name in ("selection_fraction", "cosine_fraction", "entropy_fraction"):
            check_fraction(name, getattr(self, name))
        if self.filter not in DIFFTPT_FILTERS:
            raise ValueError(f"test-time setting filter must be one of {DIFFTPT_FILTERS}, got {self.filter!r}")
        if self.mode == "difftpt" and self.n_generated_views < 1:
            raise ValueError("difftpt needs n_generated_views >= 1 (the diffusion views)")
        if self.mode == "tpt" and self.n_generated_views:
            raise ValueError("tpt takes no generated views (n_generated_views must be 0); use mode difftpt")

    @property
    def recipe(self) -> ViewRecipe:
        return ViewRecipe(self.n_views, self.view_augmentation, self.crop_scale_min, self.horizontal_flip)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The authors' defaults: TPT (batch of 64 views, 10 % kept, one step), DiffTPT (the original + 64 conventional + 63
# generated views, 80 % by cosine then 30 % by entropy, four steps). AdamW lr 5e-3 for both.
PUBLISHED_DEFAULTS: dict[str, dict[str, Any]] = {
    "tpt": {"n_views": 64, "view_augmentation": "random_resized_crop", "steps": 1, "selection_fraction": 0.1},
    "difftpt": {"n_views": 65, "view_augmentation": "random_resized_crop", "steps": 4, "n_generated_views": 63,
                "cosine_fraction": 0.8, "entropy_fraction": 0.3, "filter": "code"},
}


def published_settings(mode: str, overrides: dict[str, Any] | None = None) -> TestTimeSettings:
    if mode not in PUBLISHED_DEFAULTS:
        raise ValueError(f"test-time mode must be one of {TEST_TIME_MODES}, got {mode!r}")
    known = {f.name for f in dataclasses.fields(TestTimeSettings)} - {"mode"}
    unknown = sorted(set(overrides or {}) - known)
    if unknown:
        raise ValueError(f"test-time mode {mode!r} has no setting(s) {unknown}; its settings are {sorted(known)}")
    return TestTimeSettings(mode=mode, **{**PUBLISHED_DEFAULTS[mode], **(overrides or {})})
