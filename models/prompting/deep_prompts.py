"""Tower forwards with learned tokens injected into the transformer layers ("deep" prompts).

Shared by the multi-layer prompt methods (MaPLe; later VPT-deep, IVLP, PromptSRC). Both forwards run the
backbone's own modules layer by layer, exactly as open_clip's `Transformer.forward` and
`VisionTransformer.forward` do, and differ only where prompts enter:

- text: the input embeddings already carry the shallow prompt (spliced by `prompt_assembly`); before layer
  i >= 1 the tokens at positions [start, start + n) are replaced by the layer-i prompts.
- vision: n prompt tokens are appended at the END of the sequence after the positional embedding (and patch
  dropout, so prompts are never dropped) and before ln_pre; before layer i >= 1 the last n tokens are replaced
  by the layer-i prompts. The prompt tokens are removed before pooling, so pooling sees the same tokens as the
  unprompted model (with 'tok' pooling, as in CLIP, this changes nothing).

`layer_prompts[k]` is the prompt of layer k + 1; layers past len(layer_prompts) keep whatever the previous layer
produced at those positions (as MaPLe's "prompt depth" does). A prompt is (n, D), shared by the batch, or
(B, n, D), one per sequence.

Both forwards also take `run_block`, which runs one block in place of `block(x, attn_mask=...)`: a method that
changes the blocks' computation (CLIP-LoRA's low-rank attention updates, models/prompting/lora.py) hooks in there
and keeps the rest of the tower's forward.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from open_clip.transformer import text_global_pool

from models.prompting.text_tower import TextTower, UnsupportedBackboneError


# (index of the block in its tower, the block, x in the transformer's layout, attn_mask) -> the block's output
BlockRunner = Callable[[int, nn.Module, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _replace_tokens(x: torch.Tensor, prompt: torch.Tensor, start: int, sequence_dim: int) -> torch.Tensor:
    """x with the tokens at [start, start + n) along sequence_dim replaced by prompt (n, D) or (B, n, D)."""
    batch_dim = 1 - sequence_dim
    n_prompt = prompt.shape[-2]
    if prompt.dim() == 2:
        prompt = prompt.unsqueeze(0).expand(x.shape[batch_dim], -1, -1)
    if sequence_dim == 0:  # sequence-first layout (L, B, D)
        prompt = prompt.transpose(0, 1)
    before = x.narrow(sequence_dim, 0, start)
    after = x.narrow(sequence_dim, start + n_prompt, x.shape[sequence_dim] - start - n_prompt)
    # Concatenation, not in-place assignment, so gradients flow to the prompts and autograd stays valid.
    return torch.cat([before, prompt.to(x.dtype), after], dim=sequence_dim)


def run_transformer_with_layer_prompts(
    transformer: nn.Module,
    x: torch.Tensor,
    layer_prompts: Sequence[torch.Tensor],
    prompt_start: int,
    attn_mask: torch.Tensor | None = None,
    run_block: BlockRunner | None = None,
) -> torch.Tensor:
    """open_clip `Transformer.forward` on x (B, L, D), replacing tokens [prompt_start, +n) before layers 1..len;
    `run_block` (module docstring) runs each block instead of its own forward."""
    blocks = transformer.resblocks
    if len(layer_prompts) > len(blocks) - 1:
        raise ValueError(
            f"{len(layer_prompts)} deep prompts need {len(layer_prompts) + 1} layers; the tower has {len(blocks)}"
        )
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()  # NLD -> LND
    sequence_dim = 1 if batch_first else 0
    for index, block in enumerate(blocks):
        if 1 <= index <= len(layer_prompts):
            x = _replace_tokens(x, layer_prompts[index - 1], prompt_start, sequence_dim)
        checkpointed = getattr(transformer, "grad_checkpointing", False) and not torch.jit.is_scripting()
        if run_block is not None:
            x = (checkpoint(run_block, index, block, x, attn_mask, use_reentrant=False) if checkpointed
                 else run_block(index, block, x, attn_mask))
        elif checkpointed:
            x = checkpoint(block, x, None, None, attn_mask, use_reentrant=False)
        else:
            x = block(x, attn_mask=attn_mask)
    if not batch_first:
        x = x.transpose(0, 1)  # LND -> NLD
    return x


def encode_text_with_deep_prompts(
    text_tower: TextTower,
    token_embeddings: torch.Tensor,
    token_ids: torch.Tensor,
    layer_prompts: Sequence[torch.Tensor],
    prompt_start: int = 1,
    run_block: BlockRunner | None = None,
) -> torch.Tensor:
    """`TextTower.forward` with deep prompts: raw text features (P, E) of prompts given as embeddings (P, L, D)."""
    dtype = text_tower.dtype
    x, attn_mask, token_ids = text_tower.inputs(token_embeddings, token_ids)
    layer_prompts = [prompt.to(dtype) for prompt in layer_prompts]
    x = run_transformer_with_layer_prompts(text_tower.transformer, x, layer_prompts, prompt_start, attn_mask,
                                           run_block)
    return pooled_text_features(text_tower, x, token_ids)


def pooled_text_features(text_tower: TextTower, x: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """The text tower after its transformer: ln_final, pooling (at the end-of-text token for CLIP), projection."""
    x = text_tower.ln_final(x)
    x = text_global_pool(x, token_ids, text_tower.pool_type, eos_token_id=text_tower.eos_token_id)
    projection = text_tower.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
    return x


class PromptedVisionTower(nn.Module):
    """A view of open_clip's VisionTransformer that takes prompt tokens appended at the end of the sequence."""

    REQUIRED = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        visual = getattr(clip_model, "visual", None)
        missing = [name for name in self.REQUIRED if not hasattr(visual, name)]
        if visual is None or missing or not hasattr(visual.transformer, "resblocks"):
            raise UnsupportedBackboneError(
                f"the visual tower {type(visual).__name__} is not an open_clip VisionTransformer "
                f"(missing {missing or ['transformer.resblocks']}); vision prompts need a ViT image encoder"
            )
        if getattr(visual, "attn_pool", None) is not None:
            raise UnsupportedBackboneError("vision towers with attentional pooling (CoCa) are not supported")
        self.visual = visual

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.transformer.get_cast_dtype()

    @property
    def width(self) -> int:
        return self.visual.positional_embedding.shape[-1]

    @property
    def n_layers(self) -> int:
        return len(self.visual.transformer.resblocks)

    def forward(
        self,
        images: torch.Tensor,
        input_prompts: torch.Tensor,
        layer_prompts: Sequence[torch.Tensor] = (),
        run_block: BlockRunner | None = None,
    ) -> torch.Tensor:
        """Raw image features (B, E); input_prompts (n, D) or (B, n, D), layer_prompts for layers 1..len."""
        visual = self.visual
        dtype = self.dtype
        x = self.image_tokens(images)
        n_prompt = input_prompts.shape[-2]
        if input_prompts.dim() == 2:
            input_prompts = input_prompts.unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([x, input_prompts.to(x.dtype)], dim=1)
        x = visual.ln_pre(x)
        prompt_start = x.shape[1] - n_prompt
        layer_prompts = [prompt.to(dtype) for prompt in layer_prompts]
        x = run_transformer_with_layer_prompts(visual.transformer, x, layer_prompts, prompt_start,
                                               run_block=run_block)
        x = x[:, :prompt_start]  # prompts are scratch tokens, not image content: pooling never sees them
        return self.pooled_features(x)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The steps of VisionTransformer._embeds up to patch dropout (before ln_pre): (B, 1 + grid**2, width)."""
        visual = self.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, grid**2, width)
        class_token = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([class_token, x], dim=1)
        x = x + visual.positional_embedding.to(x.dtype)
        return visual.patch_dropout(x)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw image features (B, E) of the transformer's output tokens (B, L, width): pooling, projection."""
        pooled, _ = self.visual._pool(x)
        if self.visual.proj is not None:
            pooled = pooled @ self.visual.proj
        return pooled


def check_prompt_depth(depth: int, n_layers: int, tower: str) -> None:
    """Refuse a prompt depth the tower cannot hold (depth J prompts the input and layers 1..J-1)."""
    if not 1 <= depth <= n_layers:
        raise ValueError(f"{tower} prompt_depth must be in 1..{n_layers} (the tower's layer count), got {depth}")


class IndependentLayerPrompts(nn.Module):
    """n learned tokens for a tower's input and for each of its layers 1..depth-1, each layer its own
    (VPT-deep, IVLP): no coupling between layers or towers. `input_prompt` may start from given embeddings."""

    def __init__(
        self,
        n_tokens: int,
        width: int,
        depth: int,
        init_std: float,
        initial_input: torch.Tensor | None = None,
    ):
        super().__init__()
        if n_tokens < 0:
            raise ValueError(f"the number of prompt tokens must be >= 0, got {n_tokens}")
        if initial_input is None:
            initial_input = torch.randn(n_tokens, width) * init_std
        if tuple(initial_input.shape) != (n_tokens, width):
            raise ValueError(
                f"initial input prompt has shape {tuple(initial_input.shape)}, expected {(n_tokens, width)}"
            )
        self.input_prompt = nn.Parameter(initial_input.detach().clone().float())
        self.layer_prompts = nn.ParameterList(
            [nn.Parameter(torch.randn(n_tokens, width) * init_std) for _ in range(depth - 1)]
        )

    @property
    def n_tokens(self) -> int:
        return self.input_prompt.shape[0]
