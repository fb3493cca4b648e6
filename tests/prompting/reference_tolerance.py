"""How close a gradient must come to the authors' run to count as the same computation.

The references are fp32 runs of the authors' code on one CPU; a gradient through two transformer stacks carries
fp32 rounding that depends on the CPU's matmul kernels. Measured on the reference tiny CLIP (CoOp cases): the
authors' own gradient lies up to 3.1e-6 of its largest entry from the float64 gradient, and ours, on an AVX-512/AMX
Xeon, up to 2.4e-6 of it from theirs. A fixed 1e-5 is finer than the reference's own error for gradients of size
5-15, so it passes or fails by which CPU runs it. Our text tower also drops the padding after the last end-of-text
token (models/prompting/text_tower.py; exact in arithmetic under the causal mask), which changes the matmuls'
shapes and so their rounding: measured, CLIP-LoRA's text-tower LoRA gradient then lies 4.8e-6 of its largest entry
from the authors' whole-context run. The bound is 8e-6 of the largest entry (about 64 fp32 ulps of it), never
under 1e-5: an implementation difference (a misplaced token, a missing normalisation) moves gradients by
1e-3 of their size or more.

A gradient that the original code passes through `.half()` (MaPLe's injected prompts) is rounded to fp16 in the
backward pass; an entry (or an addend of it) whose fp32 value lies at an fp16 rounding boundary may land one fp16
ulp away: measured, one entry of 128 of MaPLe's first text layer prompt, by exactly one fp16 ulp (6.1e-5 at 0.067),
and one of 64 of its proj bias (1.5e-5 at 0.10); there the float64 gradient lies closer to the authors' run than
to ours.
"""

from __future__ import annotations

import torch

RELATIVE_TO_LARGEST = 8e-6
FLOOR = 1e-5


def assert_gradient_matches(actual: torch.Tensor, expected: torch.Tensor, name: str = "gradient",
                            fp16_rounded: bool = False) -> None:
    expected = expected.to(actual.dtype)
    bound = torch.full_like(expected, max(FLOOR, RELATIVE_TO_LARGEST * expected.abs().max().item()))
    if fp16_rounded:
        magnitude = expected.abs().clamp_min(torch.finfo(torch.float16).tiny)
        one_fp16_ulp = torch.exp2(torch.floor(torch.log2(magnitude))) * torch.finfo(torch.float16).eps
        bound = torch.maximum(bound, one_fp16_ulp)
    excess = (actual - expected).abs() - bound
    assert excess.max() <= 0, (
        f"{name}: {int((excess > 0).sum())} of {expected.numel()} entries off by more than the bound "
        f"(largest difference {(actual - expected).abs().max().item():.3g}, bound {bound.max().item():.3g})")
