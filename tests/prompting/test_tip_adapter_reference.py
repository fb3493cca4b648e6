"""Tip-Adapter and Tip-Adapter-F reproduce the authors' code (gaopengcuhk/Tip-Adapter d0e2d6f) on the reference tiny
CLIP: the cache, the zero-shot classifier, the logits of both cases and Tip-Adapter-F's key gradient."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("open_clip")
from safetensors.torch import load_file  # noqa: E402

from models.experiments.training_sets import TrainingSet  # noqa: E402
from models.prompting.methods import get_method, parse_method_parameters  # noqa: E402
from models.prompting.methods.registry import ClassifierContext  # noqa: E402
from tests.prompting.reference_tolerance import assert_gradient_matches  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
CASES_FILE = DATA / "tip_adapter_reference.json"
TENSORS_FILE = DATA / "tip_adapter_reference.safetensors"

pytestmark = pytest.mark.skipif(not (CASES_FILE.exists() and TENSORS_FILE.exists()),
                                reason="Tip-Adapter reference data not vendored in tests/data")

# Logits carry the factor 100: a relative tolerance, or an absolute one of 1e-4 (reference README, "Numerics").
RELATIVE, ABSOLUTE = 1e-6, 1e-4
CASES = ("tip_1", "tip_2")


@pytest.fixture(scope="module")
def reference(reference_clip):
    model, tokenizer = reference_clip
    spec = json.loads(CASES_FILE.read_text())
    tensors = load_file(TENSORS_FILE)
    with torch.no_grad():
        image_features = model.encode_image(tensors["images"])  # raw, as the feature cache holds them
    return {"model": model, "tokenizer": tokenizer, "spec": spec, "tensors": tensors,
            "classnames": [name.replace("_", " ") for name in spec["classnames"]],
            "image_features": image_features, "labels": tensors["labels"].long()}


def build(reference, method: str, overrides: dict):
    context = ClassifierContext(reference["model"], reference["tokenizer"], reference["classnames"],
                                reference["spec"]["template"])
    return get_method(method).build(context, parse_method_parameters(method, overrides))


def cache_of_the_given_images(reference) -> TrainingSet:
    # The reference cache: the 6 images, one pass (augment_epoch 1), no augmentation; no val images.
    return TrainingSet(view_inputs=reference["image_features"][:, None], labels=reference["labels"])


def assert_logits_match(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=RELATIVE, atol=ABSOLUTE)


def fitted_tip_adapter(reference, case: dict):
    classifier = build(reference, "tip_adapter", {"init_alpha": case["alpha"], "init_beta": case["beta"]})
    history = classifier.fit(cache_of_the_given_images(reference))
    assert history.details["alpha"] == case["alpha"] and history.details["beta"] == case["beta"]
    return classifier


def test_cache_and_zero_shot_classifier_match_the_authors_code(reference):
    tensors = reference["tensors"]
    classifier = fitted_tip_adapter(reference, reference["spec"]["cases"]["tip_1"])
    torch.testing.assert_close(classifier.class_text_weights, tensors["clip_weights"].t(), rtol=0, atol=1e-6)
    torch.testing.assert_close(classifier.cache_keys, tensors["cache_keys"].t(), rtol=0, atol=1e-6)
    # one key per image: the cache is (N, E), its values one-hot over the experiment's classes
    assert classifier.cache_keys.shape == (6, 32)
    torch.testing.assert_close(F.one_hot(classifier.cache_labels, len(reference["classnames"])).float(),
                               tensors["cache_values"], rtol=0, atol=0)


@pytest.mark.parametrize("case_name", CASES)
def test_zero_shot_and_tip_logits_match_the_authors_code(reference, case_name):
    case, tensors = reference["spec"]["cases"][case_name], reference["tensors"]
    classifier = fitted_tip_adapter(reference, case)
    with torch.no_grad():
        logits = classifier(reference["image_features"])
        zero_shot = build(reference, "tip_adapter", {"init_alpha": 0.0, "init_beta": case["beta"]})
        zero_shot.fit(cache_of_the_given_images(reference))
        zero_shot_logits = zero_shot(reference["image_features"])
    assert_logits_match(zero_shot_logits, tensors[f"{case_name}.zs_logits"])
    assert_logits_match(logits, tensors[f"{case_name}.tip_logits"])
    loss = F.cross_entropy(logits, reference["labels"]).item()
    assert abs(loss - case["tip_ce_loss"]) <= 1e-5 * abs(case["tip_ce_loss"])
    # the zero-shot factor is the authors' constant 100, not this model's logit scale (14.3): the cache term matters
    assert abs(float(classifier.logit_scale) - 100.0) > 50
    assert not torch.allclose(logits, zero_shot_logits, atol=1e-2)


@pytest.mark.parametrize("case_name", CASES)
def test_tip_adapter_f_logits_and_key_gradient_match_the_authors_code(reference, case_name):
    case, tensors = reference["spec"]["cases"][case_name], reference["tensors"]
    classifier = build(reference, "tip_adapter_f", {"init_alpha": case["alpha"], "init_beta": case["beta"]})
    classifier.build_cache(cache_of_the_given_images(reference))
    assert classifier.cache_keys.requires_grad
    torch.testing.assert_close(classifier.cache_keys.detach(), tensors[f"{case_name}.tipf.adapter_init"], rtol=0,
                               atol=1e-6)
    loss, logits = classifier.training_loss(reference["image_features"], reference["labels"])
    loss.backward()
    assert_logits_match(logits.detach(), tensors[f"{case_name}.tipf.logits"])
    assert abs(loss.item() - case["tipf_ce_loss"]) <= 1e-5 * abs(case["tipf_ce_loss"])
    assert_gradient_matches(classifier.cache_keys.grad, tensors[f"{case_name}.tipf.adapter_grad"], "adapter weight")
    assert classifier.cache_keys.grad.abs().max() > 1e-3  # a gradient that can fail the comparison
