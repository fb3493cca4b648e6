"""Device placement without a GPU: every method is built, run forward and (if it learns by gradient) takes a loss
and backward step with the backbone and its inputs on PyTorch's `meta` device.

Meta tensors have no data, so this fails where CUDA would: a tensor a method creates on the CPU mid-forward meets
the model's tensors ("not on the expected device"), and reading a value back to the host (`.item()`, `.tolist()`,
a Python `if` on a tensor: a device-to-host sync per step on a GPU) raises. What it cannot show (speed, kernels,
autocast numerics on CUDA) is for `bench/` on a GPU machine."""

from __future__ import annotations

import pytest
import torch

from models.experiments import build_classifier
from models.prompting.methods import METHODS, get_method

# The reference tiny CLIP has 2 layers per tower: the published prompt depths are cut to fit it.
SMALL_DEPTHS = {
    "maple": {"prompt_depth": 2},
    "vpt_deep": {"prompt_depth": 2},
    "ivlp": {"text_prompt_depth": 2, "vision_prompt_depth": 2},
    "mvlpt_vpt": {"prompt_depth": 2},
    "mvlpt_ivlp": {"vision_prompt_depth": 2},
    "promptsrc": {"text_prompt_depth": 2, "vision_prompt_depth": 2},
    "apt": {"prompt_depth": 2},
    "restore": {"text_prompt_depth": 2, "vision_prompt_depth": 2},
    # MoCoOp reads its template groups from the dataset (datasets.yaml); here, the method parameter
    "mocoop": {"template_groups": {"templates": ["a photo of a {}.", "a {}.", "the {}."], "groups": [1, 2]}},
}
# Methods that draw augmented views of each training image on the CPU by design (GOPro: PIL AugMix, seeded per image,
# the same bits on any device) copy the batch to the host once per step; the rest of their step must keep to the
# device, so here the views are stood in by tensors on it.
AUGMENTS_ON_HOST = {"gopro"}


@pytest.fixture(scope="module")
def meta_clip(reference_clip):
    import copy

    model, tokenizer = reference_clip
    return copy.deepcopy(model).to("meta"), tokenizer


def off_device(module: torch.nn.Module) -> list[str]:
    return [f"{name} on {tensor.device}"
            for name, tensor in [*module.named_parameters(), *module.named_buffers()] if tensor.device.type != "meta"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_keeps_to_the_backbones_device_without_host_syncs(meta_clip, method):
    model, tokenizer = meta_clip
    spec = get_method(method)
    classifier = build_classifier(model, tokenizer, method, SMALL_DEPTHS.get(method, {}),
                                  ["red", "green blue", "tabby cat"], ["a photo of a {}."])
    assert off_device(classifier) == [], f"{method} holds tensors off the backbone's device"
    embed_dim = model.text_projection.shape[1]
    image_size = model.visual.image_size
    image_size = image_size if isinstance(image_size, int) else image_size[0]
    inputs = (torch.empty(4, embed_dim, device="meta") if spec.frozen_image_encoder
              else torch.empty(4, 3, image_size, image_size, device="meta"))
    with torch.no_grad():
        logits = classifier(inputs)
    assert logits.shape == (4, 3) and logits.device.type == "meta"
    if spec.trains_prompts and classifier.trained_by_gradient:
        classifier.train()
        if method in AUGMENTS_ON_HOST:
            classifier.augmented_views = lambda images: (torch.empty_like(images), torch.empty_like(images))
        loss, logits = classifier.backward_step(inputs, torch.zeros(4, dtype=torch.long, device="meta"))
        assert loss.device.type == "meta" and logits.shape == (4, 3)
        trainable = [p for p in classifier.parameters() if p.requires_grad]
        assert trainable and all(p.grad is not None and p.grad.device.type == "meta" for p in trainable)
