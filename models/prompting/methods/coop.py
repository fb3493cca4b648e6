"""CoOp (Zhou et al., IJCV 2022): learnable context vectors in the text prompt, image tower untouched.

Hooks: the text tower's input token embeddings. Loss: cross-entropy. Unified or class-specific context;
class token at the end, middle or front; random N(0, 0.02) or word initialisation. The class prompts go through
the text tower `text_chunk_size` classes per pass (models.prompting.text_passes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.prompting.methods.registry import (
    DASSL_LAST_EPOCH,
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, matches_authors_code, register_method,
)
from models.prompting.prompt_assembly import ClassTokenPosition, tokenize_context_prompts
from models.prompting.text_passes import TextPassParameters, encode_context_prompts


@dataclass(frozen=True)
class CoOpParameters(TextPassParameters):
    n_context: int = 16
    context_init: str | None = None  # e.g. "a photo of a"; sets n_context to its token count
    class_token_position: ClassTokenPosition = "end"
    class_specific_context: bool = False
    init_std: float = 0.02
    init_seed: int = 0  # random context initialisation, independent of the data seed order


class CoOpClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext, parameters: CoOpParameters):
        super().__init__(context)
        self.parameters_used = parameters
        self.pieces = tokenize_context_prompts(
            context.text_tower, context.tokenizer, context.classnames, parameters.n_context, parameters.context_init
        )
        width = context.text_tower.width
        n_classes = len(context.classnames)
        if self.pieces.initial_context is not None:
            initial = self.pieces.initial_context.float()
            if parameters.class_specific_context:
                initial = initial.unsqueeze(0).repeat(n_classes, 1, 1)
        else:
            n_context = self.pieces.n_context
            shape = (n_classes, n_context, width) if parameters.class_specific_context else (n_context, width)
            generator = torch.Generator().manual_seed(parameters.init_seed)
            initial = torch.randn(shape, generator=generator) * parameters.init_std
        self.context = nn.Parameter(initial.to(self.pieces.prefix_embeddings.device))

    def text_features(self) -> torch.Tensor:
        return self.encode_prompts(self.context)

    def encode_prompts(self, context: torch.Tensor) -> torch.Tensor:
        """Raw text features (C, E) of the class prompts around `context` (n, D) or (C, n, D)."""
        parameters = self.parameters_used
        return encode_context_prompts(self.text_tower, context, self.pieces, parameters.class_token_position,
                                      text_chunk_size=parameters.text_chunk_size)


register_method(
    MethodSpec(
        name="coop",
        parameters_type=CoOpParameters,
        build=CoOpClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="text tower input: learned context tokens around the class name",
        description="CoOp: learned (unified or class-specific) context vectors, cross-entropy loss.",
        class_specific=lambda parameters: parameters.class_specific_context,
        paper=Paper("Zhou et al.", "Learning to Prompt for Vision-Language Models", "IJCV 2022",
                    "https://arxiv.org/abs/2109.01134"),
        hook_points=("text input",),
        selection_note=DASSL_LAST_EPOCH,
        verification=matches_authors_code(
            "tests/prompting/test_coop_reference.py::test_coop_logits_and_context_gradient_match_reference",
            "KaiyangZhou/CoOp at ff61507",
            "Logits and loss within 1e-5 and the context gradient within rounding, for unified and class-specific "
            "context with the class token at the end, middle and front."),
    )
)
