"""PromptSRC (Khattak et al., ICCV 2023): IVLP prompts self-regulated towards frozen CLIP.

Hooks: as IVLP (independent deep prompts in both towers; published 4 + 4 tokens, depth 9). Loss:
    CE + text_weight * L1(norm text, frozen norm text) + image_weight * L1(norm image, frozen norm image)
       + kl_weight * KL(zero-shot logits || logits)
where the frozen text features are the hand-crafted templates' (ensembled when there are several) and the frozen
image features come from the unprompted image tower. As in the original, L1 is the mean over elements and the KL
is summed and divided by the number of logits. Prompts of all epochs are aggregated with Gaussian weights
(`gaussian_epoch_weights`, `aggregate_prompt_states`): after each epoch the classifier keeps a copy of its
`trainable_state()` (cloned: on CPU it shares memory with the live parameters) and after the last it loads the
aggregate. The Gaussian's mean and std are in epochs (published: mean 15, std 1 of 20 epochs); a grid that trains
for fewer epochs should scale them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from models.prompting.methods.ivlp import IVLPClassifier, IVLPParameters
from models.prompting.methods.registry import (
    DASSL_LAST_EPOCH, ClassifierContext, MethodSpec, Paper, register_method, tested_property,
)


@dataclass(frozen=True)
class PromptSRCParameters(IVLPParameters):
    n_text_context: int = 4
    n_vision_tokens: int = 4
    text_prompt_depth: int = 9
    vision_prompt_depth: int = 9
    text_loss_weight: float = 25.0
    image_loss_weight: float = 10.0
    logits_kl_weight: float = 1.0
    aggregation_mean_epoch: float = 15.0  # Gaussian prompt aggregation over epochs 1..E
    aggregation_std_epochs: float = 1.0


def gaussian_epoch_weights(n_epochs: int, mean_epoch: float, std_epochs: float) -> torch.Tensor:
    """(E,) weights of epochs 1..E, proportional to a Gaussian density at each epoch, summing to one."""
    if n_epochs < 1 or std_epochs <= 0:
        raise ValueError(f"need n_epochs >= 1 and std_epochs > 0, got {n_epochs} and {std_epochs}")
    epochs = torch.arange(1, n_epochs + 1, dtype=torch.float64)
    log_density = -0.5 * ((epochs - mean_epoch) / std_epochs) ** 2
    # softmax of the log density: the normalization, without underflow when the mean lies far past E.
    return torch.softmax(log_density, dim=0)


def aggregate_prompt_states(
    states: Sequence[dict[str, torch.Tensor]], weights: torch.Tensor | Sequence[float]
) -> dict[str, torch.Tensor]:
    """Weighted sum of per-epoch prompt state dicts (same keys and shapes), in each tensor's own dtype."""
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if len(states) == 0 or len(states) != weights.numel():
        raise ValueError(f"{len(states)} prompt states but {weights.numel()} weights")
    keys = set(states[0])
    for index, state in enumerate(states):
        if set(state) != keys:
            raise ValueError(f"prompt state {index} has keys {sorted(state)}, expected {sorted(keys)}")
    # Summed in float64 so twenty small weights lose nothing, then cast back to each tensor's dtype.
    aggregated = {}
    for name, first in states[0].items():
        total = sum(weight.item() * state[name].double() for weight, state in zip(weights, states))
        aggregated[name] = total.to(first.dtype)
    return aggregated


class PromptSRCClassifier(IVLPClassifier):
    def __init__(self, context: ClassifierContext, parameters: PromptSRCParameters):
        super().__init__(context, parameters)
        self.register_buffer(
            "frozen_text_features",
            F.normalize(
                context.template_ensemble(),
                dim=-1,
            ),
        )

    def on_epoch_end(self, epoch: int, n_epochs: int) -> None:
        if epoch == 1:
            self.epoch_states: list[dict[str, torch.Tensor]] = []
        self.epoch_states.append({name: tensor.clone() for name, tensor in self.trainable_state().items()})

    def on_training_end(self) -> None:
        """Replace the prompts by the Gaussian-weighted average of every epoch's prompts."""
        states = getattr(self, "epoch_states", [])
        if not states:
            return
        weights = gaussian_epoch_weights(len(states), self.parameters_used.aggregation_mean_epoch,
                                         self.parameters_used.aggregation_std_epochs)
        aggregate = aggregate_prompt_states(states, weights)
        parameters = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in aggregate.items():
                parameters[name].copy_(value.to(parameters[name].device))
        self.epoch_states = []

    def frozen_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalized features of the unprompted image tower (the same forward with no prompt tokens)."""
        with torch.no_grad():
            no_prompts = self.vision_prompts.input_prompt.new_zeros(0, self.vision_tower.width)
            return F.normalize(self.vision_tower(images, no_prompts).float(), dim=-1)

    def regularisers(
        self, images: torch.Tensor, text_features: torch.Tensor, image_features: torch.Tensor, logits: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The unweighted self-regulating terms; all 0 while the prompts leave both towers unchanged."""
        frozen_image = self.frozen_image_features(images)
        frozen_text = self.frozen_text_features.to(frozen_image.device)
        zero_shot_logits = self.logit_scale * frozen_image @ frozen_text.t()
        logits = logits.float()
        return {
            "text_l1": F.l1_loss(F.normalize(text_features.float(), dim=-1), frozen_text),
            "image_l1": F.l1_loss(F.normalize(image_features.float(), dim=-1), frozen_image),
            "logits_kl": F.kl_div(
                F.log_softmax(logits, dim=1), F.log_softmax(zero_shot_logits, dim=1), reduction="sum", log_target=True
            ) / logits.numel(),
        }

    def training_loss(self, images, labels, sample_weights=None):
        # One pass of each tower serves the cross-entropy and the regularisers.
        text_features = self.text_features()
        image_features = self.image_features(images)
        logits = self.logits_from(image_features, text_features)
        terms = self.regularisers(images, text_features, image_features, logits)
        p = self.parameters_used
        loss = (
            self.loss(logits.float(), labels, sample_weights)
            + p.text_loss_weight * terms["text_l1"]
            + p.image_loss_weight * terms["image_l1"]
            + p.logits_kl_weight * terms["logits_kl"]
        )
        return loss, logits


register_method(
    MethodSpec(
        name="promptsrc",
        parameters_type=PromptSRCParameters,
        build=PromptSRCClassifier,
        trains_prompts=True,
        frozen_image_encoder=False,
        hooks="both towers, independent deep prompts (as IVLP); Gaussian aggregation of the prompts over epochs",
        description="PromptSRC: IVLP prompts + L1 to frozen text/image features + KL to zero-shot logits.",
        paper=Paper("Khattak et al.", "Self-regulating Prompts: Foundational Model Adaptation without Forgetting",
                    "ICCV 2023", "https://arxiv.org/abs/2307.06948"),
        hook_points=("text input", "text layers", "image input", "image layers"),
        selection_note=DASSL_LAST_EPOCH,
        verification=tested_property(
            "The Gaussian weights of the epochs' prompts sum to one and peak at the mean epoch.",
            "tests/prompting/test_vision_prompt_methods.py::test_gaussian_weights_sum_to_one_and_peak_at_the_mean"),
    )
)
