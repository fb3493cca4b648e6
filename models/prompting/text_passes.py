"""The text tower over many prompts, in passes of at most `text_chunk_size` prompts, so memory stays bounded at
ImageNet's 1000 classes.

Every method that learns prompt tokens (CoOp and its family, CoCoOp, MaPLe, IVLP/PromptSRC, and TPT through them)
encodes its class prompts here: `encode_context_prompts` splices the context into each class's frozen pieces and
runs the text tower (with deep prompts where given) on one range of classes at a time;
`encode_image_conditioned_prompts` encodes B x C prompts, every class with each image's own context (CoCoOp, GOPro)
or with each image and class's own (CTP).

Why: the backward of one text-tower pass keeps every layer's activations of every prompt it encodes. ViT-B/16's
text tower (12 layers, width 512, 77 tokens) keeps about 19.6 MB per prompt in fp32 (measured), so CoOp's 1000
ImageNet prompts in one pass hold about 19.6 GB. Plain chunking would not help a training step: autograd keeps every
chunk's activations until the backward. So while gradients are recorded and there is more than one pass, each pass
runs under activation checkpointing (torch.utils.checkpoint, non-reentrant): its activations are freed after its
forward and recomputed, one pass at a time, in the backward. The peak then holds one pass's activations plus what
crosses pass boundaries (the learned context and each pass's (P, E) features), at the price of one more text
forward per backward (ProGrad, which takes two backwards through the same graph, recomputes twice). Without
gradients (evaluation) nothing is kept between layers, so plain passes already bound memory by one pass.

On the CPU the resident set can still grow by part of every pass: glibc's malloc raises its mmap threshold to the
largest block freed, and the heap then keeps freed activations (a chunked 1000-class CoOp step of ViT-B/16: 12.0 GB
resident with glibc's defaults, 2.5 GB with MALLOC_MMAP_THRESHOLD_=131072; bench/thousand_classes.py).

The prompts of different passes never interact (each prompt is encoded alone), so the result equals one pass up to
float rounding (matrix products over fewer rows may sum in another order); when everything fits in one pass the
computation is exactly the single pass it always was.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from models.prompting.deep_prompts import encode_text_with_deep_prompts
from models.prompting.prompt_assembly import ClassTokenPosition, ContextPromptTokens, assemble_prompts
from models.prompting.text_tower import TextTower

# A training step of ViT-B/16 with passes of 128 prompts rises 2.5 GB in fp32 on the CPU (bench/thousand_classes.py);
# every dataset of up to 128 classes runs in one pass, exactly as before.
DEFAULT_TEXT_CHUNK_SIZE = 128


@dataclass(frozen=True)
class TextPassParameters:
    """The memory bound shared by the parameters of every method that encodes learned prompts."""

    # Prompts per text-tower pass: classes, for methods with one prompt per class (CoOp, KgCoOp, ProGrad, MaPLe,
    # IVLP, PromptSRC); image x class prompts for CoCoOp. Bounds memory by one pass's activations (module docstring).
    text_chunk_size: int = DEFAULT_TEXT_CHUNK_SIZE

    def __post_init__(self) -> None:
        if not isinstance(self.text_chunk_size, int) or self.text_chunk_size < 1:
            raise ValueError(f"text_chunk_size must be an integer >= 1, got {self.text_chunk_size!r}")


def encode_in_passes(encode_range: Callable[[int, int], torch.Tensor], total: int,
                     chunk_size: int) -> torch.Tensor:
    """torch.cat of encode_range(start, stop) over consecutive ranges of at most chunk_size of `total` prompts.

    With more than one range and gradients recorded, each range runs under activation checkpointing, so the
    backward holds one range's activations at a time (module docstring)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if total <= chunk_size:
        return encode_range(0, total)
    recompute = torch.is_grad_enabled()
    outputs = []
    for start in range(0, total, chunk_size):
        stop = min(start + chunk_size, total)
        if recompute:
            outputs.append(checkpoint(encode_range, start, stop, use_reentrant=False))
        else:
            outputs.append(encode_range(start, stop))
    return torch.cat(outputs)


def _classes_of(prompt: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """A prompt shared by all classes (n, D) as it is; a per-class one (C, n, D) cut to classes start..stop-1."""
    return prompt[start:stop] if prompt.dim() == 3 else prompt


def encode_context_prompts(
    text_tower: TextTower,
    context: torch.Tensor,
    pieces: ContextPromptTokens,
    position: ClassTokenPosition = "end",
    layer_prompts: Sequence[torch.Tensor] | None = None,
    text_chunk_size: int = DEFAULT_TEXT_CHUNK_SIZE,
) -> torch.Tensor:
    """Raw text features (C, E) of every class's prompt, text_chunk_size classes per text-tower pass.

    context: (n, D) shared or (C, n, D) class-specific, spliced around each class's tokens by assemble_prompts.
    layer_prompts: None for the plain tower (TextTower.forward); otherwise the deep prompts of layers 1..len, each
    (n, D) or (C, n, D), through encode_text_with_deep_prompts."""
    n_classes = pieces.token_ids.shape[0]

    def encode_classes(start: int, stop: int) -> torch.Tensor:
        chunk = pieces.for_classes(start, stop)
        prompts = assemble_prompts(_classes_of(context, start, stop), chunk, position)
        if layer_prompts is None:
            return text_tower(prompts, chunk.token_ids)
        chunk_layer_prompts = [_classes_of(prompt, start, stop) for prompt in layer_prompts]
        return encode_text_with_deep_prompts(text_tower, prompts, chunk.token_ids, chunk_layer_prompts)

    return encode_in_passes(encode_classes, n_classes, text_chunk_size)


def encode_image_conditioned_prompts(
    text_tower: TextTower,
    contexts: torch.Tensor,
    pieces: ContextPromptTokens,
    text_chunk_size: int = DEFAULT_TEXT_CHUNK_SIZE,
) -> torch.Tensor:
    """Raw text features (B, C, E) of every class's prompt around each image's own context (contexts (B, n, D)),
    or each image and class's own context (contexts (B, C, n, D): CTP's class-aware prompts), class token at the end.

    The B x C prompts, image-major, go through the tower text_chunk_size at a time (a pass may hold the last classes
    of one image and the first of the next). Every prompt is encoded alone, so this equals one pass per image (as
    CoCoOp's original runs) up to float rounding."""
    n_images, n_classes = contexts.shape[0], pieces.token_ids.shape[0]

    def encode_range(start: int, stop: int) -> torch.Tensor:
        prompt_index = torch.arange(start, stop, device=contexts.device)
        class_index, image_index = prompt_index % n_classes, prompt_index // n_classes
        # Each prompt of the range is a "class-specific" prompt for assemble_prompts: its class's frozen pieces with
        # its image's context, so CoOp's assembly is reused unchanged.
        range_pieces = dataclasses.replace(
            pieces,
            token_ids=pieces.token_ids[class_index],
            prefix_embeddings=pieces.prefix_embeddings[class_index],
            suffix_embeddings=pieces.suffix_embeddings[class_index],
            # from the range itself, not class_index.tolist(): no device-to-host sync per pass on a GPU
            name_token_counts=[pieces.name_token_counts[i % n_classes] for i in range(start, stop)],
            initial_context=None,
        )
        range_contexts = contexts[image_index] if contexts.dim() == 3 else contexts[image_index, class_index]
        prompts = assemble_prompts(range_contexts, range_pieces, "end")
        return text_tower(prompts, range_pieces.token_ids)

    features = encode_in_passes(encode_range, n_images * n_classes, text_chunk_size)
    return features.view(n_images, n_classes, -1)
