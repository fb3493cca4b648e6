"""IVLP, independent vision-language prompting (the baseline of Khattak et al., MaPLe / PromptSRC).

Hooks: both towers, no coupling. Text: n_text_context learned tokens replace the first words of
"{context_init} {class}." (as MaPLe's shallow context) and independent learned tokens replace those positions
before text layers 1..J_text-1. Vision: n_vision_tokens learned tokens appended to the image tokens, independent
learned tokens before vision layers 1..J_vision-1 (as deep VPT). Loss: cross-entropy.

The vision prompts change the image features, so the classifier takes images (frozen_image_encoder=False). The
class prompts go through the text tower `text_chunk_size` classes per pass (models.prompting.text_passes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from models.prompting.deep_prompts import (
    IndependentLayerPrompts,
    PromptedVisionTower,
    check_prompt_depth,
)
from models.prompting.methods.maple import split_context_prompt
from models.prompting.methods.registry import (
    DASSL_LAST_EPOCH,
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, register_method, tested_property,
)
from models.prompting.prompt_assembly import ContextPromptTokens
from models.prompting.text_passes import TextPassParameters, encode_context_prompts


@dataclass(frozen=True)
class IVLPParameters(TextPassParameters):
    n_text_context: int = 2  # learned text tokens (first words of context_init); 0: the plain init prompt
    n_vision_tokens: int = 2  # learned vision tokens per prompted layer; 0: the plain image tower
    context_init: str | None = "a photo of a"  # None: "X .. X" with random context (needs n_text_context >= 1)
    text_prompt_depth: int = 12  # input + text layers 1..J-1
    vision_prompt_depth: int = 12  # input + vision layers 1..J-1
    init_std: float = 0.02
    init_seed: int = 0  # prompt initialisation, independent of the data seed


def leading_context_prompt(context: ClassifierContext, n_context: int, context_init: str | None) -> ContextPromptTokens:
    """MaPLe's split of "{context_init} {class}." with its first n_context tokens learnable, also for n_context 0."""
    if n_context > 0 or not context_init:
        return split_context_prompt(context.text_tower, context.tokenizer, context.classnames, n_context, context_init)
    pieces = split_context_prompt(context.text_tower, context.tokenizer, context.classnames, 1, context_init)
    # Zero learned tokens: the one split-off word goes back into the frozen suffix, leaving the plain prompt.
    first_word = pieces.initial_context.unsqueeze(0).expand(len(context.classnames), -1, -1)
    return dataclasses.replace(
        pieces,
        suffix_embeddings=torch.cat([first_word, pieces.suffix_embeddings], dim=1),
        initial_context=pieces.initial_context[:0].clone(),
    )


class IVLPClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext, parameters: IVLPParameters):
        # Checked first so a non-ViT backbone or an impossible depth fails before any tokenization or allocation.
        vision_tower = PromptedVisionTower(context.clip_model)
        check_prompt_depth(parameters.vision_prompt_depth, vision_tower.n_layers, "vision")
        check_prompt_depth(parameters.text_prompt_depth, len(context.text_tower.transformer.resblocks), "text")
        super().__init__(context)
        self.parameters_used = parameters
        self.vision_tower = vision_tower
        self.pieces = leading_context_prompt(context, parameters.n_text_context, parameters.context_init)
        device = self.pieces.prefix_embeddings.device
        # Seeded without touching the global RNG, so building a classifier never shifts other random draws.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(parameters.init_seed)
            self.text_prompts = IndependentLayerPrompts(
                parameters.n_text_context,
                context.text_tower.width,
                parameters.text_prompt_depth,
                parameters.init_std,
                initial_input=self.pieces.initial_context,  # None (random) without context_init
            ).to(device)
            self.vision_prompts = IndependentLayerPrompts(
                parameters.n_vision_tokens, vision_tower.width, parameters.vision_prompt_depth, parameters.init_std
            ).to(device)

    def text_features(self) -> torch.Tensor:
        return encode_context_prompts(self.text_tower, self.text_prompts.input_prompt, self.pieces, "end",
                                      list(self.text_prompts.layer_prompts), self.parameters_used.text_chunk_size)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.vision_tower(images, self.vision_prompts.input_prompt, list(self.vision_prompts.layer_prompts))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of images (B, 3, H, W): both towers carry their own prompts."""
        return self.logits_from(self.image_features(images), self.text_features())


register_method(
    MethodSpec(
        name="ivlp",
        parameters_type=IVLPParameters,
        build=IVLPClassifier,
        trains_prompts=True,
        frozen_image_encoder=False,
        hooks="both towers, independent: text context + deep text prompts; vision tokens + deep vision prompts",
        description="IVLP: independent deep prompts in the text and vision towers, cross-entropy.",
        # IVLP has no paper of its own: MaPLe introduced it as its baseline.
        paper=Paper("Khattak et al.", "MaPLe: Multi-modal Prompt Learning (its IVLP baseline)", "CVPR 2023",
                    "https://arxiv.org/abs/2210.03117"),
        hook_points=("text input", "text layers", "image input", "image layers"),
        selection_note=DASSL_LAST_EPOCH,
        verification=tested_property(
            "With zero text and vision prompt tokens its logits equal zero-shot CLIP's.",
            "tests/prompting/test_vision_prompt_methods.py::test_zero_tokens_is_zero_shot_clip"),
    )
)
