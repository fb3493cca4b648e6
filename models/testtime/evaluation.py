"""What a test-time evaluation scores: which test images, and what it records besides the tuned predictions."""

from __future__ import annotations

import numpy as np
import polars as pl

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
