"""Pseudolabels on an unlabeled pool (Menghini et al., "Enhancing CLIP with CLIP", NeurIPS 2023), and the registry of
pseudolabelling strategies.

FPL: the K most confident images per predicted class from zero-shot CLIP, chosen once. IFPL: train, re-pseudolabel
the pool with the trained prompts, K fixed, for 10 rounds. GRIP: the same with K growing each round until the whole
pool is used. A strategy here is the schedule (rounds, K per round) and the loss weighting; the training rounds are
run by the caller.

Departures from the authors' code (their repository, read for ../shared/METHODS-2.md section 3):
- an image is pseudolabelled into one class at most, its most probable one (their leaderboard loop could put one
  image into several classes);
- ties in confidence are broken by path, so a selection does not depend on the pool's order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

# Menghini et al.'s two weightings of the labelled term against the pseudolabelled one (each CE averaged over its part
# of the batch): FPL scales the labelled loss by |PL|/|L|, IFPL and GRIP (update_training_set) by |L|/|PL|.
LABELLED_WEIGHTINGS: dict[str, Callable[[int, int], float]] = {
    "pseudo_over_labelled": lambda labelled, pseudo: pseudo / labelled,
    "labelled_over_pseudo": lambda labelled, pseudo: labelled / pseudo,
}


@dataclass(frozen=True)
class PseudolabelStrategy:
    """A pseudolabelling schedule: how many rounds, how many pseudolabels per class in each, how the loss weighs them.

    Round 0 pseudolabels with zero-shot CLIP; round r > 0 with the prompts trained in round r - 1. `per_class(r,
    pool_size, num_classes)` is K of round r; it never exceeds floor(pool_size / num_classes): a fixed K beyond that
    is refused, GRIP's growing K stops there (its last round uses the whole pool).
    """

    name: str
    rounds: int
    labelled_weighting: str
    growing: bool  # GRIP: K grows with the round; otherwise K is the experiment's `per_class`
    description: str

    def per_class(self, round_index: int, pool_size: int, num_classes: int, fixed_per_class: int = 16) -> int:
        if not 0 <= round_index < self.rounds:
            raise ValueError(f"{self.name}: round {round_index} outside 0..{self.rounds - 1}")
        if pool_size < 1 or num_classes < 1:
            raise ValueError(f"{self.name}: the pool ({pool_size} images) and the classes ({num_classes}) must be "
                             "non-empty")
        cap = pool_size // num_classes
        if self.growing:  # grip_train: K = int((r + 1) * |U| / 10 / C), capped at floor(|U| / C)
            if cap < 1:
                raise ValueError(f"{self.name}: a pool of {pool_size} images cannot give each of {num_classes} "
                                 "classes a pseudolabel")
            return max(1, min(int((round_index + 1) * pool_size / self.rounds / num_classes), cap))
        if fixed_per_class < 1 or fixed_per_class > cap:
            raise ValueError(f"{self.name}: K = {fixed_per_class} per class needs {fixed_per_class * num_classes} "
                             f"pool images for {num_classes} classes, but the pool holds {pool_size}")
        return fixed_per_class

    def labelled_loss_weight(self, num_labelled: int, num_pseudolabelled: int) -> float:
        """The factor on the labelled loss term (the pseudolabelled term has weight 1)."""
        if num_labelled < 1 or num_pseudolabelled < 1:
            return 1.0  # one of the two terms is absent: nothing to balance
        return LABELLED_WEIGHTINGS[self.labelled_weighting](num_labelled, num_pseudolabelled)


STRATEGIES: dict[str, PseudolabelStrategy] = {
    "fpl": PseudolabelStrategy("fpl", rounds=1, labelled_weighting="pseudo_over_labelled", growing=False,
                               description="top-K per class by zero-shot confidence, fixed"),
    "ifpl": PseudolabelStrategy("ifpl", rounds=10, labelled_weighting="labelled_over_pseudo", growing=False,
                                description="iterative: re-pseudolabel with the trained prompts, K fixed, 10 rounds"),
    "grip": PseudolabelStrategy("grip", rounds=10, labelled_weighting="labelled_over_pseudo", growing=True,
                                description="iterative with K growing by a tenth of the pool per class each round"),
}


def get_strategy(name: str, labelled_weighting: str | None = None) -> PseudolabelStrategy:
    """The registered strategy; `labelled_weighting` replaces its published loss weighting (a grid parameter)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown pseudolabel strategy {name!r}; known: {sorted(STRATEGIES)}")
    if labelled_weighting is None:
        return STRATEGIES[name]
    if labelled_weighting not in LABELLED_WEIGHTINGS:
        raise ValueError(f"unknown labelled-loss weighting {labelled_weighting!r}; known: {sorted(LABELLED_WEIGHTINGS)}")
    return replace(STRATEGIES[name], labelled_weighting=labelled_weighting)


def pseudolabel_table(relative_paths: list[str], probabilities: np.ndarray) -> pl.DataFrame:
    """One row per pool image: its predicted class and the confidence of that prediction."""
    return pseudolabel_candidates(relative_paths, probabilities, tuple(range(probabilities.shape[1])))


def pseudolabel_candidates(relative_paths: list[str], probabilities: np.ndarray,
                           classes: tuple[int, ...]) -> pl.DataFrame:
    """Each pool image's most probable class among `classes` (probabilities renormalised over them) and its
    confidence; labels are the original class indices."""
    if probabilities.shape[0] != len(relative_paths):
        raise ValueError(f"{len(relative_paths)} pool images but {probabilities.shape[0]} probability rows")
    columns = np.asarray(classes, dtype=np.int64)
    restricted = probabilities[:, columns]
    if len(columns) < probabilities.shape[1]:  # a subset of the classes (TRZSL's unseen): renormalised over them
        restricted = restricted / np.clip(restricted.sum(axis=1, keepdims=True), 1e-300, None)
    best = restricted.argmax(axis=1)
    return pl.DataFrame({"relative_path": relative_paths, "pseudo_label": columns[best],
                         "confidence": restricted.max(axis=1).astype(np.float64)})


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


def _with_hidden_labels(selected: pl.DataFrame, hidden_labels: pl.DataFrame) -> pl.DataFrame:
    """The selection joined with the pool's true labels (relative_path, label), and whether each pseudolabel is right."""
    joined = selected.join(hidden_labels.select("relative_path", "label"), on="relative_path", how="left")
    if joined["label"].null_count():
        raise ValueError("some pseudolabelled images are missing from the labelled index")
    return joined.with_columns(correct=(pl.col("pseudo_label") == pl.col("label")).cast(pl.Float64))


def pseudolabel_accuracy(selected: pl.DataFrame, hidden_labels: pl.DataFrame) -> float:
    """Accuracy of the selected pseudolabels against the pool's true labels (relative_path, label)."""
    joined = _with_hidden_labels(selected, hidden_labels)
    return float(joined["correct"].mean()) if joined.height else 0.0


def pseudolabel_quality(selected: pl.DataFrame, hidden_labels: pl.DataFrame, num_classes: int) -> dict[str, float]:
    """How good one round's pseudolabels are, against the pool's hidden labels: accuracy, class coverage (share of
    classes given at least one pseudolabel), the lowest per-class accuracy among covered classes, and the expected
    calibration error of the confidences (a well-calibrated selection is as often right as it is confident)."""
    from models.evaluation.metrics import expected_calibration_error

    if selected.height == 0:
        return {"pseudolabel_accuracy": 0.0, "class_coverage": 0.0, "worst_class_accuracy": 0.0,
                "confidence_calibration_error": 0.0, "num_pseudolabels": 0.0}
    joined = _with_hidden_labels(selected, hidden_labels)
    per_class = joined.group_by("pseudo_label").agg(pl.col("correct").mean())
    return {
        "pseudolabel_accuracy": float(joined["correct"].mean()),
        "class_coverage": per_class.height / num_classes,
        "worst_class_accuracy": float(per_class["correct"].min()),
        "confidence_calibration_error": expected_calibration_error(joined["confidence"].to_numpy(),
                                                                   joined["correct"].to_numpy()),
        "num_pseudolabels": float(selected.height),
    }
