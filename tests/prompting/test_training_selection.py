"""The training loop's model selection (best epoch on the policy's validation set, never test), its optimizers and
its fixed-step schedule (CLIP-LoRA's 500 iterations per shot)."""

import math

import pytest
import torch
from torch import nn

from models.prompting.methods.registry import PromptedClassifier
from models.prompting.training import (OptimizationConfig, build_optimizer, learning_rate_at_step,
                                       train_prompt_parameters)


class LinearToy(PromptedClassifier):
    """A linear classifier on 2-d features that records its weights after every epoch."""

    def __init__(self, initial: torch.Tensor):
        nn.Module.__init__(self)
        self.classnames = ["a", "b"]
        self.register_buffer("logit_scale", torch.tensor(1.0))
        self.weight = nn.Parameter(initial.clone())
        self.snapshots: list[torch.Tensor] = []
        self.validation_given = None

    def forward(self, features):
        return features @ self.weight.t()

    def set_validation(self, inputs, labels):
        self.validation_given = (inputs, labels)

    def on_epoch_end(self, epoch, n_epochs):
        self.snapshots.append(self.weight.detach().clone())


def _data():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 2, generator=generator)
    labels = (features[:, 0] > 0).long()
    return features, labels


def test_the_best_validation_epoch_is_kept_and_restored():
    """Training labels say x > 0 is class 1, validation says the opposite: validation accuracy falls as training
    goes on, so an early epoch is best, and its weights (not the last ones) are the result."""
    features, labels = _data()
    val = (features, 1 - labels)
    toy = LinearToy(torch.tensor([[0.5, 0.0], [-0.5, 0.0]]))  # starts right on validation, wrong on training
    config = OptimizationConfig(epochs=12, batch_size=8, learning_rate=0.05, warmup_epochs=0)
    history = train_prompt_parameters(toy, features, labels, config, validation=val)
    accuracies = history.details["validation_accuracies"]
    assert len(accuracies) == 12 and accuracies[0] > accuracies[-1] + 0.5
    best = max(range(12), key=lambda epoch: (accuracies[epoch], epoch))  # ties go to the later epoch
    assert history.details["selected_epoch"] == best + 1
    assert torch.equal(toy.weight.detach(), toy.snapshots[best])
    assert not torch.equal(toy.weight.detach(), toy.snapshots[-1])
    assert all(given is expected for given, expected in zip(toy.validation_given, val))


def test_without_validation_the_last_epoch_is_kept():
    features, labels = _data()
    toy = LinearToy(torch.zeros(2, 2))
    history = train_prompt_parameters(toy, features, labels, OptimizationConfig(epochs=4, batch_size=8))
    assert "selected_epoch" not in history.details and toy.validation_given is None
    assert torch.equal(toy.weight.detach(), toy.snapshots[-1])


@pytest.mark.parametrize("name, optimizer_type", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                                  ("adamw", torch.optim.AdamW)])
def test_each_optimizer_is_built_with_the_configured_settings(name, optimizer_type):
    parameter = nn.Parameter(torch.zeros(3))
    config = OptimizationConfig(optimizer=name, learning_rate=0.01, betas=(0.8, 0.9), eps=1e-4, weight_decay=0.1)
    optimizer = build_optimizer([parameter], config)
    assert type(optimizer) is optimizer_type
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.01 and group["weight_decay"] == 0.1
    if name != "sgd":
        assert group["betas"] == (0.8, 0.9) and group["eps"] == 1e-4


def test_an_unknown_optimizer_is_refused_naming_it():
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'.*'adamw'"):
        build_optimizer([nn.Parameter(torch.zeros(1))], OptimizationConfig(optimizer="lbfgs"))


def test_a_fixed_number_of_steps_runs_exactly_that_many_with_a_per_step_cosine():
    features, labels = _data()
    toy = LinearToy(torch.zeros(2, 2))
    seen_rates = []
    original_step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        seen_rates.append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    config = OptimizationConfig(optimizer="adamw", steps=13, batch_size=8, learning_rate=0.1, min_learning_rate=0.001,
                                epochs=0)
    torch.optim.AdamW.step = recording_step
    try:
        history = train_prompt_parameters(toy, features, labels, config)
    finally:
        torch.optim.AdamW.step = original_step
    assert history.steps == 13 and len(history.epoch_losses) == math.ceil(13 / 5)  # 5 batches of 8 per epoch
    assert seen_rates[0] == pytest.approx(0.1)
    assert seen_rates == [pytest.approx(learning_rate_at_step(step, config)) for step in range(13)]
    assert all(a > b for a, b in zip(seen_rates, seen_rates[1:]))
    assert learning_rate_at_step(13, config) == pytest.approx(0.001)
