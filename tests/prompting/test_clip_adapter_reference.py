"""CLIP-Adapter reproduces the authors' code (gaopengcuhk/CLIP-Adapter 08d07f8) on the reference tiny CLIP: text
features, logits, loss and the gradients of both adapter layers, for reductions 4 and 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("open_clip")
from safetensors.torch import load_file  # noqa: E402

from models.prompting.methods import get_method, parse_method_parameters  # noqa: E402
from models.prompting.methods.registry import ClassifierContext  # noqa: E402
from tests.prompting.reference_tolerance import assert_gradient_matches  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
CASES_FILE = DATA / "clip_adapter_reference.json"
TENSORS_FILE = DATA / "clip_adapter_reference.safetensors"

pytestmark = pytest.mark.skipif(not (CASES_FILE.exists() and TENSORS_FILE.exists()),
                                reason="CLIP-Adapter reference data not vendored in tests/data")

TOLERANCE = 1e-5
CASES = ("clip_adapter_1", "clip_adapter_2")
LAYERS = ("fc.0.weight", "fc.2.weight")


@pytest.fixture(scope="module")
def reference(reference_clip):
    model, tokenizer = reference_clip
    spec = json.loads(CASES_FILE.read_text())
    tensors = load_file(TENSORS_FILE)
    with torch.no_grad():
        image_features = model.encode_image(tensors["images"])
    return {"model": model, "tokenizer": tokenizer, "spec": spec, "tensors": tensors,
            "classnames": [name.replace("_", " ") for name in spec["classnames"]],
            "image_features": image_features, "labels": tensors["labels"].long()}


def build(reference, case: dict, overrides: dict | None = None):
    context = ClassifierContext(reference["model"], reference["tokenizer"], reference["classnames"],
                                [case["template"]])
    parameters = {"ratio": case["ratio"], "reduction": case["reduction"], **(overrides or {})}
    return get_method("clip_adapter").build(context, parse_method_parameters("clip_adapter", parameters))


def load_authors_initialisation(classifier, tensors, case_name: str) -> None:
    with torch.no_grad():
        for layer in LAYERS:
            classifier.adapter.get_parameter(layer).copy_(tensors[f"{case_name}.adapter.{layer}"])


def test_published_defaults():
    parameters = parse_method_parameters("clip_adapter", {})
    assert (parameters.ratio, parameters.reduction) == (0.2, 4)


@pytest.mark.parametrize("case_name", CASES)
def test_logits_and_adapter_gradients_match_the_authors_code(reference, case_name):
    case, tensors = reference["spec"]["cases"][case_name], reference["tensors"]
    classifier = build(reference, case)
    for layer in LAYERS:
        assert classifier.adapter.get_parameter(layer).shape == tensors[f"{case_name}.adapter.{layer}"].shape
    load_authors_initialisation(classifier, tensors, case_name)
    torch.testing.assert_close(classifier.class_text_features,
                               F.normalize(tensors[f"{case_name}.text_features_raw"], dim=-1), rtol=0, atol=1e-6)

    loss, logits = classifier.training_loss(reference["image_features"], reference["labels"])
    loss.backward()
    torch.testing.assert_close(logits.detach(), tensors[f"{case_name}.logits"], rtol=0, atol=TOLERANCE)
    assert abs(loss.item() - case["loss"]) < TOLERANCE
    for layer in LAYERS:
        gradient = classifier.adapter.get_parameter(layer).grad
        assert gradient.abs().max() > 1e-4, f"{layer}: a gradient too small to fail the comparison"
        assert_gradient_matches(gradient, tensors[f"{case_name}.grad.{layer}"], layer)


@pytest.mark.parametrize("case_name", CASES)
def test_init_seed_gives_the_authors_default_initialisation(reference, case_name):
    # Their Adapter after torch.manual_seed(seed) is nn.Linear's default draw, in the same order.
    case, tensors = reference["spec"]["cases"][case_name], reference["tensors"]
    classifier = build(reference, case, {"init_seed": case["seed"]})
    for layer in LAYERS:
        torch.testing.assert_close(classifier.adapter.get_parameter(layer).detach(),
                                   tensors[f"{case_name}.adapter.{layer}"], rtol=0, atol=0)


def test_the_residual_ratio_mixes_the_adapter_output_with_the_raw_feature(reference):
    case = reference["spec"]["cases"]["clip_adapter_1"]
    features = reference["image_features"]
    with torch.no_grad():
        untouched = build(reference, case, {"ratio": 0.0})(features)
        zero_shot = build(reference, case)  # any adapter; ratio 0 ignores it
        expected = zero_shot.logits_from(features, zero_shot.class_text_features)
        adapted = build(reference, case)(features)
    assert torch.equal(untouched, expected)
    assert not torch.allclose(adapted, expected, atol=1e-3)
