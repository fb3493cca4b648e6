"""Linear probe: equals scikit-learn's logistic regression at the chosen C, which is the best on the val subset."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from models.experiments import (TrainingSet, build_classifier, load_prompt_checkpoint, save_prompt_checkpoint,
                                train_prompts)
from models.prompting.methods import get_method
from models.prompting.methods.linear_probe import normalized_rows
from models.prompting.training import OptimizationConfig, predict_probabilities

TEMPLATES = ["a photo of a {}."]
WIDTH = 32  # joint embedding width of the reference tiny CLIP


def classnames(n_classes):
    return [f"class {index}" for index in range(n_classes)]


def synthetic_split(n_classes, per_class, noise, seed, views=1, class_counts=None):
    """Features around one random direction per class (the same directions for every seed of one problem)."""
    centres = torch.randn(n_classes, WIDTH, generator=torch.Generator().manual_seed(100))
    generator = torch.Generator().manual_seed(seed)
    counts = class_counts or [per_class] * n_classes
    labels = torch.cat([torch.full((count,), label) for label, count in enumerate(counts)])
    features = centres[labels].unsqueeze(1) + noise * torch.randn(len(labels), views, WIDTH, generator=generator)
    return (features if views > 1 else features[:, 0]), labels


def problem(n_classes=3, noise=1.0, views=2, class_counts=None):
    train = synthetic_split(n_classes, 16, noise, seed=1, views=views, class_counts=class_counts)
    val = synthetic_split(n_classes, 4, noise, seed=2)
    test = synthetic_split(n_classes, 100, noise, seed=3)
    return TrainingSet(train[0], train[1], validation=val), test


def fitted(reference_clip, training_set, n_classes, parameters=None):
    model, tokenizer = reference_clip
    classifier = build_classifier(model, tokenizer, "linear_probe", parameters or {}, classnames(n_classes), TEMPLATES)
    history = train_prompts(classifier, training_set, OptimizationConfig(epochs=0))
    return classifier, history


def sklearn_fit(training_set, c, sample_weight=None):
    features = training_set.view_inputs
    views = features.shape[1] if features.dim() == 3 else 1
    flat = normalized_rows(features.reshape(features.shape[0] * views, -1))
    labels = training_set.labels.repeat_interleave(views).numpy()
    weights = None if sample_weight is None else sample_weight.double().repeat_interleave(views).numpy()
    return LogisticRegression(C=c, solver="lbfgs", max_iter=1000).fit(flat, labels, sample_weight=weights)


def accuracy(probabilities, labels):
    return float((np.asarray(probabilities).argmax(axis=1) == labels.numpy()).mean())


@pytest.mark.parametrize("n_classes", [2, 4])
def test_probabilities_equal_sklearn_predict_proba_at_the_chosen_c(reference_clip, n_classes):
    training_set, (test_features, _) = problem(n_classes=n_classes, noise=1.5)
    classifier, history = fitted(reference_clip, training_set, n_classes)
    reference = sklearn_fit(training_set, history.details["chosen_c"])
    expected = reference.predict_proba(normalized_rows(test_features))
    ours = predict_probabilities(classifier, test_features).numpy()
    assert ours.shape == expected.shape == (len(test_features), n_classes)
    assert np.abs(ours - expected).max() < 1e-5


def test_chosen_c_is_the_best_on_val_among_the_values_tried(reference_clip):
    training_set, _ = problem(n_classes=5, noise=2.0)
    _, history = fitted(reference_clip, training_set, 5)
    details = history.details
    tried = details["tried"]
    assert details["coarse_c_grid"] == [1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6]  # CoOp's coarse sweep
    val_accuracies = [record["val_accuracy"] for record in tried]
    assert len(set(val_accuracies)) > 1  # the choice matters on this problem
    assert details["chosen_val_accuracy"] == max(val_accuracies)
    assert details["chosen_c"] in [record["c"] for record in tried]
    # the refinement bisects within one decade of the best coarse value, and fits new values
    refined = [record["c"] for record in tried if record["stage"] == "refine"]
    coarse_best = max((r for r in tried if r["stage"] == "coarse"),
                      key=lambda r: (r["val_accuracy"], -r["val_cross_entropy"], -r["log10_c"]))
    assert len(refined) >= 2
    assert all(coarse_best["c"] / 10 * (1 - 1e-9) <= c <= coarse_best["c"] * 10 * (1 + 1e-9) for c in refined)
    # the recorded val accuracy of the chosen C is what sklearn gives at that C
    val_features, val_labels = training_set.validation
    reference = sklearn_fit(training_set, details["chosen_c"])
    assert reference.score(normalized_rows(val_features), val_labels.numpy()) == details["chosen_val_accuracy"]
    assert history.epoch_accuracies == [details["train_accuracy"]] and len(history.epoch_losses) == 1


def test_separable_problem_is_learned_but_not_under_strong_regularisation(reference_clip):
    # imbalanced training classes: a fit whose weights are regularised away predicts the majority class
    training_set, (test_features, test_labels) = problem(noise=0.3, class_counts=[32, 16, 16])
    classifier, _ = fitted(reference_clip, training_set, 3)
    assert accuracy(predict_probabilities(classifier, test_features), test_labels) > 0.95
    strong = {"coarse_log10_c_max": -6.0, "coarse_log10_c_min": -6.0, "refine_steps": 0}
    regularised, history = fitted(reference_clip, training_set, 3, strong)
    assert history.details["chosen_c"] == 1e-6 and len(history.details["tried"]) == 1
    assert accuracy(predict_probabilities(regularised, test_features), test_labels) < 0.5


def test_same_inputs_give_identical_weights(reference_clip):
    training_set, _ = problem(noise=1.5)
    first, first_history = fitted(reference_clip, training_set, 3)
    second, second_history = fitted(reference_clip, training_set, 3)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert first_history.details == second_history.details
    assert first.weight.abs().sum() > 0


def test_sample_weights_reach_sklearn(reference_clip):
    training_set, (test_features, _) = problem(noise=1.5)
    weights = torch.linspace(0.2, 3.0, len(training_set.labels))
    weighted_set = TrainingSet(training_set.view_inputs, training_set.labels, weights,
                               validation=training_set.validation)
    single_c = {"coarse_log10_c_max": 0.0, "coarse_log10_c_min": 0.0, "refine_steps": 0}
    weighted, _ = fitted(reference_clip, weighted_set, 3, single_c)
    unweighted, _ = fitted(reference_clip, training_set, 3, single_c)
    expected = sklearn_fit(training_set, 1.0, sample_weight=weights).predict_proba(normalized_rows(test_features))
    ours = predict_probabilities(weighted, test_features).numpy()
    assert np.abs(ours - expected).max() < 1e-5
    assert not torch.allclose(weighted.weight, unweighted.weight)


@pytest.mark.parametrize("validation", [None, (torch.zeros(0, WIDTH), torch.zeros(0, dtype=torch.long))])
def test_without_a_val_set_c_is_the_declared_one_not_searched(reference_clip, validation):
    """ImageNet has no val set (its val is its test set): C is fixed at 10**log10_c_without_val, not searched
    (CoOp's script searches it on ImageNet's val, i.e. on test)."""
    training_set, _ = problem()
    training_set.validation = validation
    classifier, history = fitted(reference_clip, training_set, 3)
    assert history.details["chosen_c"] == 1.0 and "tried" not in history.details
    assert "no val set" in history.details["c_selection"]
    expected = sklearn_fit(training_set, 1.0)
    assert np.allclose(classifier.weight.detach().numpy(), expected.coef_, atol=1e-5)


def test_a_class_without_training_samples_fails_clearly(reference_clip):
    training_set, _ = problem()
    with pytest.raises(ValueError, match="class 3"):
        fitted(reference_clip, training_set, 4)


def test_checkpoint_round_trip_and_refusal_on_other_classes(tmp_path, reference_clip):
    model, tokenizer = reference_clip
    training_set, (test_features, _) = problem(noise=1.5)
    classifier, _ = fitted(reference_clip, training_set, 3)
    config = {"method": "linear_probe", "parameters": {}, "classnames": classnames(3), "templates": TEMPLATES}
    directory = save_prompt_checkpoint(tmp_path / "checkpoint", classifier, config)
    reloaded, _ = load_prompt_checkpoint(directory, model, tokenizer)
    assert torch.equal(predict_probabilities(reloaded, test_features), predict_probabilities(classifier, test_features))
    assert not get_method("linear_probe").transfers_to_other_classes()
    with pytest.raises(ValueError, match="class-specific"):
        load_prompt_checkpoint(directory, model, tokenizer, classnames=classnames(4))
