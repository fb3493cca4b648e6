"""R-AMT, regularized mask tuning (Zheng et al., ICCV 2023): binary masks on the frozen image tower's weights.

Hooks: the image tower's patch embedding (conv1.weight) and, in every block, the attention's in_proj_weight and
out_proj.weight (MASK_MLP False; mask_mlp adds mlp.c_fc / c_proj). Each gets a real-valued mask, initialised to
mask_init_scale = 1e-2 everywhere ('1s'), and the tower runs with W_eff = 1[m > 5e-3] * W, straight-through in the
backward (models/prompting/weight_masks.py: applied for the call only, the shared backbone is never modified). At
initialisation every mask is on, so the model is zero-shot CLIP. Text: frozen hand-crafted template features
(normalised template ensemble of the dataset's templates), logits at CLIP's logit scale.

Loss and update. loss_a = cross-entropy + mask_loss_weight * sum over the masks of ||m||_2 (the norm, not squared;
1e-4). Gradient dropout (GDR) regularises the update towards zero-shot CLIP: g_kl is the gradient of the soft
cross-entropy to the unmasked tower's zero-shot predictions, mean_b sum_c -softmax(zs / T) log_softmax(logits / T)
T^2 (T = 1; KL(zero-shot || model) plus a constant, the same gradient); per entry, with g_a the gradient of loss_a,
  P = (sign(g_a) (g_a + g_kl) / (|g_a| + |g_kl| + 1e-8) + 1) / 2,  keep = P > U,  U ~ uniform,
  g = ((1 - lambda) + lambda keep) g_a,
so an entry where the two gradients agree is always kept and one where they oppose is dropped with a probability
that grows with the KL gradient's share (lambda = GDR_LAMBDA: 1 drops it to 0, below 1 scales it by 1 - lambda). U
comes from a generator seeded with the training seed (`on_training_start`), on the masks' device: the same seed
draws the same numbers on the same device (CPU and CUDA generators draw different ones). Two backward passes per
step through models/prompting/gradient_mixing.py, from `backward_step`, the training loop's hook for a custom update.

Text-side heads (`text_head`), for the paper's compositions:
- "template": plain R-AMT, as above.
- "coop": CoOp's learned context (its parameters in `head_parameters`, CoOp's published defaults otherwise) trained
  jointly with the masks under the same loss; GDR shapes every trainable tensor (masks and context), the zero-shot
  teacher stays the hand-crafted template on the unmasked tower.
- "tip_adapter": R-AMT trained as "template"; then Tip-Adapter's cache is built on the masked image features of every
  training view (the mean of each image's passes) and its alpha and beta are searched on the val images' masked
  features (Tip-Adapter's parameters in `head_parameters`); prediction is Tip-Adapter's logits on masked features.
  The val images exist only under a selection policy other than `last` (Tip-Adapter's: `full_val`), which then also
  chooses the masks' epoch; under `last` the cache keeps Tip-Adapter's initial alpha and beta.
The paper reports "CoOp + R-AMT" and "Tip-Adapter + R-AMT" (16 shots, ViT-B/16) without saying how the two are
combined, and the authors' code has only plain R-AMT: both compositions are ours (joint training for a trained head,
a training-free cache on the trained masks for Tip-Adapter).

Defaults: configs/trainers/MASK/vit_b16.yaml (INIT '1s', SCALE 1e-2, THRESHOLD 5e-3, MASK_LOSS True, LOSS_WEIGHT
1e-4, MASK_MLP False, GDR True, GDR_LAMBDA 1, GDR_T 1, FUSE_ALPHA 1); Adam lr 8e-5, no weight decay, 30 epochs,
cosine, no warm-up, batch 32, random resized crop (0.5, 1) + flip (ImageNet: lr 3e-5, 10 epochs). Their README sets
GDR_LAMBDA 0.3 at 16 shots except on ImageNet, SUN397 and Food101 (1.0 there and at other shot counts).

Where the authors' code departs from the paper, or we from it:
- the paper's regulariser is written as the mask's L2 norm; the code's RegLoss is torch.norm(m, 2) of each flattened
  mask, summed, not squared: we follow the code;
- the paper describes g_kl as the gradient of KL(zero-shot || model); the code takes the soft cross-entropy (the
  same gradient) and applies GDR to every masked tensor, the regulariser's gradient included in g_a: as the code;
- their trainer only steps inside the GDR branch (with GDR False nothing is updated); with gradient_dropout False
  we step on g_a;
- FUSE_ALPHA (teacher = alpha zs + (1 - alpha) student, the student not detached) is 1 in every config: not offered;
- their U is drawn from the global RNG (torch.rand); ours from a seeded generator of its own;
- augmentation: a fresh crop per iteration there, here 10 cached crops + flips per image, one per epoch;
- their checkpoints store the binarised masks as bits; ours the real-valued masks (the binarised ones follow);
- ResNet image towers (their MaskModifiedResNet) are refused: only open_clip ViTs are hooked.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.prompting.feature_adapters import cache_keys_from_passes, zero_shot_text_weights
from models.prompting.gradient_mixing import apply_mixed_gradients
from models.prompting.lora import require_hookable_blocks
from models.prompting.methods.coop import CoOpClassifier
from models.prompting.methods.registry import (
    DASSL_LAST_EPOCH, ClassifierContext, MethodSpec, Paper, PromptedClassifier, matches_authors_code,
    parse_method_parameters, register_method,
)
from models.prompting.methods.tip_adapter import TipAdapterClassifier
from models.prompting.text_tower import UnsupportedBackboneError
from models.prompting.training import OptimizationConfig, TrainingHistory, train_prompt_parameters
from models.prompting.view_recipes import ViewRecipe
from models.prompting.weight_masks import WeightMasks

RAMT_CODE = "wuw2019/R-AMT at 07f8d2c"
TEXT_HEADS = ("template", "coop", "tip_adapter")
# The head methods whose parameters `head_parameters` holds.
HEAD_METHODS = {"coop": "coop", "tip_adapter": "tip_adapter"}
# MASK/vit_b16.yaml's INPUT: random resized crop (0.5, 1) and flip, as 10 cached passes per image (Tip-Adapter's
# recipe too, so both share the cached views).
TRAINING_VIEWS = ViewRecipe(passes=10, crop_scale=(0.5, 1.0), flip=True)
GDR_EPSILON = 1e-8


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class RAMTParameters:
    mask_init_scale: float = 1e-2  # MASK.SCALE, every mask entry's initial value (INIT '1s')
    mask_threshold: float = 5e-3  # MASK.THRESHOLD: an entry is on while its mask is above it; in (0, init scale)
    mask_mlp: bool = False  # MASK.MASK_MLP: also mask the blocks' MLP weights
    mask_loss_weight: float = 1e-4  # MASK.LOSS_WEIGHT (MASK_LOSS True; 0 turns the regulariser off)
    gradient_dropout: bool = True  # MASK.GDR
    gradient_dropout_lambda: float = 1.0  # MASK.GDR_LAMBDA; the README's 16-shot runs: 0.3 (not ImageNet/SUN/Food)
    kl_temperature: float = 1.0  # MASK.GDR_T
    text_head: str = "template"  # "template" (R-AMT), "coop" (CoOp + R-AMT), "tip_adapter" (Tip-Adapter + R-AMT)
    head_parameters: dict = field(default_factory=dict)  # the head method's parameters (coop's or tip_adapter's)

    def __post_init__(self) -> None:
        for name in ("mask_init_scale", "mask_threshold", "mask_loss_weight", "gradient_dropout_lambda",
                     "kl_temperature"):
            if not _number(getattr(self, name)):
                raise ValueError(f"ramt: {name} must be a finite number, got {getattr(self, name)!r}")
        if self.mask_init_scale <= 0:
            raise ValueError(f"ramt: mask_init_scale must be > 0, got {self.mask_init_scale!r}")
        if not 0 < self.mask_threshold < self.mask_init_scale:
            raise ValueError(f"ramt: mask_threshold must lie in (0, mask_init_scale = {self.mask_init_scale!r}) so "
                             f"that every weight starts switched on, got {self.mask_threshold!r}")
        if self.mask_loss_weight < 0:
            raise ValueError(f"ramt: mask_loss_weight must be >= 0, got {self.mask_loss_weight!r}")
        if not 0 <= self.gradient_dropout_lambda <= 1:
            raise ValueError(f"ramt: gradient_dropout_lambda must lie in [0, 1], got {self.gradient_dropout_lambda!r}")
        if self.kl_temperature <= 0:
            raise ValueError(f"ramt: kl_temperature must be > 0, got {self.kl_temperature!r}")
        if self.text_head not in TEXT_HEADS:
            raise ValueError(f"ramt: text_head must be one of {TEXT_HEADS}, got {self.text_head!r}")
        if not isinstance(self.head_parameters, dict):
            raise ValueError(f"ramt: head_parameters must be a mapping, got {self.head_parameters!r}")
        object.__setattr__(self, "head_parameters", dict(self.head_parameters))
        if self.text_head == "template" and self.head_parameters:
            raise ValueError(f"ramt: head_parameters apply to text_head coop or tip_adapter, not to the template "
                             f"head; got {self.head_parameters!r}")
        self.head_method_parameters()  # refuses what the head method refuses

    def head_method_parameters(self) -> Any:
        """The head method's parameters (its published defaults, overridden by head_parameters); None for template."""
        if self.text_head == "template":
            return None
        try:
            return parse_method_parameters(HEAD_METHODS[self.text_head], self.head_parameters)
        except (TypeError, ValueError) as error:
            raise ValueError(f"ramt: head_parameters: {error}") from error


def gradient_dropout(task_gradient: torch.Tensor, auxiliary_gradient: torch.Tensor, drop_lambda: float,
                     generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(applied gradient, keep probability P, keep decisions) of R-AMT's GDR for one tensor (module docstring); U is
    one uniform draw per entry from `generator`, on the gradient's device."""
    agreement = torch.sign(task_gradient) * (task_gradient + auxiliary_gradient)
    keep_probability = (agreement / (task_gradient.abs() + auxiliary_gradient.abs() + GDR_EPSILON) + 1) / 2
    uniform = torch.rand(task_gradient.shape, generator=generator, device=task_gradient.device,
                         dtype=task_gradient.dtype)
    keep = keep_probability > uniform
    applied = ((1.0 - drop_lambda) + drop_lambda * keep.to(task_gradient.dtype)) * task_gradient
    return applied, keep_probability, keep


def masked_weight_names(visual: nn.Module | None, mask_mlp: bool, backbone: str) -> list[str]:
    """The image tower's weights R-AMT masks, in the authors' parameter order: conv1, then per block the attention's
    in_proj_weight and out_proj.weight (and the MLP's c_fc, c_proj weights with mask_mlp)."""
    conv1 = getattr(visual, "conv1", None)
    if not isinstance(conv1, nn.Conv2d):
        raise UnsupportedBackboneError(f"ramt cannot hook the image tower of backbone {backbone}: "
                                       f"{type(visual).__name__} has no patch-embedding conv1 (a ViT image tower)")
    blocks = require_hookable_blocks(visual, "image tower", None, "ramt", backbone)
    names = ["conv1.weight"]
    for index, block in enumerate(blocks):
        prefix = f"transformer.resblocks.{index}"
        names += [f"{prefix}.attn.in_proj_weight", f"{prefix}.attn.out_proj.weight"]
        if mask_mlp:
            linear = [name for name in ("c_fc", "c_proj") if isinstance(getattr(block.mlp, name, None), nn.Linear)]
            if len(linear) != 2:
                raise UnsupportedBackboneError(f"ramt cannot mask the MLP of block {index} of backbone {backbone}: "
                                               "it has no c_fc / c_proj linear layers")
            names += [f"{prefix}.mlp.c_fc.weight", f"{prefix}.mlp.c_proj.weight"]
    return names


class RAMTClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext, parameters: RAMTParameters):
        clip_model = context.clip_model
        visual = getattr(clip_model, "visual", None)
        backbone = f"{type(clip_model).__name__} (image tower {type(visual).__name__})"
        weight_names = masked_weight_names(visual, parameters.mask_mlp, backbone)  # checked before any encoding
        super().__init__(context)
        self.parameters_used = parameters
        # Registered so that it moves with the classifier (as the prompted towers do); frozen, never modified.
        self.image_tower = visual
        self.masks = WeightMasks(visual, weight_names, parameters.mask_init_scale, parameters.mask_threshold)
        device = self.logit_scale.device
        # The hand-crafted classifier: the template head's text features and the zero-shot teacher's.
        self.register_buffer("zero_shot_text_features", zero_shot_text_weights(context).to(device))
        head_parameters = parameters.head_method_parameters()
        self.prompt_head = CoOpClassifier(context, head_parameters) if parameters.text_head == "coop" else None
        self.cache_head = (TipAdapterClassifier(context, head_parameters) if parameters.text_head == "tip_adapter"
                           else None)
        # Tip-Adapter + R-AMT trains the masks, then builds the cache on them: `fit` runs both.
        self.trained_by_gradient = self.cache_head is None
        self.dropout_seed = 0
        self.dropout_generator: torch.Generator | None = None

    # ---- forward
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Raw features (B, E) of the masked image tower."""
        return self.masks(images.to(self.masks.owner.conv1.weight.dtype))

    @torch.no_grad()
    def zero_shot_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Zero-shot CLIP's logits: the unmasked tower and the hand-crafted classifier (GDR's teacher)."""
        features = self.image_tower(images.to(self.image_tower.conv1.weight.dtype))
        return self.logits_from(features, self.zero_shot_text_features)

    def text_features(self) -> torch.Tensor:
        if self.prompt_head is not None:
            return self.prompt_head.text_features()
        return self.zero_shot_text_features

    def cache_ready(self) -> bool:
        return self.cache_head is not None and self.cache_head.cache_keys.shape[0] > 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.image_features(images)
        if self.cache_ready():  # Tip-Adapter + R-AMT after fitting: its logits on the masked features
            return self.cache_head(features)
        return self.logits_from(features, self.text_features())

    # ---- loss and update
    def mask_loss(self) -> torch.Tensor:
        return self.parameters_used.mask_loss_weight * self.masks.norm_sum()

    def knowledge_loss(self, logits: torch.Tensor, zero_shot_logits: torch.Tensor,
                       sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        """T^2 mean_b sum_c -softmax(zs / T) log_softmax(logits / T) (the authors' KLLoss at FUSE_ALPHA 1)."""
        temperature = self.parameters_used.kl_temperature
        teacher = F.softmax(zero_shot_logits.float() / temperature, dim=-1)
        per_sample = -(teacher * F.log_softmax(logits.float() / temperature, dim=-1)).sum(dim=-1) * temperature ** 2
        if sample_weights is None:
            return per_sample.mean()
        return (per_sample * sample_weights).sum() / sample_weights.sum()

    def loss_terms(self, images: torch.Tensor, labels: torch.Tensor, sample_weights: torch.Tensor | None = None,
                   ) -> dict[str, torch.Tensor]:
        """logits, zero-shot logits, cross-entropy, mask loss, task loss (their sum) and the GDR knowledge loss."""
        logits = self.logits_from(self.image_features(images), self.text_features())  # the trained head's
        zero_shot_logits = self.zero_shot_logits(images)
        cross_entropy = self.loss(logits.float(), labels, sample_weights)
        mask_loss = self.mask_loss()
        return {"logits": logits, "zero_shot_logits": zero_shot_logits, "cross_entropy": cross_entropy,
                "mask_loss": mask_loss, "task_loss": cross_entropy + mask_loss,
                "knowledge_loss": self.knowledge_loss(logits, zero_shot_logits, sample_weights)}

    def training_loss(self, images, labels, sample_weights=None):
        logits = self.logits_from(self.image_features(images), self.text_features())
        return self.loss(logits.float(), labels, sample_weights) + self.mask_loss(), logits

    def on_training_start(self, config: OptimizationConfig) -> None:
        self.seed_gradient_dropout(config.seed)

    def seed_gradient_dropout(self, seed: int) -> None:
        """Restart GDR's uniform draws from `seed`, on the masks' device."""
        self.dropout_seed = int(seed)
        device = next(self.masks.parameters()).device
        self.dropout_generator = torch.Generator(device=device).manual_seed(self.dropout_seed)

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if device.type == "meta":  # shapes only (the device-placement check): no numbers to draw
            return None
        if self.dropout_generator is None or self.dropout_generator.device != device:
            self.dropout_generator = torch.Generator(device=device).manual_seed(self.dropout_seed)
        return self.dropout_generator

    def backward_step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        sample_weights: torch.Tensor | None = None,
        forward_context: Callable[[], Any] = contextlib.nullcontext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.parameters_used.gradient_dropout:
            return super().backward_step(images, labels, sample_weights, forward_context)
        with forward_context():
            terms = self.loss_terms(images, labels, sample_weights)
        drop_lambda = self.parameters_used.gradient_dropout_lambda

        def drop(parameter, task_gradient, knowledge_gradient):
            if knowledge_gradient is None:
                return task_gradient
            generator = self._generator(task_gradient.device)
            return gradient_dropout(task_gradient, knowledge_gradient, drop_lambda, generator)[0]

        apply_mixed_gradients([p for p in self.parameters() if p.requires_grad], terms["task_loss"],
                              terms["knowledge_loss"], drop)
        return terms["task_loss"], terms["logits"]

    # ---- Tip-Adapter + R-AMT
    @torch.no_grad()
    def masked_features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Raw masked features (N, E) of images (N, 3, H, W), in eval mode, batch by batch."""
        device = self.logit_scale.device
        chunks = [self.image_features(images[start:start + batch_size].to(device)).float()
                  for start in range(0, images.shape[0], batch_size)]
        return torch.cat(chunks)

    def fit(self, training_set: Any, optimization: OptimizationConfig, on_epoch: Any = None) -> TrainingHistory:
        """Tip-Adapter + R-AMT: train the masks as R-AMT, then cache the masked features of every training view and
        search alpha and beta on the val images' masked features (Tip-Adapter's grid)."""
        if self.cache_head is None:
            raise NotImplementedError("ramt trains by gradient through the training loop unless text_head is "
                                      "tip_adapter")
        started = time.perf_counter()
        device = self.logit_scale.device
        validation = training_set.validation if training_set.selection != "last" else None
        history = train_prompt_parameters(self, training_set.view_inputs, training_set.labels, optimization,
                                          sample_weights=training_set.sample_weights, on_epoch=on_epoch, device=device,
                                          validation=validation)
        self.eval()
        views = training_set.view_inputs
        if views.dim() == 4:
            views = views.unsqueeze(1)
        features = self.masked_features(views.flatten(0, 1)).reshape(views.shape[0], views.shape[1], -1)
        self.cache_head.set_cache(cache_keys_from_passes(features), training_set.labels)
        val = training_set.validation
        val_features = None
        if val is not None and val[0].shape[0]:
            val_features = (self.masked_features(val[0]), val[1].long())
        choice = self.cache_head.choose_alpha_beta(val_features)
        history.details.update(self.cache_head.cache_record(features), **choice)
        history.seconds = time.perf_counter() - started
        return history

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = super().trainable_state()  # the masks (and CoOp's context)
        if self.cache_head is not None:
            state.update({f"cache_head.{name}": tensor for name, tensor in self.cache_head.trainable_state().items()})
        return state


register_method(
    MethodSpec(
        name="ramt",
        parameters_type=RAMTParameters,
        build=RAMTClassifier,
        trains_prompts=True,
        frozen_image_encoder=False,
        hooks="image tower weights: binary masks on the patch embedding and every block's attention projections; "
              "gradient dropout towards zero-shot CLIP",
        description="R-AMT: binary masks (straight-through, threshold 5e-3) on conv1 and the attention weights of the "
                    "image tower, cross-entropy + 1e-4 sum ||m||_2, gradient dropout against the zero-shot KL "
                    "gradient; text: hand-crafted template, CoOp context or Tip-Adapter's cache.",
        class_specific=lambda parameters: (
            parameters.text_head == "tip_adapter"
            or (parameters.text_head == "coop" and parameters.head_method_parameters().class_specific_context)),
        paper=Paper("Zheng et al.", "Regularized Mask Tuning: Uncovering Hidden Knowledge in Pre-trained "
                    "Vision-Language Models", "ICCV 2023", "https://arxiv.org/abs/2307.15049"),
        hook_points=("image input", "image layers", "gradient"),
        verification=matches_authors_code(
            "tests/prompting/test_ramt_reference.py::test_logits_losses_and_gradients_match_the_authors_code",
            RAMT_CODE,
            "Logits, zero-shot logits and every loss term within 1e-5; each mask's gradients of the cross-entropy, "
            "regulariser and KL, and the gradient-dropout update, within 1e-5 of their largest entry; P within 1e-5 "
            "where well conditioned and U drawn identically from the same seed, for two cases."),
        selection="last",
        selection_note=DASSL_LAST_EPOCH,
        training_views=TRAINING_VIEWS,
    )
)
