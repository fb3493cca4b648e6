"""Training a frozen-image-tower method the naive way: every batch's images go through the image tower again.

`ReencodingClassifier` wraps a method's classifier (CoOp, CoCoOp, ...) so that it takes preprocessed images: at
each step it encodes the batch through the frozen image tower, then delegates to the method, including the
method's own `backward_step` (e.g. ProGrad's projection). It is the "without cache" baseline of the throughput
benchmark and lives in bench/ on purpose: the library trains these methods on cached features only.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from models.prompting.methods.registry import PromptedClassifier


class ReencodingClassifier(nn.Module):
    """A method's classifier behind the frozen image tower: images (N, 3, H, W) in, the method's logits out."""

    trained_by_gradient = True

    def __init__(self, classifier: PromptedClassifier, clip_model: nn.Module):
        super().__init__()
        self.classifier = classifier
        # Kept out of the module tree: the training loop's .train() must not switch the frozen tower's mode, and
        # its parameters are not trained.
        self._clip_model = (clip_model,)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.classifier.logit_scale

    @property
    def classnames(self) -> list[str]:
        return self.classifier.classnames

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        clip_model = self._clip_model[0]
        clip_model.eval()
        with torch.no_grad():
            return clip_model.encode_image(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encode(images))

    def backward_step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        sample_weights: torch.Tensor | None = None,
        forward_context: Callable[[], Any] = contextlib.nullcontext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with forward_context():
            features = self.encode(images)
        return self.classifier.backward_step(features, labels, sample_weights, forward_context)

    def on_training_start(self, config: Any) -> None:
        self.classifier.on_training_start(config)

    def parameter_groups(self) -> list[dict[str, Any]]:
        return self.classifier.parameter_groups()

    def on_epoch_end(self, epoch: int, n_epochs: int) -> None:
        self.classifier.on_epoch_end(epoch, n_epochs)

    def on_training_end(self) -> None:
        self.classifier.on_training_end()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.classifier.trainable_state()
