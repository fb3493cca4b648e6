"""The text tower of any open_clip model with a native transformer, run on token embeddings.

Prompt methods replace some token embeddings with learned vectors; everything else (positional embedding,
transformer, final norm, pooling at the end-of-text token, projection) is the backbone's own computation, read
from the model rather than re-implemented, so widths, dtypes and pooling follow the checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn
from open_clip.transformer import text_global_pool


class UnsupportedBackboneError(ValueError):
    """A prompt method cannot hook into this backbone (raised before any work starts)."""


class TextTower(nn.Module):
    """A view of a CLIP text tower that accepts token embeddings instead of token ids."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        tower = getattr(clip_model, "text", None)
        if tower is None:
            tower = clip_model  # open_clip.CLIP keeps the text tower's parts on the model itself
        required = ("token_embedding", "positional_embedding", "transformer", "ln_final")
        missing = [name for name in required if not hasattr(tower, name)]
        if missing:
            raise UnsupportedBackboneError(
                f"{type(clip_model).__name__} has no native open_clip text transformer (missing {missing}); "
                "prompt methods need one to inject learned token embeddings"
            )
        if getattr(tower, "cls_emb", None) is not None:
            raise UnsupportedBackboneError("text towers with an appended CLS embedding (CoCa) are not supported")
        self.token_embedding = tower.token_embedding
        self.positional_embedding = tower.positional_embedding
        self.transformer = tower.transformer
        self.ln_final = tower.ln_final
        self.text_projection = tower.text_projection
        self.register_buffer("attn_mask", tower.attn_mask, persistent=False)
        self.pool_type = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        self.eos_token_id = getattr(tower, "text_eos_id", getattr(tower, "eos_id", None))
        # The positions after the last end-of-text token change no pooled feature under a causal mask when the pool
        # reads that token; `inputs` then drops them. cut_padding = False keeps the whole context (for comparisons).
        self._padding_is_inert: bool | None = None  # decided at first use: a mask on the meta device has no values
        self.cut_padding = True

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.get_cast_dtype()

    @property
    def width(self) -> int:
        return self.token_embedding.weight.shape[1]

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(token_ids).to(self.dtype)

    def causal(self) -> bool:
        """Whether each position attends only to itself and the positions before it (CLIP's text mask)."""
        mask = self.attn_mask
        if mask is None or mask.dim() != 2:
            return False
        if mask.dtype == torch.bool:  # True = may not attend
            return bool(torch.equal(mask, torch.ones_like(mask).triu(1)))
        upper = torch.ones_like(mask, dtype=torch.bool).triu(1)
        return bool(torch.isneginf(mask[upper]).all()) and bool((mask[~upper] == 0).all())

    @property
    def padding_is_inert(self) -> bool:
        """Whether the padding after the last end-of-text token can reach no pooled feature (causal mask, pooled at
        that token); decided once, when the mask has values."""
        if self._padding_is_inert is None:
            if self.attn_mask is not None and self.attn_mask.is_meta:
                return False
            self._padding_is_inert = self.causal() and (
                self.pool_type == "argmax" or (self.pool_type == "eos" and self.eos_token_id is not None))
        return self._padding_is_inert

    def used_length(self, token_ids: torch.Tensor) -> int:
        """How many leading positions decide the pooled feature: up to the last prompt's end-of-text token when the
        mask is causal and the pool reads that token (and `cut_padding` is on), else the whole context."""
        length = token_ids.shape[-1]
        if not (self.cut_padding and self.padding_is_inert):
            return length
        if self.pool_type == "argmax":
            last = token_ids.argmax(dim=-1).max()
        else:  # "eos": the first end-of-text token of each prompt
            last = (token_ids == self.eos_token_id).int().argmax(dim=-1).max()
        return min(length, int(last) + 1)

    def inputs(self, token_embeddings: torch.Tensor, token_ids: torch.Tensor):
        """(x, attn_mask, token_ids) for the transformer, cut to `used_length` positions.

        Under CLIP's causal mask no position attends to a later one, so the padding after the last end-of-text token
        cannot change any pooled feature: dropping it gives the same features (up to float rounding) for a fraction
        of the work (prompt-learning prompts use about 10 of the 77 positions of a released CLIP)."""
        length = self.used_length(token_ids)
        x = token_embeddings[:, :length].to(self.dtype) + self.positional_embedding[:length].to(self.dtype)
        attn_mask = self.attn_mask
        if attn_mask is not None:
            attn_mask = attn_mask[:length, :length].to(device=x.device)
        return x, attn_mask, token_ids[:, :length]

    def forward(self, token_embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Encode prompts given as embeddings (P, L, D); token_ids (P, L) locate the end-of-text token."""
        x, attn_mask, token_ids = self.inputs(token_embeddings, token_ids)
        x = self.transformer(x, attn_mask=attn_mask)
        x = self.ln_final(x)
        x = text_global_pool(x, token_ids, self.pool_type, eos_token_id=self.eos_token_id)
        if self.text_projection is not None:
            if isinstance(self.text_projection, nn.Linear):
                x = self.text_projection(x)
            else:
                x = x @ self.text_projection
        return x
