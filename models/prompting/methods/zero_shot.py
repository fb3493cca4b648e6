"""Zero-shot CLIP: hand-crafted templates, averaged over templates when there are several (prompt ensembling)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.prompting.methods.registry import (
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, register_method, tested_property,
)

CLIP_PAPER = Paper("Radford et al.", "Learning Transferable Visual Models From Natural Language Supervision",
                   "ICML 2021", "https://arxiv.org/abs/2103.00020")


@dataclass(frozen=True)
class ZeroShotParameters:
    pass


class ZeroShotClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext):
        super().__init__(context)
        self.register_buffer(
            "class_text_features",
            context.template_ensemble(),
        )

    def text_features(self) -> torch.Tensor:
        return self.class_text_features


register_method(
    MethodSpec(
        name="zero_shot",
        parameters_type=ZeroShotParameters,
        build=lambda context, parameters: ZeroShotClassifier(context),
        trains_prompts=False,
        frozen_image_encoder=True,
        hooks="none: hand-crafted text prompts",
        description="Zero-shot CLIP with the dataset's template(s); several templates are ensembled.",
        paper=CLIP_PAPER,
        hook_points=(),
        verification=tested_property(
            "With several templates, each class's text feature is the mean of its templates' normalised features "
            "(prompt ensembling).",
            "tests/prompting/test_training.py::test_zero_shot_ensemble_is_the_mean_of_normalized_template_features"),
    )
)
