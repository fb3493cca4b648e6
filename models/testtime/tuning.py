"""Test-time prompt tuning: for each test image, tune the prompt on that image's views alone, then predict it.

TPT (Shu et al., NeurIPS 2022) and DiffTPT (Feng et al., ICCV 2023), as read from the authors' code
(../shared/METHODS-2.md sections 1 and 2). Per test image:

1. reset the prompt to its starting point (a zero-shot context "a photo of a", or a trained checkpoint's learned
   prompt) and the optimizer to its initial, empty state;
2. build the views (models/testtime/views.py): the original v0, n - 1 conventional augmentations, and for DiffTPT
   the generated variations of the image (a VariationGenerator, cached on disk by generator, seed and image);
3. score all views, select the confident ones (TPT: lowest entropy; DiffTPT: cosine filter then entropy;
   models/testtime/selection.py), the selection fixed after the first step as the authors do;
4. take `steps` AdamW steps on the entropy of the selected views' averaged prediction;
5. predict v0 with the tuned prompt.

Batched and cached: the views of one image go through the towers as one batch; where the method's image tower is
frozen and unprompted (CoOp's family, and the zero-shot start), the views are encoded once, not at every step, and
their features are kept in the feature cache (keyed by backbone, view recipe, seed, image, and for generated views
the generator's provenance). Methods that prompt the image tower (MaPLe, VPT) re-encode the selected views at
every step, as they must. Everything but the tuned prompt is frozen.

Departures, recorded in the settings: views are seeded per image (the authors' code draws them from one global
stream over a shuffled test set, and DiffTPT's sub-sampling is unseeded); every selection keeps at least one view
(selection.py); the zero-shot start's context is a setting (`context_init`: the dataset template's words by default,
so that no step equals the zero-shot row; TPT's "a photo of a" on ImageNet is that case).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.augmentation.generation import VariationGenerator, per_image_seed
from models.catalog.testtime_settings import TestTimeSettings, published_settings  # noqa: F401 (re-exported)
from models.precision import precision_for
from models.prompting.methods.registry import PromptedClassifier
from models.testtime.selection import ViewLayout, average_entropy, difftpt_code_filter, difftpt_paper_filter, lowest_entropy
from models.testtime.views import conventional_views, generated_views, input_size, view_generator


@dataclass
class TunedPrediction:
    logits_before: torch.Tensor  # (C,) v0 with the starting prompt
    logits_after: torch.Tensor  # (C,) v0 with the tuned prompt
    views_kept: int
    loss_before: float  # average entropy of the kept views at the first step
    loss_after: float  # the same views with the tuned prompt (nan when steps == 0)


class TestTimeTuner:
    """Tunes a classifier's trainable prompt parameters on one image's views, reset before each image."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, classifier: PromptedClassifier, settings: TestTimeSettings,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.classifier = classifier.to(self.device).eval()
        self.settings = settings
        self.tuned = [p for p in classifier.parameters() if p.requires_grad]
        if not self.tuned:
            raise ValueError(f"{type(classifier).__name__} has no prompt parameters to tune at test time")
        self.initial = [p.detach().clone() for p in self.tuned]
        self.precision = precision_for(self.device, training=True)

    def reset(self) -> torch.optim.Optimizer:
        with torch.no_grad():
            for parameter, initial in zip(self.tuned, self.initial):
                parameter.copy_(initial)
        # a fresh AdamW has the empty state the authors restore with optimizer.load_state_dict(initial_state)
        return torch.optim.AdamW(self.tuned, lr=self.settings.learning_rate, weight_decay=self.settings.weight_decay)

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            return self.classifier(inputs.to(self.device)).float()

    def select(self, logits: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        settings = self.settings
        if settings.mode == "tpt":
            return lowest_entropy(logits, settings.selection_fraction)
        if settings.filter == "code":
            return difftpt_code_filter(logits, settings.cosine_fraction, settings.entropy_fraction)
        if image_features is None:
            raise ValueError("the paper's DiffTPT filter needs the views' image features")
        layout = ViewLayout(settings.n_views - 1, settings.n_generated_views)
        return difftpt_paper_filter(logits, image_features, layout, settings.cosine_fraction,
                                    settings.entropy_fraction)

    def tune_and_predict(self, view_inputs: torch.Tensor,
                         image_features: torch.Tensor | None = None) -> TunedPrediction:
        """view_inputs: the classifier's inputs of one image's views, v0 first (features (V, E) or images)."""
        optimizer = self.reset()
        with torch.no_grad():
            all_logits = self._logits(view_inputs)
        selected = self.select(all_logits.cpu(), image_features).to(self.device)
        kept_inputs = view_inputs.to(self.device)[selected]
        logits_before = all_logits[0].detach().cpu()
        loss_before = float(average_entropy(all_logits[selected]))
        loss_after = float("nan")
        for step in range(self.settings.steps):
            # Step 0's forward is the selection forward above, with gradients this time; the kept views are fixed
            # after it (as the authors do), and only they are scored: per-view logits do not depend on the others.
            loss = average_entropy(self._logits(kept_inputs))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            if self.settings.steps:
                loss_after = float(average_entropy(self._logits(kept_inputs)))
            logits_after = self._logits(view_inputs[:1]).detach().cpu()[0]
        return TunedPrediction(logits_before, logits_after, int(selected.numel()), loss_before, loss_after)


@dataclass
class TestTimeResult:
    __test__ = False  # not a pytest test class, despite its name

    log_probabilities: np.ndarray  # (N, C) after tuning, float64
    log_probabilities_before: np.ndarray  # (N, C) the starting prompt on v0
    views_kept: list[int]
    loss_before: list[float]
    loss_after: list[float]
    seconds: float
    encoded_views: int = 0  # view features computed (not read from the feature cache)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return len(self.views_kept) / self.seconds if self.seconds else float("nan")


def _view_digest(content_sha256: str, recipe: dict[str, Any], index: int) -> str:
    text = json.dumps({"image": content_sha256, "recipe": recipe, "view": index}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class ViewEncoder:
    """Image features of views from the frozen, unprompted image tower, through the feature cache when one is given.

    One encoder pass is always ALL the views of one image (its canonical batch, models.prompting.features): a view's
    features are rounded the same whether the cache missed one view of the image or all of them."""

    def __init__(self, backbone, cache_dir: Path | None = None):
        from models.prompting.feature_cache import FeatureCache, FeatureNamespace

        self.backbone = backbone
        self.cache = FeatureCache(Path(cache_dir)) if cache_dir is not None else None
        namespace = FeatureNamespace.of(backbone, "test_time")
        self.namespace = dataclasses.replace(namespace, batching="all-views-of-one-image-per-pass")
        self.precision = precision_for(backbone.device, training=False)
        self.encoded = 0

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self.encoded += pixels.shape[0]
        with self.precision.autocast():
            return self.backbone.model.encode_image(pixels.to(self.backbone.device)).float().cpu()

    def features(self, pixels_per_image: Sequence[torch.Tensor], keys_per_image: Sequence[list[str]]) -> list[torch.Tensor]:
        if self.cache is None:
            return [self.encode(pixels) for pixels in pixels_per_image]
        owners = [(image, view) for image, keys in enumerate(keys_per_image) for view in range(len(keys))]
        flat_keys = [key for keys in keys_per_image for key in keys]

        def encode_missing(positions: list[int]) -> torch.Tensor:
            by_image: dict[int, list[int]] = {}
            for position in positions:
                by_image.setdefault(owners[position][0], []).append(position)
            rows = {}
            for image, image_positions in by_image.items():
                every_view = self.encode(pixels_per_image[image])  # the image's whole view set: its fixed batch
                for position in image_positions:
                    rows[position] = every_view[owners[position][1]]
            return torch.stack([rows[p] for p in positions])

        flat = self.cache.features(self.namespace, flat_keys, encode_missing)
        out, start = [], 0
        for keys in keys_per_image:
            out.append(flat[start:start + len(keys)])
            start += len(keys)
        return out


def tune_test_images(
    tuner: TestTimeTuner,
    frozen_image_encoder: bool,
    backbone,
    image_dir: Path,
    relative_paths: Sequence[str],
    content_hashes: Sequence[str],
    generator: VariationGenerator | None = None,
    variation_cache_dir: Path | None = None,
    feature_cache_dir: Path | None = None,
    on_progress: Callable[[int, int, float], None] | None = None,
    chunk_size: int = 16,
) -> TestTimeResult:
    """Tune and predict every image in order; on_progress(done, total, seconds so far) after each chunk."""
    from models.augmentation.variation_cache import cached_variations
    from models.data.index import load_images

    settings = tuner.settings
    if len(relative_paths) != len(content_hashes):
        raise ValueError(f"{len(relative_paths)} images but {len(content_hashes)} content hashes")
    if settings.mode == "difftpt" and generator is None:
        raise ValueError("difftpt needs a VariationGenerator for its generated views")
    preprocess = backbone.preprocess_eval
    size = input_size(preprocess)
    recipe = {"views": dataclasses.asdict(settings.recipe), "seed": settings.seed, "transform": repr(preprocess)}
    generated_recipe = None
    if settings.mode == "difftpt":
        generation_seed = settings.seed if settings.generation_seed is None else settings.generation_seed
        generated_recipe = {"generator": generator.provenance.as_dict(), "seed": generation_seed,
                            "transform": repr(preprocess)}
    encoder = ViewEncoder(backbone, feature_cache_dir)
    needs_features = frozen_image_encoder or (settings.mode == "difftpt" and settings.filter == "paper")
    started = time.perf_counter()
    after, before, kept, loss_before, loss_after = [], [], [], [], []
    total = len(relative_paths)
    for start in range(0, total, chunk_size):
        paths = list(relative_paths[start:start + chunk_size])
        hashes = list(content_hashes[start:start + chunk_size])
        images = load_images(image_dir, paths)
        pixels = [conventional_views(image, preprocess, size, settings.recipe, view_generator(settings.seed, digest))
                  for image, digest in zip(images, hashes)]
        keys = [[_view_digest(digest, recipe, k) for k in range(settings.n_views)] for digest in hashes]
        if generated_recipe is not None:
            seeds = [per_image_seed(generated_recipe["seed"], digest) for digest in hashes]
            variations = cached_variations(generator, variation_cache_dir, images, hashes, seeds,
                                           settings.n_generated_views)
            for position, (image_variations, digest) in enumerate(zip(variations, hashes)):
                pixels[position] = torch.cat([pixels[position], generated_views(image_variations, preprocess)])
                keys[position] += [_view_digest(digest, generated_recipe, k)
                                   for k in range(settings.n_generated_views)]
        features = encoder.features(pixels, keys) if needs_features else [None] * len(pixels)
        for image_pixels, image_features in zip(pixels, features):
            inputs = image_features if frozen_image_encoder else image_pixels
            prediction = tuner.tune_and_predict(inputs, image_features)
            after.append(prediction.logits_after)
            before.append(prediction.logits_before)
            kept.append(prediction.views_kept)
            loss_before.append(prediction.loss_before)
            loss_after.append(prediction.loss_after)
        if on_progress is not None:
            on_progress(min(start + chunk_size, total), total, time.perf_counter() - started)
    if not after:
        raise ValueError("no test images to tune on")
    return TestTimeResult(
        log_probabilities=torch.stack(after).double().log_softmax(dim=-1).numpy(),
        log_probabilities_before=torch.stack(before).double().log_softmax(dim=-1).numpy(),
        views_kept=kept, loss_before=loss_before, loss_after=loss_after,
        seconds=time.perf_counter() - started, encoded_views=encoder.encoded)
