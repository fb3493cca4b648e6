"""CoOp reproduces the authors' code on the reference tiny CLIP (logits within 1e-5; gradients: reference_tolerance)."""

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
from tests.prompting.reference_tolerance import assert_gradient_matches  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
MODEL_FILE = DATA / "tiny_clip_openai.safetensors"
CASES_FILE = DATA / "coop_cocoop_reference.json"

pytestmark = pytest.mark.skipif(
    not (MODEL_FILE.exists() and CASES_FILE.exists()), reason="reference tiny CLIP not vendored in tests/data"
)


@pytest.fixture(scope="module")
def reference(reference_clip):
    model, tokenizer = reference_clip
    tensors = load_file(DATA / "coop_cocoop_reference.safetensors")
    spec = json.loads(CASES_FILE.read_text())
    classnames = [name.replace("_", " ") for name in spec["classnames"]]
    return model, tokenizer, tensors, spec["cases"], classnames


def build_coop(reference, case: dict):
    model, tokenizer, _, _, classnames = reference
    parameters = parse_method_parameters(
        "coop",
        {
            "n_context": case["n_ctx"],
            "context_init": case["ctx_init"] or None,
            "class_specific_context": case["csc"],
            "class_token_position": case["class_token_position"],
        },
    )
    context = ClassifierContext(model, tokenizer, classnames, templates=["a photo of a {}."])
    return get_method("coop").build(context, parameters)


@pytest.mark.parametrize(
    "case_name",
    [f"coop_rand_{p}_{k}" for p in ("end", "middle", "front") for k in ("generic", "csc")],
)
def test_coop_logits_and_context_gradient_match_reference(reference, case_name):
    model, _, tensors, cases, _ = reference
    classifier = build_coop(reference, cases[case_name])
    with torch.no_grad():
        classifier.context.copy_(tensors[f"{case_name}.ctx"])
    with torch.no_grad():
        image_features = model.encode_image(tensors["images"])
    logits = classifier(image_features)
    loss = F.cross_entropy(logits, tensors["labels"].long())
    loss.backward()
    assert torch.allclose(logits, tensors[f"{case_name}.logits"], atol=1e-5, rtol=0)
    assert_gradient_matches(classifier.context.grad, tensors[f"{case_name}.ctx_grad"], "context")
    assert abs(loss.item() - cases[case_name]["loss"]) < 1e-5


def test_word_initialised_context_equals_plain_encode_text(reference):
    model, tokenizer, tensors, cases, classnames = reference
    classifier = build_coop(reference, cases["coop_init_end"])
    with torch.no_grad():
        classifier.text_tower.cut_padding = False  # the whole context, as encode_text runs it
        whole = classifier.text_features()
        classifier.text_tower.cut_padding = True
        learned = classifier.text_features()
        plain = model.encode_text(tokenizer([f"a photo of a {name}." for name in classnames]))
    assert torch.allclose(whole, plain, atol=1e-6, rtol=0)
    assert torch.allclose(learned, plain, atol=1e-5, rtol=0)  # without the padding: fp32 rounding apart
    assert torch.allclose(learned, tensors["coop_init_end.encode_text_direct"], atol=1e-5, rtol=0)
