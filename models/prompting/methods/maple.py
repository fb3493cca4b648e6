"""MaPLe (Khattak et al., CVPR 2023): multi-modal prompts, vision prompts coupled to text prompts.

Hooks: both towers. Text: n learned context tokens replace the first n words of "{context_init} {class}."
(published: 2 tokens replacing "a photo" in "a photo of a {class}."), and before text layers 1..J-1 the same
positions are replaced by layer-wise text prompts. Vision: each text prompt is mapped by its own
Linear(d_text, d_vision) to a vision prompt; the shallow one (proj(ctx)) is appended at the end of the image
token sequence, the layer ones replace those tokens before vision layers 1..J-1 (J = prompt depth).
Loss: cross-entropy. The class prompts go through the text tower `text_chunk_size` classes per pass
(models.prompting.text_passes).

Parameters live in `prompt_learner` with the original names (ctx, proj, compound_prompts_text.k,
compound_prompt_projections.k), so the authors' checkpoints map one to one.

Because the vision prompts change the image features, images must go through the vision tower at every step:
the classifier takes images, not cached features (frozen_image_encoder=False), so the feature-cache loop
`train_prompt_parameters` cannot train it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from models.prompting.deep_prompts import PromptedVisionTower
from models.prompting.methods.registry import (
    DASSL_LAST_EPOCH,
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, matches_authors_code, register_method,
)
from models.prompting.prompt_assembly import ContextPromptTokens, tokenize_context_prompts
from models.prompting.text_passes import TextPassParameters, encode_context_prompts


@dataclass(frozen=True)
class MaPLeParameters(TextPassParameters):
    n_context: int = 2
    context_init: str | None = "a photo of a"  # the first n_context words are learned; None: "X .. X", random
    prompt_depth: int = 9  # J: prompts enter the input and layers 1..J-1 of both towers
    init_std: float = 0.02
    init_seed: int = 0  # random prompts and projections, independent of the data seed
    # The original casts every injected prompt (proj(ctx) and the layer prompts of both towers) to fp16 with
    # `.half()` because its backbone runs in fp16; in an fp32 run that rounds the prompts (and their gradients).
    # True reproduces the authors' numbers bit for bit; False keeps the prompts in the backbone's own dtype.
    round_injected_prompts_to_fp16: bool = False


def split_context_prompt(
    text_tower, tokenizer, classnames: list[str], n_context: int, context_init: str | None
) -> ContextPromptTokens:
    """Frozen pieces of "{context_init} {class}." with only its first n_context tokens learnable."""
    if not context_init:
        return tokenize_context_prompts(text_tower, tokenizer, classnames, n_context)
    pieces = tokenize_context_prompts(text_tower, tokenizer, classnames, n_context, context_init)
    init_words = pieces.initial_context  # all tokens of context_init
    if n_context < 1 or n_context > init_words.shape[0]:
        raise ValueError(
            f"n_context must be in 1..{init_words.shape[0]} (tokens of {context_init!r}), got {n_context}"
        )
    # Token embeddings are context-free, so moving the unlearned init words into the suffix is exact.
    kept_words = init_words[n_context:].unsqueeze(0).expand(len(classnames), -1, -1)
    return dataclasses.replace(
        pieces,
        suffix_embeddings=torch.cat([kept_words, pieces.suffix_embeddings], dim=1),
        initial_context=init_words[:n_context].clone(),
    )


class MaPLePromptLearner(nn.Module):
    """The learned parameters: shallow text context, its projection, and per-layer text prompts + projections."""

    def __init__(self, initial_context: torch.Tensor, text_width: int, vision_width: int, depth: int, init_std: float):
        super().__init__()
        self.ctx = nn.Parameter(initial_context.clone())
        self.proj = nn.Linear(text_width, vision_width)
        n_context = initial_context.shape[0]
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.randn(n_context, text_width) * init_std) for _ in range(depth - 1)]
        )
        self.compound_prompt_projections = nn.ModuleList(
            [nn.Linear(text_width, vision_width) for _ in range(depth - 1)]
        )

    def vision_prompts(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(shallow vision prompt, vision prompts of layers 1..J-1), each projected from its text prompt."""
        pairs = zip(self.compound_prompts_text, self.compound_prompt_projections)
        layers = [project(prompt) for prompt, project in pairs]
        return self.proj(self.ctx), layers


class MaPLeClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext, parameters: MaPLeParameters):
        # Checked first so a non-ViT backbone fails before any tokenization or allocation.
        vision_tower = PromptedVisionTower(context.clip_model)
        super().__init__(context)
        self.parameters_used = parameters
        self.vision_tower = vision_tower
        text_layers = len(context.text_tower.transformer.resblocks)
        max_depth = min(text_layers, vision_tower.n_layers)
        if not 1 <= parameters.prompt_depth <= max_depth:
            raise ValueError(f"prompt_depth must be in 1..{max_depth} for this backbone, got {parameters.prompt_depth}")
        self.pieces = split_context_prompt(
            context.text_tower, context.tokenizer, context.classnames, parameters.n_context, parameters.context_init
        )
        device = self.pieces.prefix_embeddings.device
        text_width = context.text_tower.width
        # Seeded without touching the global RNG, so building a classifier never shifts other random draws.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(parameters.init_seed)
            initial = self.pieces.initial_or_random_context(text_width, parameters.init_std)
            self.prompt_learner = MaPLePromptLearner(
                initial, text_width, vision_tower.width, parameters.prompt_depth, parameters.init_std
            ).to(device)

    def _injected(self, prompt: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The prompt as it enters a tower; with rounding, the original's expand-then-`.half()`, whose order
        matters for gradients (each sequence's gradient is rounded to fp16 before the sum over the batch)."""
        if self.parameters_used.round_injected_prompts_to_fp16:
            return prompt.unsqueeze(0).expand(batch_size, -1, -1).half().to(prompt.dtype)
        return prompt

    def text_features(self) -> torch.Tensor:
        # The shallow context enters with the token embeddings (no fp16 cast in the original), the rest per layer;
        # rounded layer prompts are (C, n, D), cut per pass like the classes.
        n_classes = self.pieces.token_ids.shape[0]
        layer_prompts = [self._injected(prompt, n_classes) for prompt in self.prompt_learner.compound_prompts_text]
        return encode_context_prompts(self.text_tower, self.prompt_learner.ctx, self.pieces, "end", layer_prompts,
                                      self.parameters_used.text_chunk_size)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        shallow, layers = self.prompt_learner.vision_prompts()
        n_images = images.shape[0]
        return self.vision_tower(
            images, self._injected(shallow, n_images), [self._injected(layer, n_images) for layer in layers]
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of images (B, 3, H, W): both towers carry the prompts."""
        return self.logits_from(self.image_features(images), self.text_features())


register_method(
    MethodSpec(
        name="maple",
        parameters_type=MaPLeParameters,
        build=MaPLeClassifier,
        trains_prompts=True,
        frozen_image_encoder=False,
        hooks="both towers: text context + deep text prompts, projected to vision prompts appended to the image tokens",
        description="MaPLe: coupled multi-modal deep prompts (vision prompts = Linear(text prompts)), cross-entropy.",
        paper=Paper("Khattak et al.", "MaPLe: Multi-modal Prompt Learning", "CVPR 2023",
                    "https://arxiv.org/abs/2210.03117"),
        hook_points=("text input", "text layers", "image input", "image layers"),
        selection_note=DASSL_LAST_EPOCH,
        verification=matches_authors_code(
            "tests/prompting/test_maple_reference.py::test_maple_matches_reference",
            "muzairkhattak/multimodal-prompt-learning at 69bce21",
            "Text features, image features, logits and loss within 1e-5 and the gradients of every prompt "
            "parameter within rounding."),
    )
)
