"""RESTORE on the reference tiny CLIP: frozen features and zero shift at its identity, the consistency term on a hand
case, the loss, what trains, bad input, and the shared loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

open_clip = pytest.importorskip("open_clip")
from safetensors.torch import load_file  # noqa: E402

from models.catalog import CatalogError  # noqa: E402
from models.catalog.grid import parse_methods  # noqa: E402
from models.prompting.methods import get_method, parse_method_parameters  # noqa: E402
from models.prompting.methods.registry import ClassifierContext  # noqa: E402
from models.prompting.methods.restore import shift_consistency  # noqa: E402
from models.prompting.training import OptimizationConfig, train_prompt_parameters  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
INPUTS_FILE = DATA / "coop_cocoop_reference.safetensors"
CLASSNAMES = ["golden retriever", "tabby cat", "sports car", "airliner", "red panda"]
TEMPLATES = ["a photo of a {}."]
SMALL = {"text_prompt_depth": 2, "vision_prompt_depth": 2}
IDENTITY = {"n_text_context": 4, "n_vision_tokens": 0, "text_prompt_depth": 1, "vision_prompt_depth": 1}

pytestmark = pytest.mark.skipif(not INPUTS_FILE.exists(), reason="reference inputs not vendored in tests/data")


@pytest.fixture(scope="module")
def inputs():
    stored = load_file(INPUTS_FILE)
    return stored["images"], stored["labels"].long()


def build(model, tokenizer, **overrides):
    context = ClassifierContext(model, tokenizer, CLASSNAMES, templates=list(TEMPLATES))
    return get_method("restore").build(context, parse_method_parameters("restore", overrides))


def test_frozen_features_and_zero_shift_at_the_identity(reference_clip, inputs):
    model, tokenizer = reference_clip
    images, labels = inputs
    classifier = build(model, tokenizer, **IDENTITY)
    with torch.no_grad():
        image, text = classifier.image_features(images), classifier.text_features()
        assert torch.allclose(image, model.encode_image(images), atol=1e-5, rtol=0)
        plain = model.encode_text(tokenizer([f"a photo of a {name}." for name in CLASSNAMES]))
        assert torch.allclose(text, plain, atol=1e-5, rtol=0)
        consistency = shift_consistency(image, classifier.frozen_image_features(images), text,
                                        classifier.frozen_text_features)
        assert consistency.item() < 1e-10
        loss, logits = classifier.training_loss(images, labels)
        zero_shot = get_method("zero_shot").build(
            ClassifierContext(model, tokenizer, CLASSNAMES, list(TEMPLATES)),
            parse_method_parameters("zero_shot", {}))(model.encode_image(images))
        assert torch.allclose(logits, zero_shot, atol=1e-4, rtol=0)
        assert abs(loss.item() - F.cross_entropy(zero_shot, labels).item()) < 1e-5
        # A trained adapter breaks the identity: the test above is not vacuous.
        classifier.image_surgery.up.weight.fill_(0.05)
        assert not torch.allclose(classifier.image_features(images), model.encode_image(images), atol=1e-3)


def test_consistency_term_on_a_hand_case():
    """Image shifts of norms 0 and sqrt(2) (mean 0.7071); text shift of norm 2 sin(30 deg) = 1 (mean 1)."""
    frozen_image = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    image = torch.tensor([[2.0, 0.0], [5.0, 0.0]])  # same direction; then 90 degrees: |(1, -1)| = sqrt 2
    frozen_text = torch.tensor([[1.0, 0.0]])
    text = torch.tensor([[0.5, 3 ** 0.5 / 2]])  # 60 degrees away: chord 2 sin(30 deg) = 1
    expected = ((0.0 + 2 ** 0.5) / 2 - 1.0) ** 2
    assert abs(shift_consistency(image, frozen_image, text, frozen_text).item() - expected) < 1e-6
    assert shift_consistency(image, frozen_image, image, frozen_image).item() == 0.0


def test_loss_is_cross_entropy_plus_weighted_consistency(reference_clip, inputs):
    model, tokenizer = reference_clip
    images, labels = inputs
    classifier = build(model, tokenizer, **SMALL, consistency_weight=3.0)
    with torch.no_grad():
        text, image = classifier.text_features(), classifier.image_features(images)
        logits = classifier.logits_from(image, text)
        term = shift_consistency(image, classifier.frozen_image_features(images), text,
                                 classifier.frozen_text_features)
        loss, _ = classifier.training_loss(images, labels)
    assert term.item() > 0
    assert abs(loss.item() - (F.cross_entropy(logits, labels) + 3.0 * term).item()) < 1e-5


def test_gradients_reach_prompts_and_adapters_only(reference_clip, inputs):
    model, tokenizer = reference_clip
    images, labels = inputs
    classifier = build(model, tokenizer, **SMALL)
    classifier.training_loss(images, labels)[0].backward()
    trainable = {name for name, p in classifier.named_parameters() if p.requires_grad}
    assert trainable == set(classifier.trainable_state())
    assert {name.split(".")[0] for name in trainable} == {"text_prompts", "vision_prompts", "image_surgery",
                                                          "text_surgery"}
    for name, parameter in classifier.named_parameters():
        if parameter.requires_grad and not name.endswith("down.weight"):  # down's gradient waits for up to move
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("overrides, message", [
    ({"vision_prompt_depth": 3}, "vision prompt_depth must be in 1..2"),
    ({"text_prompt_depth": 3}, "text prompt_depth must be in 1..2"),
    ({"adapter_reduction": 10 ** 6}, r"restore: adapter_reduction 1000000 leaves no hidden unit"),
])
def test_depth_beyond_the_tower_and_a_rank_zero_adapter_are_refused(reference_clip, overrides, message):
    model, tokenizer = reference_clip
    with pytest.raises(ValueError, match=message):
        build(model, tokenizer, **{**SMALL, **overrides})


@pytest.mark.parametrize("overrides, message", [
    ({"n_text_context": 0, "n_vision_tokens": 0}, r"restore: n_text_context and n_vision_tokens are both 0"),
    ({"adapter_reduction": 0}, r"restore: adapter_reduction must be an integer >= 1"),
    ({"consistency_weight": -1.0}, r"restore: consistency_weight must be a number >= 0"),
])
def test_bad_parameters_are_refused_when_the_catalog_loads(tmp_path, overrides, message):
    methods_file = tmp_path / "methods.yaml"
    methods_file.write_text(yaml.safe_dump({"methods": {"restore": {"parameters": overrides}}}))
    with pytest.raises(CatalogError, match=r"methods.yaml: methods.restore: " + message):
        parse_methods(methods_file)


def test_training_loop_trains_restore_from_images(reference_clip, inputs):
    model, tokenizer = reference_clip
    images, labels = inputs
    classifier = build(model, tokenizer, **SMALL)
    before = {k: v.clone() for k, v in classifier.trainable_state().items()}
    history = train_prompt_parameters(classifier, images, labels,
                                      OptimizationConfig(epochs=2, batch_size=4, learning_rate=0.01, warmup_epochs=0))
    after = classifier.trainable_state()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert "image_surgery.up.weight" in moved and "text_surgery.up.weight" in moved
    assert any(k.startswith("vision_prompts.") for k in moved) and any(k.startswith("text_prompts.") for k in moved)
    assert all(torch.isfinite(torch.tensor(loss)) for loss in history.epoch_losses)
    assert all(not p.requires_grad for p in model.parameters())
