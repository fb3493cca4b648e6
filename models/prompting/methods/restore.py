"""RESTORE (Yang et al., ECCV 2024, arXiv 2403.06136): multimodal deep prompts with feature-shift consistency and
"surgery" adapters.

Implemented from the paper as summarised (no public code). Prompts: IVLP's (models/prompting/methods/ivlp.py):
independent learned tokens in both towers' inputs and layers 1..J-1. On top of them:
- feature shifts: delta_m = f_m(x; P) - f_m(x) for each modality m, the prompted (and corrected, below) feature
  minus the frozen model's, on L2-normalised features (the space the logits use): the image shift of each image
  against the frozen image tower's feature of the same image, the text shift of each class against the frozen
  template ensemble of its class (the zero-shot classifier);
- a consistency loss: L_fsc = (mean_b ||delta_image_b|| - mean_c ||delta_text_c||)^2, penalising a discrepancy
  between the two modalities' shift magnitudes (prompts that move one tower's features far more than the other's
  break the alignment CLIP was pre-trained for);
- surgery: one feed-forward adapter per tower on its output, f + W_2 ReLU(W_1 f), W_1 (E / reduction, E),
  W_2 (E, E / reduction) zero-initialised, so that at initialisation each adapter is the identity; they are trained
  with the prompts and can correct shifts the prompts make too large.
Loss: cross-entropy + consistency_weight * L_fsc.

What the summary leaves open, and what we chose:
- the shifts are measured at the towers' outputs only: the per-block shifts of the paper would need a frozen and a
  prompted pass that both keep every block's tokens (not offered);
- the shifts are measured after the surgery adapters (on the features the logits use), so the consistency term
  constrains what is classified; the magnitude is the L2 norm on normalised features, the discrepancy squared;
- the frozen text reference is the dataset's template ensemble (defined whatever the context's initialisation);
  the frozen image reference is the same image through the unprompted tower (one more frozen image pass per step,
  without gradients);
- adapters: bottleneck reduction 4 (CLIP-Adapter's), no bias, ReLU, residual sum without a mixing ratio;
- defaults: IVLP's prompts (2 + 2 tokens, depth 9, MaPLe's schedule: lr 0.0035, batch 4, 5 epochs), consistency
  weight 1 (chosen: the paper's values were not read).

Identity: with no vision tokens, the text context at its "a photo of a" initialisation and text depth 1, and the
adapters at their initialisation, both towers give the frozen model's features, every shift is 0 and the loss is
zero-shot CLIP's cross-entropy with that template. The vision prompts change the image features, so the classifier
takes images (frozen_image_encoder=False).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.prompting.methods.ivlp import IVLPClassifier, IVLPParameters
from models.prompting.methods.registry import (
    ClassifierContext, MethodSpec, Paper, register_method, tested_property,
)


@dataclass(frozen=True)
class RESTOREParameters(IVLPParameters):
    text_prompt_depth: int = 9
    vision_prompt_depth: int = 9
    consistency_weight: float = 1.0  # lambda of the feature-shift consistency loss (chosen)
    adapter_reduction: int = 4  # surgery adapters' bottleneck: E / reduction hidden units (CLIP-Adapter's 4)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("n_text_context", "n_vision_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"restore: {name} must be an integer >= 0, got {value!r}")
        if self.n_text_context == 0 and self.n_vision_tokens == 0:
            raise ValueError("restore: n_text_context and n_vision_tokens are both 0: no prompt tokens in either tower "
                             "(zero prompt length)")
        if not isinstance(self.adapter_reduction, int) or isinstance(self.adapter_reduction, bool) \
                or self.adapter_reduction < 1:
            raise ValueError(f"restore: adapter_reduction must be an integer >= 1, got {self.adapter_reduction!r}")
        if isinstance(self.consistency_weight, bool) or not self.consistency_weight >= 0:
            raise ValueError(f"restore: consistency_weight must be a number >= 0, got {self.consistency_weight!r}")


class SurgeryAdapter(nn.Module):
    """f + W_2 ReLU(W_1 f), W_2 zero-initialised: the identity until trained."""

    def __init__(self, width: int, hidden: int, device: torch.device | None = None):
        super().__init__()
        self.down = nn.Linear(width, hidden, bias=False, device=device)
        self.up = nn.Linear(hidden, width, bias=False, device=device)
        nn.init.zeros_(self.up.weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.up(F.relu(self.down(features.to(self.down.weight.dtype)))).to(features.dtype)


def shift_consistency(image: torch.Tensor, frozen_image: torch.Tensor, text: torch.Tensor,
                      frozen_text: torch.Tensor) -> torch.Tensor:
    """(mean_b ||n(image_b) - n(frozen_image_b)|| - mean_c ||n(text_c) - n(frozen_text_c)||)^2, n = L2-normalise."""
    image_shift = F.normalize(image.float(), dim=-1) - F.normalize(frozen_image.float(), dim=-1)
    text_shift = F.normalize(text.float(), dim=-1) - F.normalize(frozen_text.float(), dim=-1)
    return (image_shift.norm(dim=-1).mean() - text_shift.norm(dim=-1).mean()) ** 2


class RESTOREClassifier(IVLPClassifier):
    def __init__(self, context: ClassifierContext, parameters: RESTOREParameters):
        super().__init__(context, parameters)
        self.register_buffer("frozen_text_features", context.template_ensemble())
        width = self.frozen_text_features.shape[-1]
        hidden = width // parameters.adapter_reduction
        if hidden < 1:
            raise ValueError(f"restore: adapter_reduction {parameters.adapter_reduction} leaves no hidden unit of the "
                             f"{width}-wide features (rank 0); at most {width}")
        device = self.frozen_text_features.device
        self.image_surgery = SurgeryAdapter(width, hidden, device)
        self.text_surgery = SurgeryAdapter(width, hidden, device)

    def text_features(self) -> torch.Tensor:
        return self.text_surgery(super().text_features())

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_surgery(super().image_features(images))

    def frozen_image_features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            no_prompt = self.vision_prompts.input_prompt[:0]
            return self.vision_tower(images, no_prompt)

    def training_loss(self, images, labels, sample_weights=None):
        text, image = self.text_features(), self.image_features(images)
        logits = self.logits_from(image, text)
        classification = self.loss(logits.float(), labels, sample_weights)
        weight = self.parameters_used.consistency_weight
        if weight == 0:
            return classification, logits
        consistency = shift_consistency(image, self.frozen_image_features(images), text, self.frozen_text_features)
        return classification + weight * consistency, logits


register_method(
    MethodSpec(
        name="restore",
        parameters_type=RESTOREParameters,
        build=RESTOREClassifier,
        trains_prompts=True,
        frozen_image_encoder=False,
        hooks="both towers: IVLP's deep prompts, plus a zero-initialised feed-forward adapter on each tower's output",
        description="RESTORE: IVLP prompts + feature-shift consistency between the towers + surgery adapters, "
                    "cross-entropy.",
        paper=Paper("Yang et al.", "RESTORE: Towards Feature Shift for Vision-Language Prompt Learning",
                    "ECCV 2024", "https://arxiv.org/abs/2403.06136"),
        hook_points=("text input", "text layers", "image input", "image layers", "feature space"),
        selection_note="No public code; as IVLP's protocol, the last epoch is tested, no validation.",
        verification=tested_property(
            "With no vision tokens, the text context at its template initialisation and the surgery adapters at "
            "initialisation, both towers give the frozen features and the consistency term is 0; the term matches "
            "a hand computation.",
            "tests/prompting/test_restore.py::test_frozen_features_and_zero_shift_at_the_identity"),
    )
)
