"""Tip-Adapter-F (Zhang et al., ECCV 2022): Tip-Adapter whose cache keys are fine-tuned.

Hooks and scoring as Tip-Adapter (tip_adapter.py, which this extends): the keys become a trainable bias-free linear
layer initialised with the cache (affinity = f K^T with K trained; values, W and the 100 stay fixed). `fit` builds
the cache, then trains K through the shared loop (models/prompting/training.py) with the cross-entropy of the cache
logits at the initial beta = 1, alpha = 1.17: AdamW (lr 1e-3, eps 1e-4, torch's default weight decay 0.01), batch
256, 20 epochs, one cosine over all epochs x iterations without warm-up (their CosineAnnealingLR(train_epoch *
len(loader))), each epoch on a fresh augmented pass of every image (here drawn from the 10 cached passes the keys
average). After training (`on_training_end`) alpha and beta are searched again on the val images with the trained
keys, over Tip-Adapter's grid.

Where it differs from the authors' code, deliberately:
- the epoch is chosen on the selection policy's val images (`full_val`: the dataset's whole val split): the authors
  keep the epoch with the best *test* accuracy (main.py; "should be rectified by using validation set",
  Tip-Adapter#11) and report max(best test, final);
- a fresh augmentation per epoch is one of the 10 cached passes per image (the loop draws one per epoch), not a new
  crop; fp32 (theirs fp16 for the cache values);
- the schedule's steps are epochs x ceil(N / batch) as their loader's, run by the shared loop's per-step cosine.
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

from models.prompting.feature_adapters import steps_per_authors_epoch, validation_set
from models.prompting.methods.registry import MethodSpec, matches_authors_code, register_method
from models.prompting.methods.tip_adapter import (
    TIP_ADAPTER_CODE, TIP_ADAPTER_PAPER, TIP_ADAPTER_VIEWS, TipAdapterClassifier, TipAdapterParameters,
)
from models.prompting.training import OptimizationConfig, TrainingHistory, train_prompt_parameters


@dataclasses.dataclass(frozen=True)
class TipAdapterFParameters(TipAdapterParameters):
    method: ClassVar[str] = "tip_adapter_f"  # for messages; the same parameters as Tip-Adapter


class TipAdapterFClassifier(TipAdapterClassifier):
    trained_by_gradient = False  # trains inside `fit`, which builds the cache the loop then fine-tunes
    trainable_keys = True

    def __init__(self, context, parameters: TipAdapterFParameters):
        super().__init__(context, parameters)
        self.validation = None  # the val images the loop hands over (set_validation), for the final search
        self.final_choice: dict = {}

    def set_validation(self, inputs, labels) -> None:
        self.validation = (inputs, labels)

    def on_training_end(self) -> None:
        """Search alpha and beta again with the trained keys (of the epoch the loop kept)."""
        self.final_choice = self.choose_alpha_beta(self.validation)

    def authors_schedule(self, optimization: OptimizationConfig, n_images: int) -> OptimizationConfig:
        """The loop's config for the authors' one cosine over epochs x ceil(N / batch) steps (unless steps are set)."""
        if optimization.steps is not None:
            return optimization
        steps = optimization.epochs * steps_per_authors_epoch(n_images, optimization.batch_size, drop_last=False)
        return dataclasses.replace(optimization, steps=steps)

    def fit(self, training_set, optimization: OptimizationConfig, on_epoch=None) -> TrainingHistory:
        """Build the cache, fine-tune its keys (optimization: epochs, batch_size, optimizer, learning_rate, eps,
        weight_decay, seed), keep the best val epoch when there are val images, then search alpha and beta."""
        if optimization is None or (optimization.epochs < 1 and optimization.steps is None):
            raise ValueError("tip_adapter_f fine-tunes its keys for optimization.epochs >= 1 epochs (the authors: 20); "
                             "tip_adapter is the training-free method")
        started = time.perf_counter()
        views, labels = self.build_cache(training_set)
        parameters = self.parameters_used
        self.alpha.fill_(parameters.init_alpha)
        self.beta.fill_(parameters.init_beta)
        self.validation = None
        validation = validation_set(training_set, parameters.method, len(self.classnames))
        config = self.authors_schedule(optimization, views.shape[0])
        history = train_prompt_parameters(self, views, labels, config, sample_weights=training_set.sample_weights,
                                          device=self.cache_keys.device, validation=validation, on_epoch=on_epoch)
        if validation is None:  # the loop calls set_validation only when there are val images
            self.final_choice = self.choose_alpha_beta(None)
        history.details.update(self.cache_record(views), initial_alpha=parameters.init_alpha,
                               initial_beta=parameters.init_beta, optimizer_steps=config.steps, **self.final_choice)
        history.seconds = time.perf_counter() - started
        return history


register_method(
    MethodSpec(
        name="tip_adapter_f",
        parameters_type=TipAdapterFParameters,
        build=TipAdapterFClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="none in the towers: Tip-Adapter's cache with its keys fine-tuned (a bias-free linear layer)",
        description="Tip-Adapter-F: Tip-Adapter's cache keys trained by AdamW for 20 epochs, then alpha and beta "
                    "searched on val.",
        class_specific=lambda parameters: True,
        paper=TIP_ADAPTER_PAPER,
        hook_points=("feature space",),
        verification=matches_authors_code(
            "tests/prompting/test_tip_adapter_reference.py::"
            "test_tip_adapter_f_logits_and_key_gradient_match_the_authors_code",
            TIP_ADAPTER_CODE,
            "Logits at initialisation within 1e-6 relative or 1e-4 absolute, and the keys' gradient of the "
            "cross-entropy within rounding, for both reference cases."),
        selection="full_val",
        selection_note="The authors keep the epoch with the best test accuracy (Tip-Adapter#11) and search alpha and "
                       "beta on the whole val split; here the epoch too is chosen on the val split.",
        training_views=TIP_ADAPTER_VIEWS,
    )
)
