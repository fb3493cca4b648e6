"""TaskRes (Yu et al., CVPR 2023): a learned, class-specific residual added to the frozen zero-shot text classifier.

Hooks: none in the towers; it acts on the text side of the joint feature space. With t_c the base text feature of
class c (the mean of the raw, unnormalised text features over the dataset's templates, as the authors' "regular
base": one template for most datasets, the ImageNet ensemble for ImageNet) and x (C x E) the residual, initialised to
zeros and the only trained tensor, t'_c = t_c + alpha x_c (alpha 0.5) and
  logits = exp(logit_scale) norm(f) norm(t')^T,
so at initialisation the classifier is zero-shot CLIP on that base. Loss: cross-entropy. Trained by the shared loop:
Adam (their train_regular.sh: lr 2e-3 for every dataset but ImageNet's 2e-4; Dassl's default weight decay 5e-4 as
L2), batch 256, 100 epochs for 1/2/4 shots and 200 for 8/16, one warm-up epoch at 1e-5, cosine; the last epoch is
kept, as they test it. The residual is per class, so the method is class-specific (refused for base-to-new's new
classes and for transfer).

Where it differs from the authors' code, deliberately:
- lr 2e-3 (train_regular.sh, the 11-dataset few-shot table) rather than their ViT-B/16 config file's 2e-4, which is
  the ImageNet learning rate; a grid entry may set either;
- a fresh augmentation per epoch is one of 20 cached passes per image of Dassl's random resized crop 0.08-1 + flip
  (the loop draws one per epoch), and the last partial batch is kept (Dassl drops it when there are >= 256 images);
- only the regular base: the "enhanced base" (text projection weights they distribute separately) is not available.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.prompting.feature_adapters import DASSL_VIEWS, raw_text_embeddings
from models.prompting.methods.registry import (
    DASSL_LAST_EPOCH, ClassifierContext, MethodSpec, Paper, PromptedClassifier, register_method, tested_property,
)


@dataclass(frozen=True)
class TaskResParameters:
    residual_scale: float = 0.5  # alpha in t + alpha x: RESIDUAL_SCALE in train_regular.sh (1.0 for Flowers only)

    def __post_init__(self) -> None:
        value = self.residual_scale
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"taskres: residual_scale must be a finite number > 0, got {value!r}")


class TaskResClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext, parameters: TaskResParameters):
        super().__init__(context)
        self.parameters_used = parameters
        base = raw_text_embeddings(context).to(self.logit_scale.device)
        self.register_buffer("base_text_features", base)
        self.text_residual = nn.Parameter(torch.zeros_like(base))

    def text_features(self) -> torch.Tensor:
        return self.base_text_features + self.parameters_used.residual_scale * self.text_residual


register_method(
    MethodSpec(
        name="taskres",
        parameters_type=TaskResParameters,
        build=TaskResClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="none in the towers: a learned per-class residual added to the frozen text classifier",
        description="TaskRes: text classifier t + 0.5 x with a zero-initialised, per-class residual x, trained by "
                    "Adam.",
        class_specific=lambda parameters: True,
        paper=Paper("Yu et al.", "Task Residual for Tuning Vision-Language Models", "CVPR 2023",
                    "https://arxiv.org/abs/2211.10277"),
        hook_points=("feature space",),
        verification=tested_property(
            "At initialisation (x = 0) its logits are zero-shot CLIP's on its base text features, and only the "
            "residual receives a gradient.",
            "tests/prompting/test_feature_space_baselines.py::test_taskres_at_initialisation_is_zero_shot_clip"),
        selection="last",
        selection_note=DASSL_LAST_EPOCH,
        training_views=DASSL_VIEWS,
    )
)
