"""Trainable LayerNorms of a ViT image tower, without modifying the backbone.

A method that fine-tunes the image tower's pre-attention and pre-MLP LayerNorms (ln_1 and ln_2 of every block; MoCoOp's
FINETUNE_VIT_LN) holds its own copies of their weights and biases, in fp32, named as the tower's own parameters under
the holder (`transformer.resblocks.<i>.ln_1.weight`), and runs the tower's own forward with those copies in place of
the frozen ones (torch.func.functional_call): every other weight, the pooling and the projection stay the backbone's,
shared with every other method and never written. At initialisation the copies equal the backbone's, so the image
features are the frozen tower's exactly. `tower_norms` adds the tower's own LayerNorms (ln_pre, ln_post: NoLA tunes
every LayerNorm of the image tower), and `call` runs another module that holds the tower under a prefix (a prompted
tower's `visual.`) with the copies in place.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call

from models.prompting.text_tower import UnsupportedBackboneError

LAYER_NORMS = ("ln_1", "ln_2")


class VisionLayerNormTuning(nn.Module):
    def __init__(self, clip_model: nn.Module, who: str, tower_norms: tuple[str, ...] = ()):
        super().__init__()
        visual = getattr(clip_model, "visual", None)
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if blocks is None:
            raise UnsupportedBackboneError(
                f"{who} fine-tunes the LayerNorms of a ViT image tower's blocks; the image tower "
                f"{type(visual).__name__} has no transformer.resblocks")
        for index, block in enumerate(blocks):
            missing = [name for name in LAYER_NORMS if not isinstance(getattr(block, name, None), nn.LayerNorm)]
            if missing:
                raise UnsupportedBackboneError(
                    f"{who}: block {index} of the image tower ({type(block).__name__}) has no LayerNorm {missing}")
        missing = [name for name in tower_norms if not isinstance(getattr(visual, name, None), nn.LayerNorm)]
        if missing:
            raise UnsupportedBackboneError(f"{who}: the image tower ({type(visual).__name__}) has no LayerNorm {missing}")
        for name in tower_norms:
            norm = copy.deepcopy(getattr(visual, name)).float()
            norm.requires_grad_(True)
            setattr(self, name, norm)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList()
        for block in blocks:
            copies = nn.Module()
            for name in LAYER_NORMS:
                norm = copy.deepcopy(getattr(block, name)).float()
                norm.requires_grad_(True)
                setattr(copies, name, norm)
            self.transformer.resblocks.append(copies)
        # Held outside the module tree: the frozen tower is not part of this module's state or parameters.
        self._visual = [visual]

    @property
    def visual(self) -> nn.Module:
        return self._visual[0]

    def replaced_parameters(self) -> dict[str, torch.Tensor]:
        """The trainable copies under the tower's own names, in the tower's dtype (gradients reach the fp32 copies)."""
        frozen = dict(self.visual.named_parameters())
        return {name: parameter.to(frozen[name].dtype) for name, parameter in self.named_parameters()}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image features (B, E): the tower's own forward with the LayerNorm copies."""
        dtype = next(self.visual.parameters()).dtype
        return functional_call(self.visual, self.replaced_parameters(), (images.to(dtype),), strict=False)

    def call(self, module: nn.Module, prefix: str, *args):
        """module(*args) with the copies in place of the tower's LayerNorms, the tower being `module`'s submodule at
        `prefix` (e.g. "visual." in models.prompting.deep_prompts.PromptedVisionTower)."""
        replaced = {prefix + name: parameter for name, parameter in self.replaced_parameters().items()}
        return functional_call(module, replaced, args, strict=False)
