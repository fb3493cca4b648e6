"""CoCoOp reproduces the authors' code on the reference tiny CLIP, and its batched forward is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")
from safetensors.torch import load_file  # noqa: E402

from models.prompting.methods import get_method, parse_method_parameters  # noqa: E402
from models.prompting.methods.registry import ClassifierContext  # noqa: E402
from models.prompting.training import OptimizationConfig, train_prompt_parameters  # noqa: E402
from tests.prompting.reference_tolerance import assert_gradient_matches  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
CASES_FILE = DATA / "coop_cocoop_reference.json"
TENSORS_FILE = DATA / "coop_cocoop_reference.safetensors"

pytestmark = pytest.mark.skipif(
    not (CASES_FILE.exists() and TENSORS_FILE.exists()), reason="reference cases not vendored in tests/data"
)


@pytest.fixture(scope="module")
def reference(reference_clip):
    model, tokenizer = reference_clip
    tensors = load_file(TENSORS_FILE)
    spec = json.loads(CASES_FILE.read_text())
    classnames = [name.replace("_", " ") for name in spec["classnames"]]
    with torch.no_grad():
        image_features = model.encode_image(tensors["images"])
    return model, tokenizer, tensors, spec["cases"]["cocoop"], classnames, image_features


def build_cocoop(reference, **overrides):
    model, tokenizer, _, case, classnames, _ = reference
    parameters = parse_method_parameters("cocoop", {"n_context": case["n_ctx"], "context_init": case["ctx_init"],
                                                    **overrides})
    context = ClassifierContext(model, tokenizer, classnames, templates=["a photo of a {}."])
    return get_method("cocoop").build(context, parameters)


def load_reference_parameters(classifier, tensors) -> None:
    """The original's names (prompt_learner.ctx, meta_net.linear{1,2}.*) mapped onto ours."""
    state = {"context": tensors["cocoop.ctx"]}
    state.update({name[len("cocoop."):]: value for name, value in tensors.items()
                  if name.startswith("cocoop.meta_net.")})
    missing, unexpected = classifier.load_state_dict(state, strict=False)
    assert not unexpected and not set(classifier.trainable_state()) & set(missing)


def test_registered_with_published_defaults():
    spec = get_method("cocoop")
    assert spec.trains_prompts and spec.frozen_image_encoder
    defaults = spec.parameters_type()
    assert (defaults.n_context, defaults.context_init, defaults.meta_net_reduction) == (4, "a photo of a", 16)


def test_meta_net_widths_are_read_from_the_model(reference):
    classifier = build_cocoop(reference)
    # Tiny model: image feature dim 32 (hidden 32 // 16 = 2), text width 64.
    assert classifier.meta_net.linear1.weight.shape == (2, 32)
    assert classifier.meta_net.linear2.weight.shape == (64, 2)
    assert set(classifier.trainable_state()) == {
        "context", "meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight",
        "meta_net.linear2.bias",
    }


def test_logits_and_gradients_match_reference(reference):
    _, _, tensors, case, _, image_features = reference
    classifier = build_cocoop(reference)
    load_reference_parameters(classifier, tensors)
    classifier.eval()
    logits = classifier(image_features)
    assert torch.allclose(logits, tensors["cocoop.logits"], atol=1e-5, rtol=0)
    loss = F.cross_entropy(logits, tensors["labels"].long())
    loss.backward()
    assert abs(loss.item() - case["loss"]) < 1e-5
    assert_gradient_matches(classifier.context.grad, tensors["cocoop.ctx_grad"], "context")
    for name, parameter in classifier.meta_net.named_parameters():
        assert_gradient_matches(parameter.grad, tensors[f"cocoop.meta_net_grad.{name}"], name)


def test_meta_net_shift_changes_the_logits(reference):
    """Guards the test above against passing with the meta-net ignored: zeroing its output changes logits."""
    _, _, tensors, _, _, image_features = reference
    classifier = build_cocoop(reference)
    load_reference_parameters(classifier, tensors)
    with torch.no_grad():
        classifier.meta_net.linear2.weight.zero_()
        classifier.meta_net.linear2.bias.zero_()
        unconditioned = classifier(image_features)
    assert (unconditioned - tensors["cocoop.logits"]).abs().max() > 1e-3


def test_batched_forward_equals_one_pass_per_image(reference):
    _, _, tensors, _, _, image_features = reference
    classifier = build_cocoop(reference)
    load_reference_parameters(classifier, tensors)
    with torch.no_grad():
        batched = classifier(image_features)
        per_image = torch.cat([classifier(image_features[index : index + 1]) for index in range(len(image_features))])
    assert torch.allclose(batched, per_image, atol=1e-5, rtol=0)


def test_chunked_text_passes_equal_one_pass(reference):
    _, _, tensors, _, _, image_features = reference
    labels = tensors["labels"].long()
    results = {}
    # 6 images x 5 classes = 30 prompts: chunks of 3 and 7 straddle image boundaries, 30 is a single pass; the
    # chunked passes are recomputed in the backward (activation checkpointing).
    for chunk in (30, 7, 3):
        classifier = build_cocoop(reference, text_chunk_size=chunk)
        load_reference_parameters(classifier, tensors)
        logits = classifier(image_features)
        F.cross_entropy(logits, labels).backward()
        results[chunk] = (logits.detach(), classifier.context.grad.clone(), classifier.meta_net.linear1.weight.grad)
    for chunk in (7, 3):
        for single, chunked in zip(results[30], results[chunk]):
            assert torch.allclose(single, chunked, atol=1e-5, rtol=0)
    assert torch.allclose(results[3][0], tensors["cocoop.logits"], atol=1e-5, rtol=0)


def test_trains_with_the_shared_feature_loop(reference, toy_features):
    features, labels = toy_features
    model, tokenizer, *_ = reference
    context = ClassifierContext(model, tokenizer, ["red", "green", "blue"], templates=["a photo of a {}."])
    classifier = get_method("cocoop").build(context, parse_method_parameters("cocoop", {"text_chunk_size": 8}))
    initial = {name: value.clone() for name, value in classifier.trainable_state().items()}
    config = OptimizationConfig(epochs=3, batch_size=4, learning_rate=0.02, warmup_epochs=0)
    history = train_prompt_parameters(classifier, features, labels, config)
    assert history.steps == 3 * 6
    assert all(torch.isfinite(torch.tensor(history.epoch_losses)))
    trained = classifier.trainable_state()
    assert all(not torch.equal(initial[name], trained[name]) for name in initial), "every parameter should learn"
