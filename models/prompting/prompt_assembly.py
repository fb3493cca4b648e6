"""Prompt assembly shared by every context-learning method: learned context vectors spliced around class tokens.

A prompt for class c is  [SOS] [context_1 .. context_n] [class tokens of c] [.] [EOS] [pad ...]  (class token at
the end), or with the class tokens in the middle of the context or at its front. The frozen token embeddings of
SOS, the class name and the suffix come from the backbone's own tokenizer and embedding table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from models.prompting.text_tower import TextTower

ClassTokenPosition = Literal["end", "middle", "front"]
CLASS_TOKEN_POSITIONS: tuple[str, ...] = ("end", "middle", "front")


class ClassNameTooLongError(ValueError):
    """A class name whose prompt does not fit the backbone's text context: the tokenizer would cut the class off."""


def untruncated_token_count(tokenizer, text: str) -> int:
    """Tokens of ``text`` with start and end tokens, counted before any truncation to the context length.

    open_clip's tokenizers pad to ``context_length`` and silently cut longer texts (keeping the end token), so the
    count is taken with a context long enough for any text: a BPE token covers at least one character."""
    ids = tokenizer([text], context_length=len(text) + 8)[0]
    return int((ids != 0).sum().item())


def require_prompts_fit(tokenizer, prompts_by_class: dict[str, list[str]], context_length: int) -> None:
    """Refuse prompts the tokenizer would truncate: every class's tokens must survive in every one of its prompts."""
    for classname, prompts in prompts_by_class.items():
        for prompt in prompts:
            tokens = untruncated_token_count(tokenizer, prompt)
            if tokens > context_length:
                shown = classname if len(classname) <= 60 else f"{classname[:57]}... ({len(classname)} characters)"
                raise ClassNameTooLongError(
                    f"class {shown!r}: its prompt needs {tokens} tokens but the backbone's text context length is "
                    f"{context_length}; the tokenizer would cut the class name off. Shorten the class name (the "
                    f"split file's classname or the class folder's name)"
                )


def count_name_tokens(tokenizer, name: str) -> int:
    """Number of BPE tokens of a class name (without start/end tokens), as CoOp's name_lens."""
    ids = tokenizer([name])[0]
    return int((ids != 0).sum().item()) - 2


@dataclass
class ContextPromptTokens:
    """Frozen pieces of the prompts around n_context learned vectors, for each class."""

    token_ids: torch.Tensor  # (C, L) ids of the full prompt text, used to find EOS when pooling
    prefix_embeddings: torch.Tensor  # (C, 1, D) start-of-text
    suffix_embeddings: torch.Tensor  # (C, L - 1 - n_context, D) class tokens, '.', EOS, padding
    name_token_counts: list[int]
    initial_context: torch.Tensor | None  # (n_context, D) embeddings of the init words, when given

    @property
    def n_context(self) -> int:
        """The learned vectors' count: the init's token count with a word initialisation, else the n_context asked."""
        return self.token_ids.shape[1] - 1 - self.suffix_embeddings.shape[1]

    def initial_or_random_context(self, width: int, init_std: float) -> torch.Tensor:
        """(n_context, width) starting context: the init words' embeddings, else N(0, init_std^2) draws from torch's
        global generator (the caller seeds it, e.g. inside torch.random.fork_rng)."""
        if self.initial_context is not None:
            return self.initial_context.float()
        return torch.randn(self.n_context, width) * init_std

    def for_classes(self, start: int, stop: int) -> ContextPromptTokens:
        """The pieces of classes start..stop-1 (views, not copies): one text-tower pass of them."""
        return dataclasses.replace(
            self,
            token_ids=self.token_ids[start:stop],
            prefix_embeddings=self.prefix_embeddings[start:stop],
            suffix_embeddings=self.suffix_embeddings[start:stop],
            name_token_counts=self.name_token_counts[start:stop],
        )


def tokenize_context_prompts(
    text_tower: TextTower,
    tokenizer,
    classnames: list[str],
    n_context: int,
    context_init: str | None = None,
) -> ContextPromptTokens:
    """Tokenize "X X .. X {class}." (or "{context_init} {class}.") and split the embeddings around the context."""
    if context_init:
        context_init = context_init.replace("_", " ").strip()
        init_ids = tokenizer([context_init])[0]
        n_context = int((init_ids != 0).sum().item()) - 2
        placeholder = context_init
    else:
        if n_context < 1:
            raise ValueError(f"n_context must be >= 1 for random initialisation, got {n_context}")
        placeholder = " ".join(["X"] * n_context)
    prompts = [f"{placeholder} {name}." for name in classnames]
    require_prompts_fit(tokenizer, {name: [prompt] for name, prompt in zip(classnames, prompts)},
                        text_tower.context_length)
    token_ids = tokenizer(prompts)
    token_ids = token_ids.to(text_tower.token_embedding.weight.device)
    with torch.no_grad():
        embeddings = text_tower.embed_tokens(token_ids)
    initial_context = embeddings[0, 1 : 1 + n_context].clone() if context_init else None
    return ContextPromptTokens(
        token_ids=token_ids,
        prefix_embeddings=embeddings[:, :1].clone(),
        suffix_embeddings=embeddings[:, 1 + n_context :].clone(),
        name_token_counts=[count_name_tokens(tokenizer, name) for name in classnames],
        initial_context=initial_context,
    )


def assemble_prompts(
    context: torch.Tensor,
    pieces: ContextPromptTokens,
    position: ClassTokenPosition = "end",
) -> torch.Tensor:
    """Token embeddings (C, L, D) with the context (n, D) shared or (C, n, D) class-specific spliced in."""
    prefix, suffix = pieces.prefix_embeddings, pieces.suffix_embeddings
    n_classes = prefix.shape[0]
    if context.dim() == 2:
        context = context.unsqueeze(0).expand(n_classes, -1, -1)
    context = context.to(prefix.dtype)
    if position == "end":
        return torch.cat([prefix, context, suffix], dim=1)
    if position not in ("middle", "front"):
        raise ValueError(f"class token position must be one of {CLASS_TOKEN_POSITIONS}, got {position!r}")
    half = context.shape[1] // 2
    prompts = []
    for index, name_length in enumerate(pieces.name_token_counts):
        class_tokens = suffix[index : index + 1, :name_length]
        rest = suffix[index : index + 1, name_length:]
        ctx = context[index : index + 1]
        if position == "middle":
            parts = [prefix[index : index + 1], ctx[:, :half], class_tokens, ctx[:, half:], rest]
        else:
            parts = [prefix[index : index + 1], class_tokens, ctx, rest]
        prompts.append(torch.cat(parts, dim=1))
    return torch.cat(prompts, dim=0)


def encode_template_texts(text_tower: TextTower, tokenizer, texts: list[str]) -> torch.Tensor:
    """Raw text features of plain prompts, computed by the same tower forward the learned prompts use."""
    device = text_tower.token_embedding.weight.device
    token_ids = tokenizer(texts).to(device)
    return text_tower(text_tower.embed_tokens(token_ids), token_ids)


def template_ensemble_features(
    text_tower: TextTower, tokenizer, classnames: list[str], templates: list[str]
) -> torch.Tensor:
    """(C, E) mean over templates of the normalized text features of "template.format(class)" (prompt ensembling);
    one template gives its own normalized features."""
    if not templates:
        raise ValueError("at least one hand-crafted template is needed")
    require_prompts_fit(tokenizer, {c: [t.format(c) for t in templates] for c in classnames},
                        text_tower.context_length)
    with torch.no_grad():
        per_template = [
            torch.nn.functional.normalize(
                encode_template_texts(text_tower, tokenizer, [t.format(c) for c in classnames]).float(), dim=-1
            )
            for t in templates
        ]
    return torch.stack(per_template).mean(dim=0)


def freeze(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
