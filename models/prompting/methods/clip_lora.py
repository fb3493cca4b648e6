"""CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024): low-rank updates of the attention projections of both towers.

Hooks: the attention of every block (position "all") of both towers (encoder "both"; or "text", "vision"): the q, k
and v projections (params; "o" = the output projection) become x @ W.T + b + s * dropout(x) @ A.T @ B.T with rank
r = 2, s = alpha / sqrt(r) (their loralib's scaling, not LoRA's alpha / r), alpha = 1, dropout 0.25 on the update's
input only; A kaiming-uniform (a = sqrt 5), B = 0 (models/prompting/lora.py). Text: the dataset's first template
only ("a photo of a {}." in the authors' runs), encoded through the LoRA'd text tower at every step. Logits:
s * normalise(image) @ normalise(text).T. Loss: cross-entropy. The authors write the constant s = 100, which is the
learned temperature exp(logit_scale) of every OpenAI CLIP they ran; here s defaults to the backbone's own temperature
(the same 100 on those weights), because on a backbone trained at another temperature a fixed 100 sharpens the logits
and the loss: on the embedded tiny-clip (temperature 31.4) the loss at initialisation was 8.5 instead of about 1.5,
and training fell below zero-shot past one shot. `logit_scale: 100` restores the constant (the reference test).
Every block position is read from the tower's own depth (no per-backbone tables), and the learned state (the LoRA
tensors only) is not class-specific: it applies to new classes and other datasets.

The LoRA changes the image features, so the classifier takes images (frozen_image_encoder=False). Augmentation:
the authors draw a fresh RandomResizedCrop(0.08-1) + flip of every image at every iteration; here the training views
are the recipe's (TRAINING_VIEWS): 10 such crops + flips per image, drawn once (models.prompting.view_recipes), one
of them per image and epoch, so that the few-shot images repeat their views over the 500 x K iterations.

Gradients. With dropout_rate 0 the authors' LinearLoRA takes another path: it merges s * B @ A into the weight,
runs the layer, then subtracts it again through `.data`. The forward is the same, but the backward then multiplies
by the weight as modified later, so the gradients of LoRA tensors below another LoRA'd projection are wrong (by up
to 0.18, and 4.6 with q, k, v, o at rank 4, on the reference tiny CLIP). The reference (tests/data/
clip_lora_reference.*) stores the true gradients of its forward, and PromptLab computes the true ones at any
dropout rate (one unmerged path).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from models.prompting.deep_prompts import PromptedVisionTower, encode_text_with_deep_prompts
from models.prompting.lora import PROJECTIONS, LoRATransformer, check_rank, layer_indices, require_hookable_blocks
from models.prompting.methods.registry import (
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, matches_authors_code, register_method,
)
from models.prompting.prompt_assembly import encode_template_texts, require_prompts_fit
from models.prompting.text_passes import TextPassParameters, encode_in_passes
from models.prompting.view_recipes import ViewRecipe

ENCODERS = ("both", "text", "vision")
# The authors' augmentation (RandomResizedCrop scale 0.08-1, flip) as a fixed set of passes per image. The training
# set then holds 10 preprocessed views per image (6 MB per image at 224 px in fp32): for large training sets (ImageNet
# at 16 shots, 16,000 images) a grid entry's `views:` lowers the passes.
TRAINING_VIEWS = ViewRecipe(passes=10, crop_scale=(0.08, 1.0), flip=True)


@dataclass(frozen=True)
class CLIPLoRAParameters(TextPassParameters):
    # The authors' defaults (run_utils.py): every block of both towers, q, k, v, r 2, alpha 1, dropout 0.25.
    encoder: str = "both"  # which towers are LoRA'd: "both", "text", "vision"
    params: Sequence[str] = field(default_factory=lambda: ["q", "k", "v"])  # projections LoRA'd; "o": the output one
    position: str | tuple[int, ...] = "all"  # a named position (models.prompting.lora.NAMED_POSITIONS) or indices
    rank: int = 2  # r: A is (r, width), B (width, r); at most the projections' width
    alpha: float = 1.0  # scaling alpha / sqrt(rank)
    dropout_rate: float = 0.25  # on the LoRA input path only
    # null: the backbone's learned temperature exp(logit_scale), 100 on OpenAI's CLIP where the authors write 100
    logit_scale: float | None = None
    init_seed: int = 0  # A's initialisation, independent of the data seed

    def __post_init__(self) -> None:
        super().__post_init__()
        # Tuples, whether the catalog gave lists or not: the parameters stay hashable and comparable.
        params = (self.params,) if isinstance(self.params, str) else tuple(self.params)
        object.__setattr__(self, "params", params)
        if not isinstance(self.position, str):
            object.__setattr__(self, "position", tuple(self.position))
        if self.encoder not in ENCODERS:
            raise ValueError(f"clip_lora: encoder must be one of {ENCODERS}, got {self.encoder!r}")
        unknown = [name for name in params if name not in PROJECTIONS]
        if not params or unknown or len(set(params)) != len(params):
            raise ValueError(f"clip_lora: params must name distinct projections among {PROJECTIONS}, got {params!r}")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"clip_lora: rank must be an integer >= 1, got {self.rank!r}")
        if self.logit_scale is not None and (isinstance(self.logit_scale, bool) or not self.logit_scale > 0):
            raise ValueError(f"clip_lora: logit_scale must be a positive number or null, got {self.logit_scale!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"clip_lora: dropout_rate must be in [0, 1), got {self.dropout_rate!r}")


def _backbone_description(clip_model: nn.Module) -> str:
    visual = getattr(clip_model, "visual", None)
    return f"{type(clip_model).__name__} (image tower {type(visual).__name__})"


class CLIPLoRAClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext, parameters: CLIPLoRAParameters):
        clip_model = context.clip_model
        backbone = _backbone_description(clip_model)
        adapt_text = parameters.encoder in ("both", "text")
        adapt_vision = parameters.encoder in ("both", "vision")
        # Every check before any text encoding or allocation: towers, blocks, positions, rank against width.
        towers = {}
        if adapt_text:
            towers["text"] = (context.text_tower, "text tower")
        if adapt_vision:
            towers["vision"] = (getattr(clip_model, "visual", None), "image tower")
        selected = {}
        for key, (owner, tower) in towers.items():
            n_blocks = len(require_hookable_blocks(owner, tower, [], "clip_lora", backbone))
            layers = layer_indices(parameters.position, n_blocks, tower)
            blocks = require_hookable_blocks(owner, tower, layers, "clip_lora", backbone)
            check_rank(parameters.rank, blocks[layers[0]].attn.embed_dim, tower, "clip_lora")
            selected[key] = (blocks, layers)
        vision_tower = PromptedVisionTower(clip_model) if adapt_vision else None
        super().__init__(context)
        self.parameters_used = parameters
        if parameters.logit_scale is not None:  # else the frozen temperature PromptedClassifier registered
            self.logit_scale.fill_(parameters.logit_scale)
        self.vision_tower = vision_tower
        self.frozen_visual = None if adapt_vision else clip_model.visual
        template = context.templates[0]  # the authors encode the dataset's first template only
        prompts = [template.format(name) for name in context.classnames]
        require_prompts_fit(context.tokenizer, {name: [p] for name, p in zip(context.classnames, prompts)},
                            context.text_tower.context_length)
        device = context.text_tower.token_embedding.weight.device
        self.register_buffer("token_ids", context.tokenizer(prompts).to(device), persistent=False)
        frozen_text = None
        if not adapt_text:  # the frozen text tower's features of the same prompts, encoded once
            with torch.no_grad():
                frozen_text = encode_template_texts(context.text_tower, context.tokenizer, prompts).float()
        self.register_buffer("class_text_features", frozen_text)
        # Named as the authors' module tree (lora.transformer.resblocks.i.attn.q_proj.w_lora_A for the text tower,
        # lora.visual.transformer... for the image tower), text first as their apply_lora; seeded without touching
        # the global RNG, so building a classifier never shifts other random draws.
        self.lora = nn.Module()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(parameters.init_seed)
            lora_of = {key: LoRATransformer(blocks, layers, parameters.params, parameters.rank, parameters.alpha,
                                            parameters.dropout_rate) for key, (blocks, layers) in selected.items()}
        if adapt_text:
            self.lora.transformer = lora_of["text"]
        if adapt_vision:
            self.lora.visual = nn.Module()
            self.lora.visual.transformer = lora_of["vision"]

    def text_features(self) -> torch.Tensor:
        if self.class_text_features is not None:
            return self.class_text_features
        run_block = self.lora.transformer.run_block

        def encode_classes(start: int, stop: int) -> torch.Tensor:
            token_ids = self.token_ids[start:stop]
            return encode_text_with_deep_prompts(self.text_tower, self.text_tower.embed_tokens(token_ids), token_ids,
                                                 [], run_block=run_block)

        return encode_in_passes(encode_classes, self.token_ids.shape[0], self.parameters_used.text_chunk_size)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        if self.vision_tower is None:  # encoder "text": the image tower runs as it is (any kind, ResNets too)
            with torch.no_grad():
                return self.frozen_visual(images.to(next(self.frozen_visual.parameters()).dtype))
        no_prompts = images.new_zeros(0, self.vision_tower.width)
        return self.vision_tower(images, no_prompts, run_block=self.lora.visual.transformer.run_block)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of images (B, 3, H, W) at the scale (the backbone's temperature by default): both towers carry
        the LoRA updates."""
        return self.logits_from(self.image_features(images), self.text_features())


register_method(
    MethodSpec(
        name="clip_lora",
        parameters_type=CLIPLoRAParameters,
        build=CLIPLoRAClassifier,
        trains_prompts=True,
        frozen_image_encoder=False,
        hooks="both towers' attention: low-rank updates of the q, k, v projections of every block",
        description="CLIP-LoRA: LoRA (r 2, alpha/sqrt(r)) on q, k, v of every block of both towers; cosine logits "
                    "at the backbone's temperature (the authors' 100 on OpenAI CLIP), cross-entropy.",
        paper=Paper("Zanella & Ben Ayed", "Low-Rank Few-Shot Adaptation of Vision-Language Models", "CVPRW 2024",
                    "https://arxiv.org/abs/2405.18541"),
        hook_points=("text layers", "image layers"),
        verification=matches_authors_code(
            "tests/prompting/test_clip_lora_reference.py::test_logits_and_gradients_match_reference",
            "MaxZanella/CLIP-LoRA at 358f0d7",
            "Logits (scale 100) within 1e-6 relative or 1e-4 and the true gradient of every LoRA tensor within "
            "rounding, for q, k, v at rank 2 and q, k, v, o at rank 4."),
        training_views=TRAINING_VIEWS,
        selection="last",
        selection_note="The authors train a fixed 500 x K iterations and test the last iterate (VALIDATION = False).",
    )
)
