"""What the feature-space few-shot baselines share (Tip-Adapter, Tip-Adapter-F, CLIP-Adapter, TaskRes, LP++, CLAP):
the zero-shot text classifier in the two forms their authors use, Tip-Adapter's cache model and its alpha/beta search,
and the reading of a training set of cached augmented views. Nothing here learns or touches a tower: the methods in
models/prompting/methods/ do, on cached, frozen image features.

- Zero-shot text classifier: `zero_shot_text_weights` is Tip-Adapter's and LP++'s `clip_classifier` (per class, the
  normalised template features averaged and normalised again: the normalised template ensemble);
  `raw_text_embeddings` is TaskRes's and CLAP's `_get_base_text_features` (the mean of the raw, unnormalised text
  features over the templates), whose norm sets how far a learned residual or prototype moves.
- Cache model (Tip-Adapter's `build_cache_model`): one key per training image, the mean of its augmented passes'
  raw features, L2-normalised; values one-hot over the experiment's classes.
- Cache logits: 100 f W^T + alpha exp(-beta (1 - f K^T)) V. The zero-shot term's factor is the constant 100 of the
  authors' code (`100. * features @ clip_weights`), not the backbone's logit scale (equal for OpenAI's weights).
- alpha/beta search (`search_hp`): beta_i = 0.1 + i (s0 - 0.1) / n_beta, alpha_j = 0.1 + j (s1 - 0.1) / n_alpha,
  exhaustive over beta (outer) and alpha (inner), the first best accuracy kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from models.prompting.prompt_assembly import encode_template_texts, require_prompts_fit
from models.prompting.view_recipes import ViewRecipe

# Dassl's training augmentation (random resized crop 0.08-1, flip) as 20 cached passes: CLAP's 20 views, and the
# views of CLIP-Adapter and TaskRes (Dassl trainers), so that the three share one cached set.
DASSL_VIEWS = ViewRecipe(passes=20, crop_scale=(0.08, 1.0), flip=True)

# Tip-Adapter's zero-shot factor: a constant in the authors' code (main.py, utils.search_hp), not CLIP's logit scale.
TIP_ZERO_SHOT_SCALE = 100.0


def zero_shot_text_weights(context) -> torch.Tensor:
    """(C, E) normalised class text features: the template ensemble (mean of the normalised template features),
    normalised again, as Tip-Adapter's and LP++'s clip_classifier."""
    return F.normalize(context.template_ensemble().float(), dim=-1)


def raw_text_embeddings(context) -> torch.Tensor:
    """(C, E) mean over the templates of the raw (unnormalised) text features, as TaskRes's and CLAP's base text
    features (one template: its raw features)."""
    classnames, templates = context.classnames, context.templates
    if not templates:
        raise ValueError("at least one hand-crafted template is needed")
    require_prompts_fit(context.tokenizer, {c: [t.format(c) for t in templates] for c in classnames},
                        context.text_tower.context_length)
    with torch.no_grad():
        per_template = [encode_template_texts(context.text_tower, context.tokenizer,
                                              [template.format(c) for c in classnames]).float()
                        for template in templates]
    return torch.stack(per_template).mean(dim=0)


def training_views(training_set, method: str, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, P, E) of the P augmented passes of each training image, labels (N,)), checked."""
    views = training_set.view_inputs
    if views.dim() == 2:
        views = views.unsqueeze(1)
    if views.dim() != 3:
        raise ValueError(f"{method} trains on cached image features (N, P, E); got inputs of shape "
                         f"{tuple(training_set.view_inputs.shape)}")
    labels = training_set.labels.long()
    if labels.shape[0] != views.shape[0] or views.shape[0] == 0:
        raise ValueError(f"{method}: {views.shape[0]} training images but {labels.shape[0]} labels")
    check_labels(labels, n_classes, method, "training")
    return views.float(), labels


def single_view(features: torch.Tensor) -> torch.Tensor:
    """(M, E) features of one view: validation and test images have their original view only."""
    return features[:, 0] if features.dim() == 3 else features


def validation_set(training_set, method: str, n_classes: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (features (M, E), labels (M,)) of the selection policy's val images, or None where there are none."""
    validation = training_set.validation
    if validation is None or validation[0].shape[0] == 0:
        return None
    features, labels = single_view(validation[0]).float(), validation[1].long()
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"{method}: {features.shape[0]} val feature rows but {labels.shape[0]} labels")
    check_labels(labels, n_classes, method, "val")
    return features, labels


def check_labels(labels: torch.Tensor, n_classes: int, method: str, subset: str) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"{method}: {subset} labels must lie in [0, {n_classes - 1}], got "
                         f"[{int(labels.min())}, {int(labels.max())}]")


def cache_keys_from_passes(views: torch.Tensor) -> torch.Tensor:
    """(N, E) keys: per image the mean over its augmented passes of the raw features, then L2-normalised (so the
    cache holds one row per image, not one per view)."""
    return F.normalize(views.float().mean(dim=1), dim=-1)


def cache_values(labels: torch.Tensor, n_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, C) one-hot values over the experiment's C classes (the authors' F.one_hot takes max label + 1)."""
    return F.one_hot(labels.long(), n_classes).to(dtype)


def cache_logits(affinity: torch.Tensor, values: torch.Tensor, beta) -> torch.Tensor:
    """exp(-beta (1 - A)) V for affinities A = f K^T, written as the authors' ((-1) * (beta - beta * A)).exp()."""
    return ((-1) * (beta - beta * affinity)).exp() @ values


def tip_logits(image: torch.Tensor, text_weights: torch.Tensor, affinity: torch.Tensor, values: torch.Tensor,
               alpha, beta) -> torch.Tensor:
    """100 f W^T + alpha exp(-beta (1 - A)) V for normalised image features f and text weights W (C, E)."""
    return (TIP_ZERO_SHOT_SCALE * image) @ text_weights.t() + cache_logits(affinity, values, beta) * alpha


def search_grid(search_scale: tuple[float, float], search_steps: tuple[int, int]) -> tuple[list[float], list[float]]:
    """(betas, alphas) of Tip-Adapter's search, in the authors' arithmetic: i * (s - 0.1) / n + 0.1, i < n."""
    (beta_scale, alpha_scale), (beta_steps, alpha_steps) = search_scale, search_steps
    betas = [i * (beta_scale - 0.1) / beta_steps + 0.1 for i in range(beta_steps)]
    alphas = [j * (alpha_scale - 0.1) / alpha_steps + 0.1 for j in range(alpha_steps)]
    return betas, alphas


@dataclass(frozen=True)
class AlphaBetaChoice:
    alpha: float
    beta: float
    val_accuracy: float
    zero_shot_val_accuracy: float
    val_images: int
    grid_size: int

    def record(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta, "val_accuracy": self.val_accuracy,
                "zero_shot_val_accuracy": self.zero_shot_val_accuracy, "val_images": self.val_images,
                "grid_size": self.grid_size}


@torch.no_grad()
def search_alpha_beta(image: torch.Tensor, text_weights: torch.Tensor, affinity: torch.Tensor, values: torch.Tensor,
                      labels: torch.Tensor, betas: list[float], alphas: list[float]) -> AlphaBetaChoice:
    """The (alpha, beta) of the grid with the best val accuracy; ties go to the first in the authors' order (beta
    outer, alpha inner), as their `acc > best_acc`. image: normalised val features (M, E); affinity: their (M, N)
    affinities to the cache keys (or the trained keys of Tip-Adapter-F)."""
    labels = labels.to(image.device)
    zero_shot = (TIP_ZERO_SHOT_SCALE * image) @ text_weights.t()
    correct = torch.zeros(len(betas), len(alphas), dtype=torch.long, device=image.device)
    for i, beta in enumerate(betas):
        cache = cache_logits(affinity, values, beta)
        for j, alpha in enumerate(alphas):
            correct[i, j] = ((zero_shot + cache * alpha).argmax(dim=1) == labels).sum()
    best = int(correct.flatten().argmax())  # the first maximum in row-major (beta, alpha) order
    i, j = divmod(best, len(alphas))
    n_images = max(labels.shape[0], 1)
    return AlphaBetaChoice(alpha=alphas[j], beta=betas[i], val_accuracy=int(correct[i, j]) / n_images,
                           zero_shot_val_accuracy=float((zero_shot.argmax(1) == labels).float().mean()),
                           val_images=labels.shape[0], grid_size=len(betas) * len(alphas))


def in_authors_epochs(on_epoch: Callable[[int, float, float], None] | None, n_samples: int,
                      config) -> Callable[[int, float, float], None] | None:
    """on_epoch(epoch, loss, accuracy) counted in the authors' epochs (config.epochs, over config.steps steps) for a
    loop whose epochs pass over n_samples (CLAP trains on every view of every image as a sample, so one of the loop's
    epochs spans several of theirs); None stays None, and a run given in steps keeps the loop's count."""
    if on_epoch is None or config.steps is None or config.epochs < 1:
        return on_epoch
    loop_epoch_steps = math.ceil(n_samples / config.batch_size)

    def report(epoch: int, loss: float, accuracy: float) -> None:
        steps_done = min(epoch * loop_epoch_steps, config.steps)
        on_epoch(steps_done * config.epochs // config.steps, loss, accuracy)

    return report


def steps_per_authors_epoch(n_samples: int, batch_size: int, drop_last: bool) -> int:
    """Optimizer steps in one epoch of the authors' data loader: ceil(N / B) for torch's default loader (Tip-Adapter-F),
    floor(N / B) but at least 1 for Dassl's training loader, which drops the last batch when N >= B (CLAP)."""
    if drop_last:
        return max(1, n_samples // batch_size)
    return math.ceil(n_samples / batch_size)
