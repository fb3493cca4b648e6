"""Tip-Adapter (Zhang et al., ECCV 2022): a training-free cache model of the few-shot images beside zero-shot CLIP.

Hooks: none in the towers; it acts in the joint feature space. The cache holds one key per training image, the mean
of its 10 augmented passes' raw image features (random resized crop 0.5-1 + flip), L2-normalised, and its one-hot
label as value (models/prompting/feature_adapters.py). An image feature f (normalised) is scored
  logits = 100 f W^T + alpha exp(-beta (1 - f K^T)) V,
with W the zero-shot classifier (the normalised template ensemble of the dataset's templates). The 100 is the
authors' constant, not the backbone's logit scale (the two agree for OpenAI's CLIP weights); the reference tiny CLIP
(logit scale 14.3) checks it. Nothing is learned by gradient (`trained_by_gradient = False`): `fit` builds the cache
from TrainingSet.view_inputs (N, P, E) and searches alpha and beta on TrainingSet.validation over the authors' grid,
beta_i = 0.1 + i (s0 - 0.1) / 200, alpha_j = 0.1 + j (s1 - 0.1) / 20 (search_scale [s0, s1], ImageNet's, Pets' and
UCF's [7, 3] by default), keeping the first best in their order; without val images it keeps beta = 1, alpha = 1.17.

Where it differs from the authors' code, deliberately:
- the values are one-hot over the experiment's classes (theirs: F.one_hot without num_classes, max label + 1) and
  fp32 (theirs fp16);
- the search starts from no choice rather than accuracy 0, so that a grid scoring 0 everywhere still keeps its first
  point (theirs returns beta = alpha = 0 there);
- the val images are the selection policy's (`full_val` as published: the dataset's whole val split); their
  ImageNet "val" is the test set, which is never used here;
- per-sample loss weights (pseudolabels) do not enter the cache: every cached image counts once, as in the original.

The checkpoint is the cache (keys (N, E), labels (N,)) and the chosen alpha and beta; N depends on the training set,
so a fresh classifier takes the cache's size from the checkpoint it loads. The values are per class, so the method
is class-specific.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from models.prompting.feature_adapters import (
    TIP_ZERO_SHOT_SCALE, AlphaBetaChoice, cache_keys_from_passes, cache_values, search_alpha_beta, search_grid,
    tip_logits, training_views, validation_set, zero_shot_text_weights,
)
from models.prompting.methods.cocoop import joint_embedding_dim
from models.prompting.methods.registry import (
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, matches_authors_code, register_method,
)
from models.prompting.training import TrainingHistory
from models.prompting.view_recipes import ViewRecipe

TIP_ADAPTER_CODE = "gaopengcuhk/Tip-Adapter at d0e2d6f"
TIP_ADAPTER_PAPER = Paper("Zhang et al.", "Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification",
                          "ECCV 2022", "https://arxiv.org/abs/2207.09519")
# The cache's 10 augmented passes (augment_epoch), random resized crop 0.5-1 (bicubic) + horizontal flip.
TIP_ADAPTER_VIEWS = ViewRecipe(passes=10, crop_scale=(0.5, 1.0), flip=True)


@dataclass(frozen=True)
class TipAdapterParameters:
    method: ClassVar[str] = "tip_adapter"  # for messages; a ClassVar is no parameter
    # The search's upper ends [beta's s0, alpha's s1]; the authors' configs/{imagenet,oxford_pets,ucf101}.yaml: [7, 3]
    # (Caltech [12, 5], DTD [13, 13], EuroSAT [12, 10], Aircraft [30, 30], Food [10, 10], Flowers [50, 50], Cars
    # [20, 10], SUN [12, 10]).
    search_scale: tuple[float, float] = (7.0, 3.0)
    search_steps: tuple[int, int] = (200, 20)  # grid points [beta's, alpha's] (search_step)
    init_beta: float = 1.0  # sharpness without val images (and Tip-Adapter-F's while it trains)
    init_alpha: float = 1.17  # residual ratio without val images (and Tip-Adapter-F's while it trains)

    def __post_init__(self) -> None:
        name = self.method
        scale, steps = self.search_scale, self.search_steps
        if (not isinstance(scale, (list, tuple)) or len(scale) != 2 or any(
                isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0
                for s in scale)):
            raise ValueError(f"{name}: search_scale must be [beta's scale, alpha's scale], two numbers > 0 (an "
                             f"alpha/beta grid that is empty or non-positive is refused), got {scale!r}")
        if (not isinstance(steps, (list, tuple)) or len(steps) != 2
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in steps)):
            raise ValueError(f"{name}: search_steps must be [beta's steps, alpha's steps], two integers >= 1 (an "
                             f"empty alpha/beta grid is refused), got {steps!r}")
        object.__setattr__(self, "search_scale", (float(scale[0]), float(scale[1])))
        object.__setattr__(self, "search_steps", (int(steps[0]), int(steps[1])))
        for field_name in ("init_beta", "init_alpha"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: {field_name} must be a finite number >= 0, got {value!r}")


class TipAdapterClassifier(PromptedClassifier):
    """Zero-shot CLIP plus a cache of the training images; before `fit` the cache is empty (zero-shot logits)."""

    trained_by_gradient = False
    trainable_keys: ClassVar[bool] = False  # Tip-Adapter-F trains its keys

    def __init__(self, context: ClassifierContext, parameters: TipAdapterParameters):
        super().__init__(context)
        self.parameters_used = parameters
        width, device = joint_embedding_dim(context.text_tower), self.logit_scale.device
        self.register_buffer("class_text_weights", zero_shot_text_weights(context).to(device))
        keys = torch.zeros(0, width, device=device)
        if self.trainable_keys:
            self.cache_keys = nn.Parameter(keys)
        else:
            self.register_buffer("cache_keys", keys)
        self.register_buffer("cache_labels", torch.zeros(0, dtype=torch.long, device=device))
        self.register_buffer("alpha", torch.tensor(float(parameters.init_alpha), device=device))
        self.register_buffer("beta", torch.tensor(float(parameters.init_beta), device=device))

    # The learned state: the cache and the chosen alpha, beta. Empty before fitting, since the cache's size is the
    # training set's; `_load_from_state_dict` takes the size from the state it loads.
    def trainable_state(self) -> dict[str, torch.Tensor]:
        if self.cache_keys.shape[0] == 0:
            return {}
        return {name: getattr(self, name).detach().cpu().contiguous()
                for name in ("cache_keys", "cache_labels", "alpha", "beta")}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        keys, labels = state_dict.get(prefix + "cache_keys"), state_dict.get(prefix + "cache_labels")
        if keys is not None and labels is not None:
            if keys.dim() != 2 or keys.shape[1] != self.cache_keys.shape[1] or labels.shape != keys.shape[:1]:
                raise ValueError(f"{self.parameters_used.method}: a cache of keys {tuple(keys.shape)} and labels "
                                 f"{tuple(labels.shape)} does not fit a {self.cache_keys.shape[1]}-wide embedding")
            if labels.numel() and int(labels.max()) >= len(self.classnames):
                raise ValueError(f"{self.parameters_used.method}: the cache holds labels up to {int(labels.max())}, "
                                 f"so it cannot be applied to {len(self.classnames)} classes (it is class-specific)")
            self.cache_keys.data = torch.empty(keys.shape, dtype=self.cache_keys.dtype, device=self.cache_keys.device)
            self.cache_labels.data = torch.empty(labels.shape, dtype=torch.long, device=self.cache_labels.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def text_features(self) -> torch.Tensor:
        return self.class_text_weights

    def affinity(self, image: torch.Tensor) -> torch.Tensor:
        """f K^T for normalised image features (Tip-Adapter-F: its trained keys, the authors' Linear adapter)."""
        return image @ self.cache_keys.t()

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        image = F.normalize(image_features.float(), dim=-1)
        values = cache_values(self.cache_labels, len(self.classnames), image.dtype)
        return tip_logits(image, self.class_text_weights, self.affinity(image), values, self.alpha, self.beta)

    @torch.no_grad()
    def set_cache(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        device = self.cache_keys.device
        self.cache_keys.data = keys.detach().to(device=device, dtype=torch.float32).clone()
        self.cache_labels.data = labels.detach().to(device=device, dtype=torch.long).clone()

    def build_cache(self, training_set) -> tuple[torch.Tensor, torch.Tensor]:
        """Cache keys from the mean of each image's passes; returns the training (views, labels)."""
        views, labels = training_views(training_set, self.parameters_used.method, len(self.classnames))
        self.set_cache(cache_keys_from_passes(views), labels)
        return views, labels

    @torch.no_grad()
    def choose_alpha_beta(self, validation: tuple[torch.Tensor, torch.Tensor] | None) -> dict:
        """Search alpha and beta on the val images with the current keys; without any, keep the initial values."""
        parameters = self.parameters_used
        if validation is None:
            self.alpha.fill_(parameters.init_alpha)
            self.beta.fill_(parameters.init_beta)
            return {"alpha": parameters.init_alpha, "beta": parameters.init_beta,
                    "alpha_beta_selection": "initial values: no val images under this selection policy"}
        was_training = self.training
        self.eval()
        device = self.cache_keys.device
        features, labels = validation
        image = F.normalize(features.to(device).float(), dim=-1)
        values = cache_values(self.cache_labels, len(self.classnames), image.dtype)
        betas, alphas = search_grid(parameters.search_scale, parameters.search_steps)
        choice: AlphaBetaChoice = search_alpha_beta(image, self.class_text_weights, self.affinity(image), values,
                                                    labels, betas, alphas)
        self.alpha.fill_(choice.alpha)
        self.beta.fill_(choice.beta)
        self.train(was_training)
        return {**choice.record(), "alpha_beta_selection": "grid search on the val images",
                "search_scale": list(parameters.search_scale), "search_steps": list(parameters.search_steps)}

    @torch.no_grad()
    def training_record(self, views: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """(cross-entropy, accuracy) of the fitted classifier on every training view."""
        flat = views.reshape(-1, views.shape[-1]).to(self.cache_keys.device)
        flat_labels = labels.repeat_interleave(views.shape[1]).to(flat.device)
        logits = self(flat)
        return float(F.cross_entropy(logits, flat_labels)), float((logits.argmax(1) == flat_labels).float().mean())

    def cache_record(self, views: torch.Tensor) -> dict:
        return {"cache_size": int(self.cache_keys.shape[0]), "passes_per_key": int(views.shape[1]),
                "zero_shot_scale": TIP_ZERO_SHOT_SCALE}

    def fit(self, training_set, optimization=None, on_epoch=None) -> TrainingHistory:
        """Build the cache from every training image's passes and choose alpha, beta on training_set.validation (no
        optimisation: the optimization settings do not apply)."""
        started = time.perf_counter()
        views, labels = self.build_cache(training_set)
        choice = self.choose_alpha_beta(validation_set(training_set, self.parameters_used.method,
                                                       len(self.classnames)))
        self.eval()
        loss, accuracy = self.training_record(views, labels)
        details = {**self.cache_record(views), **choice, "train_accuracy": accuracy}
        return TrainingHistory(epoch_losses=[loss], epoch_accuracies=[accuracy], seconds=time.perf_counter() - started,
                               steps=0, details=details)


register_method(
    MethodSpec(
        name="tip_adapter",
        parameters_type=TipAdapterParameters,
        build=TipAdapterClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="none in the towers: a cache of the few-shot image features (keys) and labels (values) beside the "
              "zero-shot classifier",
        description="Tip-Adapter: zero-shot logits plus alpha exp(-beta (1 - f K^T)) V over a cache of the training "
                    "images; alpha and beta searched on val, nothing trained.",
        class_specific=lambda parameters: True,
        paper=TIP_ADAPTER_PAPER,
        hook_points=("feature space",),
        verification=matches_authors_code(
            "tests/prompting/test_tip_adapter_reference.py::test_zero_shot_and_tip_logits_match_the_authors_code",
            TIP_ADAPTER_CODE,
            "Zero-shot and Tip-Adapter logits of both reference cases within 1e-6 relative or 1e-4 absolute "
            "(logits at scale 100)."),
        selection="full_val",
        selection_note="The authors search alpha and beta on the dataset's whole val split (for ImageNet their val "
                       "is the test set; here it has none and keeps the initial values).",
        training_views=TIP_ADAPTER_VIEWS,
    )
)
