"""KgCoOp reproduces the authors' code on the reference tiny CLIP, and reduces to CoOp when its weight is 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
from safetensors.torch import load_file  # noqa: E402

from models.prompting.methods import get_method, parse_method_parameters  # noqa: E402
from models.prompting.methods.registry import ClassifierContext  # noqa: E402
from tests.prompting.reference_tolerance import assert_gradient_matches  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
MODEL_FILE = DATA / "tiny_clip_openai.safetensors"
CASES_FILE = DATA / "kgcoop_reference.json"
TENSORS_FILE = DATA / "kgcoop_reference.safetensors"
SHARED_INPUTS_FILE = DATA / "coop_cocoop_reference.safetensors"  # images and labels of every reference case

pytestmark = pytest.mark.skipif(
    not all(path.exists() for path in (MODEL_FILE, CASES_FILE, TENSORS_FILE, SHARED_INPUTS_FILE)),
    reason="KgCoOp reference data not vendored in tests/data",
)

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference(reference_clip):
    model, tokenizer = reference_clip
    spec = json.loads(CASES_FILE.read_text())
    shared = load_file(SHARED_INPUTS_FILE)
    with torch.no_grad():
        image_features = model.encode_image(shared["images"])
    return {
        "model": model,
        "tokenizer": tokenizer,
        "tensors": load_file(TENSORS_FILE),
        "case": spec["cases"]["kgcoop"],
        "classnames": [name.replace("_", " ") for name in spec["classnames"]],
        "image_features": image_features,
        "labels": shared["labels"].long(),
    }


def build(reference, method: str, overrides: dict):
    templates = [reference["case"]["hand_template"]]
    context = ClassifierContext(reference["model"], reference["tokenizer"], reference["classnames"], templates)
    return get_method(method).build(context, parse_method_parameters(method, overrides))


def set_reference_context(classifier, reference) -> None:
    with torch.no_grad():
        classifier.context.copy_(reference["tensors"]["kgcoop.ctx"])


def loss_and_context_gradient(classifier, reference):
    classifier.context.grad = None
    loss, logits = classifier.training_loss(reference["image_features"], reference["labels"])
    loss.backward()
    return logits.detach(), loss.detach(), classifier.context.grad.clone()


def test_published_defaults():
    parameters = parse_method_parameters("kgcoop", {})
    assert (parameters.n_context, parameters.context_init, parameters.knowledge_weight) == (4, "a photo of a", 8.0)


def test_logits_knowledge_score_loss_and_gradient_match_reference(reference):
    case, tensors = reference["case"], reference["tensors"]
    classifier = build(reference, "kgcoop", {"n_context": case["n_ctx"], "knowledge_weight": case["W"]})
    assert classifier.context.shape == tensors["kgcoop.ctx"].shape
    set_reference_context(classifier, reference)

    assert torch.allclose(classifier.hand_text_features, tensors["kgcoop.hand_text_features"], atol=TOLERANCE, rtol=0)
    with torch.no_grad():
        score = classifier.knowledge_score()
    assert abs(score.item() - tensors["kgcoop.kg_score"].item()) < TOLERANCE
    assert abs(score.item() - case["kg_score"]) < TOLERANCE

    logits, loss, context_gradient = loss_and_context_gradient(classifier, reference)
    assert torch.allclose(logits, tensors["kgcoop.logits"], atol=TOLERANCE, rtol=0)
    assert abs(loss.item() - case["loss"]) < TOLERANCE
    assert_gradient_matches(context_gradient, tensors["kgcoop.ctx_grad"], "context")


def test_knowledge_score_is_zero_at_the_hand_crafted_prompt(reference):
    # Initialised from "a photo of a" with the template "a photo of a {}.", the prompts ARE the hand-crafted ones.
    classifier = build(reference, "kgcoop", {})
    with torch.no_grad():
        assert abs(classifier.knowledge_score().item()) < 1e-6
        set_reference_context(classifier, reference)
        assert classifier.knowledge_score().item() > 1e-3


def test_zero_knowledge_weight_gives_coop_loss_and_gradient(reference):
    overrides = {"n_context": 4, "context_init": "a photo of a"}
    kgcoop = build(reference, "kgcoop", {**overrides, "knowledge_weight": 0.0})
    coop = build(reference, "coop", overrides)
    set_reference_context(kgcoop, reference)
    set_reference_context(coop, reference)
    _, kgcoop_loss, kgcoop_gradient = loss_and_context_gradient(kgcoop, reference)
    _, coop_loss, coop_gradient = loss_and_context_gradient(coop, reference)
    assert torch.equal(kgcoop_loss, coop_loss)
    assert torch.equal(kgcoop_gradient, coop_gradient)
    # With the published weight the knowledge term changes both (so the comparison above can fail).
    weighted = build(reference, "kgcoop", overrides)
    set_reference_context(weighted, reference)
    _, weighted_loss, weighted_gradient = loss_and_context_gradient(weighted, reference)
    assert weighted_loss.item() > coop_loss.item()
    assert not torch.allclose(weighted_gradient, coop_gradient)


def test_training_loss_adds_the_knowledge_term_to_the_cross_entropy(reference):
    classifier = build(reference, "kgcoop", {})
    set_reference_context(classifier, reference)
    loss, logits = classifier.training_loss(reference["image_features"], reference["labels"])
    with torch.no_grad():
        expected = classifier.loss(logits, reference["labels"]) + 8.0 * classifier.knowledge_score()
    assert torch.allclose(loss.detach(), expected, atol=1e-6, rtol=0)


def test_several_templates_are_ensembled(reference):
    templates = ["a photo of a {}.", "a drawing of a {}."]
    context = ClassifierContext(reference["model"], reference["tokenizer"], reference["classnames"], templates)
    classifier = get_method("kgcoop").build(context, parse_method_parameters("kgcoop", {}))
    single = [
        torch.nn.functional.normalize(
            reference["model"].encode_text(reference["tokenizer"]([t.format(c) for c in reference["classnames"]])),
            dim=-1,
        )
        for t in templates
    ]
    expected = torch.nn.functional.normalize(torch.stack(single).mean(dim=0), dim=-1)
    assert torch.allclose(classifier.hand_text_features, expected, atol=1e-6, rtol=0)
    assert torch.allclose(classifier.hand_text_features.norm(dim=-1), torch.ones(len(reference["classnames"])))
