"""What a test-time evaluation scores: which test images, and what it records besides the tuned predictions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from models.catalog.testtime_settings import TestTimeSettings
from models.testtime.tuning import TestTimeResult

# The test images a run scores do not depend on the run's seed: every mode and start is compared on the same images.
SUBSET_SEED = 0


def scored_test_rows(test_rows: pl.DataFrame, max_images: int | None) -> pl.DataFrame:
    """All test rows sorted by path, or a seeded random subset of max_images (DiffTPT: 1,000 per dataset)."""
    rows = test_rows.sort("relative_path")
    if max_images is None or rows.height <= max_images:
        return rows
    return rows.sample(n=max_images, seed=SUBSET_SEED).sort("relative_path")


def before_tuning_rows(result: TestTimeResult, test: pl.DataFrame) -> list:
    """MetricRows of the starting prompt on the original views (split `before_tuning`: what tuning changed) and of
    the views kept per image and the entropy before and after tuning (split `test`)."""
    from models.warehouse import MetricRow

    labels = test["label"].to_numpy()
    predicted = result.log_probabilities_before.argmax(axis=1)
    before = float(np.mean(predicted == labels))
    finite_after = [x for x in result.loss_after if np.isfinite(x)]
    rows = [MetricRow("before_tuning", "top1_accuracy", before),
            MetricRow("test", "mean_views_kept", float(np.mean(result.views_kept))),
            MetricRow("test", "mean_entropy_before", float(np.mean(result.loss_before)))]
    if finite_after:
        rows.append(MetricRow("test", "mean_entropy_after", float(np.mean(finite_after))))
    return rows


@dataclass
class ScoredTestTimeRun:
    """One dataset's test-time result: the tuned predictions, their metrics, and what the run started from."""

    dataset: str
    test: pl.DataFrame  # the scored test rows (relative_path, label, content_sha256)
    start: dict[str, Any]  # models.testtime.start.starting_classifier's description
    templates: list[str]  # what the prompt was built from (the zero-shot start: its context as a template)
    result: TestTimeResult
    split: Any  # models.experiments.SplitPredictions of split 'test'
    metrics: Any  # models.evaluation.metrics.classification_metrics of the split

    @property
    def before_tuning_top1(self) -> float:
        """Top-1 of the starting prompt on the original views."""
        return float(np.mean(self.result.log_probabilities_before.argmax(axis=1) == self.test["label"].to_numpy()))

    def metric_rows(self) -> list:
        from models.warehouse import MetricRow, metric_rows

        rows = metric_rows(self.split.split, self.metrics.scalar_metrics()) + before_tuning_rows(self.result, self.test)
        return rows + [MetricRow("test", "images_per_second", self.result.images_per_second)]


def tune_and_score(backbone, checkpoint_dir: Path, dataset: str, classnames: list[str], templates: list[str],
                   image_dir: Path, test: pl.DataFrame, settings: TestTimeSettings, generator=None,
                   variation_cache_dir: Path | None = None, feature_cache_dir: Path | None = None,
                   on_progress: Callable[[int, int, float], None] | None = None) -> ScoredTestTimeRun:
    """Tune the checkpoint's prompt per test image of one dataset (with that dataset's class names) and score it."""
    from models.evaluation.metrics import classification_metrics
    from models.experiments import evaluation_splits
    from models.prompting.methods import get_method
    from models.testtime.start import starting_classifier
    from models.testtime.tuning import TestTimeTuner, tune_test_images

    classifier, start = starting_classifier(checkpoint_dir, backbone, classnames, templates, settings.context_init)
    result = tune_test_images(
        TestTimeTuner(classifier, settings, backbone.device), get_method(start["tuned_method"]).frozen_image_encoder,
        backbone, image_dir, test["relative_path"].to_list(), test["content_sha256"].to_list(), generator=generator,
        variation_cache_dir=variation_cache_dir, feature_cache_dir=feature_cache_dir, on_progress=on_progress)
    (split,) = evaluation_splits(result.log_probabilities, test["label"].to_numpy(), test["relative_path"].to_list(),
                                 classnames, None, None)
    used = [f"{start['context_init']} {{}}."] if start["start_method"] == "zero_shot" else list(templates)
    return ScoredTestTimeRun(dataset, test, start, used, result, split,
                             classification_metrics(split.probabilities, split.labels, split.classnames))
