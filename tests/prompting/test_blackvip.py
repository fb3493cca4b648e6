"""BlackVIP (models/prompting/methods/blackvip.py) and its zeroth-order optimiser (models/prompting/zeroth_order.py).

No reference tensors exist for BlackVIP (its MAE coordinator is not available offline), so its defining properties
are tested: the SPSA estimate is unbiased and the published schedule is a_k = a/(k+o)^alpha, c_k = c/k^gamma; the
backbone is only queried for logits, never differentiated; the prompt is additive and clamped to the pixel range;
the coordinator's encoder is frozen; SPSA-GC lowers the loss; a seed repeats a run; and an encoder that is not on
this machine is refused before training.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from models.backbones.loader import BackboneUnavailableError
from models.catalog import CatalogError, load_catalog
from models.experiments.checkpoints import load_prompt_checkpoint, save_prompt_checkpoint
from models.experiments import build_classifier
from models.experiments.training import train_prompts
from models.experiments.training_sets import TrainingSet
from models.prompting.methods import parse_method_parameters
from models.prompting.methods.blackvip import DecoderLayout, PromptDecoder, decoder_layout
from models.prompting.training import OptimizationConfig, predict_logits
from models.prompting.zeroth_order import SpsaGc, SpsaSchedule, segmented_uniform_perturbation, spsa_gradient

from tests.catalog.catalog_editing import catalog_copy, edit  # noqa: F401 (fixture)
from tests.prompting.conftest import REFERENCE_MODEL

CLASSNAMES = ["red", "green", "blue"]
TEMPLATES = ["a photo of a {}."]


def toy_images(per_class: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    images = [colour.view(3, 1, 1) + 0.3 * torch.randn(3, 32, 32, generator=generator)
              for colour in colours for _ in range(per_class)]
    # clamped into the valid pixel range of every channel (CLIP's mean and std), as preprocessed photos are
    return torch.stack(images).clamp(-1.4, 1.9), torch.arange(3).repeat_interleave(per_class)


def blackvip(reference_clip, **parameters):
    model, tokenizer = reference_clip
    return build_classifier(copy.deepcopy(model), tokenizer, "blackvip", parameters, CLASSNAMES, TEMPLATES)


def mean_loss(classifier, images, labels) -> float:
    return float(F.cross_entropy(predict_logits(classifier, images), labels))


# ---------------------------------------------------------------------------------------------- the optimiser
def test_spsa_estimate_averages_to_the_gradient_of_a_quadratic():
    generator = torch.Generator().manual_seed(0)
    curvature = torch.tensor([[3.0, 0.5, 0.0, 0.2], [0.5, 2.0, 0.3, 0.0], [0.0, 0.3, 1.0, 0.1], [0.2, 0.0, 0.1, 4.0]],
                             dtype=torch.float64)
    optimum = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=torch.float64)
    weights = torch.tensor([1.0, 0.5, -0.5, -0.3], dtype=torch.float64)

    def loss_at(w):
        return 0.5 * (w - optimum) @ curvature @ (w - optimum)

    gradient = curvature @ (weights - optimum)
    estimates = torch.stack([spsa_gradient(loss_at, weights, 0.01, 1, generator)[0] for _ in range(20000)])
    standard_error = estimates.std(dim=0) / math.sqrt(estimates.shape[0])
    # unbiased: within 4.5 standard errors
    assert ((estimates.mean(dim=0) - gradient).abs() < 4.5 * standard_error).all(), (
        estimates.mean(dim=0), gradient, standard_error)
    # and the test would see a biased estimator: multiplying by d instead of dividing gives E[d^2] g = 7/12 g, a bias
    # of 5/12 |g|, here more than twice the tolerance
    assert (2 * 4.5 * standard_error < 5 / 12 * gradient.abs()).all()
    # several samples average single estimates: the mean of 5 is the mean of the 5 single ones with the same draws
    five, _ = spsa_gradient(loss_at, weights, 0.01, 5, torch.Generator().manual_seed(3))
    single = torch.Generator().manual_seed(3)
    assert torch.allclose(five, torch.stack([spsa_gradient(loss_at, weights, 0.01, 1, single)[0]
                                             for _ in range(5)]).mean(dim=0))


def test_perturbations_are_a_random_sign_times_a_uniform_magnitude_in_half_to_one():
    draws = segmented_uniform_perturbation(200_000, torch.Generator().manual_seed(0))
    magnitude = draws.abs()
    assert magnitude.min() >= 0.5 and magnitude.max() <= 1.0
    assert abs(float((draws > 0).float().mean()) - 0.5) < 0.005
    assert abs(float(magnitude.mean()) - 0.75) < 0.002  # U[0.5, 1]: mean 0.75
    assert abs(float((magnitude < 0.625).float().mean()) - 0.25) < 0.005  # and uniform: a quarter below 0.625
    assert torch.equal(draws, segmented_uniform_perturbation(200_000, torch.Generator().manual_seed(0)))


def test_published_schedule_constants():
    schedule = parse_method_parameters("blackvip", {}).schedule()
    assert schedule == SpsaSchedule(a=0.01, c=0.01, offset=1.0, alpha=0.4, gamma=0.1)  # [o, c, a, alpha, gamma]
    assert schedule.gain(1) == pytest.approx(0.01 / 2 ** 0.4, rel=1e-12)
    assert schedule.gain(100) == pytest.approx(0.01 / 101 ** 0.4, rel=1e-12)
    assert schedule.perturbation_size(1) == pytest.approx(0.01, rel=1e-12)
    assert schedule.perturbation_size(100) == pytest.approx(0.01 / 100 ** 0.1, rel=1e-12)
    parameters = parse_method_parameters("blackvip", {})
    assert (parameters.momentum, parameters.perturbation_samples, parameters.spsa_variant) == (0.9, 5, "spsa-gc")


def test_spsa_gc_steps_with_momentum_and_the_correction_g_plus_beta_m():
    # A linear loss 3w in one dimension: every SPSA estimate is exactly 3, whatever the perturbation.
    weight = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    schedule = SpsaSchedule()
    optimizer = SpsaGc([weight], schedule, momentum=0.9, samples=5, seed=0)
    closure = lambda: 3 * weight.sum()  # noqa: E731
    first = optimizer.step(closure)
    assert first.step == 1 and first.losses.shape == (10,)
    # m_1 = g, so the first step moves by a_1 (g + 0.9 g)
    assert weight.item() == pytest.approx(2.0 - schedule.gain(1) * 3 * 1.9, rel=1e-12)
    optimizer.step(closure)
    momentum = 0.9 * 3 + 3
    assert weight.item() == pytest.approx(2.0 - schedule.gain(1) * 5.7 - schedule.gain(2) * (3 + 0.9 * momentum),
                                          rel=1e-12)
    plain = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    SpsaGc([plain], schedule, samples=1, variant="spsa", seed=0).step(lambda: 3 * plain.sum())
    assert plain.item() == pytest.approx(2.0 - schedule.gain(1) * 3, rel=1e-12)


# ---------------------------------------------------------------------------------------------- the decoder
def test_decoder_layout_is_derived_from_the_image_size_and_the_feature_width():
    theirs = decoder_layout((224, 224), 768, 32)  # MAE's 768-wide CLS: their SRC_DIM 1568 = 32 x 7 x 7
    assert theirs == DecoderLayout(stages=5, grid=(7, 7), source_channels=32, trigger_width=800)
    decoder = PromptDecoder(theirs)
    # their DecoderManual's parameters: trigger 800, then per stage (2x2 grouped weight + bias, 1x1, BatchNorm)
    assert sum(p.numel() for p in decoder.parameters()) == 800 + 320 + 4096 + 128 + 320 + 2048 + 64 + 160 + 1024 \
        + 64 + 160 + 512 + 32 + 192
    assert decoder(torch.zeros(2, 768)).shape == (2, 3, 224, 224)
    assert decoder_layout((224, 224), 512, 32).trigger_width == 1056  # ViT-B/16's own 512-wide embedding
    for size, width, expected in (((32, 32), 64, (4, (2, 2), 64)), ((32, 32), 32, (4, (2, 2), 96)),
                                  ((336, 336), 768, (4, (21, 21), 13344))):
        layout = decoder_layout(size, width, 32)
        assert (layout.stages, layout.grid, layout.trigger_width) == expected
        assert PromptDecoder(layout)(torch.zeros(1, width)).shape == (1, 3, *size)
    with pytest.raises(ValueError, match="33 x 33"):
        decoder_layout((33, 33), 64, 32)


# ---------------------------------------------------------------------------------------------- the black box
def test_no_gradient_ever_reaches_the_backbone(reference_clip):
    classifier = blackvip(reference_clip)
    backbone = classifier.black_box.clip_model
    calls = []

    def refuse_autograd(module, inputs):
        calls.append(type(module).__name__)
        if torch.is_grad_enabled():
            raise AssertionError(f"{type(module).__name__} of the backbone ran with autograd enabled")

    def refuse_backward(module, grad_input, grad_output):
        raise AssertionError(f"a gradient reached {type(module).__name__} of the backbone")

    for module in backbone.modules():
        module.register_forward_pre_hook(refuse_autograd)
        module.register_full_backward_hook(refuse_backward)
    images, labels = toy_images(per_class=2)
    before = {name: p.clone() for name, p in backbone.named_parameters()}
    history = train_prompts(classifier, TrainingSet(images.unsqueeze(1), labels), OptimizationConfig(epochs=2, seed=1))
    assert history.steps == 2 and calls  # the backbone was queried (encoder and black box), never under autograd
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    assert all(torch.equal(p, before[name]) for name, p in backbone.named_parameters())
    logits = classifier(images)
    assert not logits.requires_grad and logits.grad_fn is None
    with torch.enable_grad():  # even asked for a graph, the black box gives none
        assert classifier.black_box(images).grad_fn is None


def test_the_prompt_is_additive_and_clamped_to_the_pixel_range(reference_clip):
    classifier = blackvip(reference_clip, prompt_scale=0.5)
    # their clip_clipping bounds: (0 - mean) / std and (1 - mean) / std with CLIP's mean and std
    assert torch.allclose(classifier.black_box.pixel_low.flatten(),
                          torch.tensor([-1.79226253, -1.75209713, -1.48021977]), atol=1e-6)
    assert torch.allclose(classifier.black_box.pixel_high.flatten(),
                          torch.tensor([1.93033625, 2.07488384, 2.14589699]), atol=1e-6)
    images, _ = toy_images(per_class=1)
    images = images.clamp(-1.4, 1.9)  # valid pixels
    prompt = torch.randn(images.shape, generator=torch.Generator().manual_seed(1)) * 3
    classifier.prompt = lambda features: prompt
    low, high = classifier.black_box.pixel_low, classifier.black_box.pixel_high
    expected = torch.maximum(torch.minimum(images + 0.5 * prompt, high), low)
    seen = []
    classifier.black_box.clip_model.visual.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        logits = classifier(images)
    assert [torch.equal(tensor, images) for tensor in seen] == [True, False]  # the encoder reads x, unprompted
    assert torch.equal(seen[1], expected)  # and the black box is asked about x'
    assert torch.equal(classifier.prompted_images(images), expected)
    inside = (expected > low) & (expected < high)
    assert inside.any() and (~inside).any()
    assert torch.allclose((expected - images)[inside], 0.5 * prompt[inside], atol=1e-6)  # additive where not clipped
    assert ((expected >= low) & (expected <= high)).all()
    direct = classifier.black_box(expected)
    assert torch.equal(logits, direct)


def test_with_a_zero_prompt_scale_it_is_zero_shot_clip(reference_clip):
    classifier = blackvip(reference_clip, prompt_scale=0.0)
    model, tokenizer = reference_clip
    zero_shot = build_classifier(model, tokenizer, "zero_shot", {}, CLASSNAMES, TEMPLATES)
    images, _ = toy_images(per_class=2)
    with torch.no_grad():
        expected = zero_shot(model.encode_image(images))
    assert torch.allclose(predict_logits(classifier, images), expected, atol=1e-5)


def test_the_coordinator_encoder_is_frozen_and_only_the_decoder_learns(reference_clip):
    classifier = blackvip(reference_clip)
    encoder_before = {name: p.clone() for name, p in classifier.encoder.named_parameters()}
    decoder_before = {name: t.clone() for name, t in classifier.decoder.state_dict().items()}
    assert all(not p.requires_grad for p in classifier.encoder.parameters())
    classifier.train()
    assert not classifier.encoder.training and not classifier.black_box.training and classifier.decoder.training
    images, labels = toy_images(per_class=2)
    train_prompts(classifier, TrainingSet(images.unsqueeze(1), labels), OptimizationConfig(epochs=1, seed=1))
    assert all(torch.equal(p, encoder_before[name]) for name, p in classifier.encoder.named_parameters())
    state = classifier.trainable_state()
    assert set(state) == {f"decoder.{name}" for name in decoder_before}  # with BatchNorm's running statistics
    assert any("running_mean" in name for name in state)
    assert not torch.equal(state["decoder.trigger"], decoder_before["trigger"])


def test_spsa_gc_training_lowers_the_loss_on_an_easy_problem(reference_clip):
    classifier = blackvip(reference_clip)
    images, labels = toy_images(per_class=4)
    before = mean_loss(classifier, images, labels)
    history = train_prompts(classifier, TrainingSet(images.unsqueeze(1), labels),
                            OptimizationConfig(epochs=12, batch_size=128, seed=1))
    after = mean_loss(classifier, images, labels)
    assert history.steps == 12 and history.details["black_box_queries"] == 120
    assert history.details["coordinator_encoder"] == {"encoder": "the backbone's own image tower"}
    assert after < before - 0.05, (before, after, history.epoch_losses)
    assert history.epoch_losses[-1] < history.epoch_losses[0]


def test_the_same_seed_gives_the_same_state(reference_clip):
    images, labels = toy_images(per_class=2)
    states = []
    for seed in (1, 1, 2):
        classifier = blackvip(reference_clip)
        train_prompts(classifier, TrainingSet(torch.stack([images, images.flip(-1)], dim=1), labels),
                      OptimizationConfig(epochs=2, seed=seed))
        states.append(classifier.trainable_state())
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])
    assert not torch.equal(states[0]["decoder.trigger"], states[2]["decoder.trigger"])


def test_a_local_encoder_is_loaded_and_recorded(reference_clip):
    model, _ = reference_clip
    classifier = blackvip(reference_clip, coordinator_encoder=str(REFERENCE_MODEL))
    assert classifier.encoder.record["source"] == "checkpoint"
    assert len(classifier.encoder.record["weights_sha256"]) == 64
    assert classifier.encoder.visual is not classifier.black_box.clip_model.visual
    assert all(not p.requires_grad for p in classifier.encoder.parameters())
    images, _ = toy_images(per_class=1)
    with torch.no_grad():  # the same weights and normalisation: the same features as the backbone's tower
        assert torch.allclose(classifier.encoder(images), model.encode_image(images), atol=1e-5)


def test_an_encoder_that_is_not_on_this_machine_is_refused_before_training(reference_clip, tmp_path):
    cache = tmp_path / "empty-cache"
    with pytest.raises(BackboneUnavailableError) as refused:
        blackvip(reference_clip, coordinator_encoder="ViT-B-16", coordinator_weights="openai",
                 coordinator_cache_dir=str(cache))
    message = str(refused.value)
    assert "ViT-B-16" in message and str(cache) in message and "never downloads" in message
    missing = tmp_path / "weights" / "mae.pt"
    with pytest.raises(BackboneUnavailableError, match=str(missing)):
        blackvip(reference_clip, coordinator_encoder="ViT-B-16", coordinator_weights=str(missing))
    assert list(tmp_path.rglob("*")) == []  # nothing written, not even the cache folder


@pytest.mark.parametrize("parameters, words", [
    ({"coordinator_weights": "openai"}, "leave it out"),
    ({"coordinator_encoder": "ViT-B-16"}, "needs coordinator_weights"),
    ({"spsa_variant": "adam"}, "spsa_variant"),
    ({"spsa_c": 0.0}, "c must be > 0"),
    ({"momentum": 1.0}, "momentum"),
    ({"perturbation_samples": 0}, "perturbation_samples"),
])
def test_bad_parameters_are_refused_when_parsed(parameters, words):
    with pytest.raises(ValueError, match=words):
        parse_method_parameters("blackvip", parameters)


def test_an_encoder_named_without_weights_is_refused_when_the_catalog_loads(catalog_copy):
    edit(catalog_copy / "methods.yaml",
         lambda content: content["methods"]["blackvip"]["parameters"].update(coordinator_encoder="ViT-B-16"))
    with pytest.raises(CatalogError, match=r"^methods.yaml: methods.blackvip: .*'ViT-B-16' needs coordinator_weights"):
        load_catalog(catalog_copy)


def test_the_checkpoint_rebuilds_the_trained_prompt_with_its_batchnorm_statistics(reference_clip, tmp_path):
    model, tokenizer = reference_clip
    classifier = blackvip(reference_clip)
    images, labels = toy_images(per_class=2)
    train_prompts(classifier, TrainingSet(images.unsqueeze(1), labels), OptimizationConfig(epochs=2, seed=1))
    config = {"method": "blackvip", "parameters": {}, "classnames": CLASSNAMES, "templates": TEMPLATES}
    save_prompt_checkpoint(tmp_path / "checkpoint", classifier, config)
    rebuilt, _ = load_prompt_checkpoint(tmp_path / "checkpoint", copy.deepcopy(model), tokenizer)
    assert torch.equal(rebuilt.decoder.body[2].running_mean, classifier.decoder.body[2].running_mean)
    assert torch.equal(predict_logits(rebuilt, images), predict_logits(classifier, images))
