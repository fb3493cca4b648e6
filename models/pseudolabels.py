"""Pseudolabels from zero-shot predictions on an unlabeled pool (Menghini et al., "Enhancing CLIP with CLIP").

FPL: the K most confident images per predicted class, fixed once. IFPL/GRIP iterate the same selection with
retrained prompts (a later stage builds on `select_top_k_per_class`).
"""

from __future__ import annotations

import numpy as np
import polars as pl


def pseudolabel_table(relative_paths: list[str], probabilities: np.ndarray) -> pl.DataFrame:
    """One row per pool image: its predicted class and the confidence of that prediction."""
    if len(relative_paths) != probabilities.shape[0]:
        raise ValueError(f"{len(relative_paths)} paths but {probabilities.shape[0]} probability rows")
    return pl.DataFrame(
        {
            "relative_path": relative_paths,
            "pseudo_label": probabilities.argmax(axis=1).astype(np.int64),
            "confidence": probabilities.max(axis=1).astype(np.float64),
        }
    )


def select_top_k_per_class(pseudolabels: pl.DataFrame, per_class: int) -> pl.DataFrame:
    """FPL selection: the `per_class` most confident rows of each pseudo class (ties broken by path)."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    return (
        pseudolabels.sort(["pseudo_label", "confidence", "relative_path"], descending=[False, True, False])
        .with_columns(rank=pl.int_range(pl.len()).over("pseudo_label"))
        .filter(pl.col("rank") < per_class)
        .drop("rank")
    )


def pseudolabel_accuracy(selected: pl.DataFrame, hidden_labels: pl.DataFrame) -> float:
    """Accuracy of the selected pseudolabels against the pool's true labels (relative_path, label)."""
    joined = selected.join(hidden_labels.select("relative_path", "label"), on="relative_path", how="left")
    if joined["label"].null_count():
        raise ValueError("some pseudolabelled images are missing from the labelled index")
    if joined.height == 0:
        return 0.0
    return float((joined["pseudo_label"] == joined["label"]).mean())
