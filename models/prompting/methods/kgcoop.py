"""KgCoOp (Yao et al., CVPR 2023): CoOp regularised towards the hand-crafted prompts' text features.

Hooks: as CoOp (learned context tokens in the text tower's input). Loss: cross-entropy plus
knowledge_weight * (1 - mean over classes of cos(learned text feature, hand-crafted text feature)), which keeps
the learned prompts close to CLIP's general knowledge and so helps on classes unseen in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.prompting.methods.coop import CoOpClassifier, CoOpParameters
from models.prompting.methods.registry import (
    DASSL_LAST_EPOCH,
    ClassifierContext, MethodSpec, Paper, matches_authors_code, register_method,
)


@dataclass(frozen=True)
class KgCoOpParameters(CoOpParameters):
    # Published KgCoOp setting: 4 context tokens initialised from "a photo of a", W = 8.
    n_context: int = 4
    context_init: str | None = "a photo of a"
    knowledge_weight: float = 8.0


def hand_crafted_text_features(context: ClassifierContext) -> torch.Tensor:
    """Normalized (C, E) text features of the dataset template(s); several templates are averaged (ensemble)."""
    # Renormalized after averaging: the cosine ignores the scale, and a unit buffer is easier to inspect.
    return F.normalize(
        context.template_ensemble(),
        dim=-1,
    )


class KgCoOpClassifier(CoOpClassifier):
    def __init__(self, context: ClassifierContext, parameters: KgCoOpParameters):
        super().__init__(context, parameters)
        self.register_buffer("hand_text_features", hand_crafted_text_features(context))

    def knowledge_score(self, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """1 - mean_c cos(learned text_c, hand-crafted text_c): 0 when the prompts equal the hand-crafted ones."""
        if text_features is None:
            text_features = self.text_features()
        learned = F.normalize(text_features.float(), dim=-1)
        cosines = (learned * self.hand_text_features.to(learned.device)).sum(dim=-1)
        return 1.0 - cosines.mean()

    def training_loss(self, image_features, labels, sample_weights=None):
        # One text-tower pass serves both terms, so a step costs the same as CoOp's (as in the original).
        text_features = self.text_features()
        logits = self.logits_from(image_features, text_features)
        classification = self.loss(logits.float(), labels, sample_weights)
        return classification + self.parameters_used.knowledge_weight * self.knowledge_score(text_features), logits


register_method(
    MethodSpec(
        name="kgcoop",
        parameters_type=KgCoOpParameters,
        build=KgCoOpClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="text tower input: learned context tokens around the class name (as CoOp)",
        description="KgCoOp: CoOp plus W * (1 - mean cosine to the hand-crafted prompts' text features).",
        paper=Paper("Yao et al.", "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization",
                    "CVPR 2023", "https://arxiv.org/abs/2303.13283"),
        hook_points=("text input",),
        selection_note=DASSL_LAST_EPOCH,
        verification=matches_authors_code(
            "tests/prompting/test_kgcoop_reference.py::test_logits_knowledge_score_loss_and_gradient_match_reference",
            "htyao89/KgCoOp at c43ccc3",
            "Logits, knowledge score and loss within 1e-5 and the context gradient within rounding."),
    )
)
