"""The precision policy (models.precision) and the autocast path of the training loop.

CI has no GPU, so the CUDA path's autocast is exercised with CPU bf16 autocast: every method that trains by gradient
takes training steps with its forward autocast (checked by a hook seeing bf16 activations), keeps fp32 trainable
parameters, moves them, and evaluates in fp32 afterwards. What only a GPU shows (device placement, speed) is
measured by `bench/` on one."""

from __future__ import annotations

import pytest
import torch

import models.prompting.training as training
from models.precision import Precision, compute_description, precision_for
from models.prompting.methods import METHODS, get_method, parse_method_parameters
from models.prompting.methods.registry import ClassifierContext
from models.prompting.training import OptimizationConfig, predict_probabilities, train_prompt_parameters

CLASSNAMES = ["red", "green", "blue"]
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
# closed-form and training-free methods (the linear probe, TFUP) have their own `fit`, not the gradient loop
GRADIENT_METHODS = sorted(name for name, spec in METHODS.items()
                          if spec.trains_prompts and getattr(spec.build, "trained_by_gradient", True))


def test_cpu_is_plain_fp32():
    for training_step in (True, False):
        precision = precision_for("cpu", training=training_step)
        assert precision.autocast_dtype is None and precision.name == "fp32"
    with precision_for("cpu", training=True).autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert compute_description("cpu") == "cpu fp32"


@pytest.mark.parametrize("bf16, training_name, encoding_name", [
    (True, "bf16-autocast", "bf16-autocast"),
    # fp16 without a gradient scaler would underflow small prompt gradients: training stays fp32 there.
    (False, "fp32", "fp16-autocast"),
])
def test_cuda_autocasts_in_bf16_where_supported(monkeypatch, bf16, training_name, encoding_name):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert precision_for("cuda", training=True).name == training_name
    assert precision_for("cuda:0", training=False).name == encoding_name
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Toy GPU")
    assert compute_description("cuda") == f"cuda Toy GPU (train {training_name}, encode {encoding_name})"


def test_autocast_context_runs_matmuls_in_its_dtype():
    a, b = torch.randn(4, 8), torch.randn(8, 2)
    with Precision("cpu", torch.bfloat16).autocast():
        assert (a @ b).dtype == torch.bfloat16
    with Precision("cpu", None).autocast():
        assert (a @ b).dtype == torch.float32


@pytest.fixture
def images_and_labels():
    generator = torch.Generator().manual_seed(0)
    colours = torch.eye(3) * 2 - 1
    images = torch.stack([colours[i % 3].view(3, 1, 1) + 0.3 * torch.randn(3, 32, 32, generator=generator)
                          for i in range(12)])
    return images, torch.arange(12) % 3


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_every_gradient_method_trains_under_autocast(monkeypatch, reference_clip, images_and_labels, method):
    model, tokenizer = reference_clip
    images, labels = images_and_labels
    spec = get_method(method)
    context = ClassifierContext(model, tokenizer, CLASSNAMES, templates=["a photo of a {}."])
    classifier = spec.build(context, parse_method_parameters(method, SMALL_DEPTHS.get(method, {})))
    if spec.frozen_image_encoder:
        with torch.no_grad():
            inputs = model.encode_image(images)
    else:
        inputs = images
    before = {name: p.detach().clone() for name, p in classifier.named_parameters() if p.requires_grad}

    seen_dtypes: list[torch.dtype] = []
    # The first MLP of each tower: every method runs one of them while training (VPT only the image tower), except
    # the feature-space methods (CLIP-Adapter, TaskRes), whose forward runs no tower: for those, autocast must be on.
    handles = [mlp.register_forward_hook(lambda module, args, output: seen_dtypes.append(output.dtype))
               for mlp in (model.transformer.resblocks[0].mlp.c_fc, model.visual.transformer.resblocks[0].mlp.c_fc)]
    autocast_in_forward: list[bool] = []
    handles.append(classifier.register_forward_pre_hook(
        lambda module, args: autocast_in_forward.append(torch.is_autocast_enabled("cpu"))))
    monkeypatch.setattr(training, "precision_for", lambda device, training: Precision("cpu", torch.bfloat16))
    try:
        history = train_prompt_parameters(classifier, inputs, labels,
                                          OptimizationConfig(epochs=2, batch_size=6, learning_rate=0.01, seed=1))
        if spec.hook_points == ("feature space",):
            assert autocast_in_forward and all(autocast_in_forward), "the training forward did not run under autocast"
        else:
            assert torch.bfloat16 in seen_dtypes, "the training forward did not run under autocast"
        seen_dtypes.clear()
        probabilities = predict_probabilities(classifier, inputs)
    finally:
        for handle in handles:
            handle.remove()

    assert all(torch.isfinite(torch.tensor(loss)) for loss in history.epoch_losses)
    assert torch.bfloat16 not in seen_dtypes  # prediction is fp32
    assert probabilities.dtype == torch.float32 and torch.allclose(probabilities.sum(1), torch.ones(12))
    moved = False
    for name, parameter in classifier.named_parameters():
        if name in before:
            assert parameter.dtype == torch.float32, f"{method}: {name} left fp32"
            assert torch.isfinite(parameter).all(), f"{method}: {name} is not finite"
            moved |= not torch.equal(parameter, before[name])
    assert moved, f"{method}: no trainable parameter moved"
