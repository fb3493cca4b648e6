"""The one cosine rule that filters generated variations, shared by the augmentation stage and DiffTPT."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_to_source(source_features: torch.Tensor, variation_features: torch.Tensor) -> torch.Tensor:
    """(B, V) cosine similarity of each variation (B, V, E) to its source (B, E)."""
    if source_features.dim() != 2 or variation_features.dim() != 3 or \
            variation_features.shape[0] != source_features.shape[0]:
        raise ValueError(f"expected sources (B, E) and variations (B, V, E), got {tuple(source_features.shape)} "
                         f"and {tuple(variation_features.shape)}")
    source = F.normalize(source_features.float(), dim=-1)
    variations = F.normalize(variation_features.float(), dim=-1)
    return (variations * source.unsqueeze(1)).sum(dim=-1)


def keep_above(similarity: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean mask of the variations whose similarity reaches the threshold."""
    return similarity >= threshold


def keep_top_fraction(similarity: torch.Tensor, fraction: float) -> torch.Tensor:
    """(B, k) indices of the k = max(1, int(V * fraction)) most similar variations of each row, most similar first
    (ties: the lower index first)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    count = max(1, int(similarity.shape[-1] * fraction))
    order = torch.argsort(-similarity, dim=-1, stable=True)
    return order[..., :count]
