"""Zero-shot CLIP: hand-crafted templates, averaged over templates when there are several (prompt ensembling)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.prompting.methods.registry import ClassifierContext, MethodSpec, PromptedClassifier, register_method
from models.prompting.prompt_assembly import encode_template_texts


@dataclass(frozen=True)
class ZeroShotParameters:
    pass


class ZeroShotClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext):
        super().__init__(context)
        if not context.templates:
            raise ValueError("zero-shot needs at least one template")
        with torch.no_grad():
            per_template = [
                F.normalize(
                    encode_template_texts(
                        context.text_tower, context.tokenizer, [t.format(c) for c in context.classnames]
                    ).float(),
                    dim=-1,
                )
                for t in context.templates
            ]
            # Ensemble: mean of normalized features over templates (one template: itself).
            self.register_buffer("class_text_features", torch.stack(per_template).mean(dim=0))

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
    )
)
