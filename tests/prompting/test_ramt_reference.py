"""R-AMT reproduces the authors' code on the reference tiny CLIP (logits, zero-shot logits, every loss term, the
mask gradients of each term, gradient dropout's keep probability and applied gradient), and keeps its published
properties: masks are the only learned state, with every mask on the model is zero-shot CLIP, the shared backbone is
never modified, and gradient dropout draws the same numbers for the same seed. Also its CoOp and Tip-Adapter heads
and the catalog's refusal of a threshold outside (0, init scale)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")
from safetensors.torch import load_file  # noqa: E402

from models.catalog import CatalogError, load_catalog  # noqa: E402
from models.experiments.training_sets import TrainingSet  # noqa: E402
from models.prompting.feature_adapters import cache_keys_from_passes, cache_values, tip_logits  # noqa: E402
from models.prompting.methods import get_method, parse_method_parameters  # noqa: E402
from models.prompting.methods.ramt import gradient_dropout  # noqa: E402
from models.prompting.methods.registry import ClassifierContext  # noqa: E402
from models.prompting.text_tower import UnsupportedBackboneError  # noqa: E402
from models.prompting.training import OptimizationConfig, train_prompt_parameters  # noqa: E402
from tests.catalog.catalog_editing import catalog_copy, edit  # noqa: E402,F401

DATA = Path(__file__).resolve().parents[1] / "data"
MODEL_FILE = DATA / "tiny_clip_openai.safetensors"
CASES_FILE = DATA / "ramt_reference.json"
TENSORS_FILE = DATA / "ramt_reference.safetensors"
TEMPLATES = ["a photo of a {}."]  # CUSTOM_TEMPLATES['Caltech101'], as the reference ran
TERMS = ("grad_ce", "grad_reg", "grad_a", "grad_kl")
# Mask gradients are small (max about 1e-2), so they are compared relative to their largest entry. Measured: the
# gradients of each term within 2.1e-6 of it (the KL term's; 5e-7 for the others), the applied gradient 4e-7.
RELATIVE = 1e-5

pytestmark = pytest.mark.skipif(
    not (MODEL_FILE.exists() and CASES_FILE.exists() and TENSORS_FILE.exists()),
    reason="reference tiny CLIP not vendored in tests/data",
)


@pytest.fixture(scope="module")
def reference():
    spec = json.loads(CASES_FILE.read_text())
    classnames = [name.replace("_", " ") for name in spec["classnames"]]  # as their TextEncoder does
    return spec, classnames, load_file(TENSORS_FILE)


def build(model, tokenizer, classnames, **overrides):
    context = ClassifierContext(model, tokenizer, list(classnames), templates=list(TEMPLATES))
    return get_method("ramt").build(context, parse_method_parameters("ramt", overrides))


def build_case(model, tokenizer, reference, case_name):
    spec, classnames, tensors = reference
    case = spec["cases"][case_name]
    assert case["THRESHOLD"] == 5e-3 and case["GDR_T"] == 1.0 and case["FUSE_ALPHA"] == 1.0
    classifier = build(model, tokenizer, classnames, mask_loss_weight=case["LOSS_WEIGHT"],
                       gradient_dropout_lambda=case["GDR_LAMBDA"])
    masks = dict(classifier.masks.named_parameters())
    assert list(masks) == case["masked_tensors"]  # their names, in their order (which orders the U draws)
    with torch.no_grad():
        for name, mask in masks.items():
            mask.copy_(tensors[f"{case_name}.mask.{name}"])
    return classifier.train(), case, masks


def assert_relative(actual, expected, name):
    bound = RELATIVE * expected.abs().max().item()
    difference = (actual - expected).abs().max().item()
    assert difference <= bound, f"{name}: off by {difference:.3g} (bound {bound:.3g})"


@pytest.mark.parametrize("case_name", ["ramt_1", "ramt_2"])
def test_logits_losses_and_gradients_match_the_authors_code(reference_clip, reference, case_name):
    """Masks about 16% off; LOSS_WEIGHT 1e-4 with GDR_LAMBDA 0.3, and 5e-2 with 1.0."""
    model, tokenizer = reference_clip
    _, _, tensors = reference
    classifier, case, masks = build_case(model, tokenizer, reference, case_name)
    images, labels = tensors["images"], tensors["labels"].long()
    off = {name: (mask <= 5e-3).float().mean().item() for name, mask in masks.items()}
    assert off == pytest.approx(case["fraction_of_mask_entries_off"])

    terms = classifier.loss_terms(images, labels)
    torch.testing.assert_close(terms["logits"].detach(), tensors[f"{case_name}.logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(terms["zero_shot_logits"], tensors[f"{case_name}.zs_logits"], atol=1e-5, rtol=0)
    features = F.normalize(classifier.image_features(images), dim=-1).detach()
    torch.testing.assert_close(features, tensors[f"{case_name}.image_features"], atol=1e-6, rtol=0)
    torch.testing.assert_close(classifier.zero_shot_text_features, tensors[f"{case_name}.text_features"],
                               atol=1e-6, rtol=0)
    for ours, theirs in (("cross_entropy", "ce_loss"), ("mask_loss", "mask_loss"), ("task_loss", "loss"),
                         ("knowledge_loss", "kl_loss")):
        assert terms[ours].item() == pytest.approx(case[theirs], abs=1e-5), ours
    assert classifier.masks.norm_sum().item() == pytest.approx(case["reg_norm_sum"], abs=1e-5)

    parameters = list(masks.values())
    gradients = {}
    for term, loss in zip(TERMS, ("cross_entropy", "mask_loss", "task_loss", "knowledge_loss")):
        gradients[term] = dict(zip(masks, torch.autograd.grad(terms[loss], parameters, retain_graph=True)))
        for name in masks:
            assert_relative(gradients[term][name], tensors[f"{case_name}.{term}.{name}"], f"{term}.{name}")

    # Gradient dropout per tensor, U from a generator seeded as theirs, drawn tensor by tensor in their order.
    generator = torch.Generator().manual_seed(case["U_seed"])
    lam = case["GDR_LAMBDA"]
    for name in masks:
        stored = {what: tensors[f"{case_name}.{what}.{name}"] for what in ("P", "U", "keep", "grad_a", "grad_final")}
        draws_before = generator.get_state()
        applied, probability, keep = gradient_dropout(gradients["grad_a"][name], gradients["grad_kl"][name], lam,
                                                      generator)
        assert torch.equal(torch.rand(stored["U"].shape, generator=torch.Generator().set_state(draws_before)),
                           stored["U"]), name
        conditioned = (gradients["grad_a"][name].abs() + gradients["grad_kl"][name].abs()) > 1e-3
        assert conditioned.float().mean() > 0.05  # 7-39% of the entries of each tensor
        torch.testing.assert_close(probability[conditioned], stored["P"][conditioned], atol=1e-5, rtol=0)
        # elsewhere a ratio of tiny gradients: the README measured up to 1.7e-4
        torch.testing.assert_close(probability, stored["P"], atol=1e-3, rtol=0)
        decided = (stored["P"] - stored["U"]).abs() > 1e-4  # a P within 1e-4 of U may flip (reference README)
        assert torch.equal(keep[decided].float(), stored["keep"][decided])
        with_their_keep = ((1 - lam) + lam * stored["keep"]) * gradients["grad_a"][name]
        assert_relative(with_their_keep, stored["grad_final"], f"grad_final.{name}")
        task = gradients["grad_a"][name]  # kept entries whole, dropped ones scaled by 1 - lambda (0 at lambda 1)
        torch.testing.assert_close(applied, torch.where(keep, task, (1 - lam) * task), atol=0, rtol=0)


@pytest.mark.parametrize("case_name", ["ramt_1", "ramt_2"])
def test_backward_step_leaves_the_authors_update_in_grad(reference_clip, reference, case_name):
    """The training loop's hook: two backward passes, then the dropped-out gradient in .grad, seeded as theirs."""
    model, tokenizer = reference_clip
    _, _, tensors = reference
    classifier, case, masks = build_case(model, tokenizer, reference, case_name)
    classifier.seed_gradient_dropout(case["U_seed"])
    loss, logits = classifier.backward_step(tensors["images"], tensors["labels"].long())
    assert loss.item() == pytest.approx(case["loss"], abs=1e-5)
    torch.testing.assert_close(logits.detach(), tensors[f"{case_name}.logits"], atol=1e-5, rtol=0)
    for name, mask in masks.items():
        decided = (tensors[f"{case_name}.P.{name}"] - tensors[f"{case_name}.U.{name}"]).abs() > 1e-4
        expected = tensors[f"{case_name}.grad_final.{name}"]
        assert_relative(mask.grad * decided, expected * decided, name)
    assert all(p.grad is None for p in model.parameters())


def test_with_every_mask_on_the_model_is_zero_shot_clip(reference_clip, reference):
    model, tokenizer = reference_clip
    _, classnames, tensors = reference
    images = tensors["images"]
    classifier = build(model, tokenizer, classnames)
    assert all(torch.equal(mask, torch.full_like(mask, 1e-2)) for mask in classifier.masks.parameters())
    with torch.no_grad():
        expected = model.logit_scale.exp() * F.normalize(model.encode_image(images), dim=-1) @ F.normalize(
            model.encode_text(tokenizer([f"a photo of a {name}." for name in classnames])), dim=-1).t()
        torch.testing.assert_close(classifier.eval()(images), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(classifier.zero_shot_logits(images), expected, atol=1e-5, rtol=0)
        for mask in classifier.masks.parameters():  # any mask above the threshold is "on"
            mask.uniform_(5.001e-3, 1.0)
        torch.testing.assert_close(classifier(images), expected, atol=1e-5, rtol=0)
        for mask in classifier.masks.parameters():  # at the threshold, off: the weight is zeroed
            mask[0].fill_(5e-3)
        masked = classifier.masks.masked_weights()
        assert not masked["conv1.weight"][0].any() and torch.equal(masked["conv1.weight"][1:],
                                                                     model.visual.conv1.weight[1:])
        assert not torch.allclose(classifier(images), expected, atol=1e-3)


def test_only_masks_learn_and_the_backbone_is_never_modified(reference_clip, reference):
    model, tokenizer = reference_clip
    _, classnames, tensors = reference
    before = {name: p.clone() for name, p in model.state_dict().items()}
    classifier = build(model, tokenizer, classnames)
    state = classifier.trainable_state()
    assert {name: tuple(t.shape) for name, t in state.items()} == {
        "masks.conv1.mask_real": (64, 3, 8, 8),
        **{f"masks.transformer.resblocks.{i}.attn.{part}": shape for i in range(2)
           for part, shape in (("mask_real", (192, 64)), ("out_proj.mask_real", (64, 64)))}}
    with torch.no_grad():
        for mask in classifier.masks.parameters():
            mask.normal_(1e-2, 1e-2)  # some entries off
    classifier.train().backward_step(tensors["images"], tensors["labels"].long())
    assert all(mask.grad is not None and mask.grad.any() for mask in classifier.masks.parameters())
    assert all(p.grad is None for p in model.parameters())
    assert all(isinstance(block.attn, torch.nn.MultiheadAttention) for block in model.visual.transformer.resblocks)
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    # other users of the same backbone see it unmasked
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(tensors["images"]),
                                   classifier.image_tower(tensors["images"]), atol=0, rtol=0)

    spec = get_method("ramt")
    assert spec.trains_prompts and not spec.frozen_image_encoder and spec.transfers_to_other_classes()
    assert not spec.transfers_to_other_classes({"text_head": "tip_adapter"})
    assert not spec.transfers_to_other_classes({"text_head": "coop",
                                                "head_parameters": {"class_specific_context": True}})
    assert spec.training_views.crop_scale == (0.5, 1.0) and spec.selection == "last"


def test_trains_through_the_loop_and_the_same_seed_draws_the_same_numbers(reference_clip, reference):
    model, tokenizer = reference_clip
    _, classnames, tensors = reference
    images, labels = tensors["images"], tensors["labels"].long()

    def train(seed):
        classifier = build(model, tokenizer, classnames)
        config = OptimizationConfig(epochs=2, batch_size=3, optimizer="adam", learning_rate=8e-5, weight_decay=0.0,
                                    warmup_epochs=0, seed=seed)
        history = train_prompt_parameters(classifier, images, labels, config)
        return history, classifier.trainable_state()

    history, state = train(1)
    assert history.steps == 4 and all(torch.isfinite(torch.tensor(history.epoch_losses)))
    assert any(not torch.equal(t, torch.full_like(t, 1e-2)) for t in state.values())
    _, again = train(1)
    assert all(torch.equal(state[name], again[name]) for name in state)
    # GDR with lambda 1 drops entries at random: another seed, other masks
    _, other = train(2)
    assert any(not torch.equal(state[name], other[name]) for name in state)


def test_coop_head_learns_its_context_with_the_masks(reference_clip, reference):
    model, tokenizer = reference_clip
    _, classnames, tensors = reference
    classifier = build(model, tokenizer, classnames, text_head="coop",
                       head_parameters={"n_context": 4, "context_init": "a photo of a"})
    coop = get_method("coop").build(ClassifierContext(model, tokenizer, list(classnames), list(TEMPLATES)),
                                    parse_method_parameters("coop", {"context_init": "a photo of a"}))
    with torch.no_grad():  # every mask on: CoOp's logits on zero-shot image features
        torch.testing.assert_close(classifier.eval()(tensors["images"]),
                                   coop(model.encode_image(tensors["images"])), atol=1e-5, rtol=0)
    assert set(classifier.trainable_state()) == {*(f"masks.{n}" for n, _ in classifier.masks.named_parameters()),
                                                 "prompt_head.context"}
    classifier.train().backward_step(tensors["images"], tensors["labels"].long())
    assert classifier.prompt_head.context.grad is not None and classifier.prompt_head.context.grad.any()


def test_tip_adapter_head_caches_masked_features_and_reloads(reference_clip, reference):
    model, tokenizer = reference_clip
    _, classnames, tensors = reference
    images, labels = tensors["images"], tensors["labels"].long()
    views = torch.stack([images, images.flip(-1)], dim=1)  # two passes per image
    classifier = build(model, tokenizer, classnames, text_head="tip_adapter",
                       head_parameters={"search_steps": [4, 3]})
    assert not classifier.trained_by_gradient
    training_set = TrainingSet(view_inputs=views, labels=labels, validation=(images, labels),
                               selection="few_shot_val")
    config = OptimizationConfig(epochs=1, batch_size=3, optimizer="adam", learning_rate=8e-5, weight_decay=0.0,
                                warmup_epochs=0)
    history = classifier.fit(training_set, config)
    assert history.details["cache_size"] == 6 and history.details["passes_per_key"] == 2
    with torch.no_grad():
        features = classifier.masked_features(views.flatten(0, 1)).reshape(6, 2, -1)
        head = classifier.cache_head
        torch.testing.assert_close(head.cache_keys, cache_keys_from_passes(features))
        image = F.normalize(classifier.masked_features(images), dim=-1)
        expected = tip_logits(image, head.class_text_weights, image @ head.cache_keys.t(),
                              cache_values(labels, len(classnames)), head.alpha, head.beta)
        logits = classifier.eval()(images)
        torch.testing.assert_close(logits, expected)
    state = classifier.trainable_state()
    assert {"cache_head.cache_keys", "cache_head.alpha"} <= set(state)
    fresh = build(model, tokenizer, classnames, text_head="tip_adapter")
    assert not fresh.load_state_dict(state, strict=False).unexpected_keys
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(images), logits)


@pytest.mark.parametrize("threshold", [0.0, -1e-3, 0.01, 0.02])
def test_a_threshold_outside_zero_to_init_scale_is_refused_when_the_catalog_loads(catalog_copy, threshold):
    edit(catalog_copy / "methods.yaml",
         lambda content: content["methods"]["ramt"]["parameters"].update(mask_threshold=threshold))
    with pytest.raises(CatalogError, match=r"^methods.yaml: methods.ramt: ramt: mask_threshold must lie in \(0, "):
        load_catalog(catalog_copy)


def test_a_threshold_in_a_grid_entry_is_refused_naming_it(catalog_copy):
    edit(catalog_copy / "experiments.yaml",
         lambda content: content["grid"].append({"method": "ramt", "parameters": {"mask_init_scale": 0.004}}))
    with pytest.raises(CatalogError) as refused:
        load_catalog(catalog_copy)
    message = str(refused.value)
    assert "experiments.yaml: grid[" in message and "ramt" in message and "mask_threshold" in message


@pytest.mark.parametrize("overrides, field", [({"text_head": "clip_adapter"}, "text_head"),
                                               ({"head_parameters": {"n_context": 4}}, "head_parameters"),
                                               ({"text_head": "coop", "head_parameters": {"rank": 2}}, "rank"),
                                               ({"gradient_dropout_lambda": 1.5}, "gradient_dropout_lambda")])
def test_bad_parameters_are_refused(overrides, field):
    with pytest.raises(ValueError, match=field):
        parse_method_parameters("ramt", overrides)


def test_a_resnet_image_tower_is_refused(reference_clip, reference):
    model, tokenizer = reference_clip
    _, classnames, _ = reference

    class NoViT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
            self.logit_scale = model.logit_scale

    context = ClassifierContext(NoViT(), tokenizer, list(classnames), list(TEMPLATES), text_tower=
                                ClassifierContext(model, tokenizer, list(classnames), list(TEMPLATES)).text_tower)
    with pytest.raises(UnsupportedBackboneError, match="ramt cannot hook the image tower"):
        get_method("ramt").build(context, parse_method_parameters("ramt", {}))
