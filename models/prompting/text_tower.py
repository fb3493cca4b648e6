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

    def forward(self, token_embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Encode prompts given as embeddings (P, L, D); token_ids (P, L) locate the end-of-text token."""
        x = token_embeddings.to(self.dtype) + self.positional_embedding.to(self.dtype)
        attn_mask = self.attn_mask
        if attn_mask is not None:
            attn_mask = attn_mask.to(device=x.device)
        x = self.transformer(x, attn_mask=attn_mask)
        x = self.ln_final(x)
        x = text_global_pool(x, token_ids, self.pool_type, eos_token_id=self.eos_token_id)
        if self.text_projection is not None:
            if isinstance(self.text_projection, nn.Linear):
                x = self.text_projection(x)
            else:
                x = x @ self.text_projection
        return x
