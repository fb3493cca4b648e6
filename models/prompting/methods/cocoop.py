"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context plus an image-conditioned shift from a small meta-net.

Hooks: the text tower's input token embeddings, conditioned on the (frozen) image feature. For image b the
context is ctx + meta_net(normalize(image_b)), the same shift added to every context token, so each image gets
its own C prompts. Loss: cross-entropy.

The original runs one text-tower pass per image. Here the B x C prompts of a batch, image-major, go through the
shared TextTower in passes of at most `text_chunk_size` prompts (all at once when they fit; a pass may hold the
last classes of one image and the first of the next), assembled pass by pass, and under activation checkpointing
while training (models.prompting.text_passes.encode_image_conditioned_prompts), so one image's C classes are
chunked like CoOp's and memory is bounded by one pass. Every prompt is encoded independently, so this equals one pass per image up to float
rounding. Because the image encoder stays frozen, cached image features are valid input and the method trains
with the shared `train_prompt_parameters` loop.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.prompting.methods.registry import (
    DASSL_LAST_EPOCH,
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, matches_authors_code, register_method,
)
from models.prompting.prompt_assembly import tokenize_context_prompts
from models.prompting.text_passes import TextPassParameters, encode_image_conditioned_prompts
from models.prompting.text_tower import TextTower


@dataclass(frozen=True)
class CoCoOpParameters(TextPassParameters):
    n_context: int = 4
    context_init: str | None = "a photo of a"  # sets n_context to its token count; None: random N(0, init_std)
    meta_net_reduction: int = 16  # hidden width of the meta-net = image feature dim // reduction
    init_std: float = 0.02
    init_seed: int = 0  # context (when random) and meta-net initialisation, independent of the data seed


def joint_embedding_dim(text_tower: TextTower) -> int:
    """Width of the shared image-text space: the text tower's output, which image features must match."""
    projection = text_tower.text_projection
    if projection is None:
        return text_tower.width
    if isinstance(projection, nn.Linear):
        return projection.out_features
    return projection.shape[-1]


class CoCoOpClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext, parameters: CoCoOpParameters):
        super().__init__(context)
        self.parameters_used = parameters
        self.pieces = tokenize_context_prompts(
            context.text_tower, context.tokenizer, context.classnames, parameters.n_context, parameters.context_init
        )
        text_width = context.text_tower.width
        image_dim = joint_embedding_dim(context.text_tower)
        hidden = image_dim // parameters.meta_net_reduction
        if hidden < 1:
            raise ValueError(
                f"meta_net_reduction {parameters.meta_net_reduction} leaves no hidden unit for image dim {image_dim}"
            )
        device = self.pieces.prefix_embeddings.device
        # Seeded without touching the global RNG, so building a classifier never shifts other random draws.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(parameters.init_seed)
            initial = self.pieces.initial_or_random_context(text_width, parameters.init_std)
            # Layer names as in the original (linear1, relu, linear2), so its checkpoints map one to one.
            self.meta_net = nn.Sequential(
                OrderedDict(
                    [
                        ("linear1", nn.Linear(image_dim, hidden)),
                        ("relu", nn.ReLU()),
                        ("linear2", nn.Linear(hidden, text_width)),
                    ]
                )
            ).to(device)
        self.context = nn.Parameter(initial.to(device))

    def text_features(self) -> torch.Tensor:
        raise NotImplementedError("CoCoOp's text features depend on the image: use conditional_text_features")

    def conditional_text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Raw text features (B, C, E): the C class prompts conditioned on each of the B image features."""
        image = F.normalize(image_features.float(), dim=-1)
        bias = self.meta_net(image)  # (B, D): one shift per image, shared by its context tokens
        shifted_context = self.context.unsqueeze(0) + bias.unsqueeze(1)  # (B, n, D)
        return encode_image_conditioned_prompts(self.text_tower, shifted_context, self.pieces,
                                                self.parameters_used.text_chunk_size)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        image = F.normalize(image_features.float(), dim=-1)
        text = F.normalize(self.conditional_text_features(image_features).float(), dim=-1)
        return self.logit_scale * torch.einsum("be,bce->bc", image, text)


register_method(
    MethodSpec(
        name="cocoop",
        parameters_type=CoCoOpParameters,
        build=CoCoOpClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="text tower input: learned context tokens shifted by a meta-net of the image feature",
        description="CoCoOp: CoOp context plus an image-conditioned shift (meta-net), cross-entropy loss.",
        paper=Paper("Zhou et al.", "Conditional Prompt Learning for Vision-Language Models", "CVPR 2022",
                    "https://arxiv.org/abs/2203.05557"),
        hook_points=("text input",),
        selection_note=DASSL_LAST_EPOCH,
        verification=matches_authors_code(
            "tests/prompting/test_cocoop_reference.py::test_logits_and_gradients_match_reference",
            "KaiyangZhou/CoOp at ff61507",
            "Logits and loss within 1e-5 and the gradients of the context and the meta-net within rounding."),
    )
)
