"""CLIP-Adapter (Gao et al., IJCV 2023): a residual bottleneck MLP on the image feature, trained on few shots.

Hooks: none in the towers; it acts on the frozen image feature in the joint space. The adapter is
Linear(d, d / reduction, no bias) - ReLU - Linear(d / reduction, d, no bias) - ReLU on the raw image feature f, mixed
residually: f' = ratio MLP(f) + (1 - ratio) f (ratio 0.2, reduction 4). Logits = exp(logit_scale) norm(f') norm(t)^T
with t the frozen text features of the dataset's template(s) (the authors: one hand-written template per dataset;
here the template ensemble, which for one template is that template's features). Loss: cross-entropy. Trained by the
shared loop on cached augmented views: Dassl's random resized crop 0.08-1 + flip, 20 passes per image (the recipe of
CLAP and TaskRes, so the three share one cached set of views; over 50-200 epochs each view recurs 2-10 times).

Where it differs from the authors' code, deliberately:
- any backbone width d (their CustomCLIP hard-codes Adapter(1024, 4), RN50's width);
- no training schedule was released with the code: the schedule is LP++'s re-implementation (methods/clip_adapter.py,
  configs/base.yaml: SGD without momentum or weight decay, lr 0.01, batch 32, one warm-up epoch at 1e-5, cosine) with
  the epochs of its commented-out schedule (50 / 100 / 100 / 200 / 200 for 1 / 2 / 4 / 8 / 16 shots). LP++ steps its
  CosineAnnealingLR(T_max = epochs) and its one-epoch warm-up after every batch (so its warm-up lasts one step and its
  cosine restarts every 2 x epochs batches); here both are per epoch, as the Dassl settings they name. LP++'s copy
  also mixes with ratio 0.5 on normalised features; here the authors' 0.2 on the raw feature;
- a fresh augmentation per epoch is one of the 20 cached passes per image (the loop draws one per epoch);
- the adapter is initialised as nn.Linear's default from its own seed (`init_seed`), independent of the data seed.
Selection: the last epoch, as their Dassl trainer tests it (LP++'s copy selects on a val set).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.prompting.feature_adapters import DASSL_VIEWS
from models.prompting.methods.cocoop import joint_embedding_dim
from models.prompting.methods.registry import (
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, matches_authors_code, register_method,
)


@dataclass(frozen=True)
class ClipAdapterParameters:
    ratio: float = 0.2  # f' = ratio MLP(f) + (1 - ratio) f; hard-coded 0.2 in the authors' clip_adapter.py
    reduction: int = 4  # hidden width d / reduction; hard-coded 4 there
    init_seed: int = 0  # the adapter's initialisation, independent of the data seed

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 <= self.ratio <= 1:
            raise ValueError(f"clip_adapter: ratio must lie in [0, 1], got {self.ratio!r}")
        if isinstance(self.reduction, bool) or not isinstance(self.reduction, int) or self.reduction < 1:
            raise ValueError(f"clip_adapter: reduction must be an integer >= 1, got {self.reduction!r}")


class ResidualAdapter(nn.Module):
    """The authors' Adapter: fc = Linear(d, d / r, no bias), ReLU, Linear(d / r, d, no bias), ReLU (their layer
    names, so `fc.0.weight` and `fc.2.weight` map one to one)."""

    def __init__(self, width: int, reduction: int):
        super().__init__()
        hidden = width // reduction
        if hidden < 1:
            raise ValueError(f"clip_adapter: reduction {reduction} leaves no hidden unit for a {width}-wide embedding")
        self.fc = nn.Sequential(nn.Linear(width, hidden, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(hidden, width, bias=False), nn.ReLU(inplace=True))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


class ClipAdapterClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext, parameters: ClipAdapterParameters):
        super().__init__(context)
        self.parameters_used = parameters
        width, device = joint_embedding_dim(context.text_tower), self.logit_scale.device
        self.register_buffer("class_text_features", context.template_ensemble().to(device))
        # Seeded without touching the global RNG, so building a classifier never shifts other random draws.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(parameters.init_seed)
            self.adapter = ResidualAdapter(width, parameters.reduction).to(device)

    def text_features(self) -> torch.Tensor:
        return self.class_text_features

    def adapted_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """f' = ratio MLP(f) + (1 - ratio) f on the raw image feature."""
        ratio, features = self.parameters_used.ratio, image_features.float()
        return ratio * self.adapter(features) + (1 - ratio) * features

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.logits_from(self.adapted_features(image_features), self.class_text_features)


register_method(
    MethodSpec(
        name="clip_adapter",
        parameters_type=ClipAdapterParameters,
        build=ClipAdapterClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="none in the towers: a residual bottleneck MLP on the frozen image feature",
        description="CLIP-Adapter: f' = 0.2 MLP(f) + 0.8 f on the image feature, scored against the frozen "
                    "template text features.",
        paper=Paper("Gao et al.", "CLIP-Adapter: Better Vision-Language Models with Feature Adapters", "IJCV 2023",
                    "https://arxiv.org/abs/2110.04544"),
        hook_points=("feature space",),
        verification=matches_authors_code(
            "tests/prompting/test_clip_adapter_reference.py::test_logits_and_adapter_gradients_match_the_authors_code",
            "gaopengcuhk/CLIP-Adapter at 08d07f8",
            "Logits, loss and both layers' gradients within 1e-5 for reductions 4 and 2, from the authors' "
            "initialisation."),
        selection="last",
        selection_note="The authors' Dassl trainer tests the last epoch; no schedule was released (LP++'s "
                       "re-implementation picks its epoch on a val set).",
        training_views=DASSL_VIEWS,
    )
)
