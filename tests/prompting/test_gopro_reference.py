"""GOPro reproduces the authors' code on the reference tiny CLIP (given the stored views), its image tower stays frozen,
its augmented views come from each image and repeat with their seed, it trains through the shared loop, and the
catalog refuses a non-positive temperature or a negative loss weight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

pytest.importorskip("open_clip")
from safetensors.torch import load_file  # noqa: E402

from models.catalog import CatalogError, load_catalog  # noqa: E402
from models.prompting.methods import get_method, parse_method_parameters  # noqa: E402
from models.prompting.methods.registry import ClassifierContext  # noqa: E402
from models.prompting.self_supervised_views import (augmix_view, self_supervised_views, to_pixels,  # noqa: E402
                                                    view_seed)
from models.prompting.training import OptimizationConfig, train_prompt_parameters  # noqa: E402
from tests.catalog.catalog_editing import catalog_copy, edit  # noqa: E402,F401
from tests.prompting.reference_tolerance import assert_gradient_matches  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
CASES_FILE = DATA / "gopro_reference.json"
TENSORS_FILE = DATA / "gopro_reference.safetensors"
# BatchNorm follows simproj.linear, so its bias has no true gradient: the stored values are rounding noise
# (/work/shared/reference/README.md, GOPro).
NOISE_GRADIENTS = {"simproj.linear.bias"}

pytestmark = [
    pytest.mark.skipif(not (CASES_FILE.exists() and TENSORS_FILE.exists()), reason="reference not vendored"),
    pytest.mark.usefixtures("single_torch_thread"),  # tests/conftest.py
]


@pytest.fixture(scope="module")
def reference(reference_clip):
    model, tokenizer = reference_clip
    spec = json.loads(CASES_FILE.read_text())
    classnames = [name.replace("_", " ") for name in spec["classnames"]]
    return model, tokenizer, load_file(TENSORS_FILE), spec["cases"]["gopro"], classnames


def build_gopro(model, tokenizer, classnames, **overrides):
    context = ClassifierContext(model, tokenizer, classnames, templates=["a photo of a {}."])
    return get_method("gopro").build(context, parse_method_parameters("gopro", overrides))


def build_reference_case(reference):
    model, tokenizer, tensors, case, classnames = reference
    classifier = build_gopro(model, tokenizer, classnames, n_context=case["n_ctx"], context_init=case["ctx_init"])
    stored = {name[len("gopro.param."):]: value for name, value in tensors.items() if name.startswith("gopro.param.")}
    classifier.load_state_dict(stored, strict=False)
    # every stored parameter has a counterpart, and nothing else is learned
    assert set(classifier.trainable_state()) == set(stored)
    return classifier.train()


def test_registered_with_published_defaults():
    spec = get_method("gopro")
    assert spec.trains_prompts and not spec.frozen_image_encoder  # it reads every block and augments images
    defaults = spec.parameters_type()
    assert (defaults.n_context, defaults.context_init) == (4, "a photo of a")
    assert (defaults.moco_consistency_weight, defaults.augmix_consistency_weight, defaults.contrastive_weight,
            defaults.temperature) == (1.0, 1.0, 0.1, 0.1)


def test_widths_and_block_count_are_read_from_the_model(reference):
    model, tokenizer, _, _, classnames = reference
    classifier = build_gopro(model, tokenizer, classnames)
    # Tiny model: 2 vision blocks of width 64, text width 64, joint embedding 32 (ViT-B/16: 12, 768, 512, 512).
    learner = classifier.prompt_learner
    assert len(learner.style.linear) == len(learner.content.linear) == 2
    assert learner.style.linear[0].weight.shape == learner.content.linear[1].weight.shape == (64, 64)
    assert learner.rho.weight.shape == (1, 2) and learner.ctx.shape == (4, 64)
    assert classifier.simproj.linear.weight.shape == (32, 32) and classifier.simproj.batchnorm.weight.shape == (32,)


def test_outputs_loss_terms_and_gradients_match_reference(reference):
    _, _, tensors, case, _ = reference
    classifier = build_reference_case(reference)
    images, labels = tensors["images"], tensors["labels"].long()
    assert torch.equal(classifier.pieces.token_ids, tensors["gopro.tokenized_prompts"].to(classifier.pieces.token_ids))

    original = classifier.view_outputs(images)
    assert torch.allclose(original.context_shift, tensors["gopro.ctx_shift"], atol=1e-5, rtol=0)
    assert torch.allclose(original.text_features, tensors["gopro.text_features"], atol=1e-5, rtol=0)
    for view in ("moco", "augmix"):
        with torch.no_grad():
            features = classifier.view_outputs(tensors[f"gopro.{view}_views"]).text_features
        assert torch.allclose(features, tensors[f"gopro.{view}_text_features"], atol=1e-5, rtol=0), view

    terms = classifier.loss_terms(images, labels, tensors["gopro.moco_views"], tensors["gopro.augmix_views"])
    assert torch.allclose(terms["logits"], tensors["gopro.logits"], atol=1e-5, rtol=0)
    assert torch.allclose(terms["image_projections"], tensors["gopro.image_simproj"], atol=1e-5, rtol=0)
    assert torch.allclose(terms["moco_projections"], tensors["gopro.moco_simproj"], atol=1e-5, rtol=0)
    for ours, theirs in [("ce", "loss_ce"), ("moco_consistency", "loss_sem_moco"),
                         ("augmix_consistency", "loss_sem_augmix"), ("contrastive", "loss_simclr")]:
        assert abs(terms[ours].item() - case[theirs]) < 1e-5, ours
    loss = terms["ce"] + terms["moco_consistency"] + terms["augmix_consistency"] + 0.1 * terms["contrastive"]
    assert abs(loss.item() - case["loss"]) < 1e-5
    loss.backward()

    stored = {name[len("gopro.grad."):] for name in tensors if name.startswith("gopro.grad.")}
    assert stored == set(classifier.trainable_state())  # the authors' parameters that receive a gradient
    for name, parameter in classifier.named_parameters():
        if name in stored and name not in NOISE_GRADIENTS:
            assert_gradient_matches(parameter.grad, tensors[f"gopro.grad.{name}"], name)


def test_the_image_conditioned_shift_changes_the_logits(reference):
    """Guards the test above against passing with the shift ignored: rho at zero changes the logits."""
    _, _, tensors, _, _ = reference
    classifier = build_reference_case(reference)
    with torch.no_grad():
        classifier.prompt_learner.rho.weight.zero_()
        classifier.prompt_learner.rho.bias.zero_()
        unconditioned = classifier(tensors["images"])
    assert (unconditioned - tensors["gopro.logits"]).abs().max() > 1e-3


def test_only_the_prompt_learner_and_simproj_learn_and_the_image_tower_is_frozen(reference):
    model, _, tensors, _, _ = reference
    classifier = build_reference_case(reference)
    assert {name.split(".")[0] for name in classifier.trainable_state()} == {"prompt_learner", "simproj"}
    tower_before = {name: value.clone() for name, value in model.visual.state_dict().items()}
    torch.manual_seed(0)
    loss, _ = classifier.training_loss(tensors["images"], tensors["labels"].long())
    loss.backward()
    assert all(parameter.grad is None for parameter in model.parameters())
    assert all(parameter.grad is not None for parameter in classifier.parameters() if parameter.requires_grad)
    # the tower's output is the plain model's: the method reads the blocks, it does not change them
    with torch.no_grad():
        features = classifier.view_outputs(tensors["images"]).image_features
        assert torch.allclose(features, model.encode_image(tensors["images"]), atol=1e-6, rtol=0)
    assert all(torch.equal(value, tower_before[name]) for name, value in model.visual.state_dict().items())


def assert_each_view_comes_from_its_image(make_views, images: torch.Tensor) -> None:
    """Changing image b changes view b and no other: view b is of image b, and of no other image."""
    views = make_views(images)
    for index in range(images.shape[0]):
        changed = images.clone()
        changed[index] = images.flip(-1)[index] * 0.5 - 0.3
        changed_views = make_views(changed)
        others = [other for other in range(images.shape[0]) if other != index]
        assert not torch.equal(changed_views[index], views[index]), f"view {index} ignores image {index}"
        assert torch.equal(changed_views[others], views[others]), f"image {index} changes other images' views"


def batch_of_images(count: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(5))


def test_augmix_views_of_a_batch_come_from_each_image():
    images = batch_of_images()
    assert_each_view_comes_from_its_image(
        lambda batch: self_supervised_views(batch, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, seed=3)[1], images)


def test_the_check_fails_on_the_released_codes_augmix_views():
    """The released augmixtrans returns B AugMix views of the first image only; the check above refuses them."""
    def released_views(batch):
        pixels = to_pixels(batch, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
        return torch.stack([augmix_view(pixels[0], view_seed(3, "augmix", index), OPENAI_DATASET_MEAN,
                                        OPENAI_DATASET_STD) for index in range(batch.shape[0])])

    with pytest.raises(AssertionError):
        assert_each_view_comes_from_its_image(released_views, batch_of_images())


def test_moco_views_of_a_batch_come_from_each_image():
    images = batch_of_images()
    assert_each_view_comes_from_its_image(
        lambda batch: self_supervised_views(batch, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, seed=3)[0], images)


def test_the_classifiers_views_come_from_each_image_and_repeat_with_the_seed(reference):
    model, tokenizer, _, _, classnames = reference
    classifier = build_gopro(model, tokenizer, classnames)

    def views_with_seed(seed, batch):
        torch.manual_seed(seed)
        return classifier.augmented_views(batch)

    images = batch_of_images()
    first, second = views_with_seed(1, images), views_with_seed(1, images)
    other = views_with_seed(2, images)
    for kind in range(2):
        assert first[kind].shape == images.shape and first[kind].dtype == images.dtype
        assert torch.equal(first[kind], second[kind])
        assert not torch.equal(first[kind], other[kind])
        assert_each_view_comes_from_its_image(lambda batch: views_with_seed(1, batch)[kind], images)


def test_views_are_normalised_like_their_images():
    """An image that survives the 8-bit round trip is unchanged by it, so views live in the images' space."""
    pixels = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    mean, std = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1), torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)
    images = (pixels.float() / 255 - mean) / std
    assert torch.equal(to_pixels(images, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD), pixels)
    moco, mixed = self_supervised_views(images, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, seed=0)
    for views in (moco, mixed):
        low, high = (0 - mean) / std, (1 - mean) / std
        assert ((views >= low - 1e-5) & (views <= high + 1e-5)).all()


def test_a_batch_of_one_image_has_no_contrastive_term(reference):
    _, _, tensors, _, _ = reference
    classifier = build_reference_case(reference)
    image = tensors["images"][:1]
    terms = classifier.loss_terms(image, tensors["labels"][:1].long(), image.flip(-1), image.flip(-2))
    assert terms["contrastive"].item() == 0.0 and torch.isfinite(terms["ce"])


def trained_state(reference, seed: int) -> dict[str, torch.Tensor]:
    model, tokenizer, tensors, _, classnames = reference
    classifier = build_gopro(model, tokenizer, classnames)
    images, labels = tensors["images"], tensors["labels"].long()
    views = torch.stack([images, images.flip(-1)], dim=1)
    torch.manual_seed(seed)  # as train_prompts does with the experiment's seed
    history = train_prompt_parameters(classifier, views, labels,
                                      OptimizationConfig(epochs=1, batch_size=4, learning_rate=0.01, warmup_epochs=0))
    assert history.steps == 2 and all(torch.isfinite(torch.tensor(history.epoch_losses)))
    return classifier.trainable_state()


def test_trains_through_the_shared_loop_and_repeats_with_its_seed(reference):
    model, tokenizer, _, _, classnames = reference
    initial = build_gopro(model, tokenizer, classnames).trainable_state()
    first, again, other_seed = trained_state(reference, 1), trained_state(reference, 1), trained_state(reference, 2)
    assert all(not torch.equal(initial[name], first[name]) for name in initial), "every parameter should learn"
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert any(not torch.equal(first[name], other_seed[name]) for name in first)  # other views
    assert all(not parameter.requires_grad for parameter in model.parameters())


@pytest.mark.parametrize("field, value", [("temperature", 0.0), ("temperature", -0.1), ("contrastive_weight", -0.1),
                                          ("moco_consistency_weight", -1.0), ("augmix_consistency_weight", -1.0),
                                          ("temperature", float("nan"))])
def test_a_non_positive_temperature_or_negative_weight_in_methods_yaml_is_refused_naming_its_entry(
        catalog_copy, field, value):  # noqa: F811
    edit(catalog_copy / "methods.yaml", lambda content: content["methods"]["gopro"]["parameters"].update({field: value}))
    # NaN is refused by the catalog's own number check first ('parameters.temperature'), the rest by GOPro's
    with pytest.raises(CatalogError, match=rf"^methods.yaml: methods.gopro: (gopro: {field}|'parameters.{field}') must"):
        load_catalog(catalog_copy)


def test_a_negative_weight_in_a_grid_entry_is_refused_naming_its_entry(catalog_copy):  # noqa: F811
    edit(catalog_copy / "experiments.yaml",
         lambda content: content["grid"].append({"method": "gopro", "parameters": {"contrastive_weight": -0.5}}))
    with pytest.raises(CatalogError) as refused:
        load_catalog(catalog_copy)
    message = str(refused.value)
    assert "experiments.yaml: grid[" in message and "gopro" in message and "contrastive_weight" in message
