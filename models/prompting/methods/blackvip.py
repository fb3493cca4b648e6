"""BlackVIP (Oh et al., CVPR 2023): an input-dependent visual prompt for a black-box CLIP, trained by SPSA-GC.

Hooks: the image input only, and only through the black box's front door. The backbone is served as
`models.prompting.black_box.BlackBoxCLIP`: images in, logits out (normalised image features x the hand-crafted
templates' text features x CLIP's temperature), under torch.no_grad; the method never reads a weight, a feature or a
gradient of it. A "coordinator" writes the prompt: a frozen image encoder's feature z of the image, concatenated with a
learned "prompt trigger" vector, reshaped to a (32, g, g) map and upsampled by ConvTranspose stages to a (3, H, W)
prompt; the black box scores x' = clamp(x + eps * prompt) with each channel clamped to the values of pixels in [0, 1]
after the backbone's normalisation (their clip_clipping: CLIP's mean and std, hardcoded there). Loss: cross-entropy
of the black box's logits. Training is zeroth order (models.prompting.zeroth_order.SpsaGc): the decoder's parameters
(the trigger, the stages' weights and BatchNorm affines) move along SPSA estimates averaged over 5 perturbations
+-U[0.5, 1], with a_k = a/(k+o)^alpha, c_k = c/k^gamma, [o, c, a, alpha, gamma] = [1, 0.01, 0.01, 0.4, 0.1] and
momentum 0.9 with the correction g + beta m. `fit` runs that loop (trained_by_gradient = False); the shared loop's
learning rate, momentum and weight decay play no part (their Dassl SGD config is built but never steps).

The decoder (their trainers/visual_prompters.py DecoderManual, arch vit-mae-base): the 32-channel source map, then
stride-2 stages of [2x2 ConvTranspose (groups gcd(in, mid)), 1x1 ConvTranspose without bias, BatchNorm, GELU] with
(mid, out) widths (64, 64), (64, 32), (32, 32), (32, 16), and a last 2x2 ConvTranspose to 3 channels without bias:
for 224 pixels, 5 stages from 7 x 7 (about 9.9K parameters with their 800-wide trigger). Every size is read from the
models: the stage count is the most (up to 5) for which H / 2^n and W / 2^n are whole and the 32 x (H/2^n) x (W/2^n)
source leaves room for a trigger beside the encoder's feature (trigger width = source size - feature width); fewer
stages keep the first ones and end with the same 2x2 projection to 3 channels. For the embedded 32-pixel, 64-wide
tiny CLIP that is 4 stages from 2 x 2 with a 64-wide trigger. Trigger initialised U[0, 0.1], the rest PyTorch's
default initialisation, seeded by init_seed.

Published (configs/trainers/BLACKVIP/vit_b16.yaml, scripts/blackvip/tl_bench.sh): ViT-B/16, batch 128, MAX_EPOCH 1000
(tl_bench passes 5000 for most datasets: docs/configuration.md), SRC_DIM 1568, P_EPS 1.0, SP_AVG 5, MOMS 0.9, their
per-dataset table varying moms, gamma, c and eps. An epoch is max(1, N // 128) steps (Dassl drops the last partial
batch when N >= 128); k counts steps over the whole run from 1. The last epoch is tested (their best-val block is
commented out).

Where this departs from the authors' code, and why:
- The coordinator's encoder. Theirs is facebook/vit-mae-base (HF ViTForImageClassification, the last hidden state's
  CLS, 768 wide), which is not available offline here. `coordinator_encoder: backbone` (the default) uses the
  backbone's own image tower, frozen, as the encoder (its output embedding: a white-box read of the same weights, which
  a strictly black-box deployment would replace by any other frozen encoder); an open_clip architecture with
  `coordinator_weights` (a pretrained tag from open_clip's cache, or a local checkpoint file or local-dir folder)
  loads another one, never downloading: an encoder that is not on disk is refused when the classifier is built,
  before training, naming the model and the cache folder. The encoder used is recorded in the training details.
- Their MAE reads the CLIP-normalised image as it is (MAE expects ImageNet's mean and std); a separate encoder here
  gets the image mapped back to pixels and normalised (and resized) as its own preprocessing does.
- Their forward_backward runs under CUDA autocast (fp16), which their issue #2 reports as left in by mistake; a
  finite difference over c_k = 0.01 perturbations needs more than fp16's or bf16's precision, so every forward here is
  fp32 on any device.
- z does not depend on the decoder, so it is computed once per training view before training instead of at each of
  the 2 x 5 evaluations of every step (the same values).
- The epoch's reported loss and accuracy are the means over every perturbed evaluation of its steps (theirs: the
  last pair's); views: one of the cached views per image per epoch, drawn as the shared loop draws them, instead of
  Dassl's random resized crop and flip.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.prompting.black_box import BlackBoxCLIP, image_size_of, normalisation_of
from models.prompting.feature_adapters import check_labels, steps_per_authors_epoch
from models.prompting.methods.registry import (
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, register_method, tested_property,
)
from models.prompting.training import NonFiniteTrainingError, OptimizationConfig, TrainingHistory
from models.prompting.zeroth_order import SPSA_VARIANTS, SpsaGc, SpsaSchedule

BACKBONE_ENCODER = "backbone"
# Their decoder's hidden stages after the source map: (width after the 2x2 upsampling, width after the 1x1).
HIDDEN_STAGE_WIDTHS = ((64, 64), (64, 32), (32, 32), (32, 16))
MAX_STAGES = len(HIDDEN_STAGE_WIDTHS) + 1  # 5: 7 x 7 -> 224 x 224
TRIGGER_INIT_HIGH = 0.1  # trigger ~ U[0, 0.1] (their DecoderManual)
WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def weights_is_path(value: str) -> bool:
    """Whether a coordinator name or weights value is a local path (pretrained tags and architecture names have no
    path separator and no weight-file suffix)."""
    return "/" in value or os.sep in value or value.endswith(WEIGHT_FILE_SUFFIXES)


@dataclass(frozen=True)
class BlackVIPParameters:
    # "backbone": the backbone's own frozen image tower; an open_clip architecture name (e.g. "ViT-B-16"), with
    # coordinator_weights; or the path of a local CLIP (an open_clip local-dir folder, or an OpenAI-format state dict
    # or TorchScript file, whose architecture is read from the weights)
    coordinator_encoder: str = BACKBONE_ENCODER
    # with an architecture name: an open_clip pretrained tag read from the cache, or a local state-dict file of it
    coordinator_weights: str | None = None
    coordinator_cache_dir: str | None = None  # the open_clip / HF hub cache to read a tag from (default: their own)
    source_channels: int = 32  # SRC_DIM 1568 = 32 x 7 x 7
    prompt_scale: float = 1.0  # P_EPS: x' = clamp(x + eps * prompt)
    spsa_a: float = 0.01  # a of the gain a_k = a / (k + o)^alpha
    spsa_c: float = 0.01  # c of the perturbation size c_k = c / k^gamma
    spsa_offset: float = 1.0  # o
    spsa_alpha: float = 0.4  # the gain's decay
    spsa_gamma: float = 0.1  # the perturbation size's decay
    momentum: float = 0.9  # MOMS, beta of SPSA-GC
    perturbation_samples: int = 5  # SP_AVG
    spsa_variant: str = "spsa-gc"  # OPT_TYPE: "spsa-gc" or "spsa"
    init_seed: int = 0  # trigger and decoder initialisation, independent of the data seed

    def __post_init__(self) -> None:
        self.schedule()  # a, c, o, alpha, gamma checked there
        if self.spsa_variant not in SPSA_VARIANTS:
            raise ValueError(f"blackvip: spsa_variant must be one of {list(SPSA_VARIANTS)}, got {self.spsa_variant!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"blackvip: momentum must lie in [0, 1), got {self.momentum!r}")
        if self.perturbation_samples < 1:
            raise ValueError(f"blackvip: perturbation_samples must be >= 1, got {self.perturbation_samples!r}")
        if self.source_channels < 1:
            raise ValueError(f"blackvip: source_channels must be >= 1, got {self.source_channels!r}")
        if not self.prompt_scale >= 0:
            raise ValueError(f"blackvip: prompt_scale must be >= 0, got {self.prompt_scale!r}")
        if not isinstance(self.coordinator_encoder, str) or not self.coordinator_encoder:
            raise ValueError(f"blackvip: coordinator_encoder must be 'backbone' or an open_clip architecture name, "
                             f"got {self.coordinator_encoder!r}")
        if self.coordinator_encoder == BACKBONE_ENCODER and self.coordinator_weights is not None:
            raise ValueError("blackvip: coordinator_weights names weights for another encoder; with "
                             "coordinator_encoder 'backbone' the backbone's own image tower is used, so leave it out")
        if weights_is_path(self.coordinator_encoder) and self.coordinator_weights is not None:
            raise ValueError(f"blackvip: coordinator_encoder {self.coordinator_encoder!r} is a local model (its "
                             "architecture is read from it), so leave coordinator_weights out (open_clip spells "
                             "architecture names with '-', e.g. ViT-B-16)")
        if (self.coordinator_encoder != BACKBONE_ENCODER and not weights_is_path(self.coordinator_encoder)
                and not self.coordinator_weights):
            raise ValueError(f"blackvip: coordinator_encoder {self.coordinator_encoder!r} needs coordinator_weights: "
                             "an open_clip pretrained tag (read from the cache) or a local checkpoint path")

    def schedule(self) -> SpsaSchedule:
        return SpsaSchedule(a=self.spsa_a, c=self.spsa_c, offset=self.spsa_offset, alpha=self.spsa_alpha,
                            gamma=self.spsa_gamma)


# ------------------------------------------------------------------------------------------------ the coordinator
class FrozenImageEncoder(nn.Module):
    """The coordinator's encoder: a frozen image tower whose output embedding is z. Images arrive normalised for the
    backbone; a separate encoder gets them mapped back to pixels, resized and normalised as its own preprocessing."""

    def __init__(self, visual: nn.Module, record: dict, backbone_normalisation=None, own_normalisation=None,
                 own_size: tuple[int, int] | None = None):
        super().__init__()
        self.visual = visual
        self.record = record
        self.output_dim = int(getattr(visual, "output_dim"))
        self.own_size = own_size
        self.converts = backbone_normalisation is not None
        if self.converts:
            device = next(visual.parameters()).device
            for name, values in zip(("backbone_mean", "backbone_std", "own_mean", "own_std"),
                                    (*backbone_normalisation, *own_normalisation)):
                self.register_buffer(name, torch.tensor(values, device=device).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.converts:
            pixels = images * self.backbone_std + self.backbone_mean
            if tuple(pixels.shape[-2:]) != self.own_size:
                pixels = F.interpolate(pixels, size=self.own_size, mode="bicubic", align_corners=False)
            images = (pixels - self.own_mean) / self.own_std
        return self.visual(images).float()


def coordinator_encoder(parameters: BlackVIPParameters, clip_model: nn.Module) -> FrozenImageEncoder:
    """The frozen encoder the parameters name, loaded offline (models.backbones.loader); one not on this machine is
    refused here, naming the model and where it was looked for."""
    if parameters.coordinator_encoder == BACKBONE_ENCODER:
        return FrozenImageEncoder(clip_model.visual, {"encoder": "the backbone's own image tower"})
    from models.backbones.loader import BackboneSpec, BackboneUnavailableError, load_backbone

    name, weights = parameters.coordinator_encoder, parameters.coordinator_weights
    if weights is None:  # a local CLIP named by its path
        source = "local_dir" if os.path.isdir(name) else "checkpoint"
        spec = BackboneSpec(name=f"blackvip coordinator encoder {name}", source=source, path=name)
    elif weights_is_path(weights):
        source = "local_dir" if os.path.isdir(weights) else "checkpoint"
        spec = BackboneSpec(name=f"blackvip coordinator encoder {name}", source=source, model_name=name, path=weights)
    else:
        spec = BackboneSpec(name=f"blackvip coordinator encoder {name}", source="open_clip", model_name=name,
                            pretrained=weights, cache_dir=parameters.coordinator_cache_dir)
    device = clip_model.logit_scale.device
    try:
        loaded = load_backbone(spec, device="cpu" if device.type == "meta" else device)
    except BackboneUnavailableError as error:
        raise BackboneUnavailableError(f"blackvip: the coordinator encoder cannot be loaded offline, so nothing is "
                                       f"trained: {error}") from error
    visual = loaded.model.visual.to(device)
    record = {"encoder": name, "weights": weights, "source": spec.source, "weights_sha256": loaded.weights_sha256,
              "feature_width": int(visual.output_dim)}
    return FrozenImageEncoder(visual, record, normalisation_of(clip_model), normalisation_of(loaded.model),
                              image_size_of(loaded.model))


@dataclass(frozen=True)
class DecoderLayout:
    stages: int  # stride-2 ConvTranspose stages, the last projecting to 3 channels
    grid: tuple[int, int]  # the source map's height and width
    source_channels: int
    trigger_width: int

    @property
    def source_size(self) -> int:
        return self.source_channels * self.grid[0] * self.grid[1]


def decoder_layout(image_size: tuple[int, int], feature_width: int, source_channels: int) -> DecoderLayout:
    """The most stages (up to their 5) whose source grid is whole and leaves room for a trigger (module docstring)."""
    height, width = image_size
    for stages in range(MAX_STAGES, 0, -1):
        scale = 2 ** stages
        if height % scale or width % scale:
            continue
        grid = (height // scale, width // scale)
        trigger = source_channels * grid[0] * grid[1] - feature_width
        if trigger >= 1:
            return DecoderLayout(stages, grid, source_channels, trigger)
    raise ValueError(f"blackvip: no decoder reaches {height} x {width} images from a {source_channels}-channel source "
                     f"map holding the coordinator's {feature_width}-wide feature and a trigger (the image size must "
                     f"be even, and {source_channels} x (size / 2^stages)^2 must exceed the feature width: raise "
                     "source_channels)")


class PromptDecoder(nn.Module):
    """[z, trigger] -> (source_channels, g, g) -> ConvTranspose stages -> a (3, H, W) prompt."""

    def __init__(self, layout: DecoderLayout):
        super().__init__()
        self.layout = layout
        self.trigger = nn.Parameter(torch.empty(1, layout.trigger_width).uniform_(0.0, TRIGGER_INIT_HIGH))
        layers: list[nn.Module] = []
        channels = layout.source_channels
        for middle, out in HIDDEN_STAGE_WIDTHS[: layout.stages - 1]:
            layers += [nn.ConvTranspose2d(channels, middle, 2, 2, 0, groups=math.gcd(channels, middle)),
                       nn.ConvTranspose2d(middle, out, kernel_size=1, bias=False), nn.BatchNorm2d(out), nn.GELU()]
            channels = out
        layers.append(nn.ConvTranspose2d(channels, 3, 2, 2, 0, bias=False))
        self.body = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch = features.shape[0]
        source = torch.cat([features.float(), self.trigger.expand(batch, -1)], dim=1)
        return self.body(source.reshape(batch, self.layout.source_channels, *self.layout.grid))


# ------------------------------------------------------------------------------------------------ the classifier
class BlackVIPClassifier(PromptedClassifier):
    trained_by_gradient = False  # `fit` runs SPSA-GC: no gradient, no backward

    def __init__(self, context: ClassifierContext, parameters: BlackVIPParameters):
        encoder = coordinator_encoder(parameters, context.clip_model)  # refused first when it is not on disk
        super().__init__(context)
        self.parameters_used = parameters
        self.black_box = BlackBoxCLIP(context.clip_model, context.template_ensemble())
        self.encoder = encoder
        self.layout = decoder_layout(image_size_of(context.clip_model), encoder.output_dim, parameters.source_channels)
        device = self.logit_scale.device
        # Seeded without touching the global RNG, so building a classifier never shifts other random draws.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(parameters.init_seed)
            self.decoder = PromptDecoder(self.layout).to(device)

    def train(self, mode: bool = True) -> "BlackVIPClassifier":
        super().train(mode)
        self.black_box.eval()  # frozen towers stay in eval mode; only the decoder's BatchNorm follows `mode`
        self.encoder.eval()
        return self

    def text_features(self) -> torch.Tensor:
        return self.black_box.class_text_features

    def prompt(self, features: torch.Tensor) -> torch.Tensor:
        """The coordinator's (B, 3, H, W) prompt from the encoder's features (B, F)."""
        return self.decoder(features)

    def prompted_images(self, images: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """x' = clamp(x + eps * prompt) for images (B, 3, H, W); features: the encoder's, when already computed."""
        features = self.encoder(images) if features is None else features
        return self.black_box.clamp_to_pixels(images + self.parameters_used.prompt_scale * self.prompt(features))

    @torch.no_grad()
    def forward(self, images: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, C) of the black box for the prompted images."""
        return self.black_box(self.prompted_images(images.float(), features))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The decoder's parameters and its BatchNorm running statistics (the eval-mode prompt needs both)."""
        return {f"decoder.{name}": tensor.detach().cpu().contiguous()
                for name, tensor in self.decoder.state_dict().items()}

    @torch.no_grad()
    def encoder_features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """z of every image (..., 3, H, W) -> (..., F), in batches, on the classifier's device."""
        device = self.logit_scale.device
        flat = images.reshape(-1, *images.shape[-3:])
        chunks = [self.encoder(flat[start : start + batch_size].to(device).float())
                  for start in range(0, flat.shape[0], batch_size)]
        return torch.cat(chunks).reshape(*images.shape[:-3], -1)

    def fit(self, training_set, optimization: OptimizationConfig, on_epoch=None) -> TrainingHistory:
        """SPSA-GC on the decoder for optimization.epochs epochs of max(1, N // batch_size) steps; the best epoch on
        training_set.validation when it holds images, else the last."""
        if optimization is None or optimization.epochs < 1:
            raise ValueError("blackvip trains for optimization.epochs >= 1 epochs (the authors: 1000, 5000 in "
                             "tl_bench.sh)")
        started = time.perf_counter()
        parameters, device = self.parameters_used, self.logit_scale.device
        views, labels, weights = self.training_inputs(training_set)
        n_images, n_views = views.shape[:2]
        self.to(device).train()
        features = self.encoder_features(views)  # (N, V, F) on the device: z never depends on the decoder
        labels = labels.to(device)
        weights = weights.to(device) if weights is not None else None
        generator = torch.Generator().manual_seed(optimization.seed)  # batches, views and perturbations
        optimizer = SpsaGc(self.decoder.parameters(), parameters.schedule(), parameters.momentum,
                           parameters.perturbation_samples, parameters.spsa_variant, generator=generator)
        per_epoch = steps_per_authors_epoch(n_images, optimization.batch_size, drop_last=True)
        batch_size = min(optimization.batch_size, n_images)
        validation = self.validation_inputs(training_set)
        best = {"accuracy": -1.0, "epoch": 0, "state": None, "accuracies": []}
        history = TrainingHistory()
        for epoch in range(1, optimization.epochs + 1):
            order = torch.randperm(n_images, generator=generator)[: per_epoch * batch_size].to(device)
            chosen_views = torch.randint(n_views, (n_images,), generator=generator).to(device)
            total_loss = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            for batch in order.split(batch_size):
                batch_views = chosen_views[batch]
                images = views[batch.cpu(), batch_views.cpu()].to(device).float()
                batch_features, batch_labels = features[batch, batch_views], labels[batch]
                batch_weights = weights[batch] if weights is not None else None

                def closure() -> torch.Tensor:
                    nonlocal correct
                    logits = self(images, batch_features)
                    correct += (logits.argmax(dim=1) == batch_labels).sum()
                    return self.loss(logits, batch_labels, batch_weights)

                total_loss += optimizer.step(closure).losses.double().sum()
                history.steps += 1
            evaluations = 2 * parameters.perturbation_samples * per_epoch  # every perturbed query of the epoch
            history.epoch_losses.append(total_loss.item() / evaluations)
            history.epoch_accuracies.append(correct.item() / (evaluations * batch_size))
            self.raise_if_diverged(history, epoch, optimization)
            if validation is not None:
                accuracy = self.accuracy_on(*validation)
                best["accuracies"].append(accuracy)
                if accuracy >= best["accuracy"]:  # ties: the later epoch, as the training loop
                    best.update(accuracy=accuracy, epoch=epoch,
                                state={name: t.clone() for name, t in self.decoder.state_dict().items()})
            if on_epoch is not None:
                on_epoch(epoch, history.epoch_losses[-1], history.epoch_accuracies[-1])
        if best["state"] is not None:
            self.decoder.load_state_dict(best["state"])
            history.details.update(selected_epoch=best["epoch"], validation_accuracies=best["accuracies"])
        history.details.update(
            coordinator_encoder=self.encoder.record, encoder_feature_width=self.encoder.output_dim,
            decoder_stages=self.layout.stages, source_grid=list(self.layout.grid),
            trigger_width=self.layout.trigger_width,
            decoder_parameters=sum(p.numel() for p in self.decoder.parameters()),
            spsa_steps=optimizer.steps_taken, black_box_queries=2 * parameters.perturbation_samples * history.steps,
            last_gain=parameters.schedule().gain(max(optimizer.steps_taken, 1)))
        history.seconds = time.perf_counter() - started
        self.eval()
        return history

    def training_inputs(self, training_set) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(images (N, V, 3, H, W), labels (N,), sample weights or None), checked."""
        views, labels = training_set.view_inputs, training_set.labels.long()
        views = views.unsqueeze(1) if views.dim() == 4 else views
        if views.dim() != 5:
            raise ValueError(f"blackvip trains on images (N, V, 3, H, W); got inputs of shape {tuple(views.shape)}")
        if labels.shape[0] != views.shape[0] or views.shape[0] == 0:
            raise ValueError(f"blackvip: {views.shape[0]} training images but {labels.shape[0]} labels")
        check_labels(labels, len(self.classnames), "blackvip", "training")
        return views, labels, training_set.sample_weights

    def raise_if_diverged(self, history: TrainingHistory, epoch: int, optimization: OptimizationConfig) -> None:
        """NonFiniteTrainingError when the epoch's loss or the decoder is NaN or infinite (read once per epoch)."""
        finite = torch.stack([torch.isfinite(p).all() for p in self.decoder.parameters()]).all()
        if not math.isfinite(history.epoch_losses[-1]) or not bool(finite):
            raise NonFiniteTrainingError(
                f"{optimization.experiment or 'blackvip'}: the loss or the decoder became non-finite in epoch "
                f"{epoch}/{optimization.epochs} (step {history.steps}); training stopped and no checkpoint is "
                f"written. Lower spsa_a (the gain, {self.parameters_used.spsa_a:g}).")

    def validation_inputs(self, training_set) -> tuple[torch.Tensor, torch.Tensor] | None:
        validation = training_set.validation
        if validation is None or validation[0].shape[0] == 0:
            return None
        images = validation[0][:, 0] if validation[0].dim() == 5 else validation[0]
        labels = validation[1].long()
        check_labels(labels, len(self.classnames), "blackvip", "val")
        return images, labels

    @torch.no_grad()
    def accuracy_on(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
        """Top-1 accuracy in eval mode (BatchNorm's running statistics); the classifier is left in train mode."""
        self.eval()
        device = self.logit_scale.device
        correct = sum(int((self(images[s : s + batch_size].to(device)).argmax(dim=1).cpu()
                           == labels[s : s + batch_size]).sum()) for s in range(0, images.shape[0], batch_size))
        self.train()
        return correct / max(images.shape[0], 1)


register_method(
    MethodSpec(
        name="blackvip",
        parameters_type=BlackVIPParameters,
        build=BlackVIPClassifier,
        trains_prompts=True,
        frozen_image_encoder=False,
        hooks="image input of a black-box backbone (logits only): an additive, image-dependent prompt from a frozen "
              "encoder's feature and a learned trigger through a ConvTranspose decoder, trained by SPSA-GC",
        description="BlackVIP: a coordinator (frozen encoder + trigger + decoder) writes an additive visual prompt; "
                    "the backbone is queried for logits only and the decoder learns by zeroth-order SPSA-GC.",
        paper=Paper("Oh et al.", "BlackVIP: Black-Box Visual Prompting for Robust Transfer Learning", "CVPR 2023",
                    "https://arxiv.org/abs/2303.14773"),
        hook_points=("image input",),
        verification=tested_property(
            "No gradient ever reaches the backbone (queried under no_grad for logits only), the prompted image is "
            "x + eps * prompt clamped to the valid pixel range, and an SPSA estimate's mean is the gradient.",
            "tests/prompting/test_blackvip.py::test_no_gradient_ever_reaches_the_backbone"),
        selection="last",
        selection_note="As their trainer: the last epoch is kept (the best-val block is commented out).",
    )
)
