import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from models.evaluation.metrics import (
    classification_metrics,
    expected_calibration_error,
    harmonic_mean,
)


def _random_probabilities(generator: np.random.Generator, samples: int, classes: int) -> np.ndarray:
    logits = generator.normal(size=(samples, classes)) * 2.0
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_accuracy_and_macro_f1_agree_with_sklearn(seed):
    generator = np.random.default_rng(seed)
    probabilities = _random_probabilities(generator, 200, 7)
    labels = generator.integers(0, 7, size=200)
    metrics = classification_metrics(probabilities, labels, [f"class {i}" for i in range(7)])
    predicted = probabilities.argmax(axis=1)
    assert metrics.top1_accuracy == pytest.approx(accuracy_score(labels, predicted))
    assert metrics.macro_f1 == pytest.approx(f1_score(labels, predicted, average="macro"))
    np.testing.assert_array_equal(metrics.predicted_labels, predicted)
    np.testing.assert_allclose(metrics.confidences, probabilities.max(axis=1))
    per_class_f1 = f1_score(labels, predicted, average=None, labels=range(7), zero_division=0.0)
    np.testing.assert_allclose([record.f1 for record in metrics.per_class], per_class_f1)


def test_class_without_support_or_predictions_is_excluded_from_macro_f1():
    # Class 2 is neither a label nor predicted; class 3 is predicted once but never a label (its F1 is 0).
    probabilities = np.array([
        [0.7, 0.1, 0.1, 0.1],
        [0.1, 0.7, 0.1, 0.1],
        [0.6, 0.2, 0.1, 0.1],
        [0.1, 0.1, 0.1, 0.7],
    ])
    labels = np.array([0, 1, 1, 0])
    metrics = classification_metrics(probabilities, labels, ["a", "b", "c", "d"])
    predicted = probabilities.argmax(axis=1)
    assert metrics.macro_f1 == pytest.approx(f1_score(labels, predicted, average="macro"))
    # Hand check: F1(a) = 2*1/(2+2) = 0.5, F1(b) = 2*1/(2+1) = 2/3, F1(d) = 0; c excluded.
    assert metrics.macro_f1 == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)
    by_label = {record.label: record for record in metrics.per_class}
    assert by_label[2].f1 is None and by_label[2].accuracy is None and by_label[2].support == 0
    assert by_label[3].f1 == 0.0 and by_label[3].accuracy is None and by_label[3].num_predicted == 1
    assert by_label[1].accuracy == pytest.approx(0.5) and by_label[1].support == 2
    assert by_label[0].classname == "a"


def test_expected_calibration_error_hand_computed():
    probabilities = np.array([
        [0.90, 0.05, 0.03, 0.02],  # label 0: correct, confidence 0.90 -> bin (13/15, 14/15]
        [0.90, 0.05, 0.03, 0.02],  # label 1: wrong,   confidence 0.90 -> same bin
        [0.62, 0.18, 0.10, 0.10],  # label 0: correct, confidence 0.62 -> bin (9/15, 10/15]
        [0.30, 0.25, 0.25, 0.20],  # label 0: correct, confidence 0.30 -> bin (4/15, 5/15]
    ])
    labels = np.array([0, 1, 0, 0])
    metrics = classification_metrics(probabilities, labels, ["a", "b", "c", "d"])
    # 2/4 * |0.5 - 0.9| + 1/4 * |1 - 0.62| + 1/4 * |1 - 0.3|
    expected = 0.5 * 0.4 + 0.25 * 0.38 + 0.25 * 0.7
    assert metrics.expected_calibration_error == pytest.approx(expected)
    # Binning matters: one global bin would give |0.75 - 0.68| = 0.07.
    assert metrics.expected_calibration_error != pytest.approx(abs(0.75 - 0.68))


def test_expected_calibration_error_edges():
    # Confidence 1.0 belongs to the last bin; perfectly confident and correct predictions are calibrated.
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([True, True])) == 0.0
    # 0.95 correct and 0.55 wrong fall in different bins: (0.05 + 0.55) / 2.
    assert expected_calibration_error(np.array([0.95, 0.55]), np.array([1, 0])) == pytest.approx(0.30)
    # With a single bin the same two predictions give |0.5 - 0.75|.
    assert expected_calibration_error(np.array([0.95, 0.55]), np.array([1, 0]), num_bins=1) == pytest.approx(0.25)


def test_accepts_torch_tensors_and_matches_numpy():
    generator = np.random.default_rng(3)
    probabilities = _random_probabilities(generator, 50, 5).astype(np.float32)
    labels = generator.integers(0, 5, size=50)
    from_numpy = classification_metrics(probabilities, labels, list("abcde"))
    from_torch = classification_metrics(torch.from_numpy(probabilities), torch.from_numpy(labels), list("abcde"))
    assert from_numpy.scalar_metrics() == from_torch.scalar_metrics()
    assert set(from_numpy.scalar_metrics()) == {"top1_accuracy", "macro_f1", "expected_calibration_error"}


@pytest.mark.parametrize(
    ("probabilities", "labels", "classnames", "field"),
    [
        (np.array([[2.0, -1.0], [0.5, 0.5]]), np.array([0, 1]), ["a", "b"], "probabilities"),  # logits
        (np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([0, 2]), ["a", "b"], "labels"),  # label out of range
        (np.array([[0.5, 0.5]]), np.array([0]), ["a"], "classnames"),
        (np.array([[0.5, 0.5], [np.nan, 0.5]]), np.array([0, 1]), ["a", "b"], "probabilities"),
        (np.array([[0.5, 0.5]]), np.array([0.0]), ["a", "b"], "labels"),  # float labels
        (np.zeros((0, 2)), np.zeros(0, dtype=int), ["a", "b"], "probabilities"),
    ],
)
def test_bad_inputs_raise_naming_the_field(probabilities, labels, classnames, field):
    with pytest.raises(ValueError, match=field):
        classification_metrics(probabilities, labels, classnames)


def test_harmonic_mean():
    assert harmonic_mean(0.8, 0.6) == pytest.approx(2 * 0.8 * 0.6 / 1.4)
    assert harmonic_mean(0.6, 0.8) == harmonic_mean(0.8, 0.6)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(0.9, 0.0) == 0.0
    assert harmonic_mean(0.7, 0.7) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="new"):
        harmonic_mean(0.5, math.nan)
    with pytest.raises(ValueError, match="base"):
        harmonic_mean(-0.1, 0.5)
