"""Prompts that act on a tower's tokens outside its frozen softmax: a side stream of prompt tokens (APT, DPL).

Deep prompt tuning (VPT, IVLP, MaPLe) puts n prompt tokens P into the token sequence, so every block's softmax runs
over [X; P] (X: the instance tokens, image patches or the class prompt's words) and the prompts change X's own
attention weights. Split that attention into its four parts, X->X, X->P, P->X and P->P. The variants here keep
X->X exactly as the frozen model computes it and add the prompts' effect on X as a separate term:

    O_X = softmax_X(Q_X K_X^T / sqrt(d) + mask) V_X  +  g_h * softmax_P(Q_X K_P^T / sqrt(d)) V_P        (per head h)

Why this form: the global softmax over [X; P] is exactly lambda * O_XX + (1 - lambda) * O_XP, with lambda =
Z_X / (Z_X + Z_P) the share of the exponentials' sum that X's keys hold, for every query. Writing it as
lambda * (O_XX + ((1 - lambda) / lambda) O_XP), the variants keep lambda = 1 on the frozen term (X's attention among
themselves is the frozen model's whatever P is) and replace the query-dependent ratio by a learned per-head gate g_h,
zero at initialisation: with g = 0 every block computes the frozen model's output on X, so the tower is the frozen
tower (an identity the tests check), and the prompt term no longer needs X's keys, so it is an independent
aggregation over the n prompts alone (K_P, V_P: the prompts through the block's own frozen ln_1 and in_proj).

The prompts form a side stream beside X: they take no position in the sequence (no positional embedding, as deep
VPT's appended tokens; the text tower's causal mask and padding cut never see them) and the tower's pooling reads X
only. Two ways the stream moves through the blocks (`run_blocks_with_side_prompts`):
- static (APT): each prompted block has its own prompts, which are never updated (no prompt queries, no MLP on
  them); their K_P, V_P are computed once per step for the whole batch, which is where the saving over deep VPT lies.
  Blocks past the prompt depth run exactly as the frozen block.
- carried (DPL): the prompts are updated by the block as tokens are, through P->X and P->P (prompt queries over the
  keys [X; P], one softmax, X's keys past each text's end-of-text token masked) and the block's MLP: prompts become
  conditioned on the instance (DPL's language-conditioned text prompts). Prompts of layers 1..J-1 replace the
  carried ones (as IVLP's deep prompts); blocks past J carry the last ones on.

Only open_clip ResidualAttentionBlocks with nn.MultiheadAttention self-attention are hooked (the checks of
models.prompting.lora, which hooks the same blocks).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.prompting.deep_prompts import PromptedVisionTower, pooled_text_features
from models.prompting.lora import _additive_mask
from models.prompting.text_tower import TextTower


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, H, L, D / H)."""
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, d) -> (B, L, H * d)."""
    batch, heads, length, head_width = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_width)


def frozen_projections(attention: nn.MultiheadAttention, x: torch.Tensor) -> list[torch.Tensor]:
    """q, k, v of tokens x (B, L, D) through the frozen in_proj, each (B, H, L, D / H)."""
    weights = attention.in_proj_weight.chunk(3)
    biases = attention.in_proj_bias.chunk(3) if attention.in_proj_bias is not None else (None, None, None)
    return [_heads(F.linear(x, weight, bias), attention.num_heads) for weight, bias in zip(weights, biases)]


def prompt_keys_values(block: nn.Module, prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K_P, V_P (1 or B, H, n, d) of prompts (n, D) or (B, n, D) through the block's frozen ln_1 and in_proj."""
    if prompts.dim() == 2:
        prompts = prompts.unsqueeze(0)
    _, keys, values = frozen_projections(block.attn, block.ln_1(prompts))
    return keys, values


def prompt_aggregation(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """softmax over the n prompts alone of Q_X K_P^T / sqrt(d), times V_P: (B, H, L, d). keys and values may have
    batch 1 (static prompts, shared by the batch)."""
    scores = queries @ keys.transpose(-1, -2) / queries.shape[-1] ** 0.5
    return scores.softmax(dim=-1) @ values


class PromptGates(nn.Module):
    """The per-head gates g (blocks, H) of the prompt term, zero at initialisation (module docstring)."""

    def __init__(self, n_blocks: int, heads: int, device: torch.device | None = None):
        super().__init__()
        self.gates = nn.Parameter(torch.zeros(n_blocks, heads, device=device))

    def of_block(self, index: int) -> torch.Tensor:
        return self.gates[index].view(1, -1, 1, 1)


def _residual_attention_out(block: nn.Module, x: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
    """The rest of ResidualAttentionBlock.forward after the heads' mix (B, H, L, d): out_proj, ls_1, MLP."""
    attention = block.attn
    out = F.linear(_merge_heads(mixed), attention.out_proj.weight, attention.out_proj.bias)
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def decoupled_block(
    block: nn.Module,
    x: torch.Tensor,
    prompts: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    gate: torch.Tensor | None,
    update_prompts: bool,
    instance_key_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One open_clip ResidualAttentionBlock on instance tokens x (B, L, D, batch first) with side prompts (n, D)
    or (B, n, D): (x', prompts'). X->X is the frozen attention (with the tower's attn_mask), the prompts add
    gate * softmax_P(Q_X K_P^T) V_P; with update_prompts the prompts also attend to [X; P] (one softmax; X's keys
    where instance_key_mask (B, L) is False are masked) and go through the block's MLP, else they come back as given.
    No prompts (None or n = 0): the frozen block."""
    attention = block.attn
    dropout = attention.dropout if attention.training else 0.0
    queries, keys, values = frozen_projections(attention, block.ln_1(x))
    mixed = F.scaled_dot_product_attention(queries, keys, values, attn_mask=_additive_mask(attn_mask, queries.dtype),
                                           dropout_p=dropout)
    if prompts is None or prompts.shape[-2] == 0:
        return _residual_attention_out(block, x, mixed), prompts
    prompts = prompts.to(x.dtype)
    if prompts.dim() == 2:
        prompts = prompts.unsqueeze(0)
    if update_prompts:
        prompt_queries, prompt_keys, prompt_values = frozen_projections(attention, block.ln_1(prompts))
    else:
        prompt_keys, prompt_values = prompt_keys_values(block, prompts)
    mixed = mixed + gate.to(mixed.dtype) * prompt_aggregation(queries, prompt_keys, prompt_values)
    new_x = _residual_attention_out(block, x, mixed)
    if not update_prompts:
        return new_x, prompts
    batch = x.shape[0]
    if prompt_keys.shape[0] != batch:
        prompt_queries, prompt_keys, prompt_values = (t.expand(batch, -1, -1, -1)
                                                      for t in (prompt_queries, prompt_keys, prompt_values))
        prompts = prompts.expand(batch, -1, -1)
    all_keys, all_values = torch.cat([keys, prompt_keys], dim=2), torch.cat([values, prompt_values], dim=2)
    key_mask = None
    if instance_key_mask is not None:
        n_prompts = prompts.shape[-2]
        allowed = torch.cat([instance_key_mask, instance_key_mask.new_ones(batch, n_prompts)], dim=1)
        key_mask = allowed.view(batch, 1, 1, -1)  # SDPA's boolean mask: True = may attend
    prompt_mixed = F.scaled_dot_product_attention(prompt_queries, all_keys, all_values, attn_mask=key_mask,
                                                  dropout_p=dropout)
    return new_x, _residual_attention_out(block, prompts, prompt_mixed)


def run_blocks_with_side_prompts(
    transformer: nn.Module,
    x: torch.Tensor,
    layer_prompts: Sequence[torch.Tensor],
    gates: PromptGates,
    carry: bool,
    attn_mask: torch.Tensor | None = None,
    instance_key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The transformer on x (B, L, D, batch first) with side prompts: layer_prompts[i] enters block i (i < J);
    static (carry False, APT): blocks >= J run frozen; carried (carry True, DPL): blocks >= J take the previous block's
    updated prompts. Returns X's output tokens (B, L, D)."""
    blocks = transformer.resblocks
    if len(layer_prompts) > len(blocks):
        raise ValueError(f"{len(layer_prompts)} prompted layers but the tower has {len(blocks)}")
    prompts = None
    for index, block in enumerate(blocks):
        if index < len(layer_prompts):
            prompts = layer_prompts[index]
        elif not carry:
            prompts = None
        gate = gates.of_block(index) if prompts is not None else None  # APT's gates cover its prompted blocks only
        x, prompts = decoupled_block(block, x, prompts, attn_mask, gate, carry, instance_key_mask)
    return x


def _check_batch_first(transformer: nn.Module) -> None:
    if not getattr(transformer, "batch_first", True):
        raise ValueError("side-stream prompts need an open_clip transformer in batch-first layout")


def instance_key_mask(text_tower: TextTower, token_ids: torch.Tensor) -> torch.Tensor | None:
    """(P, L) True at each text's positions up to its own end-of-text token (the pooled one), False after: the
    padding a pass keeps for its longest prompt, which the carried prompts must not read (a class's features would
    then depend on which classes share its pass). None where the pool does not read an end-of-text token."""
    if text_tower.pool_type == "argmax":
        last = token_ids.argmax(dim=-1)
    elif text_tower.pool_type == "eos" and text_tower.eos_token_id is not None:
        last = (token_ids == text_tower.eos_token_id).int().argmax(dim=-1)
    else:
        return None
    positions = torch.arange(token_ids.shape[-1], device=token_ids.device)
    return positions.unsqueeze(0) <= last.unsqueeze(1)


def encode_text_with_side_prompts(
    text_tower: TextTower,
    token_embeddings: torch.Tensor,
    token_ids: torch.Tensor,
    layer_prompts: Sequence[torch.Tensor],
    gates: PromptGates,
    carry: bool,
) -> torch.Tensor:
    """Raw text features (P, E) of texts given as embeddings (P, L, D), side prompts beside them."""
    _check_batch_first(text_tower.transformer)
    x, attn_mask, token_ids = text_tower.inputs(token_embeddings, token_ids)
    layer_prompts = [prompt.to(x.dtype) for prompt in layer_prompts]
    x = run_blocks_with_side_prompts(text_tower.transformer, x, layer_prompts, gates, carry, attn_mask,
                                     instance_key_mask(text_tower, token_ids) if carry else None)
    return pooled_text_features(text_tower, x, token_ids)


def encode_image_with_side_prompts(
    vision_tower: PromptedVisionTower,
    images: torch.Tensor,
    layer_prompts: Sequence[torch.Tensor],
    gates: PromptGates,
    carry: bool,
) -> torch.Tensor:
    """Raw image features (B, E) with side prompts; the first layer's prompts pass the tower's ln_pre, as deep VPT's
    appended input prompts do."""
    visual = vision_tower.visual
    _check_batch_first(visual.transformer)
    x = visual.ln_pre(vision_tower.image_tokens(images))
    layer_prompts = [prompt.to(x.dtype) for prompt in layer_prompts]
    if layer_prompts:
        layer_prompts[0] = visual.ln_pre(layer_prompts[0])
    x = run_blocks_with_side_prompts(visual.transformer, x, layer_prompts, gates, carry)
    return vision_tower.pooled_features(x)
