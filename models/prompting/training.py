"""The one training loop of every prompt method that learns by gradient.

Methods whose image tower is frozen and unprompted train on cached image features (computed once per view, see
`models.prompting.features`), so each step only runs the text tower; methods that prompt the image tower (VPT,
IVLP, MaPLe, PromptSRC) train on preprocessed images, which go through the prompted image tower at every step. Schedule as the Dassl trainers configure it: SGD with momentum, one warm-up epoch at a constant small
learning rate, then cosine decay over the remaining epochs. A method may ask for Adam or AdamW (TaskRes, Tip-Adapter-F,
CLIP-LoRA) and for a fixed number of steps with a per-step cosine (CLIP-LoRA's 500 iterations per shot).

Model selection. With a validation set (the experiment's selection policy: the few-shot val subset or the dataset's
whole val split; never test), the loop scores it after every epoch, keeps the parameters of the best epoch (ties: the
later epoch) and restores them at the end; without one (policy `last`) the last epoch is kept.
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
    # "sgd" (momentum, weight decay as L2), "adam" (weight decay as L2) or "adamw" (decoupled weight decay)
    optimizer: str = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # A fixed number of optimizer steps instead of `epochs` (the last epoch is cut short), with a per-step cosine from
    # learning_rate to min_learning_rate after warmup_steps at warmup_learning_rate; the catalog writes it as
    # `iterations_per_shot` (CLIP-LoRA: 500 x shots).
    steps: int | None = None
    warmup_steps: int = 0
    min_learning_rate: float = 0.0
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


OPTIMIZERS = ("sgd", "adam", "adamw")


class BestEpoch:
    """Keeps the trainable parameters of the epoch with the best validation accuracy (ties: the later epoch), to put
    back at the end of training: the training loop's model selection, and LP++'s own full-batch loop."""

    def __init__(self) -> None:
        self.accuracy, self.epoch, self.state, self.accuracies = -1.0, 0, None, []

    def observe(self, module: torch.nn.Module, epoch: int, accuracy: float) -> None:
        """After the 1-based `epoch`, whose validation accuracy is `accuracy`."""
        self.accuracies.append(accuracy)
        if accuracy >= self.accuracy:
            self.accuracy, self.epoch = accuracy, epoch
            self.state = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}

    def restore(self, module: torch.nn.Module, details: dict) -> bool:
        """Put the kept parameters back and record the epoch in `details`; False when no epoch was observed."""
        if self.state is None:
            return False
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                if name in self.state:
                    parameter.copy_(self.state[name])
        details.update(selected_epoch=self.epoch, validation_accuracies=self.accuracies)
        return True


def learning_rate_at(epoch: int, config: OptimizationConfig) -> float:
    """Constant warm-up for the first epochs, then cosine over the whole schedule (as Dassl's ConstantWarmup)."""
    if epoch < config.warmup_epochs:
        return config.warmup_learning_rate
    return 0.5 * config.learning_rate * (1 + math.cos(math.pi * epoch / config.epochs))


def learning_rate_at_step(step: int, config: OptimizationConfig) -> float:
    """For a run of `config.steps` steps (0-based step): constant warm-up, then cosine from learning_rate down to
    min_learning_rate at the last step (as torch's CosineAnnealingLR with T_max = steps, eta_min)."""
    if step < config.warmup_steps:
        return config.warmup_learning_rate
    low, high = config.min_learning_rate, config.learning_rate
    return low + 0.5 * (high - low) * (1 + math.cos(math.pi * step / config.steps))


def set_learning_rate(optimizer: torch.optim.Optimizer, rate: float, warming_up: bool) -> None:
    """Every group at `rate`, times its lr_scale after warm-up (Dassl's constant warm-up gives every group the same
    rate, the cosine that follows scales each group's base rate)."""
    for group in optimizer.param_groups:
        group["lr"] = rate if warming_up else rate * group.get("lr_scale", 1.0)


def build_optimizer(parameters: list[torch.nn.Parameter] | list[dict], config: OptimizationConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.learning_rate, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    if config.optimizer in ("adam", "adamw"):
        optimizer_type = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        return optimizer_type(parameters, lr=config.learning_rate, betas=tuple(config.betas), eps=config.eps,
                              weight_decay=config.weight_decay)
    raise ValueError(f"{config.experiment or 'training'}: unknown optimizer {config.optimizer!r}; known: "
                     f"{list(OPTIMIZERS)}")


def validation_accuracy(classifier: PromptedClassifier, validation: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Top-1 accuracy on the validation (inputs, labels), in eval mode; the classifier is left in train mode."""
    inputs, labels = validation
    logits = predict_logits(classifier, inputs)
    classifier.train()
    return float((logits.argmax(dim=1) == labels.cpu()).float().mean())


def train_prompt_parameters(
    classifier: PromptedClassifier,
    view_inputs: torch.Tensor,
    labels: torch.Tensor,
    config: OptimizationConfig,
    sample_weights: torch.Tensor | None = None,
    on_epoch: EpochCallback | None = None,
    device: str | torch.device = "cpu",
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TrainingHistory:
    """Train the classifier's prompt parameters.

    view_inputs: V views of each of N training images (e.g. original and mirrored, or the passes of a view recipe),
    as features (N, V, E) or preprocessed images (N, V, 3, H, W); a single view may be given as (N, E) or
    (N, 3, H, W). Each epoch uses one randomly chosen view per image, standing in for random augmentation.
    validation: (inputs (M, ...) of one view, labels (M,)) scored after every epoch; the best epoch's parameters
    are kept (module docstring). The classifier also receives it (set_validation) before training.
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
    # Groups with their lr_scale (PromptedClassifier.parameter_groups); one group at 1 for most methods.
    optimizer = build_optimizer([group for group in classifier.parameter_groups() if group["params"]], config)
    classifier.on_training_start(config)
    if validation is not None:
        classifier.set_validation(*validation)
    steps_per_epoch = math.ceil(n_samples / config.batch_size)
    n_epochs = config.epochs if config.steps is None else math.ceil(config.steps / steps_per_epoch)
    best = BestEpoch()
    generator = torch.Generator().manual_seed(config.seed)
    precision = precision_for(device, training=True)  # fp32 on CPU, bf16 autocast on CUDA where supported
    view_inputs, labels = view_inputs.to(device), labels.to(device)
    if sample_weights is not None:
        sample_weights = sample_weights.to(device)
    history = TrainingHistory()
    divergence = DivergenceWatch(config, device)
    started = time.perf_counter()
    for epoch in range(n_epochs):
        if config.steps is None:
            set_learning_rate(optimizer, learning_rate_at(epoch, config), epoch < config.warmup_epochs)
        order = torch.randperm(n_samples, generator=generator)
        views = torch.randint(n_views, (n_samples,), generator=generator)
        # Accumulated on the device (float64, as Python floats would be) and read once per epoch: no device-to-host
        # sync per step on a GPU.
        total_loss = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for start in range(0, n_samples, config.batch_size):
            if config.steps is not None:
                if history.steps >= config.steps:
                    break
                set_learning_rate(optimizer, learning_rate_at_step(history.steps, config),
                                  history.steps < config.warmup_steps)
            batch = order[start : start + config.batch_size].to(device)
            seen += len(batch)
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
        history.epoch_losses.append(total_loss.item() / max(seen, 1))
        history.epoch_accuracies.append(correct.item() / max(seen, 1))
        classifier.on_epoch_end(epoch + 1, n_epochs)
        if validation is not None:
            best.observe(classifier, epoch + 1, validation_accuracy(classifier, validation))
        if on_epoch is not None:
            on_epoch(epoch + 1, history.epoch_losses[-1], history.epoch_accuracies[-1])
    best.restore(classifier, history.details)
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
