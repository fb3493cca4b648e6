"""Updates shaped from two gradients: the task loss's and an auxiliary loss's, combined per parameter tensor.

Methods that regularise the update rather than the loss take both gradients of one forward and write a combination
into `.grad` for the training loop's optimizer to step on: ProGrad projects the task gradient off the zero-shot KL
gradient where they conflict; R-AMT drops task-gradient entries at random where the two disagree (gradient dropout).
They do so from `PromptedClassifier.backward_step`, the loop's one hook for a custom backward.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

# (parameter, task gradient, auxiliary gradient or None where the auxiliary loss does not reach it) -> applied
GradientMix = Callable[[torch.nn.Parameter, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def apply_mixed_gradients(parameters: Sequence[torch.nn.Parameter], task_loss: torch.Tensor,
                          auxiliary_loss: torch.Tensor, mix: GradientMix) -> None:
    """Backward both losses through one graph and add mix(p, g_task, g_aux) to each p.grad, as loss.backward() would
    accumulate (parameters the task loss does not reach are left as they are)."""
    auxiliary_gradients = torch.autograd.grad(auxiliary_loss, parameters, retain_graph=True, allow_unused=True)
    task_gradients = torch.autograd.grad(task_loss, parameters, allow_unused=True)
    for parameter, task_gradient, auxiliary_gradient in zip(parameters, task_gradients, auxiliary_gradients):
        if task_gradient is None:
            continue
        applied = mix(parameter, task_gradient, auxiliary_gradient)
        parameter.grad = applied if parameter.grad is None else parameter.grad + applied
