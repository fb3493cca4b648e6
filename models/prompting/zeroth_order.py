"""Zeroth-order optimisation: SPSA and SPSA-GC, for methods that may only evaluate a loss (a black-box backbone).

SPSA (Spall 1992) estimates the gradient of a loss L at parameters w from two evaluations along one random
perturbation d:  g_hat = (L(w + c_k d) - L(w - c_k d)) / (2 c_k d)  (element-wise division). Each entry of d is
independent with a random sign, so E[d_j / d_i] = 0 for j != i and, to first order (exactly for a quadratic L), the
estimate is unbiased. BlackVIP (Oh et al., CVPR 2023; changdaeoh/BlackVIP trainers/blackvip.py) draws |d_i| from
U[0.5, 1] (its "segmented uniform", which keeps 1 / d_i bounded), averages the estimates of several perturbations,
and corrects with momentum ("SPSA-GC"):

    a_k = a / (k + o)^alpha      the gain (step size) at step k = 1, 2, ...
    c_k = c / k^gamma            the perturbation size
    m_1 = g_hat_1,  m_k = beta m_{k-1} + g_hat_k,   w_{k+1} = w_k - a_k (g_hat_k + beta m_k)

with [o, c, a, alpha, gamma] = [1, 0.01, 0.01, 0.4, 0.1] and beta 0.9 published. Plain SPSA ("spsa") steps along
g_hat_k alone. Every random draw comes from the generator the optimiser is given (on the host, so the same seed
gives the same numbers on any device); nothing here needs autograd.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

SPSA_VARIANTS = ("spsa-gc", "spsa")


@dataclass(frozen=True)
class SpsaSchedule:
    """The gain and perturbation-size sequences; the defaults are BlackVIP's SPSA_PARAMS [o, c, a, alpha, gamma]."""

    a: float = 0.01
    c: float = 0.01
    offset: float = 1.0  # o
    alpha: float = 0.4
    gamma: float = 0.1

    def __post_init__(self) -> None:
        for name in ("a", "c"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SPSA's {name} must be > 0, got {getattr(self, name)!r}")
        if self.offset < 0 or self.alpha < 0 or self.gamma < 0:
            raise ValueError(f"SPSA's offset, alpha and gamma must be >= 0, got {self.offset}, {self.alpha}, "
                             f"{self.gamma}")

    def gain(self, step: int) -> float:
        """a_k = a / (k + o)^alpha for the 1-based step k."""
        return self.a / (step + self.offset) ** self.alpha

    def perturbation_size(self, step: int) -> float:
        """c_k = c / k^gamma for the 1-based step k."""
        return self.c / step ** self.gamma


def segmented_uniform_perturbation(size: int, generator: torch.Generator,
                                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(size,) entries +-U[0.5, 1]: a uniform magnitude in [0.5, 1] with a fair random sign, on the host."""
    magnitude = (torch.rand(size, generator=generator, dtype=dtype) + 1) / 2
    negative = torch.rand(size, generator=generator) < 0.5
    return torch.where(negative, -magnitude, magnitude)


def spsa_gradient(loss_at: Callable[[torch.Tensor], torch.Tensor], weights: torch.Tensor, perturbation_size: float,
                  samples: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(the mean of `samples` two-sided SPSA estimates of the gradient of loss_at at `weights`, the (2 samples,)
    losses evaluated). loss_at(w) returns the scalar loss at the flat parameter vector w."""
    estimates, losses = torch.zeros_like(weights), []
    for _ in range(samples):
        direction = segmented_uniform_perturbation(weights.numel(), generator, weights.dtype).to(weights.device)
        loss_plus = loss_at(weights + perturbation_size * direction)
        loss_minus = loss_at(weights - perturbation_size * direction)
        estimates += (loss_plus - loss_minus).to(weights.dtype) / (2 * perturbation_size * direction)
        losses += [loss_plus.detach().reshape(()), loss_minus.detach().reshape(())]
    return estimates / samples, torch.stack(losses)


@dataclass
class SpsaStep:
    """What one optimiser step did: its 1-based number, a_k, c_k, and the losses it evaluated (on the device)."""

    step: int
    gain: float
    perturbation_size: float
    losses: torch.Tensor


class SpsaGc:
    """SPSA or SPSA-GC over the given parameters, updated in place. `step(closure)` evaluates closure() (the loss at
    the parameters' current values, without autograd) 2 x samples times at perturbed values, then moves them."""

    def __init__(self, parameters: Iterable[torch.nn.Parameter], schedule: SpsaSchedule = SpsaSchedule(),
                 momentum: float = 0.9, samples: int = 5, variant: str = "spsa-gc",
                 generator: torch.Generator | None = None, seed: int = 0):
        self.parameters = list(parameters)
        if not self.parameters:
            raise ValueError("SPSA needs at least one parameter to optimise")
        if variant not in SPSA_VARIANTS:
            raise ValueError(f"unknown SPSA variant {variant!r}; known: {list(SPSA_VARIANTS)}")
        if samples < 1:
            raise ValueError(f"SPSA averages at least one perturbation, got samples={samples}")
        if not 0 <= momentum < 1:
            raise ValueError(f"SPSA-GC's momentum must lie in [0, 1), got {momentum}")
        self.schedule, self.momentum, self.samples, self.variant = schedule, momentum, samples, variant
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.steps_taken = 0
        self.momentum_buffer: torch.Tensor | None = None

    def flat_weights(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.parameters])

    @torch.no_grad()
    def set_weights(self, flat: torch.Tensor) -> None:
        start = 0
        for parameter in self.parameters:
            parameter.copy_(flat[start : start + parameter.numel()].view_as(parameter))
            start += parameter.numel()

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> SpsaStep:
        k = self.steps_taken + 1
        gain, size = self.schedule.gain(k), self.schedule.perturbation_size(k)
        weights = self.flat_weights().clone()

        def loss_at(flat: torch.Tensor) -> torch.Tensor:
            self.set_weights(flat)
            return closure()

        estimate, losses = spsa_gradient(loss_at, weights, size, self.samples, self.generator)
        if self.variant == "spsa-gc":
            self.momentum_buffer = (estimate.clone() if self.momentum_buffer is None
                                    else self.momentum * self.momentum_buffer + estimate)
            direction = estimate + self.momentum * self.momentum_buffer
        else:
            direction = estimate
        self.set_weights(weights - gain * direction)
        self.steps_taken = k
        return SpsaStep(k, gain, size, losses)
