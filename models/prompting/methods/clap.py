"""CLAP and ZS-LP (Silva-Rodriguez et al., CVPR 2024): a linear probe initialised with the zero-shot prototypes, with
(CLAP) or without (ZS-LP) a class-adaptive penalty that keeps each prototype near its text embedding.

Hooks: none in the towers; the classifier's prototypes w_c (C x E) live in the joint feature space. They start at
the zero-shot text embeddings t_c (the mean of the raw text features over the dataset's templates, the authors'
base_text_features) and score logits = exp(logit_scale) cos(f, w_c) (100 for OpenAI's CLIP weights; the authors'
code takes CLIP's logit scale). Loss: cross-entropy + mean_c lambda_c ||w_c - t_c||^2 (constraint "l2"; "none" is
ZS-LP), with lambda_c the mean softmax probability of class c under zero-shot CLIP over class c's augmented
training views, computed once before training and fixed (their "l2" default, "performance" multipliers).

Training views: 20 passes of Dassl's random resized crop 0.08-1 + flip per image, and every one of the 20 N views is
a training sample (the authors encode the training set 20 times and train on all views). `fit` therefore flattens
the passes into samples and runs the shared loop (models/prompting/training.py) on them; to keep the authors' number
of steps, their epoch of len(train loader) batches, floor(N / 256) but at least one (Dassl drops the last batch when
N >= 256), becomes that many optimizer steps, so 300 epochs are 300 x max(1, N // 256) steps of 256 views drawn
without replacement from the 20 N, with one warm-up epoch's steps at 1e-5 and a per-step cosine. Schedule: SGD (lr
0.1, momentum 0.9, no weight decay), batch 256, 300 epochs. No validation: the last step is kept.

Where it differs from the authors' code, deliberately:
- the cosine decays per step rather than per epoch (the same value at each epoch's first step), and their epoch's
  batches are the first of a fresh shuffle of the 20 N views, here consecutive batches of one shuffle after another;
- no test evaluation: their `grid_search` mode picks its configuration by test accuracy (not used here), and their
  log computes test accuracy after every batch.
The prototypes are per class, so the method is class-specific.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.prompting.feature_adapters import (
    DASSL_VIEWS, in_authors_epochs, raw_text_embeddings, steps_per_authors_epoch, training_views, validation_set,
)
from models.prompting.methods.registry import (
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, register_method, tested_property,
)
from models.prompting.training import OptimizationConfig, TrainingHistory, train_prompt_parameters


@dataclass(frozen=True)
class ClapParameters:
    # l2: CLAP's class-adaptive penalty, multipliers fixed from zero-shot (scripts/adapt.sh CONSTRAINT l2); none: ZS-LP
    constraint: Literal["l2", "none"] = "l2"

    def __post_init__(self) -> None:
        if self.constraint not in ("l2", "none"):
            raise ValueError(f"clap: constraint must be 'l2' (CLAP) or 'none' (ZS-LP), got {self.constraint!r}")


def zero_shot_true_class_probability(logits: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(C,) per class, the mean softmax probability of the true class over that class's samples (0 for a class
    without samples), as the authors' init_lagrangian_multipliers."""
    probabilities = logits.float().softmax(dim=-1)
    true_class = probabilities.gather(1, labels[:, None]).squeeze(1)
    totals = torch.zeros(n_classes, device=logits.device).index_add_(0, labels, true_class)
    counts = torch.bincount(labels, minlength=n_classes).float()
    return totals / counts.clamp_min(1)


class ClapClassifier(PromptedClassifier):
    trained_by_gradient = False  # `fit` flattens the views into samples, then runs the shared loop

    def __init__(self, context: ClassifierContext, parameters: ClapParameters):
        super().__init__(context)
        self.parameters_used = parameters
        base = raw_text_embeddings(context).to(self.logit_scale.device)
        self.register_buffer("base_text_features", base)
        self.register_buffer("constraint_weights", torch.zeros(base.shape[0], device=base.device))
        self.prototypes = nn.Parameter(base.clone())

    def text_features(self) -> torch.Tensor:
        return self.prototypes

    def constraint_penalty(self) -> torch.Tensor:
        """mean_c lambda_c ||w_c - t_c||^2."""
        distances = (self.prototypes.float() - self.base_text_features.float()).pow(2).sum(dim=-1)
        return (self.constraint_weights * distances).mean()

    def training_loss(self, image_features, labels, sample_weights=None):
        logits = self(image_features)
        loss = self.loss(logits.float(), labels, sample_weights)
        if self.parameters_used.constraint == "l2":
            loss = loss + self.constraint_penalty()
        return loss, logits

    @torch.no_grad()
    def set_constraint_weights(self, views: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """lambda_c from zero-shot CLIP (the initial prototypes) on every augmented view of the training images."""
        flat = views.reshape(-1, views.shape[-1]).to(self.prototypes.device)
        flat_labels = labels.repeat_interleave(views.shape[1]).to(flat.device)
        logits = self.logits_from(flat, self.base_text_features)
        weights = zero_shot_true_class_probability(logits, flat_labels, len(self.classnames))
        self.constraint_weights.copy_(weights)
        return weights

    def authors_schedule(self, optimization: OptimizationConfig, n_images: int) -> OptimizationConfig:
        """Their epochs of max(1, N // batch) steps, as a run of steps with the warm-up epochs' steps (unless steps
        are set)."""
        if optimization.steps is not None:
            return optimization
        per_epoch = steps_per_authors_epoch(n_images, optimization.batch_size, drop_last=True)
        return dataclasses.replace(optimization, steps=optimization.epochs * per_epoch,
                                   warmup_steps=optimization.warmup_epochs * per_epoch)

    def fit(self, training_set, optimization: OptimizationConfig, on_epoch=None) -> TrainingHistory:
        """Fix lambda from zero-shot, then train the prototypes on all P x N views as samples for the authors'
        number of steps (optimization: epochs, batch_size, learning_rate, momentum, weight_decay, warmup_*)."""
        if optimization is None or (optimization.epochs < 1 and optimization.steps is None):
            raise ValueError("clap trains for optimization.epochs >= 1 epochs (the authors: 300)")
        started = time.perf_counter()
        n_classes = len(self.classnames)
        views, labels = training_views(training_set, "clap", n_classes)
        n_images, n_passes = views.shape[:2]
        with torch.no_grad():
            self.prototypes.copy_(self.base_text_features)
        weights = (self.set_constraint_weights(views, labels) if self.parameters_used.constraint == "l2"
                   else self.constraint_weights.zero_())
        samples = views.reshape(n_images * n_passes, 1, views.shape[-1])
        sample_labels = labels.repeat_interleave(n_passes)
        sample_weights = (training_set.sample_weights.repeat_interleave(n_passes)
                          if training_set.sample_weights is not None else None)
        config = self.authors_schedule(optimization, n_images)
        history = train_prompt_parameters(self, samples, sample_labels, config, sample_weights=sample_weights,
                                          device=self.prototypes.device,
                                          validation=validation_set(training_set, "clap", n_classes),
                                          on_epoch=in_authors_epochs(on_epoch, samples.shape[0], config))
        distances = (self.prototypes.detach() - self.base_text_features).norm(dim=-1)
        history.details.update(constraint=self.parameters_used.constraint, constraint_weights=weights.tolist(),
                               samples=int(samples.shape[0]), views_per_image=int(n_passes),
                               optimizer_steps=config.steps, warmup_steps=config.warmup_steps,
                               mean_prototype_shift=float(distances.mean()))
        history.seconds = time.perf_counter() - started
        return history


register_method(
    MethodSpec(
        name="clap",
        parameters_type=ClapParameters,
        build=ClapClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="none in the towers: class prototypes initialised with the zero-shot text embeddings",
        description="CLAP: a zero-shot-initialised linear probe with a class-adaptive L2 penalty towards the text "
                    "embeddings (constraint none: ZS-LP).",
        class_specific=lambda parameters: True,
        paper=Paper("Silva-Rodriguez et al.", "A Closer Look at the Few-Shot Adaptation of Large Vision-Language "
                    "Models", "CVPR 2024", "https://arxiv.org/abs/2312.12730"),
        hook_points=("feature space",),
        verification=tested_property(
            "lambda_c is the mean zero-shot probability of the true class over class c's views, and with the "
            "constraint the trained prototypes stay closer to the text embeddings than ZS-LP's.",
            "tests/prompting/test_feature_space_baselines.py::"
            "test_clap_multipliers_are_zero_shot_true_class_probabilities"),
        selection="last",
        selection_note="No validation set (the last step is kept); the repository's grid_search mode selects on "
                       "test accuracy.",
        training_views=DASSL_VIEWS,
    )
)
