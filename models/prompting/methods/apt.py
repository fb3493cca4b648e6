"""APT, Approximated Prompt Tuning (Wu et al., arXiv 2306.15706), on CLIP's image tower, as deep VPT's cheaper twin.

Implemented from the paper as summarised (no public code): deep prompt tokens no longer enter the global softmax;
each block's frozen X->X attention is computed unchanged and the prompts' effect on the image tokens X is an
independent aggregation step ("information diffusion") added to it. Here (models/prompting/attention_variants.py,
static side prompts):

    O_X = softmax_X(Q_X K_X^T / sqrt(d)) V_X + g_h * softmax_P(Q_X K_P^T / sqrt(d)) V_P

per head h of each prompted block, with n learned tokens P per block 0..J-1 (J = prompt depth), K_P and V_P the
prompts through that block's frozen ln_1 and in_proj, and g_h a learned per-head gate. Hooks: vision tower only;
text = the dataset's hand-crafted templates, encoded once (frozen template ensemble), as deep VPT. Loss: cross-entropy.

What the summary leaves open, and what we chose:
- the aggregation: the exact split of the global softmax is lambda O_XX + (1 - lambda) O_XP with lambda = Z_X /
  (Z_X + Z_P) per query; APT's approximation here keeps lambda = 1 on the frozen term and replaces the
  query-dependent (1 - lambda) / lambda by a learned per-head gate (zero at initialisation), the prompt term being a
  softmax over the n prompts alone (bounded: each query's weights sum to 1). Not a low-rank reparameterisation and
  not an unnormalised activation (a ReLU of the scores grows without bound with the keys' norm);
- prompts are static per block: never updated by the blocks (no prompt queries, no MLP on prompt tokens), so K_P,
  V_P are computed once per step for the whole batch: against deep VPT at the same length and depth, a block runs
  its attention and MLP over L tokens instead of L + n, plus L x n scores (bench/apt_cost.py measures the ratio);
- the first block's prompts pass the tower's ln_pre, as deep VPT's appended input prompts; prompts are drawn
  N(0, init_std^2) as deep VPT's;
- text tower: the paper also prompts text encoders; here vision only (the deep-VPT comparison it is built for).

Identity: with the gates at zero (initialisation) the image features are the frozen tower's, so the logits are
zero-shot CLIP's (template ensemble); the prompts' gradient is zero on the first step (the gates' is not), as a LoRA
with B = 0. Defaults: deep VPT's (8 tokens, depth 12, lr 0.0025), for a like-for-like cost comparison; the paper's
CLIP hyperparameters were not read (chosen).

The prompts change the image features, so the classifier takes images (frozen_image_encoder=False).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.prompting.attention_variants import PromptGates, encode_image_with_side_prompts
from models.prompting.deep_prompts import PromptedVisionTower, check_prompt_depth
from models.prompting.lora import require_hookable_blocks
from models.prompting.methods.registry import (
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, register_method, tested_property,
)


def check_prompt_length(n_tokens: int, field: str, method: str) -> None:
    """Refuse a prompt length below 1: the method's prompts would have no effect at all."""
    if not isinstance(n_tokens, int) or isinstance(n_tokens, bool) or n_tokens < 1:
        raise ValueError(f"{method}: {field} must be an integer >= 1 (prompt tokens per prompted layer), "
                         f"got {n_tokens!r}")


@dataclass(frozen=True)
class APTParameters:
    n_tokens: int = 8  # prompt tokens per prompted block (deep VPT's, chosen for the comparison)
    prompt_depth: int = 12  # J: blocks 0..J-1 get prompts; at most the vision tower's block count
    init_std: float = 0.02
    init_seed: int = 0  # prompt initialisation, independent of the data seed

    def __post_init__(self) -> None:
        check_prompt_length(self.n_tokens, "n_tokens", "apt")
        if not isinstance(self.prompt_depth, int) or isinstance(self.prompt_depth, bool) or self.prompt_depth < 1:
            raise ValueError(f"apt: prompt_depth must be an integer >= 1, got {self.prompt_depth!r}")


class APTClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext, parameters: APTParameters):
        # Checked first so a non-ViT backbone or an impossible depth fails before any text encoding.
        vision_tower = PromptedVisionTower(context.clip_model)
        check_prompt_depth(parameters.prompt_depth, vision_tower.n_layers, "vision")
        blocks = require_hookable_blocks(vision_tower.visual, "vision tower", range(parameters.prompt_depth),
                                         "apt", type(context.clip_model).__name__)
        super().__init__(context)
        self.parameters_used = parameters
        self.vision_tower = vision_tower
        self.register_buffer("class_text_features", context.template_ensemble())
        device = vision_tower.visual.positional_embedding.device
        width, heads = vision_tower.width, blocks[0].attn.num_heads
        with torch.random.fork_rng(devices=[]):  # seeded without shifting the global RNG
            torch.manual_seed(parameters.init_seed)
            self.layer_prompts = nn.ParameterList(
                [nn.Parameter(torch.randn(parameters.n_tokens, width, device=device) * parameters.init_std)
                 for _ in range(parameters.prompt_depth)])
        self.gates = PromptGates(parameters.prompt_depth, heads, device)

    def text_features(self) -> torch.Tensor:
        return self.class_text_features

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return encode_image_with_side_prompts(self.vision_tower, images, list(self.layer_prompts), self.gates,
                                              carry=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of images (B, 3, H, W) against the frozen hand-crafted text features."""
        return self.logits_from(self.image_features(images), self.text_features())


register_method(
    MethodSpec(
        name="apt",
        parameters_type=APTParameters,
        build=APTClassifier,
        trains_prompts=True,
        frozen_image_encoder=False,
        hooks="vision tower blocks: per-block prompts outside the softmax, a gated aggregation added to X->X",
        description="APT: deep visual prompts approximated by a gated per-block aggregation beside the frozen "
                    "attention, cross-entropy.",
        paper=Paper("Wu et al.", "Approximated Prompt Tuning for Vision-Language Pre-trained Models", "arXiv 2023",
                    "https://arxiv.org/abs/2306.15706"),
        hook_points=("image layers",),
        selection_note="No public code; as deep VPT's protocol, the last epoch is tested, no validation.",
        verification=tested_property(
            "With its gates at zero (initialisation) its image features are the frozen tower's and its logits "
            "zero-shot CLIP's, whatever the prompts; the image tokens' own attention is the frozen model's.",
            "tests/prompting/test_apt.py::test_zero_gates_are_zero_shot_clip_whatever_the_prompts"),
    )
)
