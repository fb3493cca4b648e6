"""Visual Prompt Tuning (Jia et al., ECCV 2022) on CLIP, as the base-to-new baseline of IVLP/PromptSRC.

Hooks: vision tower only. n learned tokens are appended to the image token sequence (shallow VPT: input only,
prompt_depth 1); deep VPT replaces them with fresh learned tokens before each of layers 1..J-1 (J = prompt depth).
Text: the dataset's hand-crafted templates, encoded once (frozen zero-shot text features). Loss: cross-entropy.

The vision prompts change the image features, so the classifier takes images (frozen_image_encoder=False).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.prompting.deep_prompts import IndependentLayerPrompts, PromptedVisionTower, check_prompt_depth
from models.prompting.methods.registry import (
    DASSL_LAST_EPOCH,
    ClassifierContext, MethodSpec, Paper, PromptedClassifier, register_method, tested_property,
)


@dataclass(frozen=True)
class VPTParameters:
    n_tokens: int = 8  # visual prompt tokens per prompted layer; 0 is zero-shot CLIP
    prompt_depth: int = 12  # J: input + layers 1..J-1; must not exceed the vision tower's layer count
    init_std: float = 0.02
    init_seed: int = 0  # prompt initialisation, independent of the data seed


@dataclass(frozen=True)
class VPTShallowParameters(VPTParameters):
    prompt_depth: int = 1

    def __post_init__(self) -> None:
        if self.prompt_depth != 1:
            raise ValueError("vpt_shallow prompts the input only (prompt_depth 1); use vpt_deep for deeper prompts")


class VPTClassifier(PromptedClassifier):
    def __init__(self, context: ClassifierContext, parameters: VPTParameters):
        # Checked first so a non-ViT backbone or an impossible depth fails before any text encoding.
        vision_tower = PromptedVisionTower(context.clip_model)
        check_prompt_depth(parameters.prompt_depth, vision_tower.n_layers, "vision")
        super().__init__(context)
        self.parameters_used = parameters
        self.vision_tower = vision_tower
        self.register_buffer(
            "class_text_features",
            context.template_ensemble(),
        )
        device = vision_tower.visual.positional_embedding.device
        # Seeded without touching the global RNG, so building a classifier never shifts other random draws.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(parameters.init_seed)
            self.vision_prompts = IndependentLayerPrompts(
                parameters.n_tokens, vision_tower.width, parameters.prompt_depth, parameters.init_std
            ).to(device)

    def text_features(self) -> torch.Tensor:
        return self.class_text_features

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.vision_tower(images, self.vision_prompts.input_prompt, list(self.vision_prompts.layer_prompts))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of images (B, 3, H, W) against the frozen hand-crafted text features."""
        return self.logits_from(self.image_features(images), self.text_features())


for _name, _parameters, _hooks, _hook_points in (
    ("vpt_deep", VPTParameters, "vision tower: learned tokens appended to the image tokens, fresh ones per layer",
     ("image input", "image layers")),
    ("vpt_shallow", VPTShallowParameters, "vision tower input: learned tokens appended to the image tokens",
     ("image input",)),
):
    register_method(
        MethodSpec(
            name=_name,
            parameters_type=_parameters,
            build=VPTClassifier,
            trains_prompts=True,
            frozen_image_encoder=False,
            hooks=_hooks,
            description=f"VPT ({_name.split('_')[1]}): visual prompt tokens, hand-crafted text prompts, cross-entropy.",
            paper=Paper("Jia et al.", "Visual Prompt Tuning", "ECCV 2022", "https://arxiv.org/abs/2203.12119"),
            hook_points=_hook_points,
            selection_note=DASSL_LAST_EPOCH,
            verification=tested_property(
                "With zero prompt tokens its logits equal zero-shot CLIP's.",
                "tests/prompting/test_vision_prompt_methods.py::test_zero_tokens_is_zero_shot_clip"),
        )
    )
