"""TFUP and TFUP-T (Long et al., arXiv 2404.16339; code github.com/wlb12345/TFUP): unsupervised adaptation of
CLIP from an unlabelled pool, training-free (TFUP) or with a small trained adapter (TFUP-T).

Hooks: none in the towers. Both methods classify frozen, cached image features f against the text features W of the
dataset's hand-crafted templates (zero-shot CLIP's ensemble, `template_ensemble_features`). The authors' W averages
GPT-3.5 class descriptions (CuPL-style); those are not available here, so the templates are the fallback, as the
authors themselves use "a photo of a {}." on VisDA-2017.

TFUP (`fit` selects a cache from `TrainingSet.unlabelled`; no labels, no gradient; the cache's construction and
scoring are models/prompting/tfup_cache.py):
- Representative samples: P = softmax(10 f_hat W_hat^T) over the pool; for each class i the 2K images with the
  highest P[:, i] are candidates, each scored by its summed KL divergence sum_k KL(P_j || P_k) to the other
  candidates, and the K lowest-scoring (the most prototypical) enter the cache with pseudolabel i.
  K = clamp(int(0.3 N / C), 9, 16) for a pool of N images and C classes.
- Prediction: logits = s f_hat W_hat^T + alpha exp(-beta (1 - R)) onehot(L), with R = (f_hat k_hat^T) * sim:
  feature similarity to each cache key k times a semantic similarity sim in [0, 2], which is 2 (1 - the row's
  min-max normalised KL(softmax(10 f W^T) || softmax(10 k W^T))). alpha = 0.3, beta = 1.

TFUP-T (`fit` builds the TFUP cache, then trains by AdamW inside `fit`): a text residual R_res (C x E, zero init),
W' = norm(0.5 W_hat + 0.5 R_res), and an image adapter A (E -> E/4 -> E, no bias, ReLU after each layer),
f' = norm(0.2 A(f) + 0.8 f). Epochs 0-4: cross-entropy on a refined set of K_t = max(9, int(0.75 N / C)) pool
images per class (selected as the cache is), relabelled by the TFUP prediction. Later epochs, FixMatch-like on the
whole pool: the TFUP prediction (with W' and f') of the weak view gives a pseudolabel where its softmax exceeds 0.9;
loss = CE(strong view's logits, pseudolabel) + 0.3 (-H(mean softmax of the batch)). As in the authors'
`inference_TFUP_T`, the trained model predicts s f'_hat W'^T without the cache (`predict_with_cache` adds it).

Where this differs from the authors' code, deliberately:
- an image enters the cache (and the refined set) of one class at most: the authors' per-class top-k lets one image
  serve several classes. An image claimed by several classes goes to the one it is most probable for (ties: the
  lower class index), and a class that loses an image takes its next candidate in prototype order, then, if its 2K
  candidates run out, the next images by P[:, i] (deferred acceptance: the result does not depend on class order).
  A pool of fewer than K C images leaves some classes short; empty cache slots count for nothing.
- the zero-shot logit scale s is the backbone's (CLIP's learned temperature, 100 for OpenAI's weights, as every
  method here uses); the authors hardcode 100. The semantic temperature 10 is theirs.
- z-scoring a KL row before min-max normalising it cancels out (min-max is invariant to a positive affine map), so
  rows are min-max normalised directly; a row whose KLs are all equal (one key) gives sim = 2 instead of 0 / 0.
- W_hat is the normalised template ensemble, and the residual is mixed with it (the authors mix it with the raw,
  unnormalised GPT-description mean, whose norm sets how far R_res moves W').
- no image augmentation on cached features: the strong view is the mirrored view when the pool has two views
  (original, mirrored), else the original features themselves (the authors use random resized crop + flip).
- the learning rate follows one cosine over all optimiser steps of the run; the authors' CosineAnnealingLR counts
  30 epochs of the refined set's batches only, so on a pool larger than that set it passes zero and climbs back.
- the authors keep the epoch with the best accuracy on the *test labels*; here the epoch with the best accuracy on
  `TrainingSet.validation` (the dataset's labelled val images) is kept when it is given, else the last epoch, and
  TrainingHistory.details["model_selection"] says which.
- fp32 throughout (the authors run the adapter and the cache in fp16).

The pool is whatever `TrainingSet.unlabelled` holds (the training split's unlabelled images): TFUP is transductive
only if a caller passes test images there, as the authors do. Labelled training images (`view_inputs`) are not used.
The checkpoint (`trainable_state`) is the cache, fixed-size so that a freshly built classifier of the same classes
loads it (`cache_keys` (C * max_cache_per_class, E), `cache_labels` with -1 for an empty slot), plus TFUP-T's residual
and adapter. Cache and residual are per class, so both methods are class-specific.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from models.prompting.methods.cocoop import joint_embedding_dim
from models.prompting.methods.registry import (
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, register_method, tested_property,
)
from models.prompting.tfup_cache import (RepresentativeSelection, cache_entries, cache_logits, cache_size, in_chunks,
                                         select_representatives)
from models.prompting.training import DivergenceWatch, TrainingHistory


@dataclass(frozen=True)
class TfupParameters:
    method: ClassVar[str] = "tfup"  # for messages; a ClassVar is no parameter
    # The authors' settings (configs/*.yaml, main.py): cache of 30 % of the pool per class, clamped to 9..16.
    cache_proportion: float = 0.3
    min_cache_per_class: int = 9
    max_cache_per_class: int = 16
    cache_weight: float = 0.3  # the paper's alpha
    cache_sharpness: float = 1.0  # the paper's beta
    semantic_temperature: float = 10.0  # the 10 in softmax(10 f W^T), for selection and semantic similarity

    def __post_init__(self) -> None:
        name = self.method
        if not self.cache_proportion > 0:
            raise ValueError(f"{name}: cache_proportion must be > 0, got {self.cache_proportion}")
        if not 1 <= self.min_cache_per_class <= self.max_cache_per_class:
            raise ValueError(f"{name}: need 1 <= min_cache_per_class <= max_cache_per_class, got "
                             f"{self.min_cache_per_class} and {self.max_cache_per_class}")
        if self.cache_weight < 0 or self.cache_sharpness < 0:
            raise ValueError(f"{name}: cache_weight and cache_sharpness must be >= 0, got {self.cache_weight} and "
                             f"{self.cache_sharpness}")
        if not self.semantic_temperature > 0:
            raise ValueError(f"{name}: semantic_temperature must be > 0, got {self.semantic_temperature}")


@dataclass(frozen=True)
class TfupTrainedParameters(TfupParameters):
    method: ClassVar[str] = "tfup_t"
    # The authors' TFUP-T settings; AdamW's lr, weight decay, epochs and batch size are in methods.yaml's
    # optimization (0.012, 0.1, 30, 256).
    training_proportion: float = 0.75
    min_training_per_class: int = 9
    refined_set_epochs: int = 5  # the authors' WARMUP_EPOCH: cross-entropy on the refined set first
    text_residual_ratio: float = 0.5  # ratio_beta
    image_adapter_ratio: float = 0.2  # ratio_alpha
    adapter_reduction: int = 4
    confidence_threshold: float = 0.9
    marginal_entropy_weight: float = 0.3
    adamw_eps: float = 0.003
    predict_with_cache: bool = False  # the authors' TFUP-T inference leaves the cache out

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.training_proportion > 0 or self.min_training_per_class < 1:
            raise ValueError(f"tfup_t: training_proportion must be > 0 and min_training_per_class >= 1, got "
                             f"{self.training_proportion} and {self.min_training_per_class}")
        if self.refined_set_epochs < 0 or self.adapter_reduction < 1:
            raise ValueError(f"tfup_t: refined_set_epochs must be >= 0 and adapter_reduction >= 1, got "
                             f"{self.refined_set_epochs} and {self.adapter_reduction}")
        for field_name in ("text_residual_ratio", "image_adapter_ratio", "confidence_threshold"):
            if not 0 <= getattr(self, field_name) <= 1:
                raise ValueError(f"tfup_t: {field_name} must lie in [0, 1], got {getattr(self, field_name)}")
        if not self.adamw_eps > 0:
            raise ValueError(f"tfup_t: adamw_eps must be > 0, got {self.adamw_eps}")


def pool_views(training_set, method: str) -> torch.Tensor:
    """The unlabelled pool as (N, V, E) features: view 0 the original, view 1 (when present) the mirrored."""
    pool = getattr(training_set, "unlabelled", None)
    if pool is None or pool.shape[0] == 0:
        raise ValueError(f"{method} adapts from the unlabelled pool, but the training set has none "
                         "(TrainingSet.unlabelled is None or empty); run it in a setting with an unlabelled pool")
    if pool.dim() == 2:
        pool = pool.unsqueeze(1)
    if pool.dim() != 3:
        raise ValueError(f"{method} takes cached pool features (N, E) or (N, V, E); got shape {tuple(pool.shape)}")
    return pool.float()


class TfupClassifier(PromptedClassifier):
    """Zero-shot CLIP plus a cache of representative pool images selected without labels."""

    trained_by_gradient = False
    method_name = "tfup"

    def __init__(self, context: ClassifierContext, parameters: TfupParameters):
        super().__init__(context)
        self.parameters_used = parameters
        n_classes, width = len(context.classnames), joint_embedding_dim(context.text_tower)
        device = self.logit_scale.device
        self.register_buffer(
            "class_text_features",
            context.template_ensemble(),
        )
        # The cache, fixed-size so that a fresh classifier loads any checkpoint of these classes: slots
        # [i * max, (i + 1) * max) hold class i's keys; label -1 marks an empty slot.
        slots = n_classes * parameters.max_cache_per_class
        self.register_buffer("cache_keys", torch.zeros(slots, width, device=device))
        self.register_buffer("cache_labels", torch.full((slots,), -1, dtype=torch.long, device=device))

    # The state the method learns: the cache (and TFUP-T's parameters); both reload with load_state_dict.
    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = super().trainable_state()
        for name in ("cache_keys", "cache_labels"):
            state[name] = getattr(self, name).detach().cpu().contiguous()
        return state

    def text_features(self) -> torch.Tensor:
        return self.class_text_features

    def text_weights(self) -> torch.Tensor:
        """Normalised class text features W_hat (TFUP-T: its refined W')."""
        return F.normalize(self.text_features().float(), dim=-1)

    def image_embedding(self, image_features: torch.Tensor) -> torch.Tensor:
        """Normalised image features f_hat (TFUP-T: its adapted f')."""
        return F.normalize(image_features.float(), dim=-1)

    def cached_prediction(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """s f W^T + alpha * cache logits, for L2-normalised image and text features."""
        parameters = self.parameters_used
        cache = cache_logits(image, text, self.cache_keys, self.cache_labels, parameters.cache_sharpness,
                             parameters.semantic_temperature)
        # The same operations as logits_from on unnormalised inputs: with alpha = 0 these are zero-shot's logits.
        return self.logit_scale * image @ text.t() + parameters.cache_weight * cache

    def tfup_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """TFUP's prediction on this classifier's image embedding and text weights."""
        return self.cached_prediction(self.image_embedding(image_features), self.text_weights())

    def hand_crafted_tfup_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """TFUP's prediction with the plain features and the hand-crafted W (TFUP-T relabels its refined set so)."""
        return self.cached_prediction(F.normalize(image_features.float(), dim=-1),
                                      F.normalize(self.class_text_features.float(), dim=-1))

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.tfup_logits(image_features)

    def pool_log_probabilities(self, pool_features: torch.Tensor) -> torch.Tensor:
        """log softmax(10 f_hat W_hat^T) of the pool with the hand-crafted W (also for TFUP-T), as the selection."""
        text = F.normalize(self.class_text_features.float(), dim=-1)
        return F.log_softmax(self.parameters_used.semantic_temperature * F.normalize(pool_features, dim=-1)
                             @ text.t(), dim=-1)

    def fill_cache(self, pool_features: torch.Tensor, log_probabilities: torch.Tensor) -> RepresentativeSelection:
        """Select K representatives per class from the pool and store them, normalised, as the cache."""
        parameters = self.parameters_used
        per_class = cache_size(pool_features.shape[0], len(self.classnames), parameters.cache_proportion,
                               parameters.min_cache_per_class, parameters.max_cache_per_class)
        selection = select_representatives(log_probabilities, per_class)
        keys, labels = cache_entries(pool_features, selection, parameters.max_cache_per_class)
        with torch.no_grad():
            self.cache_keys.copy_(keys)
            self.cache_labels.copy_(labels)
        return selection

    def cache_record(self, selection: RepresentativeSelection, pool_size: int) -> dict:
        counts = [len(members) for members in selection.members]
        return {"pool_size": pool_size, "cache_per_class": selection.per_class, "cache_size": sum(counts),
                "cache_smallest_class": min(counts), "contested_images": selection.contested,
                "zero_shot_logit_scale": float(self.logit_scale)}

    @torch.no_grad()
    def fit(self, training_set, optimization=None, on_epoch=None) -> TrainingHistory:
        """Select the cache from training_set.unlabelled (labels and view_inputs unused; nothing is optimised)."""
        started = time.perf_counter()
        pool = pool_views(training_set, self.method_name).to(self.logit_scale.device)[:, 0]
        selection = self.fill_cache(pool, self.pool_log_probabilities(pool))
        self.eval()
        # The fit's own record, in place of a training loss: how the classifier scores its pseudolabelled cache.
        indices, labels = selection.indices_and_labels()
        logits = in_chunks(self, pool[indices.to(pool.device)])
        labels = labels.to(logits.device)
        zero_shot = in_chunks(lambda chunk: self.logits_from(chunk, self.class_text_features), pool).argmax(1)
        agreement = (in_chunks(self, pool).argmax(1) == zero_shot).float().mean()
        details = {**self.cache_record(selection, pool.shape[0]), "agreement_with_zero_shot": float(agreement)}
        return TrainingHistory(epoch_losses=[float(F.cross_entropy(logits, labels))],
                               epoch_accuracies=[float((logits.argmax(1) == labels).float().mean())],
                               seconds=time.perf_counter() - started, steps=0, details=details)


class TfupTrainedClassifier(TfupClassifier):
    """TFUP-T: a text residual and an image adapter trained on the TFUP-pseudolabelled pool."""

    method_name = "tfup_t"

    def __init__(self, context: ClassifierContext, parameters: TfupTrainedParameters):
        super().__init__(context, parameters)
        n_classes, width = len(context.classnames), joint_embedding_dim(context.text_tower)
        hidden = width // parameters.adapter_reduction
        if hidden < 1:
            raise ValueError(f"tfup_t: adapter_reduction {parameters.adapter_reduction} leaves no hidden units for "
                             f"a {width}-wide embedding")
        device = self.logit_scale.device
        self.text_residual = nn.Parameter(torch.zeros(n_classes, width, device=device))
        self.image_adapter = nn.Sequential(
            nn.Linear(width, hidden, bias=False, device=device), nn.ReLU(),
            nn.Linear(hidden, width, bias=False, device=device), nn.ReLU(),
        )

    def text_weights(self) -> torch.Tensor:
        ratio = self.parameters_used.text_residual_ratio
        return F.normalize((1 - ratio) * super().text_weights() + ratio * self.text_residual, dim=-1)

    def image_embedding(self, image_features: torch.Tensor) -> torch.Tensor:
        ratio, features = self.parameters_used.image_adapter_ratio, image_features.float()
        return F.normalize(ratio * self.image_adapter(features) + (1 - ratio) * features, dim=-1)

    def adapted_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """s f'_hat W'^T: the trained model's prediction and the logits its losses are taken on."""
        return self.logit_scale * self.image_embedding(image_features) @ self.text_weights().t()

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        if self.parameters_used.predict_with_cache:
            return self.tfup_logits(image_features)
        return self.adapted_logits(image_features)

    def reset_trainable(self, generator: torch.Generator) -> None:
        """Zero residual and nn.Linear's default initialisation, drawn from the run's seeded generator."""
        with torch.no_grad():
            self.text_residual.zero_()
            for layer in self.image_adapter:
                if isinstance(layer, nn.Linear):
                    bound = 1.0 / math.sqrt(layer.in_features)  # kaiming_uniform_(a=sqrt(5)), as nn.Linear
                    weight = torch.rand(layer.weight.shape, generator=generator) * 2 * bound - bound
                    layer.weight.copy_(weight)

    def fit(self, training_set, optimization, on_epoch=None) -> TrainingHistory:
        """Build the TFUP cache and the refined set from training_set.unlabelled, then train the residual and the
        adapter with AdamW (optimization: epochs, batch_size, learning_rate, weight_decay, seed; momentum and the
        warm-up settings do not apply) and keep the best epoch on training_set.validation, or the last. An epoch's
        accuracy is the agreement of the strong view's prediction with that epoch's (pseudo)labels."""
        parameters = self.parameters_used
        if optimization is None or optimization.epochs < 1:
            raise ValueError("tfup_t trains for optimization.epochs >= 1 epochs (the authors: 30); tfup is the "
                             "training-free method")
        started = time.perf_counter()
        device = self.logit_scale.device
        pool = pool_views(training_set, self.method_name).to(device)
        weak, strong = pool[:, 0], pool[:, 1 if pool.shape[1] > 1 else 0]
        n_pool = pool.shape[0]
        with torch.no_grad():
            log_probabilities = self.pool_log_probabilities(weak)
            selection = self.fill_cache(weak, log_probabilities)
            refined_per_class = cache_size(n_pool, len(self.classnames), parameters.training_proportion,
                                           parameters.min_training_per_class)
            refined, _ = select_representatives(log_probabilities, refined_per_class).indices_and_labels()
            refined = refined.to(device)
            # Relabelled by TFUP with the hand-crafted W and plain features, before any training (as the authors).
            refined_labels = in_chunks(self.hand_crafted_tfup_logits, weak[refined]).argmax(1)
        validation = self._validation(training_set, device)

        generator = torch.Generator().manual_seed(optimization.seed)
        self.reset_trainable(generator)
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=optimization.learning_rate, eps=parameters.adamw_eps,
                                      weight_decay=optimization.weight_decay)
        divergence = DivergenceWatch(optimization, device)
        refined_epochs = min(parameters.refined_set_epochs, optimization.epochs)
        epoch_sizes = [len(refined) if epoch < refined_epochs else n_pool for epoch in range(optimization.epochs)]
        total_steps = sum(math.ceil(size / optimization.batch_size) for size in epoch_sizes)
        history = TrainingHistory()
        validation_accuracies, pseudolabelled_fractions = [], []
        best_accuracy, best_epoch, best_state = -1.0, optimization.epochs - 1, None
        for epoch, n_samples in enumerate(epoch_sizes):
            self.train()
            total_loss, correct, labelled = (torch.zeros((), dtype=torch.float64, device=device) for _ in range(3))
            batches = torch.randperm(n_samples, generator=generator).to(device).split(optimization.batch_size)
            for batch in batches:
                for group in optimizer.param_groups:  # one cosine over every step of the run
                    group["lr"] = 0.5 * optimization.learning_rate * (1 + math.cos(math.pi * history.steps /
                                                                                   total_steps))
                if epoch < refined_epochs:
                    logits, targets = self.adapted_logits(strong[refined[batch]]), refined_labels[batch]
                    confident = torch.ones_like(targets, dtype=torch.bool)
                    loss = F.cross_entropy(logits, targets)
                else:
                    logits, targets, confident, loss = self._pseudolabel_step(weak[batch], strong[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                history.steps += 1
                divergence.after_step(loss, trainable, history.steps)
                total_loss += loss.detach().double()
                correct += ((logits.argmax(1) == targets) & confident).sum()
                labelled += confident.sum()
            divergence.raise_if_diverged(epoch + 1)  # before this epoch can be kept as the best
            # Read once per epoch: no device-to-host sync per step on a GPU.
            history.epoch_losses.append(total_loss.item() / len(batches))
            history.epoch_accuracies.append(correct.item() / max(labelled.item(), 1.0))
            if epoch >= refined_epochs:
                pseudolabelled_fractions.append(labelled.item() / n_samples)
            if validation is not None:
                validation_accuracies.append(self._accuracy(*validation))
                if validation_accuracies[-1] > best_accuracy:  # ties keep the earlier epoch, as the authors' `>`
                    best_accuracy, best_epoch = validation_accuracies[-1], epoch
                    best_state = {name: p.detach().clone() for name, p in self.named_parameters() if p.requires_grad}
        if best_state is not None:
            self.load_state_dict(best_state, strict=False)
        self.eval()
        history.seconds = time.perf_counter() - started
        history.details = {
            **self.cache_record(selection, n_pool),
            "refined_set_size": len(refined), "refined_per_class": refined_per_class,
            "strong_view": "mirrored" if pool.shape[1] > 1 else "original",
            "model_selection": "validation" if validation is not None else "last_epoch",
            "selected_epoch": best_epoch + 1,  # 1-based, as the training loop counts epochs
            "validation_accuracies": validation_accuracies,
            "pseudolabelled_fraction_by_epoch": pseudolabelled_fractions,
        }
        return history

    def _pseudolabel_step(self, weak: torch.Tensor, strong: torch.Tensor):
        """(strong logits, pseudolabels, confident mask, loss) of one FixMatch-like step on pool images."""
        parameters = self.parameters_used
        with torch.no_grad():
            confidence, pseudolabels = self.tfup_logits(weak).softmax(-1).max(1)
        confident = confidence > parameters.confidence_threshold
        logits = self.adapted_logits(strong)
        # Mean cross-entropy over the confident images (0 when there are none), with a mask: no host sync.
        per_sample = F.cross_entropy(logits, pseudolabels, reduction="none")
        classification = (per_sample * confident).sum() / confident.sum().clamp_min(1)
        # The authors' marginal_loss: -H(mean softmax of the batch), so the predictions spread over the classes.
        mean_probabilities = logits.softmax(-1).mean(0)
        negative_marginal_entropy = (mean_probabilities * torch.log(mean_probabilities + 1e-6)).sum()
        loss = classification + parameters.marginal_entropy_weight * negative_marginal_entropy
        return logits, pseudolabels, confident, loss

    @torch.no_grad()
    def _accuracy(self, features: torch.Tensor, labels: torch.Tensor) -> float:
        self.eval()
        return float((in_chunks(self, features).argmax(1) == labels).float().mean())

    def _validation(self, training_set, device):
        validation = training_set.validation
        if validation is None or validation[0].shape[0] == 0:
            return None
        features, labels = validation
        if features.dim() == 3:  # (M, V, E): the original view, as evaluation sees it
            features = features[:, 0]
        return features.float().to(device), labels.long().to(device)


TFUP_PAPER = Paper("Long et al.", "Training-Free Unsupervised Prompt for Vision-Language Models", "arXiv 2024",
                   "https://arxiv.org/abs/2404.16339")

register_method(
    MethodSpec(
        name="tfup",
        parameters_type=TfupParameters,
        build=TfupClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="none: a cache of representative unlabelled pool images beside zero-shot CLIP's template features",
        description="TFUP: training-free cache of prototypical pool images, scored by feature and semantic "
                    "similarity.",
        class_specific=lambda parameters: True,
        adapts_from_pool=True,
        paper=TFUP_PAPER,
        hook_points=("feature space",),
        selection_note="Training-free: its cache is built from the pool in one pass, with nothing to select.",
        verification=tested_property(
            "A cache of pseudolabelled pool images corrects a zero-shot classifier whose text features miss the "
            "pool's clusters (by at least 10 points), without seeing a label.",
            "tests/prompting/test_tfup.py::test_a_cache_of_pool_images_corrects_a_biased_zero_shot_classifier"),
    )
)

register_method(
    MethodSpec(
        name="tfup_t",
        parameters_type=TfupTrainedParameters,
        build=TfupTrainedClassifier,
        trains_prompts=True,
        frozen_image_encoder=True,
        hooks="none: a text-feature residual and an image-feature adapter on the frozen towers' outputs",
        description="TFUP-T: TFUP's cache pseudolabels the pool to train a text residual and an image adapter.",
        class_specific=lambda parameters: True,
        adapts_from_pool=True,
        paper=TFUP_PAPER,
        hook_points=("feature space",),
        selection="full_val",
        selection_note=("It adapts from the unlabelled pool in a learning setting, whose labelled val rows (in UL the "
                        "dataset's val split) choose the epoch; the authors keep the epoch best on the test labels."),
        verification=tested_property(
            "It trains on the published schedule (5 epochs on the refined set, then 25 pseudolabelling the pool), "
            "is deterministic for a seed, and ends at least as accurate as zero-shot CLIP.",
            "tests/prompting/test_tfup.py::test_tfup_t_is_deterministic_for_a_seed"),
    )
)
