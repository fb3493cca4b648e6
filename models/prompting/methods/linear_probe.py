"""Linear probe (CoOp's "linear probe CLIP" baseline): logistic regression on frozen, L2-normalised image features.

Hooks: none in the towers; a linear classifier on the cached image features replaces the text features. It is
fitted in closed form by scikit-learn's lbfgs, not by the SGD loop: `trained_by_gradient = False`, so
`models.experiments.train_prompts` calls `fit`. The learned weight (C, E) and bias (C,) are the checkpoint; they
are one row per class, so the method is class-specific (it cannot be applied to other classes).

Choosing the inverse regularisation C on the few-shot val subset follows CoOp's lpclip/linear_probe.py: a coarse
sweep C = 1e6, 1e4, ..., 1e-6, then 8 steps of a bisection in log10 space that starts one decade either side of the
best coarse value and keeps the better half each step. Where it differs, deliberately:
- the chosen C is the best of every value tried (CoOp keeps the winner of the last step);
- ties in val accuracy (frequent with 1-4 val images per class) go to the lower val cross-entropy, then to the
  smaller C, in the sweep, in the bisection and in the final choice, so the same inputs always give the same C;
- every view of each training image (original and mirrored) is a training sample, and per-sample loss weights
  (pseudolabels) go to sklearn's sample_weight;
- a dataset without a val set (ImageNet, whose val folder is its test set) gets C = 10**log10_c_without_val (1, the
  middle of the search): CoOp's script searches C on ImageNet's val, which is its test set, i.e. selects on test.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import nn

from models.prompting.methods.cocoop import joint_embedding_dim
from models.prompting.methods.registry import (
    ClassifierContext, MethodSpec, PromptedClassifier, register_method, tested_property,
)
from models.prompting.methods.zero_shot import CLIP_PAPER
from models.prompting.training import TrainingHistory


@dataclass(frozen=True)
class LinearProbeParameters:
    # CoOp's search: C from 10**6 down to 10**-6 in factors of 100, then 8 bisection steps; lbfgs, 1000 iterations.
    coarse_log10_c_max: float = 6.0
    coarse_log10_c_min: float = -6.0
    coarse_log10_step: float = 2.0
    # The bisection starts half a coarse step either side of the best coarse C, so (as in CoOp) it may end up to
    # half a step beyond the coarse bounds.
    refine_steps: int = 8
    max_iter: int = 1000
    # C where there is no val set to search it on (ImageNet: its val is its test set)
    log10_c_without_val: float = 0.0

    def __post_init__(self) -> None:
        if not self.coarse_log10_step > 0:
            raise ValueError(f"linear_probe: coarse_log10_step must be > 0, got {self.coarse_log10_step}")
        if self.coarse_log10_c_min > self.coarse_log10_c_max:
            raise ValueError(f"linear_probe: coarse_log10_c_min ({self.coarse_log10_c_min}) exceeds "
                             f"coarse_log10_c_max ({self.coarse_log10_c_max})")
        if self.refine_steps < 0:
            raise ValueError(f"linear_probe: refine_steps must be >= 0, got {self.refine_steps}")
        if self.max_iter < 1:
            raise ValueError(f"linear_probe: max_iter must be >= 1, got {self.max_iter}")

    def coarse_log10_grid(self) -> list[float]:
        """Exponents from the largest C down (CoOp's order), each an exact multiple of the step from the max."""
        count = int(math.floor((self.coarse_log10_c_max - self.coarse_log10_c_min) / self.coarse_log10_step + 1e-9))
        return [self.coarse_log10_c_max - index * self.coarse_log10_step for index in range(count + 1)]


def normalized_rows(features: torch.Tensor) -> np.ndarray:
    """L2-normalised features in float64, computed the same way for fitting and for prediction."""
    return F.normalize(features.detach().double().cpu(), dim=-1).numpy()


def fit_logistic_regression(
    features: np.ndarray, labels: np.ndarray, c: float, max_iter: int, sample_weight: np.ndarray | None = None
) -> tuple[LogisticRegression, bool]:
    """(fitted model, whether lbfgs converged within max_iter). lbfgs is deterministic for given inputs."""
    model = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, random_state=0)
    with warnings.catch_warnings():
        # Large C on separable few-shot data often stops at max_iter, as in CoOp; recorded in the details instead.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features, labels, sample_weight=sample_weight)
    return model, bool(np.max(model.n_iter_) < max_iter)


def cross_entropy(model: LogisticRegression, features: np.ndarray, labels: np.ndarray,
                  sample_weight: np.ndarray | None = None) -> float:
    probabilities = model.predict_proba(features)
    columns = np.searchsorted(model.classes_, labels)
    picked = np.clip(probabilities[np.arange(len(labels)), columns], 1e-300, None)
    return float(np.average(-np.log(picked), weights=sample_weight))


class LinearProbeClassifier(PromptedClassifier):
    trained_by_gradient = False

    def __init__(self, context: ClassifierContext, parameters: LinearProbeParameters):
        super().__init__(context)
        self.parameters_used = parameters
        n_classes, width = len(context.classnames), joint_embedding_dim(context.text_tower)
        device = self.logit_scale.device
        # Learned state (requires_grad so that trainable_state() checkpoints it); zeros = uniform before fitting.
        self.weight = nn.Parameter(torch.zeros(n_classes, width, device=device))
        self.bias = nn.Parameter(torch.zeros(n_classes, device=device))

    def text_features(self) -> torch.Tensor:
        raise NotImplementedError("the linear probe scores image features with its fitted weights, not text features")

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        # softmax of these logits is sklearn's predict_proba (multinomial; binary problems are stored as [0, z]).
        image = F.normalize(image_features.double(), dim=-1)
        return (image @ self.weight.double().t() + self.bias.double()).float()

    def load_fitted(self, model: LogisticRegression) -> None:
        coefficients, intercepts = model.coef_, model.intercept_
        if coefficients.shape[0] == 1:  # sklearn's binary model: one logit z for class 1, sigmoid(z)
            coefficients = np.concatenate([np.zeros_like(coefficients), coefficients])
            intercepts = np.concatenate([np.zeros_like(intercepts), intercepts])
        with torch.no_grad():
            self.weight.copy_(torch.from_numpy(coefficients).to(self.weight))
            self.bias.copy_(torch.from_numpy(intercepts).to(self.bias))

    def fit(self, training_set, optimization=None, on_epoch=None) -> TrainingHistory:
        """Fit on every view of the training features, choosing C on training_set.validation (no SGD; the
        optimization settings do not apply: lbfgs is deterministic)."""
        started = time.perf_counter()
        parameters = self.parameters_used
        n_classes = len(self.classnames)
        train_x, train_y, train_w = self._training_samples(training_set, n_classes)
        validation = training_set.validation
        if validation is None or validation[0].shape[0] == 0:
            return self._fit_without_validation(train_x, train_y, train_w, started)
        val_x, val_y = self._validation_samples(training_set, n_classes)

        tried: dict[float, dict] = {}  # log10 C -> record (fits are cached: the bisection revisits its ends)
        models: dict[float, LogisticRegression] = {}

        def rank(log10_c: float) -> tuple:
            # Higher val accuracy, then lower val cross-entropy, then stronger regularisation (smaller C).
            record = tried[log10_c]
            return record["val_accuracy"], -record["val_cross_entropy"], -log10_c

        def evaluate(log10_c: float, stage: str) -> tuple:
            if log10_c not in tried:
                model, converged = fit_logistic_regression(train_x, train_y, 10.0**log10_c, parameters.max_iter,
                                                           train_w)
                models[log10_c] = model
                tried[log10_c] = {
                    "c": 10.0**log10_c,
                    "log10_c": log10_c,
                    "stage": stage,
                    "val_accuracy": float(np.mean(model.predict(val_x) == val_y)),
                    "val_cross_entropy": cross_entropy(model, val_x, val_y),
                    "converged": converged,
                    "iterations": int(np.max(model.n_iter_)),
                }
            return rank(log10_c)

        coarse = parameters.coarse_log10_grid()
        peak = max(coarse, key=lambda exponent: evaluate(exponent, "coarse"))
        half_step = parameters.coarse_log10_step / 2
        left, right = peak - half_step, peak + half_step
        for _ in range(parameters.refine_steps):
            middle = 0.5 * (left + right)
            if evaluate(right, "refine") > evaluate(left, "refine"):
                left = middle
            else:
                right = middle
        chosen = max(tried, key=rank)
        model = models[chosen]
        self.load_fitted(model)
        train_accuracy = float(np.mean(model.predict(train_x) == train_y))
        train_loss = cross_entropy(model, train_x, train_y, train_w)
        details = {
            "solver": "lbfgs",
            "max_iter": parameters.max_iter,
            "coarse_c_grid": [10.0**exponent for exponent in coarse],
            "tried": list(tried.values()),  # in the order they were fitted
            "chosen_c": 10.0**chosen,
            "chosen_val_accuracy": tried[chosen]["val_accuracy"],
            "train_accuracy": train_accuracy,
            "train_samples": int(train_x.shape[0]),
            "val_samples": int(val_x.shape[0]),
        }
        # One "epoch" entry, so that consumers of the SGD history (final loss, accuracy) read the closed-form fit.
        return TrainingHistory(epoch_losses=[train_loss], epoch_accuracies=[train_accuracy],
                               seconds=time.perf_counter() - started, steps=len(tried), details=details)

    def _training_samples(self, training_set, n_classes: int):
        inputs = training_set.view_inputs
        if inputs.dim() == 2:
            inputs = inputs.unsqueeze(1)
        if inputs.dim() != 3:
            raise ValueError(f"linear_probe fits image features (N, V, E) or (N, E); got inputs of shape "
                             f"{tuple(training_set.view_inputs.shape)}")
        n_samples, n_views = inputs.shape[:2]
        labels = training_set.labels.detach().cpu().long()
        if labels.shape[0] != n_samples or n_samples == 0:
            raise ValueError(f"linear_probe: {n_samples} training feature rows but {labels.shape[0]} labels")
        self._check_labels(labels, n_classes, "training")
        missing = sorted(set(range(n_classes)) - set(labels.tolist()))
        if missing:
            raise ValueError(f"linear_probe needs training samples of every class; none for class(es) "
                             f"{[self.classnames[i] for i in missing]}")
        # Every view is a sample of its image's class, with its image's weight.
        features = normalized_rows(inputs.reshape(n_samples * n_views, -1))
        weights = None
        if training_set.sample_weights is not None:
            weights = training_set.sample_weights.detach().cpu().double().repeat_interleave(n_views).numpy()
        return features, labels.repeat_interleave(n_views).numpy(), weights

    def _fit_without_validation(self, train_x, train_y, train_w, started: float) -> TrainingHistory:
        """No val set: the declared C, no search (selecting on the test set is not an option)."""
        parameters = self.parameters_used
        c = 10.0**parameters.log10_c_without_val
        model, converged = fit_logistic_regression(train_x, train_y, c, parameters.max_iter, train_w)
        self.load_fitted(model)
        train_accuracy = float(np.mean(model.predict(train_x) == train_y))
        train_loss = cross_entropy(model, train_x, train_y, train_w)
        details = {"solver": "lbfgs", "max_iter": parameters.max_iter, "chosen_c": c, "converged": converged,
                   "c_selection": "fixed: the dataset has no val set (its val is its test set)",
                   "train_accuracy": train_accuracy, "train_samples": int(train_x.shape[0])}
        return TrainingHistory(epoch_losses=[train_loss], epoch_accuracies=[train_accuracy],
                               seconds=time.perf_counter() - started, steps=1, details=details)

    def _validation_samples(self, training_set, n_classes: int):
        validation = training_set.validation
        if validation is None or validation[0].shape[0] == 0:
            raise ValueError("linear_probe chooses its regularisation C on the few-shot val subset, but the training "
                             "set has no validation features (TrainingSet.validation is empty)")
        features, labels = validation
        if features.dim() == 3:  # (M, V, E): the original view only, as evaluation sees it
            features = features[:, 0]
        labels = labels.detach().cpu().long()
        if labels.shape[0] != features.shape[0]:
            raise ValueError(f"linear_probe: {features.shape[0]} val feature rows but {labels.shape[0]} labels")
        self._check_labels(labels, n_classes, "val")
        return normalized_rows(features), labels.numpy()

    @staticmethod
    def _check_labels(labels: torch.Tensor, n_classes: int, subset: str) -> None:
        if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
            raise ValueError(f"linear_probe: {subset} labels must lie in [0, {n_classes - 1}], got "
                             f"[{int(labels.min())}, {int(labels.max())}]")


register_method(
    MethodSpec(
        name="linear_probe",
        parameters_type=LinearProbeParameters,
        build=LinearProbeClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="none: logistic regression on the frozen image features (text tower unused)",
        description="Linear probe: L2-regularised logistic regression, C chosen on the few-shot val subset.",
        class_specific=lambda parameters: True,
        paper=CLIP_PAPER,  # its linear-probe evaluation
        hook_points=("feature space",),
        selection="few_shot_val",
        selection_note=("CoOp's lpclip searches C on the few-shot val subset; on ImageNet that val is the test set "
                        "(selection on test), where PromptLab has no val rows and uses C = 1."),
        verification=tested_property(
            "Its class probabilities equal scikit-learn's logistic regression fitted at the chosen C, and that C is "
            "the best on the val subset among the values tried.",
            "tests/prompting/test_linear_probe.py::test_probabilities_equal_sklearn_predict_proba_at_the_chosen_c"),
    )
)
