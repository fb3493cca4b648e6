"""VPT, IVLP and PromptSRC on the reference tiny CLIP: exact reductions to zero-shot CLIP, depth checks,
gradients on prompts only, PromptSRC's regularisers and Gaussian prompt aggregation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")
from safetensors.torch import load_file  # noqa: E402

from models.prompting.methods import get_method, parse_method_parameters  # noqa: E402
from models.prompting.methods.promptsrc import aggregate_prompt_states, gaussian_epoch_weights  # noqa: E402
from models.prompting.methods.registry import ClassifierContext  # noqa: E402
from models.prompting.text_tower import UnsupportedBackboneError  # noqa: E402
from models.prompting.training import OptimizationConfig, train_prompt_parameters  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
INPUTS_FILE = DATA / "coop_cocoop_reference.safetensors"
CLASSNAMES = ["golden retriever", "tabby cat", "sports car", "airliner", "red panda"]
TEMPLATES = ["a photo of a {}."]
PROMPTED_METHODS = ("vpt_deep", "vpt_shallow", "ivlp", "promptsrc")
# The tiny CLIP has 2 layers per tower, so the published depths (9, 12) are too deep for it.
SMALL_DEPTHS = {
    "vpt_deep": {"prompt_depth": 2},
    "vpt_shallow": {},
    "ivlp": {"text_prompt_depth": 2, "vision_prompt_depth": 2},
    "promptsrc": {"text_prompt_depth": 2, "vision_prompt_depth": 2},
}
NO_TOKENS = {
    "vpt_deep": {"n_tokens": 0},
    "vpt_shallow": {"n_tokens": 0},
    "ivlp": {"n_text_context": 0, "n_vision_tokens": 0},
    "promptsrc": {"n_text_context": 0, "n_vision_tokens": 0},
}

pytestmark = pytest.mark.skipif(not INPUTS_FILE.exists(), reason="reference inputs not vendored in tests/data")


@pytest.fixture(scope="module")
def inputs():
    stored = load_file(INPUTS_FILE)
    return stored["images"], stored["labels"].long()


def build(method, model, tokenizer, templates=TEMPLATES, **overrides):
    context = ClassifierContext(model, tokenizer, CLASSNAMES, templates=list(templates))
    return get_method(method).build(context, parse_method_parameters(method, overrides))


def zero_shot_logits(model, tokenizer, images, templates=TEMPLATES):
    classifier = build("zero_shot", model, tokenizer, templates)
    with torch.no_grad():
        return classifier(model.encode_image(images))


@pytest.mark.parametrize("method", PROMPTED_METHODS)
def test_registered_as_image_prompting_methods(method):
    spec = get_method(method)
    assert spec.trains_prompts and not spec.frozen_image_encoder


@pytest.mark.parametrize("method", PROMPTED_METHODS)
def test_zero_tokens_is_zero_shot_clip(reference_clip, inputs, method):
    model, tokenizer = reference_clip
    images, _ = inputs
    classifier = build(method, model, tokenizer, **SMALL_DEPTHS[method], **NO_TOKENS[method])
    with torch.no_grad():
        logits = classifier(images)
        expected = zero_shot_logits(model, tokenizer, images)
    assert torch.allclose(logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", PROMPTED_METHODS)
def test_default_tokens_change_the_logits(reference_clip, inputs, method):
    """The reduction above is not vacuous: with prompt tokens the logits move away from zero-shot CLIP."""
    model, tokenizer = reference_clip
    images, _ = inputs
    classifier = build(method, model, tokenizer, **SMALL_DEPTHS[method])
    with torch.no_grad():
        assert not torch.allclose(classifier(images), zero_shot_logits(model, tokenizer, images), atol=1e-4)


def test_vpt_text_side_is_the_template_ensemble(reference_clip, inputs):
    model, tokenizer = reference_clip
    images, _ = inputs
    templates = ["a photo of a {}.", "a blurry photo of a {}."]
    classifier = build("vpt_shallow", model, tokenizer, templates, n_tokens=0)
    with torch.no_grad():
        assert torch.allclose(classifier(images), zero_shot_logits(model, tokenizer, images, templates), atol=1e-5)


def test_ivlp_text_context_at_its_init_is_the_hand_crafted_prompt(reference_clip):
    """Learned text tokens start as the embeddings of "a photo of a": depth 1 gives plain encode_text."""
    model, tokenizer = reference_clip
    classifier = build("ivlp", model, tokenizer, n_text_context=4, text_prompt_depth=1, vision_prompt_depth=1)
    with torch.no_grad():
        plain = model.encode_text(tokenizer([f"a photo of a {name}." for name in CLASSNAMES]))
        assert torch.allclose(classifier.text_features(), plain, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "method, overrides, message",
    [
        ("vpt_deep", {"prompt_depth": 12}, "vision prompt_depth must be in 1..2"),
        ("vpt_deep", {}, "vision prompt_depth must be in 1..2"),  # the published depth 12 does not fit
        ("ivlp", {"text_prompt_depth": 3, "vision_prompt_depth": 2}, "text prompt_depth must be in 1..2"),
        ("promptsrc", {"text_prompt_depth": 2, "vision_prompt_depth": 0}, "vision prompt_depth must be in 1..2"),
    ],
)
def test_prompt_depth_is_validated_against_the_tower(reference_clip, method, overrides, message):
    model, tokenizer = reference_clip
    with pytest.raises(ValueError, match=message):
        build(method, model, tokenizer, **overrides)


def test_shallow_vpt_refuses_depth():
    with pytest.raises(ValueError, match="vpt_shallow prompts the input only"):
        parse_method_parameters("vpt_shallow", {"prompt_depth": 2})


@pytest.mark.parametrize("method", PROMPTED_METHODS)
def test_resnet_visual_tower_is_refused(reference_clip, method):
    model, tokenizer = reference_clip
    from open_clip.modified_resnet import ModifiedResNet

    resnet_model = open_clip.model.build_model_from_openai_state_dict(
        load_file(DATA / "tiny_clip_openai.safetensors"), quick_gelu=True, cast_dtype=None
    )
    resnet_model.visual = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=32, heads=1, image_size=32, width=8)
    with pytest.raises(UnsupportedBackboneError, match="ModifiedResNet.*ViT"):
        build(method, resnet_model, tokenizer, **SMALL_DEPTHS[method])


def test_the_pipeline_check_names_method_backbone_and_reason_before_any_work(reference_clip):
    """check_method_applies (called by the stages before training) refuses what cannot run, naming why."""
    from types import SimpleNamespace

    from open_clip.modified_resnet import ModifiedResNet

    from models.experiments import MethodNotApplicableError, check_method_applies

    model, tokenizer = reference_clip
    resnet_model = open_clip.model.build_model_from_openai_state_dict(
        load_file(DATA / "tiny_clip_openai.safetensors"), quick_gelu=True, cast_dtype=None
    )
    resnet_model.visual = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=32, heads=1, image_size=32, width=8)
    resnet = SimpleNamespace(model=resnet_model, tokenizer=tokenizer, spec=SimpleNamespace(name="toy-RN"))
    with pytest.raises(MethodNotApplicableError, match=r"maple cannot run on backbone 'toy-RN': .*ModifiedResNet.*ViT"):
        check_method_applies(resnet, "maple", {"prompt_depth": 2}, CLASSNAMES, TEMPLATES)
    check_method_applies(resnet, "coop", {}, CLASSNAMES, TEMPLATES)  # text prompts only: a ResNet is fine
    vit = SimpleNamespace(model=model, tokenizer=tokenizer, spec=SimpleNamespace(name="tiny"))
    with pytest.raises(MethodNotApplicableError, match=r"vpt_deep cannot run on backbone 'tiny': .*prompt_depth"):
        check_method_applies(vit, "vpt_deep", {}, CLASSNAMES, TEMPLATES)  # the published depth 12 > 2 layers


@pytest.mark.parametrize("method", PROMPTED_METHODS)
def test_gradients_reach_the_prompts_only(reference_clip, inputs, method):
    model, tokenizer = reference_clip
    images, labels = inputs
    classifier = build(method, model, tokenizer, **SMALL_DEPTHS[method])
    loss, _ = classifier.training_loss(images, labels)
    loss.backward()
    trainable = {name for name, p in classifier.named_parameters() if p.requires_grad}
    prompt_prefixes = ("vision_prompts.", "text_prompts.")
    assert trainable and all(name.startswith(prompt_prefixes) for name in trainable)
    assert set(classifier.trainable_state()) == trainable
    for name, parameter in classifier.named_parameters():
        if name in trainable:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name
    assert all(p.grad is None for p in model.parameters())


def test_promptsrc_regularisers_vanish_at_zero_effect_prompts(reference_clip, inputs):
    """Prompts that leave both towers unchanged: the text context at its "a photo of a" init, depth 1, no vision
    tokens. Then L1 and KL are 0 and the loss is the zero-shot cross-entropy."""
    model, tokenizer = reference_clip
    images, labels = inputs
    classifier = build(
        "promptsrc", model, tokenizer, n_text_context=4, n_vision_tokens=0, text_prompt_depth=1, vision_prompt_depth=1
    )
    text, image = classifier.text_features(), classifier.image_features(images)
    logits = classifier.logits_from(image, text)
    terms = classifier.regularisers(images, text, image, logits)
    assert set(terms) == {"text_l1", "image_l1", "logits_kl"}
    for name, value in terms.items():
        assert abs(value.item()) < 1e-6, name
    loss, _ = classifier.training_loss(images, labels)
    expected = F.cross_entropy(zero_shot_logits(model, tokenizer, images), labels)
    assert abs(loss.item() - expected.item()) < 1e-5


def test_promptsrc_loss_adds_the_weighted_regularisers(reference_clip, inputs):
    model, tokenizer = reference_clip
    images, labels = inputs
    classifier = build("promptsrc", model, tokenizer, **SMALL_DEPTHS["promptsrc"])
    with torch.no_grad():
        text, image = classifier.text_features(), classifier.image_features(images)
        logits = classifier.logits_from(image, text)
        terms = classifier.regularisers(images, text, image, logits)
        loss, _ = classifier.training_loss(images, labels)
        unregularised = build(
            "promptsrc", model, tokenizer, **SMALL_DEPTHS["promptsrc"],
            text_loss_weight=0.0, image_loss_weight=0.0, logits_kl_weight=0.0,
        ).training_loss(images, labels)[0]
    assert all(value.item() > 0 for value in terms.values())
    expected = F.cross_entropy(logits, labels) + 25.0 * terms["text_l1"] + 10.0 * terms["image_l1"] + terms["logits_kl"]
    assert abs(loss.item() - expected.item()) < 1e-5
    assert abs(unregularised.item() - F.cross_entropy(logits, labels).item()) < 1e-5


def test_promptsrc_published_defaults():
    parameters = parse_method_parameters("promptsrc", {})
    assert (parameters.n_text_context, parameters.n_vision_tokens) == (4, 4)
    assert (parameters.text_prompt_depth, parameters.vision_prompt_depth) == (9, 9)
    assert (parameters.text_loss_weight, parameters.image_loss_weight) == (25.0, 10.0)
    assert (parameters.aggregation_mean_epoch, parameters.aggregation_std_epochs) == (15.0, 1.0)


@pytest.mark.parametrize("n_epochs, mean_epoch, std_epochs", [(20, 15.0, 1.0), (5, 3.0, 2.0), (10, 1.0, 0.5)])
def test_gaussian_weights_sum_to_one_and_peak_at_the_mean(n_epochs, mean_epoch, std_epochs):
    weights = gaussian_epoch_weights(n_epochs, mean_epoch, std_epochs)
    assert weights.shape == (n_epochs,)
    assert abs(weights.sum().item() - 1.0) < 1e-12
    assert int(weights.argmax()) + 1 == mean_epoch  # epochs are numbered from 1
    # Symmetric around the mean: epochs equally far from it weigh the same.
    peak = int(mean_epoch) - 1
    if 0 <= peak - 1 and peak + 1 < n_epochs:
        assert torch.isclose(weights[peak - 1], weights[peak + 1])


def test_gaussian_weights_survive_a_mean_far_past_the_schedule():
    weights = gaussian_epoch_weights(2, 15.0, 1.0)  # the published mean on a 2-epoch micro run
    assert torch.isfinite(weights).all() and abs(weights.sum().item() - 1.0) < 1e-12
    assert weights[1] > weights[0]


def test_aggregate_prompt_states_is_the_weighted_sum():
    states = [{"a": torch.full((2, 3), float(epoch)), "b": torch.tensor([epoch, -epoch], dtype=torch.float32)}
              for epoch in (1, 2, 3)]
    weights = gaussian_epoch_weights(3, 2.0, 1.0)
    aggregated = aggregate_prompt_states(states, weights)
    assert torch.allclose(aggregated["a"], torch.full((2, 3), 2.0))  # symmetric weights around epoch 2
    assert torch.allclose(aggregated["b"], torch.tensor([2.0, -2.0]))
    assert aggregated["a"].dtype == torch.float32
    one_hot = aggregate_prompt_states(states, [0.0, 0.0, 1.0])
    assert torch.equal(one_hot["a"], states[2]["a"])
    with pytest.raises(ValueError, match="3 prompt states but 2 weights"):
        aggregate_prompt_states(states, [0.5, 0.5])
    with pytest.raises(ValueError, match="keys"):
        aggregate_prompt_states([states[0], {"a": states[1]["a"]}], [0.5, 0.5])


def test_aggregated_state_loads_into_the_classifier(reference_clip, inputs):
    model, tokenizer = reference_clip
    classifier = build("promptsrc", model, tokenizer, **SMALL_DEPTHS["promptsrc"])
    # trainable_state may alias the parameters on CPU, so keep a copy of the values before loading.
    state = {name: tensor.clone() for name, tensor in classifier.trainable_state().items()}
    shifted = {name: tensor + 1.0 for name, tensor in state.items()}
    aggregated = aggregate_prompt_states([state, shifted], [0.5, 0.5])
    classifier.load_state_dict(aggregated, strict=False)
    for name, tensor in classifier.trainable_state().items():
        assert torch.allclose(tensor, state[name] + 0.5)


@pytest.mark.parametrize("method", ("vpt_deep", "ivlp", "maple"))
def test_training_loop_learns_prompts_from_images(reference_clip, inputs, method):
    """The shared loop trains vision-prompt methods on images (N, V, 3, H, W): prompts move and loss falls."""
    model, tokenizer = reference_clip
    images, labels = inputs
    overrides = SMALL_DEPTHS.get(method, {"prompt_depth": 2})
    classifier = build(method, model, tokenizer, **overrides)
    before = {k: v.clone() for k, v in classifier.trainable_state().items()}
    views = torch.stack([images, images.flip(-1)], dim=1)
    history = train_prompt_parameters(classifier, views, labels,
                                      OptimizationConfig(epochs=6, batch_size=4, learning_rate=0.01, warmup_epochs=0))
    after = classifier.trainable_state()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert history.epoch_losses[-1] < history.epoch_losses[0]
    assert all(not p.requires_grad for name, p in model.named_parameters())  # the backbone stays frozen


def test_promptsrc_ends_training_on_the_gaussian_aggregate_of_its_epochs(reference_clip, inputs):
    model, tokenizer = reference_clip
    images, labels = inputs
    classifier = build("promptsrc", model, tokenizer, aggregation_mean_epoch=2.0, aggregation_std_epochs=1.0,
                       **SMALL_DEPTHS["promptsrc"])
    seen = []
    original_hook = classifier.on_epoch_end

    def record(epoch, n_epochs):
        original_hook(epoch, n_epochs)
        seen.append({k: v.clone() for k, v in classifier.trainable_state().items()})

    classifier.on_epoch_end = record
    train_prompt_parameters(classifier, images, labels,
                            OptimizationConfig(epochs=4, batch_size=4, learning_rate=0.01, warmup_epochs=0))
    expected = aggregate_prompt_states(seen, gaussian_epoch_weights(4, 2.0, 1.0))
    final = classifier.trainable_state()
    assert set(final) == set(expected)
    for name in final:
        torch.testing.assert_close(final[name], expected[name], rtol=0, atol=1e-6)
    # the aggregate is not simply the last epoch's prompts
    assert any(not torch.allclose(final[k], seen[-1][k]) for k in final)
