"""The one training loop of every prompt method that learns by gradient.

Methods whose image tower is frozen and unprompted train on cached image features (computed once per view, see
`models.prompting.features`), so each step only runs the text tower; methods that prompt the image tower (VPT,
IVLP, MaPLe, PromptSRC) train on preprocessed images, which go through the prompted image tower at every step. Schedule as the Dassl trainers configure it: SGD with momentum, one warm-up epoch at a constant small
learning rate, then cosine decay over the remaining epochs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from models.precision import precision_for

if TYPE_CHECKING:  # annotations only: the methods package imports this module (TrainingHistory)
    from models.prompting.methods.registry import PromptedClassifier


@dataclass(frozen=True)
class OptimizationConfig:
    epochs: int = 200
    batch_size: int = 32
    learning_rate: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_learning_rate: float = 1e-5
    seed: int = 1
    # The experiment being trained, named by NonFiniteTrainingError; set from the experiment's key, not the catalog.
    experiment: str = ""


class NonFiniteTrainingError(ValueError):
    """Training diverged: the loss, a gradient or a parameter became NaN or infinite (e.g. a learning rate far too
    large). Raised at once, so that no checkpoint of the diverged parameters is written."""


NON_FINITE_WHAT = {1: "the loss", 2: "a gradient", 3: "a prompt parameter after the update"}


class DivergenceWatch:
    """Finds the first step of a training run whose loss, gradients or updated parameters are NaN or infinite.

    `after_step` keeps the record on the device, so that a GPU run reads it once per epoch (`raise_if_diverged`)
    instead of syncing at every step; on the CPU reading is free, so `diverged` lets the loop stop at the step."""

    def __init__(self, config: OptimizationConfig, device: torch.device):
        self.config = config
        self.device = device
        self.record = torch.zeros(3, dtype=torch.float64, device=device)  # (what, step, loss); what 0 while none

    def after_step(self, loss: torch.Tensor, parameters: list[torch.nn.Parameter], step: int) -> None:
        """Call after optimizer.step(), while the parameters' gradients are still this step's."""
        def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:  # element-wise: a norm of 1e36s overflows
            return torch.stack([torch.isfinite(t.detach()).all() for t in tensors] +
                               [torch.ones((), dtype=torch.bool, device=self.device)]).all()

        gradients = [p.grad for p in parameters if p.grad is not None]
        finite = torch.stack([all_finite([loss]), all_finite(gradients), all_finite(parameters)])
        codes = torch.arange(1, 4, device=finite.device)
        what = torch.where(finite, 4, codes).min() % 4  # the first non-finite quantity; 0 when all are finite
        step_record = torch.stack([what.double(), torch.full((), step, dtype=torch.float64, device=self.device),
                                   loss.detach().double().reshape(())])
        self.record = torch.where((self.record[0] == 0) & (what > 0), step_record, self.record)

    @property
    def diverged(self) -> bool:
        """Whether a step has diverged yet (a sync on a GPU: there, call raise_if_diverged once per epoch)."""
        return bool(self.record[0] > 0)

    def raise_if_diverged(self, epoch: int) -> None:
        """Raise NonFiniteTrainingError naming the experiment, the 1-based `epoch`, the step and the quantity."""
        what, step, loss = self.record.tolist()
        if what:
            config = self.config
            raise NonFiniteTrainingError(
                f"{config.experiment or 'training'}: {NON_FINITE_WHAT[int(what)]} became non-finite at epoch "
                f"{epoch}/{config.epochs}, step {int(step)} of the run (loss {loss:g}, learning rate "
                f"{config.learning_rate:g}); training stopped and no checkpoint is written. Lower the learning rate "
                f"(optimization.learning_rate).")


@dataclass
class TrainingHistory:
    epoch_losses: list[float] = field(default_factory=list)
    epoch_accuracies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    details: dict = field(default_factory=dict)  # method-specific record, e.g. the linear probe's chosen C


EpochCallback = Callable[[int, float, float], None]  # (epoch, mean loss, train accuracy)


def learning_rate_at(epoch: int, config: OptimizationConfig) -> float:
    """Constant warm-up for the first epochs, then cosine over the whole schedule (as Dassl's ConstantWarmup)."""
    if epoch < config.warmup_epochs:
        return config.warmup_learning_rate
    return 0.5 * config.learning_rate * (1 + math.cos(math.pi * epoch / config.epochs))


def train_prompt_parameters(
    classifier: PromptedClassifier,
    view_inputs: torch.Tensor,
    labels: torch.Tensor,
    config: OptimizationConfig,
    sample_weights: torch.Tensor | None = None,
    on_epoch: EpochCallback | None = None,
    device: str | torch.device = "cpu",
) -> TrainingHistory:
    """Train the classifier's prompt parameters.

    view_inputs: V views of each of N training images (e.g. original and mirrored), as features (N, V, E) or
    preprocessed images (N, V, 3, H, W); a single view may be given as (N, E) or (N, 3, H, W). Each epoch uses one
    randomly chosen view per image, standing in for random augmentation.
    """
    if view_inputs.dim() in (2, 4):  # one view of features or of images
        view_inputs = view_inputs.unsqueeze(1)
    n_samples, n_views = view_inputs.shape[:2]
    if labels.shape[0] != n_samples:
        raise ValueError(f"{n_samples} feature rows but {labels.shape[0]} labels")
    if n_samples == 0:
        raise ValueError("no training samples")
    device = torch.device(device)
    classifier.to(device).train()
    parameters = [p for p in classifier.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError(f"{type(classifier).__name__} has no trainable parameters")
    optimizer = torch.optim.SGD(
        parameters, lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    precision = precision_for(device, training=True)  # fp32 on CPU, bf16 autocast on CUDA where supported
    view_inputs, labels = view_inputs.to(device), labels.to(device)
    if sample_weights is not None:
        sample_weights = sample_weights.to(device)
    history = TrainingHistory()
    divergence = DivergenceWatch(config, device)
    started = time.perf_counter()
    for epoch in range(config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(epoch, config)
        order = torch.randperm(n_samples, generator=generator)
        views = torch.randint(n_views, (n_samples,), generator=generator)
        # Accumulated on the device (float64, as Python floats would be) and read once per epoch: no device-to-host
        # sync per step on a GPU.
        total_loss = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for start in range(0, n_samples, config.batch_size):
            batch = order[start : start + config.batch_size].to(device)
            inputs = view_inputs[batch, views[batch.cpu()].to(device)]
            weights = sample_weights[batch] if sample_weights is not None else None
            optimizer.zero_grad(set_to_none=True)
            # The method computes its gradient (most: backward of training_loss); only the forward is autocast.
            loss, logits = classifier.backward_step(
                inputs,
                labels[batch],
                weights,
                forward_context=precision.autocast,
            )
            optimizer.step()
            history.steps += 1
            divergence.after_step(loss, parameters, history.steps)
            total_loss += loss.detach().double() * len(batch)
            correct += (logits.argmax(dim=1) == labels[batch]).sum()
            if device.type == "cpu" and divergence.diverged:  # free to read on the CPU: stop at the step itself
                break
        divergence.raise_if_diverged(epoch + 1)
        history.epoch_losses.append(total_loss.item() / n_samples)
        history.epoch_accuracies.append(correct.item() / n_samples)
        classifier.on_epoch_end(epoch + 1, config.epochs)
        if on_epoch is not None:
            on_epoch(epoch + 1, history.epoch_losses[-1], history.epoch_accuracies[-1])
    classifier.on_training_end()
    history.seconds = time.perf_counter() - started
    classifier.eval()
    return history


@torch.no_grad()
def predict_logits(
    classifier: PromptedClassifier, image_inputs: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    """Logits (N, C) in float32 on the CPU for image features (N, E) or images (N, 3, H, W), in input order."""
    classifier.eval()
    device = classifier.logit_scale.device
    chunks = [
        classifier(image_inputs[start : start + batch_size].to(device)).float().cpu()
        for start in range(0, image_inputs.shape[0], batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.empty(0, len(classifier.classnames))


def predict_probabilities(
    classifier: PromptedClassifier, image_inputs: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    """Class probabilities for image features (N, E) or images (N, 3, H, W), in input order (never shuffled)."""
    return predict_logits(classifier, image_inputs, batch_size).softmax(dim=-1)
