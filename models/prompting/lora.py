"""Low-rank updates (LoRA) of the attention projections of open_clip's transformer blocks, for any tower and width.

A LoRA'd projection with frozen weight W (out, in) and bias b computes

    x @ W.T + b + s * dropout(x) @ A.T @ B.T,      A (r, in), B (out, r), s = alpha / sqrt(r)

with A drawn as nn.Linear's default (kaiming_uniform_, a = sqrt(5)) and B = 0, so that an untrained update changes
nothing. The scaling is alpha / sqrt(r), as CLIP-LoRA's loralib (layers.py: `self.lora_alpha / math.sqrt(self.r)`),
not the alpha / r of the original LoRA paper; the dropout acts on the update's input only, in training mode.

What can be adapted: in each attention block, the projections "q", "k", "v" (the three row blocks of
nn.MultiheadAttention's in_proj_weight) and "o" (out_proj). The backbone is never modified: the frozen weights are
read as views of in_proj_weight / out_proj.weight, attention runs through F.scaled_dot_product_attention (with the
tower's own mask, e.g. the text tower's causal one), and the towers run through deep_prompts' forwards with a block
runner (`LoRATransformer.run_block`) that replaces the attention of the adapted blocks and keeps everything else of
the block (ln_1, ls_1, ln_2, mlp, ls_2) as open_clip's ResidualAttentionBlock.forward computes it.

Which blocks: `layer_indices` reads a named position ("all", "bottom", "mid", "up", "half-bottom", "half-up", "top",
"top1", "top2", "top3") or a list of block indices against the tower's own block count, never a per-backbone table.
Only blocks of open_clip's ResidualAttentionBlock kind (self-attention through nn.MultiheadAttention with one
in_proj_weight) can be hooked; anything else (a ResNet image tower, open_clip's own `Attention` class of the custom
blocks, cross-attention) is refused by `require_hookable_blocks` with what was found.

Modules are named as the tower's own (`transformer.resblocks.<i>.attn.q_proj.w_lora_A`, loralib's projection names
q_proj / k_proj / v_proj / proj), so a checkpoint of the authors' LoRA tensors maps one to one.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.prompting.text_tower import UnsupportedBackboneError

PROJECTIONS = ("q", "k", "v", "o")
# loralib's module names of the projections (PlainMultiheadAttentionLoRA): the authors' checkpoints use them.
PROJECTION_MODULES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "proj"}


def _thirds(n_layers: int) -> tuple[int, int]:
    return round(n_layers / 3), round(2 * n_layers / 3)


# Named positions as fractions of the tower's depth; on a 12-block tower each equals CLIP-LoRA's table entry
# (loralib/utils.py INDEX_POSITIONS_TEXT / _VISION for ViT-B): bottom 0-3, mid 4-7, up 8-11, half-bottom 0-5,
# half-up 6-11, top 11.
NAMED_POSITIONS = {
    "all": lambda n: range(n),
    "bottom": lambda n: range(0, _thirds(n)[0]),
    "mid": lambda n: range(*_thirds(n)),
    "up": lambda n: range(_thirds(n)[1], n),
    "half-bottom": lambda n: range(0, n // 2),
    "half-up": lambda n: range(n // 2, n),
    "top": lambda n: range(n - 1, n),
    "top1": lambda n: range(n - 1, n),
    "top2": lambda n: range(max(n - 2, 0), n),
    "top3": lambda n: range(max(n - 3, 0), n),
}


def layer_indices(position: str | Sequence[int], n_layers: int, tower: str) -> tuple[int, ...]:
    """The indices of the blocks a position selects in a tower of n_layers blocks (refused when none, or out of it)."""
    if isinstance(position, str):
        if position not in NAMED_POSITIONS:
            raise ValueError(f"LoRA position {position!r} is not one of {sorted(NAMED_POSITIONS)} or a list of block "
                             "indices")
        indices = tuple(NAMED_POSITIONS[position](n_layers))
    else:
        indices = tuple(sorted(set(position)))
        bad = [index for index in indices if not isinstance(index, int) or isinstance(index, bool)
               or not 0 <= index < n_layers]
        if bad:
            raise ValueError(f"LoRA block indices {bad} are not blocks of the {tower} ({n_layers} blocks: "
                             f"0..{n_layers - 1})")
    if not indices:
        raise ValueError(f"LoRA position {position!r} selects no block of the {tower} ({n_layers} blocks)")
    return indices


class LowRankUpdate(nn.Module):
    """s * dropout(x) @ A.T @ B.T, the update one LoRA adds to a frozen projection x @ W.T + b."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout_rate: float,
                 device: torch.device | None = None):
        super().__init__()
        self.w_lora_A = nn.Parameter(torch.empty(rank, in_features, device=device))
        self.w_lora_B = nn.Parameter(torch.zeros(out_features, rank, device=device))
        nn.init.kaiming_uniform_(self.w_lora_A, a=math.sqrt(5))
        self.scaling = alpha / math.sqrt(rank)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Factored (x A^T) B^T rather than x (BA)^T: 2 r (in + out) instead of in x out multiplications per token.
        down = self.dropout(x) @ self.w_lora_A.t().to(x.dtype)
        return self.scaling * (down @ self.w_lora_B.t().to(x.dtype))


def _projection(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                update: LowRankUpdate | None) -> torch.Tensor:
    result = F.linear(x, weight, bias)
    return result if update is None else result + update(x)


def _additive_mask(attn_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """nn.MultiheadAttention's mask as scaled_dot_product_attention takes it: a boolean mask there marks the
    positions NOT attended (True = masked), the opposite of SDPA's, so it becomes an additive -inf mask."""
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        return torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill(attn_mask, float("-inf"))
    return attn_mask.to(dtype)


def lora_self_attention(attention: nn.MultiheadAttention, x: torch.Tensor, attn_mask: torch.Tensor | None,
                        updates: dict[str, LowRankUpdate]) -> torch.Tensor:
    """nn.MultiheadAttention(x, x, x) with LoRA updates on the projections named in `updates` (q, k, v, o)."""
    if not attention.batch_first:
        x = x.transpose(0, 1)  # (L, B, D) -> (B, L, D)
    batch, length, width = x.shape
    heads = attention.num_heads
    weights = attention.in_proj_weight.chunk(3)
    biases = attention.in_proj_bias.chunk(3) if attention.in_proj_bias is not None else (None, None, None)
    q, k, v = (_projection(x, weight, bias, updates.get(name)).view(batch, length, heads, width // heads)
               .transpose(1, 2) for name, weight, bias in zip("qkv", weights, biases))
    dropout_p = attention.dropout if attention.training else 0.0
    mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=_additive_mask(attn_mask, q.dtype), dropout_p=dropout_p)
    mixed = mixed.transpose(1, 2).reshape(batch, length, width)
    out = _projection(mixed, attention.out_proj.weight, attention.out_proj.bias, updates.get("o"))
    return out if attention.batch_first else out.transpose(0, 1)


def lora_block_forward(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None,
                       updates: dict[str, LowRankUpdate]) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock.forward (self-attention) with the attention's projections LoRA'd."""
    x = x + block.ls_1(lora_self_attention(block.attn, block.ln_1(x), attn_mask, updates))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


BLOCK_PARTS = ("ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2")


def _why_not_hookable(block: nn.Module) -> str | None:
    missing = [part for part in BLOCK_PARTS if not hasattr(block, part)]
    if missing:
        return f"block {type(block).__name__} has no {missing} (not an open_clip ResidualAttentionBlock)"
    attention = block.attn
    if not isinstance(attention, nn.MultiheadAttention):
        return (f"its attention is {type(attention).__module__}.{type(attention).__name__}, not "
                "torch.nn.MultiheadAttention")
    if not attention._qkv_same_embed_dim or attention.in_proj_weight is None:
        return "its nn.MultiheadAttention has separate q/k/v weights of other widths (kdim/vdim)"
    if attention.bias_k is not None or attention.add_zero_attn:
        return "its nn.MultiheadAttention adds key/value biases or a zero attention (add_bias_kv, add_zero_attn)"
    if hasattr(block, "ln_1_kv"):
        return "it is a cross-attention block"
    return None


def _attention_modules_in(module: nn.Module) -> list[str]:
    return sorted({type(m).__name__ for m in module.modules()
                   if isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower()
                   or "attn" in type(m).__name__.lower()})


def require_hookable_blocks(owner: nn.Module | None, tower: str, layers: Iterable[int] | None, who: str,
                            backbone: str) -> nn.ModuleList:
    """The transformer blocks of `owner` (the module holding `transformer.resblocks`), after checking that the
    selected ones are open_clip ResidualAttentionBlocks with nn.MultiheadAttention; otherwise
    UnsupportedBackboneError "<who> cannot hook the <tower> of backbone <backbone>: <what was found>"."""
    def refuse(found: str) -> UnsupportedBackboneError:
        return UnsupportedBackboneError(f"{who} cannot hook the {tower} of backbone {backbone}: {found}")

    blocks = getattr(getattr(owner, "transformer", None), "resblocks", None)
    if blocks is None:
        attention = _attention_modules_in(owner) if owner is not None else []
        raise refuse(f"{type(owner).__name__} has no transformer blocks (transformer.resblocks)"
                     + (f"; its attention modules: {attention}" if attention else ""))
    for index in (range(len(blocks)) if layers is None else layers):
        reason = _why_not_hookable(blocks[index])
        if reason is not None:
            raise refuse(f"block {index}: {reason}")
    return blocks


def check_rank(rank: int, width: int, tower: str, who: str) -> None:
    """Refuse a rank above the width of the (width x width) projections it adapts (a LoRA of rank r needs
    r <= min(in, out) features to be low-rank at all)."""
    if rank > width:
        raise ValueError(f"{who}: LoRA rank {rank} exceeds the width {width} of the {tower}'s attention projections "
                         f"(at most {width})")


class AttentionLoRA(nn.Module):
    """The updates of one attention block: q_proj, k_proj, v_proj and/or proj (loralib's names), width x width."""

    def __init__(self, width: int, projections: Sequence[str], rank: int, alpha: float, dropout_rate: float,
                 device: torch.device | None = None):
        super().__init__()
        for projection in projections:
            self.add_module(PROJECTION_MODULES[projection],
                            LowRankUpdate(width, width, rank, alpha, dropout_rate, device))

    def updates(self) -> dict[str, LowRankUpdate]:
        return {name: getattr(self, module) for name, module in PROJECTION_MODULES.items() if hasattr(self, module)}


class LoRABlock(nn.Module):
    def __init__(self, attention: AttentionLoRA):
        super().__init__()
        self.attn = attention


class LoRATransformer(nn.Module):
    """The updates of some blocks of one tower's transformer, named `resblocks.<i>.attn.<projection>`; `run_block`
    is the block runner the tower forwards take (models.prompting.deep_prompts)."""

    def __init__(self, blocks: nn.ModuleList, layers: Sequence[int], projections: Sequence[str], rank: int,
                 alpha: float, dropout_rate: float):
        super().__init__()
        self.resblocks = nn.ModuleDict()
        for index in layers:  # the block's own order of creation: q, k, v, o as `projections` lists them
            attention = blocks[index].attn
            device = attention.in_proj_weight.device
            self.resblocks[str(index)] = LoRABlock(
                AttentionLoRA(attention.embed_dim, projections, rank, alpha, dropout_rate, device))
        self._updates = {int(index): block.attn.updates() for index, block in self.resblocks.items()}

    def run_block(self, index: int, block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        updates = self._updates.get(index)
        if updates is None:
            return block(x, attn_mask=attn_mask)
        return lora_block_forward(block, x, attn_mask, updates)
