"""ProGrad (Zhu et al., ICCV 2023): CoOp whose updates never go against CLIP's zero-shot "general knowledge".

Hooks: as CoOp (learned context tokens in the text tower's input). Loss: cross-entropy, but the applied gradient
is shaped. G_ce is the cross-entropy gradient; G_kl the gradient of KL(zero-shot probs || model probs), the
zero-shot probs coming from the frozen hand-crafted templates. Where they conflict (G_ce . G_kl < 0) the update is
G_ce - lambda * (G_ce . G_kl) / ||G_kl||^2 * G_kl, i.e. G_ce projected onto the normal plane of G_kl (lambda = 1);
otherwise it is G_ce itself. As in the authors' trainer, each parameter tensor is projected on its own.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from models.prompting.gradient_mixing import apply_mixed_gradients
from models.prompting.methods.coop import CoOpClassifier, CoOpParameters
from models.prompting.methods.registry import (
    DASSL_LAST_EPOCH, ClassifierContext, MethodSpec, Paper, register_method, tested_property,
)


@dataclass(frozen=True)
class ProGradParameters(CoOpParameters):
    # CoOp's published setting (16 random context tokens) plus ProGrad's projection strength and KL temperature.
    projection_lambda: float = 1.0
    kl_temperature: float = 1.0


def project_conflicting_gradient(
    classification_gradient: torch.Tensor, knowledge_gradient: torch.Tensor, projection_lambda: float
) -> torch.Tensor:
    """G_ce where it agrees with G_kl; where it conflicts, G_ce minus lambda times its component along G_kl."""
    dot = torch.dot(classification_gradient.flatten().float(), knowledge_gradient.flatten().float())
    squared_norm = knowledge_gradient.float().pow(2).sum()
    # Branch-free (no device-to-host sync on a GPU): the coefficient is 0 where the gradients agree. dot < 0 implies
    # ||G_kl|| > 0, so the division is only used where it is safe.
    coefficient = torch.where(dot < 0, projection_lambda * dot / squared_norm, torch.zeros_like(dot))
    correction = coefficient * knowledge_gradient.float()
    return (classification_gradient.float() - correction).to(classification_gradient.dtype)


class ProGradClassifier(CoOpClassifier):
    def __init__(self, context: ClassifierContext, parameters: ProGradParameters):
        super().__init__(context, parameters)
        # Frozen zero-shot classifier of the hand-crafted templates: the "general knowledge" to stay aligned with.
        self.register_buffer(
            "zero_shot_text_features",
            context.template_ensemble(),
        )

    def knowledge_divergence(
        self, logits: torch.Tensor, zero_shot_logits: torch.Tensor, sample_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """T^2 * KL(softmax(zero-shot / T) || softmax(logits / T)), averaged (weighted like the cross-entropy)."""
        temperature = self.parameters_used.kl_temperature
        per_sample = F.kl_div(
            F.log_softmax(logits.float() / temperature, dim=-1),
            F.log_softmax(zero_shot_logits.float() / temperature, dim=-1),
            reduction="none",
            log_target=True,
        ).sum(dim=-1) * temperature**2
        if sample_weights is None:
            return per_sample.mean()
        return (per_sample * sample_weights).sum() / sample_weights.sum()

    def loss_terms(
        self, image_features: torch.Tensor, labels: torch.Tensor, sample_weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cross-entropy, KL to the zero-shot predictions, logits), from one text-tower pass."""
        logits = self(image_features)
        with torch.no_grad():
            zero_shot_logits = self.logits_from(image_features, self.zero_shot_text_features)
        classification = self.loss(logits.float(), labels, sample_weights)
        return classification, self.knowledge_divergence(logits, zero_shot_logits, sample_weights), logits

    def backward_step(
        self,
        image_features: torch.Tensor,
        labels: torch.Tensor,
        sample_weights: torch.Tensor | None = None,
        forward_context: Callable[[], Any] = contextlib.nullcontext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with forward_context():
            classification, knowledge, logits = self.loss_terms(image_features, labels, sample_weights)
        def project(parameter, classification_gradient, knowledge_gradient):
            if knowledge_gradient is None:
                return classification_gradient
            return project_conflicting_gradient(classification_gradient, knowledge_gradient,
                                                self.parameters_used.projection_lambda)

        apply_mixed_gradients([p for p in self.parameters() if p.requires_grad], classification, knowledge, project)
        # The reported loss is the cross-entropy: the objective the (projected) update descends.
        return classification, logits


register_method(
    MethodSpec(
        name="prograd",
        parameters_type=ProGradParameters,
        build=ProGradClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="text tower input: learned context tokens around the class name (as CoOp); gradient projection",
        description="ProGrad: CoOp; on conflict the cross-entropy gradient is projected off the zero-shot KL gradient.",
        paper=Paper("Zhu et al.", "Prompt-aligned Gradient for Prompt Tuning", "ICCV 2023",
                    "https://arxiv.org/abs/2205.14865"),
        hook_points=("text input", "gradient"),
        selection_note=DASSL_LAST_EPOCH,
        verification=tested_property(
            "The applied gradient never opposes the gradient of KL(zero-shot || model): no gradient conflict.",
            "tests/prompting/test_prograd.py::test_applied_gradient_never_opposes_the_knowledge_gradient"),
    )
)
