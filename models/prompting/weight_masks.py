"""Binary masks on frozen backbone weights, trained through a straight-through threshold (mask tuning).

Each masked weight W of a frozen module gets a real-valued mask m of its shape; the module then runs with

    W_eff = 1[m > threshold] * W

and the threshold's backward passes the gradient unchanged (straight-through), so dL/dm = dL/dW_eff * W. The masks
start at `init_scale` everywhere ('1s' initialisation of Mallya et al.'s Piggyback, which R-AMT's masklayers.py
follows), above the threshold, so that an untrained mask changes nothing.

The backbone is never modified: the module runs through torch.func.functional_call with the effective weights in
place of its own for that call only, so other classifiers (and caches) sharing the same module see its weights as
they were. Masks are named after the module that owns the weight, `<module path>.mask_real` (R-AMT's names:
`conv1.mask_real` on the patch embedding's weight, `transformer.resblocks.<i>.attn.mask_real` on in_proj_weight,
`...attn.out_proj.mask_real` on out_proj.weight), so a module carries at most one masked weight.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call

MASK_NAME = "mask_real"


class _StraightThroughThreshold(torch.autograd.Function):
    """1[m > threshold] forward; the gradient passes through unchanged (R-AMT's Binarizer)."""

    @staticmethod
    def forward(ctx, real: torch.Tensor, threshold: float) -> torch.Tensor:
        return (real > threshold).to(real.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output, None


def binarize(real: torch.Tensor, threshold: float) -> torch.Tensor:
    """{0, 1} mask 1[real > threshold], straight-through in the backward."""
    return _StraightThroughThreshold.apply(real, threshold)


def mask_name_of(weight_name: str) -> str:
    """`conv1.weight` -> `conv1.mask_real`; `attn.in_proj_weight` -> `attn.mask_real` (the owning module's mask)."""
    module_path = weight_name.rpartition(".")[0]
    return f"{module_path}.{MASK_NAME}" if module_path else MASK_NAME


class WeightMasks(nn.Module):
    """Real-valued masks on some weights of `owner`; calling it runs `owner` with the masked weights."""

    def __init__(self, owner: nn.Module, weight_names: Sequence[str], init_scale: float, threshold: float):
        super().__init__()
        if not 0.0 < threshold < init_scale:
            raise ValueError(f"the mask threshold {threshold!r} must lie in (0, init scale {init_scale!r}): at or "
                             "above the initial value every weight starts masked off")
        weights = dict(owner.named_parameters())
        missing = [name for name in weight_names if name not in weights]
        if missing:
            raise ValueError(f"{type(owner).__name__} has no weights {missing} to mask")
        mask_names = [mask_name_of(name) for name in weight_names]
        if len(set(mask_names)) != len(mask_names):
            raise ValueError(f"two masked weights of one module: {list(weight_names)}")
        self.threshold = float(threshold)
        self.weight_names = tuple(weight_names)
        self.mask_names = tuple(mask_names)
        self._owner = (owner,)  # a tuple: not registered as a submodule (see `owner`)
        for weight_name, mask_name in zip(weight_names, mask_names):
            weight = weights[weight_name]
            container = self
            for part in mask_name.split(".")[:-1]:  # a module tree mirroring the owner's, so names read as its own
                if part not in container._modules:
                    container.add_module(part, nn.Module())
                container = container._modules[part]
            initial = torch.full(weight.shape, float(init_scale), dtype=torch.float32, device=weight.device)
            container.register_parameter(MASK_NAME, nn.Parameter(initial))

    # The owner is the shared backbone: kept out of this module's parameters and state (and so out of checkpoints);
    # it moves with the classifier that registers it.
    @property
    def owner(self) -> nn.Module:
        return self._owner[0]

    def masks(self) -> Iterator[tuple[str, str, nn.Parameter]]:
        """(weight name, mask name, mask) in the order the masks were created."""
        parameters = dict(self.named_parameters())
        for weight_name, mask_name in zip(self.weight_names, self.mask_names):
            yield weight_name, mask_name, parameters[mask_name]

    def masked_weights(self) -> dict[str, torch.Tensor]:
        """{weight name: 1[m > threshold] * W}, differentiable in m (straight-through)."""
        weights = dict(self.owner.named_parameters())
        masked = {}
        for weight_name, _, mask in self.masks():
            weight = weights[weight_name]
            masked[weight_name] = binarize(mask, self.threshold).to(weight.dtype) * weight
        return masked

    def norm_sum(self) -> torch.Tensor:
        """Sum over the masks of their L2 norms (not squared): R-AMT's regulariser before its weight."""
        return torch.stack([mask.float().flatten().norm(2) for _, _, mask in self.masks()]).sum()

    @torch.no_grad()
    def fraction_off(self) -> float:
        """The share of masked weights switched off (mask <= threshold)."""
        off = sum(int((mask <= self.threshold).sum()) for _, _, mask in self.masks())
        return off / max(sum(mask.numel() for _, _, mask in self.masks()), 1)

    def forward(self, *args, **kwargs):
        return functional_call(self.owner, self.masked_weights(), args, kwargs)
