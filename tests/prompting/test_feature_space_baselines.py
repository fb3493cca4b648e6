"""The feature-space few-shot baselines (Tip-Adapter, Tip-Adapter-F, CLIP-Adapter, TaskRes, LP++, CLAP / ZS-LP):
the published properties each is verified by, their catalog entries, checkpoints, and a short training of each on
random features through the experiments' training entry point."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

pytest.importorskip("open_clip")

from models.catalog import CatalogError, load_catalog  # noqa: E402
from models.experiments import (TrainingSet, build_classifier, load_prompt_checkpoint,  # noqa: E402
                                save_prompt_checkpoint, train_prompts)
from models.prompting.feature_adapters import (TIP_ZERO_SHOT_SCALE, raw_text_embeddings,  # noqa: E402
                                               search_alpha_beta, search_grid)
from models.prompting.methods import get_method, parse_method_parameters  # noqa: E402
from models.prompting.methods.registry import ClassifierContext  # noqa: E402
from models.prompting.training import OptimizationConfig  # noqa: E402
from tests.catalog.catalog_editing import catalog_copy, edit  # noqa: E402,F401

CATALOG = Path(__file__).resolve().parents[2] / "assets_catalog"
TEMPLATES = ["a photo of a {}."]
CLASSNAMES = ["golden retriever", "tabby cat", "sports car"]
BASELINES = ("tip_adapter", "tip_adapter_f", "clip_adapter", "taskres", "lp_plus_plus", "clap")

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tests/conftest.py


def build(reference_clip, method, templates=TEMPLATES, **parameters):
    model, tokenizer = reference_clip
    return build_classifier(model, tokenizer, method, parameters, CLASSNAMES, templates)


def random_views(n_images=12, passes=4, width=32, seed=0, n_classes=len(CLASSNAMES)):
    """Raw features (N, P, E) of N images in P passes around fixed per-class centres (classes 0..C-1 in turn), and
    their labels; `seed` draws the noise."""
    centres = torch.randn(n_classes, width, generator=torch.Generator().manual_seed(1234))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_images) % n_classes
    views = 3 * (centres[labels][:, None] + 0.8 * torch.randn(n_images, passes, width, generator=generator))
    return views, labels


def random_validation(n_images=9, seed=1):
    views, labels = random_views(n_images, 1, seed=seed)
    return views[:, 0], labels


# ------------------------------------------------------------------ Tip-Adapter


def test_tip_adapter_keys_are_the_normalised_mean_of_each_images_passes(reference_clip):
    views, labels = random_views(n_images=6, passes=5)
    classifier = build(reference_clip, "tip_adapter")
    history = classifier.fit(TrainingSet(views, labels))
    assert classifier.cache_keys.shape == (6, 32)  # one row per image, not one per view (30)
    torch.testing.assert_close(classifier.cache_keys, F.normalize(views.mean(dim=1), dim=-1), rtol=0, atol=0)
    assert torch.equal(classifier.cache_labels, labels)
    assert history.details["cache_size"] == 6 and history.details["passes_per_key"] == 5
    # no val images: the authors' initial values
    assert (history.details["alpha"], history.details["beta"]) == (1.17, 1.0)


def test_tip_adapter_with_alpha_zero_is_zero_shot_with_the_authors_factor_100(reference_clip):
    views, labels = random_views()
    classifier = build(reference_clip, "tip_adapter", init_alpha=0.0)
    classifier.fit(TrainingSet(views, labels))
    features = random_validation()[0]
    with torch.no_grad():
        logits = classifier(features)
        zero_shot = (TIP_ZERO_SHOT_SCALE * F.normalize(features, dim=-1)) @ classifier.class_text_weights.t()
    assert torch.equal(logits, zero_shot)
    # the zero-shot classifier is the normalised template ensemble, scaled by 100, not by the model's logit scale
    ensemble = build(reference_clip, "zero_shot").class_text_features
    torch.testing.assert_close(classifier.class_text_weights, F.normalize(ensemble, dim=-1), rtol=0, atol=0)
    with torch.no_grad():
        cached = build(reference_clip, "tip_adapter")
        cached.fit(TrainingSet(views, labels))
        assert not torch.allclose(cached(features), zero_shot, atol=1e-3)  # the cache term does change the logits


def first_grid_point_where(condition, betas, alphas):
    return next((i, j) for i, beta in enumerate(betas) for j, alpha in enumerate(alphas) if condition(beta, alpha))


def test_the_grid_search_picks_the_first_grid_point_of_best_val_accuracy_in_a_case_with_a_known_answer():
    # Two classes in 2-D. Val image 0 (label 1) sits just on class 0's side: zero-shot's margin is m = 0.5; its own
    # key (label 1) has affinity 1, the other key (label 0) affinity 0. Val image 1 (label 0) is class 0's text
    # direction. Both are right iff alpha (1 - exp(-beta)) > m: the first such (beta, alpha) in the authors' order.
    margin = 0.5
    theta = math.pi / 4 - math.asin(margin / TIP_ZERO_SHOT_SCALE / math.sqrt(2))  # cos - sin = margin / 100
    image = torch.tensor([[math.cos(theta), math.sin(theta)], [1.0, 0.0]])
    text = torch.eye(2)
    affinity = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    values = F.one_hot(torch.tensor([1, 0]), 2).float()
    labels = torch.tensor([1, 0])
    betas, alphas = search_grid((7.0, 3.0), (200, 20))
    choice = search_alpha_beta(image, text, affinity, values, labels, betas, alphas)
    i, j = first_grid_point_where(lambda beta, alpha: alpha * (1 - math.exp(-beta)) > margin + 1e-4, betas, alphas)
    assert (choice.beta, choice.alpha) == (betas[i], alphas[j])
    assert (i, j) == (3, 19)  # the known answer: beta 0.2035, alpha 2.855 (alpha 2.71 falls just short)
    assert choice.val_accuracy == 1.0 and choice.zero_shot_val_accuracy == 0.5
    assert choice.grid_size == 4000


def naive_val_accuracy(classifier, features, labels, beta, alpha):
    """The authors' search_hp body for one grid point, written out."""
    image = F.normalize(features, dim=-1)
    affinity = image @ classifier.cache_keys.t()
    values = F.one_hot(classifier.cache_labels, len(CLASSNAMES)).float()
    cache = ((-1) * (beta - beta * affinity)).exp() @ values
    logits = 100.0 * image @ classifier.class_text_weights.t() + cache * alpha
    return int((logits.argmax(1) == labels).sum()) / labels.shape[0]


def test_tip_adapter_fit_chooses_the_best_val_accuracy_of_its_grid(reference_clip):
    views, labels = random_views(seed=3)
    validation = random_validation(seed=4)
    classifier = build(reference_clip, "tip_adapter", search_steps=[20, 10])
    details = classifier.fit(TrainingSet(views, labels, validation=validation)).details
    betas, alphas = search_grid((7.0, 3.0), (20, 10))
    accuracies = {(i, j): naive_val_accuracy(classifier, *validation, beta, alpha)
                  for i, beta in enumerate(betas) for j, alpha in enumerate(alphas)}
    best = max(accuracies.values())
    i, j = next(point for point, accuracy in accuracies.items() if accuracy == best)
    assert details["val_accuracy"] == best and (details["beta"], details["alpha"]) == (betas[i], alphas[j])
    assert (float(classifier.beta), float(classifier.alpha)) == pytest.approx((betas[i], alphas[j]))
    assert details["val_images"] == 9 and details["grid_size"] == 200


def test_tip_adapter_cache_survives_a_checkpoint_of_its_own_size(reference_clip, tmp_path):
    model, tokenizer = reference_clip
    views, labels = random_views()
    classifier = build(reference_clip, "tip_adapter")
    classifier.fit(TrainingSet(views, labels, validation=random_validation()))
    config = {"method": "tip_adapter", "parameters": {}, "classnames": CLASSNAMES, "templates": TEMPLATES}
    assert build(reference_clip, "tip_adapter").trainable_state() == {}  # nothing before fitting
    save_prompt_checkpoint(tmp_path / "tip", classifier, config)
    loaded, _ = load_prompt_checkpoint(tmp_path / "tip", model, tokenizer)
    features = random_validation(seed=5)[0]
    with torch.no_grad():
        assert torch.equal(loaded(features), classifier(features))
    assert loaded.cache_keys.shape == (12, 32) and float(loaded.alpha) == float(classifier.alpha)
    with pytest.raises(ValueError, match="class-specific"):
        load_prompt_checkpoint(tmp_path / "tip", model, tokenizer, classnames=CLASSNAMES[:2])


def test_tip_adapter_f_trains_its_keys_keeps_the_best_val_epoch_and_searches_alpha_beta_after(reference_clip):
    views, labels = random_views(seed=6)
    classifier = build(reference_clip, "tip_adapter_f", search_steps=[10, 5])
    training_set = TrainingSet(views, labels, validation=random_validation(seed=7), selection="full_val")
    optimization = OptimizationConfig(epochs=3, batch_size=5, optimizer="adamw", learning_rate=1e-3, eps=1e-4,
                                      weight_decay=0.01, warmup_epochs=0)
    history = train_prompts(classifier, training_set, optimization)
    details = history.details
    assert history.steps == 3 * math.ceil(12 / 5) == details["optimizer_steps"]  # their epochs x ceil(N / batch)
    assert details["selected_epoch"] in (1, 2, 3) and len(details["validation_accuracies"]) == 3
    assert details["alpha_beta_selection"] == "grid search on the val images"
    assert (float(classifier.alpha), float(classifier.beta)) == pytest.approx((details["alpha"], details["beta"]))
    assert not torch.allclose(classifier.cache_keys.detach(), F.normalize(views.mean(dim=1), dim=-1))


# ------------------------------------------------------------------ TaskRes


def test_taskres_at_initialisation_is_zero_shot_clip(reference_clip):
    classifier = build(reference_clip, "taskres")
    zero_shot = build(reference_clip, "zero_shot")
    features, labels = random_validation()
    # The base is the raw (unnormalised) text features, as the authors'; x = 0 leaves it exactly.
    raw = raw_text_embeddings(ClassifierContext(*reference_clip, CLASSNAMES, TEMPLATES))
    assert torch.equal(classifier.base_text_features, raw)
    assert torch.equal(classifier.text_features(), raw)
    with torch.no_grad():
        logits = classifier(features)
        assert torch.equal(logits, classifier.logits_from(features, raw))
        # the same classifier as zero-shot CLIP (one template: its normalised features), up to a re-normalisation
        torch.testing.assert_close(logits, zero_shot(features), rtol=1e-6, atol=1e-6)
    loss, _ = classifier.training_loss(features, labels)
    loss.backward()
    trainable = [name for name, p in classifier.named_parameters() if p.requires_grad]
    assert trainable == ["text_residual"] and classifier.text_residual.grad.abs().max() > 0
    with torch.no_grad():
        classifier.text_residual.normal_()
    assert not torch.allclose(classifier(features), logits)  # the residual moves the classifier: 0.5 x


def test_taskres_base_averages_the_raw_features_of_several_templates(reference_clip):
    model, tokenizer = reference_clip
    templates = ["a photo of a {}.", "a drawing of a {}."]
    classifier = build(reference_clip, "taskres", templates=templates)
    with torch.no_grad():
        raw = [model.encode_text(tokenizer([t.format(c) for c in CLASSNAMES])) for t in templates]
    torch.testing.assert_close(classifier.base_text_features, torch.stack(raw).mean(0), rtol=0, atol=1e-5)


# ------------------------------------------------------------------ LP++


def authors_lp_plus_plus(features, labels, text, bias, alpha_init, lr_w, lr_alpha, epochs):
    """linear_probe_p2.py's training loop, transliterated (fp32, full batch, alpha's gradient never zeroed)."""
    n_classes = text.shape[0]
    classifier = torch.nn.Linear(features.shape[1], n_classes, bias=True)
    classifier.weight.data = F.one_hot(labels, n_classes).float().t() @ features
    classifier.bias.data = bias.clone()
    alpha_vec = torch.full((1, n_classes), alpha_init, requires_grad=True)
    optimizer = torch.optim.SGD(classifier.parameters(), lr_w, momentum=0.9)
    for epoch in range(epochs):
        logits = classifier(features) + torch.ones(features.shape[0], 1) @ alpha_vec * (features @ text.t())
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (epoch + 1) % 10 == 0:
            alpha_vec.data -= lr_alpha * alpha_vec.grad.data
    return classifier.weight.data, classifier.bias.data, alpha_vec.data[0]


def test_lp_plus_plus_step_sizes_and_initialisation_follow_the_formulas(reference_clip):
    views, labels = random_views(n_images=15, passes=1, seed=8)
    classifier = build(reference_clip, "lp_plus_plus")
    text = classifier.class_text_weights
    features = F.normalize(views[:, 0], dim=-1)
    n = features.shape[0]
    # initialisation: class sums, nn.Linear's bias range, 250 x the mean of the C x C class-averaged similarities
    similarities = features @ text.t()
    alpha = classifier.initialise(features, labels, similarities, seed=1)
    torch.testing.assert_close(classifier.weight.detach(),
                               torch.stack([features[labels == c].sum(0) for c in range(3)]), rtol=0, atol=1e-6)
    assert classifier.bias.abs().max() <= 1 / math.sqrt(32) and classifier.bias.abs().max() > 0
    class_means = torch.stack([similarities[labels == c].mean(0) for c in range(3)])
    assert alpha == pytest.approx(250 * float(class_means.mean()), rel=1e-6)
    assert torch.equal(classifier.alpha.detach(), torch.full((3,), float(torch.tensor(alpha))))
    bias = classifier.bias.detach().clone()

    history = classifier.fit(TrainingSet(views, labels), OptimizationConfig(epochs=25, seed=1))
    details = history.details
    eigenvalues = torch.linalg.eigvalsh((features.t() @ features).double())
    assert details["learning_rate_weights"] == pytest.approx(4 * n / float(eigenvalues.max()), rel=1e-6)
    assert details["learning_rate_alpha"] == pytest.approx(
        n / (4 * float((similarities ** 2).sum(0).max())), rel=1e-5)
    assert details["alpha_init"] == pytest.approx(alpha, rel=1e-9)
    assert details["model_selection"] == "last epoch" and len(history.epoch_losses) == 25
    # training follows the authors' loop, alpha steps at epochs 10 and 20 on the gradient summed since epoch 1
    weight, expected_bias, expected_alpha = authors_lp_plus_plus(
        features, labels, text, bias, alpha, details["learning_rate_weights"], details["learning_rate_alpha"], 25)
    torch.testing.assert_close(classifier.weight.detach(), weight, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(classifier.bias.detach(), expected_bias, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(classifier.alpha.detach(), expected_alpha, rtol=1e-4, atol=1e-4)
    # the paper's step (this epoch's gradient) is another alpha
    current = build(reference_clip, "lp_plus_plus", alpha_gradient="current")
    current.fit(TrainingSet(views, labels), OptimizationConfig(epochs=25, seed=1))
    assert not torch.allclose(current.alpha.detach(), classifier.alpha.detach(), rtol=1e-3)


def test_lp_plus_plus_keeps_the_best_val_epoch_later_on_ties(reference_clip):
    views, labels = random_views(n_images=15, passes=1, seed=9)
    classifier = build(reference_clip, "lp_plus_plus")
    validation = random_validation(seed=10)
    history = classifier.fit(TrainingSet(views, labels, validation=validation), OptimizationConfig(epochs=12))
    accuracies = history.details["validation_accuracies"]
    best = max(accuracies)
    assert history.details["selected_epoch"] == max(e + 1 for e, a in enumerate(accuracies) if a == best)
    with torch.no_grad():
        accuracy = float((classifier(validation[0]).argmax(1) == validation[1]).float().mean())
    assert accuracy == best


# ------------------------------------------------------------------ CLAP / ZS-LP


def test_clap_multipliers_are_zero_shot_true_class_probabilities(reference_clip):
    views, labels = random_views(n_images=9, passes=4, seed=11)
    classifier = build(reference_clip, "clap")
    optimization = OptimizationConfig(epochs=2, batch_size=8, learning_rate=0.1, momentum=0.9, weight_decay=0.0)
    history = classifier.fit(TrainingSet(views, labels), optimization)
    text = F.normalize(raw_text_embeddings(ClassifierContext(*reference_clip, CLASSNAMES, TEMPLATES)), dim=-1)
    expected = []
    for c in range(3):
        class_views = F.normalize(views[labels == c].reshape(-1, 32), dim=-1)  # all 4 views of its 3 images
        probabilities = (classifier.logit_scale * class_views @ text.t()).softmax(-1)
        expected.append(float(probabilities[:, c].mean()))
    torch.testing.assert_close(classifier.constraint_weights, torch.tensor(expected), rtol=1e-5, atol=1e-6)
    assert history.details["constraint_weights"] == pytest.approx(expected, rel=1e-5)
    # all 36 views are samples; the authors' 2 epochs of max(1, 9 // 8) = 1 step each
    assert history.details["samples"] == 36 and history.steps == 2 == history.details["optimizer_steps"]


def test_clap_prototypes_stay_closer_to_the_text_embeddings_than_zs_lp(reference_clip):
    views, labels = random_views(n_images=30, passes=4, seed=12)
    optimization = OptimizationConfig(epochs=30, batch_size=8, learning_rate=1.0, momentum=0.9, weight_decay=0.0)
    shifts = {}
    for constraint in ("l2", "none"):
        classifier = build(reference_clip, "clap", constraint=constraint)
        history = classifier.fit(TrainingSet(views, labels), optimization)
        assert history.steps == 30 * (30 // 8)
        shifts[constraint] = float((classifier.prototypes.detach() - classifier.base_text_features).norm(dim=-1).mean())
    assert 0 < shifts["l2"] < shifts["none"]


def test_clap_loss_adds_the_weighted_distance_to_the_text_embeddings(reference_clip):
    classifier = build(reference_clip, "clap")
    with torch.no_grad():
        classifier.constraint_weights.copy_(torch.tensor([0.2, 0.5, 0.9]))
        classifier.prototypes.add_(torch.randn(3, 32, generator=torch.Generator().manual_seed(0)))
    features, labels = random_validation()
    loss, logits = classifier.training_loss(features, labels)
    distances = (classifier.prototypes - classifier.base_text_features).pow(2).sum(-1)
    expected = F.cross_entropy(logits, labels) + (torch.tensor([0.2, 0.5, 0.9]) * distances).mean()
    torch.testing.assert_close(loss, expected)
    zs_lp = build(reference_clip, "clap", constraint="none")
    with torch.no_grad():
        zs_lp.prototypes.copy_(classifier.prototypes)
    torch.testing.assert_close(zs_lp.training_loss(features, labels)[0], F.cross_entropy(logits, labels))


# ------------------------------------------------------------------ every baseline


@pytest.mark.parametrize("method", BASELINES)
def test_each_baseline_trains_a_few_epochs_on_random_features(reference_clip, method):
    views, labels = random_views(n_images=12, passes=3, seed=13)
    classifier = build(reference_clip, method, **({"search_steps": [10, 5]} if method.startswith("tip") else {}))
    spec = get_method(method)
    selection = spec.selection
    validation = random_validation(seed=14) if selection != "last" else None
    training_set = TrainingSet(views, labels, validation=validation, selection=selection)
    settings = {"tip_adapter_f": dict(optimizer="adamw", eps=1e-4, learning_rate=1e-3, weight_decay=0.01,
                                      warmup_epochs=0),
                "taskres": dict(optimizer="adam", learning_rate=2e-3)}.get(method, {})
    optimization = OptimizationConfig(epochs=3, batch_size=8, seed=2, **settings)
    reported = []
    history = train_prompts(classifier, training_set, optimization,
                            on_epoch=lambda epoch, loss, accuracy: reported.append((epoch, loss, accuracy)))
    # progress as the training loop reports it, in the method's own epochs (CLAP's loop passes over every view of
    # every image, several of the authors' epochs at a time); the training-free Tip-Adapter has none
    epochs = [epoch for epoch, _, _ in reported]
    if method == "tip_adapter":
        assert reported == []
    else:
        assert epochs[-1] == 3 and epochs == sorted(epochs) and epochs[0] >= 1, epochs
        assert all(math.isfinite(loss) and 0 <= accuracy <= 1 for _, loss, accuracy in reported)
    assert history.epoch_losses and all(math.isfinite(loss) for loss in history.epoch_losses)
    assert all(0 <= accuracy <= 1 for accuracy in history.epoch_accuracies)
    with torch.no_grad():
        logits = classifier(random_validation(seed=15)[0])
    assert logits.shape == (9, 3) and torch.isfinite(logits).all()
    state = classifier.trainable_state()
    assert state and all(torch.isfinite(t.float()).all() for t in state.values())


@pytest.mark.parametrize("method", BASELINES)
def test_registered_with_the_catalogs_published_defaults(method):
    spec = get_method(method)
    methods = yaml.safe_load((CATALOG / "methods.yaml").read_text())["methods"]
    assert spec.trains_prompts and spec.frozen_image_encoder and spec.hook_points == ("feature space",)
    assert spec.training_views is not None and spec.paper is not None and spec.verification is not None
    assert parse_method_parameters(method, methods[method]["parameters"]) == spec.parameters_type()
    assert set(methods[method]["parameters"]) == {field.name for field in dataclasses.fields(spec.parameters_type)}
    assert spec.transfers_to_other_classes() == (method == "clip_adapter")


def test_published_views_and_selection_policies():
    views = {name: get_method(name).training_views for name in BASELINES}
    assert (views["tip_adapter"].passes, views["tip_adapter"].crop_scale) == (10, (0.5, 1.0))
    assert views["tip_adapter_f"] == views["tip_adapter"]
    assert (views["lp_plus_plus"].passes, views["lp_plus_plus"].crop_scale) == (1, (0.5, 1.0))
    assert (views["clap"].passes, views["clap"].crop_scale) == (20, (0.08, 1.0))
    assert views["clip_adapter"] == views["taskres"] == views["clap"]  # one cached set for the Dassl recipe
    assert {name: get_method(name).selection for name in BASELINES} == {
        "tip_adapter": "full_val", "tip_adapter_f": "full_val", "clip_adapter": "last", "taskres": "last",
        "lp_plus_plus": "few_shot_val", "clap": "last"}


@pytest.mark.parametrize("field, value", [("search_scale", [0, 3]), ("search_scale", [7.0, -1.0]),
                                          ("search_steps", [200, 0]), ("search_scale", [7.0])])
def test_an_empty_or_non_positive_alpha_beta_grid_is_refused_when_the_catalog_loads(catalog_copy, field, value):
    edit(catalog_copy / "experiments.yaml",
         lambda content: content["grid"].append({"method": "tip_adapter", "parameters": {field: value}}))
    with pytest.raises(CatalogError) as refused:
        load_catalog(catalog_copy)
    message = str(refused.value)
    assert "experiments.yaml: grid[" in message and "tip_adapter" in message and field in message


@pytest.mark.parametrize("method", ["tip_adapter", "tip_adapter_f"])
def test_a_non_positive_alpha_beta_grid_in_methods_yaml_is_refused_naming_its_entry(catalog_copy, method):
    edit(catalog_copy / "methods.yaml",
         lambda content: content["methods"][method]["parameters"].update(search_scale=[7.0, 0.0]))
    with pytest.raises(CatalogError, match=rf"^methods.yaml: methods.{method}: {method}: search_scale must be"):
        load_catalog(catalog_copy)
