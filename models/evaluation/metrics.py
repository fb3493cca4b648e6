"""Classification metrics computed from predicted class probabilities.

Everything here is plain numpy so the numbers are identical on every machine and do not depend on scikit-learn
(the tests check agreement with it). Accuracy-like values are fractions in [0, 1], never percentages.

Conventions:
- The predicted label is the arg-max of the probabilities (ties go to the lowest class index) and its probability
  is the prediction's confidence.
- Macro-F1 averages the per-class F1 over the classes that occur in the labels or in the predictions. A class
  with no support and never predicted has an undefined F1 (0/0) and is excluded, as scikit-learn does by default.
- Expected calibration error uses 15 equal-width confidence bins (0, 1/15], (1/15, 2/15], ... (14/15, 1]:
  ECE = sum over bins of |bin| / N * |accuracy(bin) - mean confidence(bin)| (Guo et al., 2017).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

TOP1_ACCURACY = "top1_accuracy"
MACRO_F1 = "macro_f1"
EXPECTED_CALIBRATION_ERROR = "expected_calibration_error"
DEFAULT_CALIBRATION_BINS = 15

# Rows of a probability matrix must sum to 1 within this tolerance (float16 outputs included); a larger gap
# usually means logits were passed by mistake.
_PROBABILITY_SUM_TOLERANCE = 1e-2


@dataclass(frozen=True)
class ClassRecord:
    """Per-class results. `accuracy` is the recall of the class (correct / support) and is None without support;
    `f1` is None when the class has neither support nor predictions (excluded from macro-F1)."""

    label: int
    classname: str
    accuracy: float | None
    f1: float | None
    support: int
    num_predicted: int


@dataclass(frozen=True)
class ClassificationMetrics:
    top1_accuracy: float
    macro_f1: float
    expected_calibration_error: float
    per_class: tuple[ClassRecord, ...]
    predicted_labels: np.ndarray  # (N,) int64
    confidences: np.ndarray  # (N,) float64, probability of the predicted label
    num_samples: int

    def scalar_metrics(self) -> dict[str, float]:
        """The headline numbers keyed by their warehouse metric names."""
        return {
            TOP1_ACCURACY: self.top1_accuracy,
            MACRO_F1: self.macro_f1,
            EXPECTED_CALIBRATION_ERROR: self.expected_calibration_error,
        }


def _as_numpy(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch here
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values)
    except Exception as error:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name}: cannot be converted to a numpy array ({error})") from error


def _validate_inputs(probabilities: np.ndarray, labels: np.ndarray, classnames: list[str]) -> None:
    if probabilities.ndim != 2:
        raise ValueError(f"probabilities: expected shape (N, C), got {probabilities.shape}")
    num_samples, num_classes = probabilities.shape
    if num_samples == 0:
        raise ValueError("probabilities: no samples (N = 0)")
    if labels.shape != (num_samples,):
        raise ValueError(f"labels: expected shape ({num_samples},) to match probabilities, got {labels.shape}")
    if len(classnames) != num_classes:
        raise ValueError(f"classnames: {len(classnames)} names for {num_classes} probability columns")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected integer class indices, got dtype {labels.dtype}")
    out_of_range = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if out_of_range.size:
        row = int(out_of_range[0])
        raise ValueError(f"labels: row {row} has label {int(labels[row])} outside [0, {num_classes})")
    if not np.issubdtype(probabilities.dtype, np.floating):
        raise ValueError(f"probabilities: expected floating point values, got dtype {probabilities.dtype}")
    non_finite = np.argwhere(~np.isfinite(probabilities))
    if non_finite.size:
        raise ValueError(f"probabilities: non-finite value at row {int(non_finite[0][0])}")
    negative = np.argwhere(probabilities < 0)
    if negative.size:
        raise ValueError(f"probabilities: negative value at row {int(negative[0][0])} (logits instead of softmax?)")
    row_sums = probabilities.sum(axis=1, dtype=np.float64)
    bad_rows = np.flatnonzero(np.abs(row_sums - 1.0) > _PROBABILITY_SUM_TOLERANCE)
    if bad_rows.size:
        row = int(bad_rows[0])
        raise ValueError(f"probabilities: row {row} sums to {row_sums[row]:.4f}, not 1 (logits instead of softmax?)")


def expected_calibration_error(
    confidences: np.ndarray, correct: np.ndarray, num_bins: int = DEFAULT_CALIBRATION_BINS
) -> float:
    """ECE over `num_bins` equal-width bins of (0, 1]; a bin's upper edge is inclusive."""
    if num_bins < 1:
        raise ValueError(f"num_bins: must be >= 1, got {num_bins}")
    confidences = np.asarray(confidences, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidences.shape != correct.shape or confidences.ndim != 1 or confidences.size == 0:
        raise ValueError("confidences and correct: expected two non-empty vectors of the same length")
    bin_index = np.clip(np.ceil(confidences * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    confidence_sums = np.bincount(bin_index, weights=confidences, minlength=num_bins)
    correct_sums = np.bincount(bin_index, weights=correct, minlength=num_bins)
    # |sum(correct) - sum(confidence)| / N equals |bin| / N * |accuracy(bin) - confidence(bin)|.
    return float(np.abs(correct_sums - confidence_sums).sum() / confidences.size)


def classification_metrics(
    probabilities: np.ndarray,
    labels: np.ndarray,
    classnames: list[str],
    num_calibration_bins: int = DEFAULT_CALIBRATION_BINS,
) -> ClassificationMetrics:
    """Top-1 accuracy, macro-F1, ECE and per-class records from (N, C) probabilities and (N,) integer labels."""
    probabilities = _as_numpy(probabilities, "probabilities")
    labels = _as_numpy(labels, "labels")
    classnames = list(classnames)
    _validate_inputs(probabilities, labels, classnames)
    num_samples, num_classes = probabilities.shape
    labels = labels.astype(np.int64)

    predicted_labels = probabilities.argmax(axis=1).astype(np.int64)
    confidences = probabilities[np.arange(num_samples), predicted_labels].astype(np.float64)
    correct = predicted_labels == labels

    support = np.bincount(labels, minlength=num_classes)
    num_predicted = np.bincount(predicted_labels, minlength=num_classes)
    true_positives = np.bincount(labels[correct], minlength=num_classes)

    per_class: list[ClassRecord] = []
    f1_of_defined_classes: list[float] = []
    for label in range(num_classes):
        class_support = int(support[label])
        class_predicted = int(num_predicted[label])
        hits = int(true_positives[label])
        accuracy = hits / class_support if class_support else None
        if class_support == 0 and class_predicted == 0:
            f1 = None
        else:
            # F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted); it is 0 when either side is empty.
            f1 = 2.0 * hits / (class_support + class_predicted)
            f1_of_defined_classes.append(f1)
        per_class.append(ClassRecord(label, classnames[label], accuracy, f1, class_support, class_predicted))

    return ClassificationMetrics(
        top1_accuracy=float(correct.mean()),
        macro_f1=float(np.mean(f1_of_defined_classes)),
        expected_calibration_error=expected_calibration_error(confidences, correct, num_calibration_bins),
        per_class=tuple(per_class),
        predicted_labels=predicted_labels,
        confidences=confidences,
        num_samples=num_samples,
    )


def harmonic_mean(base: float, new: float) -> float:
    """Harmonic mean of base- and new-class accuracy, 2 * B * N / (B + N); 0 when both are 0."""
    for name, value in (("base", base), ("new", new)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: expected a finite non-negative accuracy, got {value}")
    if base + new == 0:
        return 0.0
    return 2.0 * base * new / (base + new)
