"""MaPLe reproduces the authors' code on the reference tiny CLIP (outputs to 1e-5, gradients: reference_tolerance)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")
from safetensors.torch import load_file  # noqa: E402

from models.prompting.deep_prompts import PromptedVisionTower, encode_text_with_deep_prompts  # noqa: E402
from models.prompting.methods import get_method, parse_method_parameters  # noqa: E402
from models.prompting.methods.registry import ClassifierContext  # noqa: E402
from models.prompting.prompt_assembly import assemble_prompts  # noqa: E402
from models.prompting.text_tower import UnsupportedBackboneError  # noqa: E402
from tests.prompting.reference_tolerance import assert_gradient_matches  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
MODEL_FILE = DATA / "tiny_clip_openai.safetensors"
CASES_FILE = DATA / "maple_reference.json"
INPUTS_FILE = DATA / "coop_cocoop_reference.safetensors"

pytestmark = pytest.mark.skipif(
    not (MODEL_FILE.exists() and CASES_FILE.exists() and INPUTS_FILE.exists()),
    reason="reference tiny CLIP not vendored in tests/data",
)


@pytest.fixture(scope="module")
def reference(reference_clip):
    model, tokenizer = reference_clip
    spec = json.loads(CASES_FILE.read_text())
    classnames = [name.replace("_", " ") for name in spec["classnames"]]
    tensors = load_file(DATA / "maple_reference.safetensors")
    inputs = load_file(INPUTS_FILE)
    return model, tokenizer, tensors, inputs, spec["cases"]["maple"], classnames


def build_maple(model, tokenizer, classnames, **overrides):
    parameters = parse_method_parameters("maple", overrides)
    context = ClassifierContext(model, tokenizer, classnames, templates=["a photo of a {}."])
    return get_method("maple").build(context, parameters)


def build_reference_case(reference, round_to_fp16: bool = True):
    model, tokenizer, tensors, inputs, case, classnames = reference
    classifier = build_maple(
        model, tokenizer, classnames,
        n_context=case["n_ctx"], context_init=case["ctx_init"], prompt_depth=case["prompt_depth"],
        round_injected_prompts_to_fp16=round_to_fp16,
    )
    stored = {k[len("maple.prompt_learner."):]: v for k, v in tensors.items() if k.startswith("maple.prompt_learner.")}
    classifier.prompt_learner.load_state_dict(stored, strict=True)
    return classifier


def test_maple_matches_reference(reference):
    _, _, tensors, inputs, case, _ = reference
    # The original's `.half()` on injected prompts is kept in its fp32 run, so the comparison turns it on.
    classifier = build_reference_case(reference, round_to_fp16=True)
    assert torch.equal(classifier.pieces.token_ids, tensors["maple.tokenized_prompts"].to(classifier.pieces.token_ids))
    stored = [k[len("maple.prompt_learner."):] for k in tensors if k.startswith("maple.prompt_learner.")]
    # load_state_dict was strict: every stored parameter has a counterpart; nothing else is learned.
    assert set(classifier.trainable_state()) == {f"prompt_learner.{name}" for name in stored}

    text_features = classifier.text_features()
    image_features = classifier.image_features(inputs["images"])
    logits = classifier.logits_from(image_features, text_features)
    loss = F.cross_entropy(logits, inputs["labels"].long())
    loss.backward()

    assert torch.allclose(text_features, tensors["maple.text_features"], atol=1e-5, rtol=0)
    assert torch.allclose(image_features, tensors["maple.image_features"], atol=1e-5, rtol=0)
    assert torch.allclose(logits, tensors["maple.logits"], atol=1e-5, rtol=0)
    assert torch.allclose(classifier(inputs["images"]), logits, atol=1e-6, rtol=0)
    assert abs(loss.item() - case["loss"]) < 1e-5
    gradients = dict(classifier.prompt_learner.named_parameters())
    for name in stored:
        # The original rounds every injected prompt with `.half()` (proj(ctx), the layer prompts of both towers),
        # so the gradients of the parameters that reach the towers only that way are fp16-rounded too.
        assert_gradient_matches(gradients[name].grad, tensors[f"maple.grad.{name}"], name,
                                fp16_rounded=name != "ctx")


def test_without_fp16_rounding_only_rounding_level_differences_remain(reference):
    """The default keeps prompts in fp32; it differs from the reference only by fp16 rounding of the prompts."""
    _, _, tensors, inputs, _, _ = reference
    classifier = build_reference_case(reference, round_to_fp16=False)
    with torch.no_grad():
        text, image = classifier.text_features(), classifier.image_features(inputs["images"])
    for ours, theirs in ((text, tensors["maple.text_features"]), (image, tensors["maple.image_features"])):
        difference = (ours - theirs).abs().max().item()
        assert 0 < difference < 1e-4


def test_unprompted_towers_reduce_to_clip(reference):
    """Exact reductions: depth 1 and no appended vision tokens is CoOp-style text + plain encode_image; with the
    learned context set to the "a photo" embeddings the text side is plain encode_text of the full prompt."""
    model, tokenizer, _, inputs, _, classnames = reference
    classifier = build_maple(model, tokenizer, classnames, prompt_depth=1)
    with torch.no_grad():
        plain_text = model.encode_text(tokenizer([f"a photo of a {name}." for name in classnames]))
        classifier.text_tower.cut_padding = False  # the whole context, as encode_text runs it
        assert torch.allclose(classifier.text_features(), plain_text, atol=1e-6, rtol=0)
        classifier.text_tower.cut_padding = True  # without the padding: fp32 rounding apart
        assert torch.allclose(classifier.text_features(), plain_text, atol=1e-5, rtol=0)
        plain_image = model.encode_image(inputs["images"])
        no_prompts = torch.zeros(0, classifier.vision_tower.width)
        assert torch.allclose(classifier.vision_tower(inputs["images"], no_prompts), plain_image, atol=1e-6, rtol=0)


def test_deep_prompts_only_act_from_layer_one(reference):
    """A layer-1 prompt equal to what layer 0 produced at those positions changes nothing; a different one does."""
    model, tokenizer, _, inputs, _, classnames = reference
    vision = PromptedVisionTower(model)
    prompts = torch.randn(2, vision.width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        shallow = vision(inputs["images"], prompts)
        captured = {}
        hook = vision.visual.transformer.resblocks[0].register_forward_hook(
            lambda module, args, output: captured.setdefault("x", output)
        )
        vision(inputs["images"], prompts)
        hook.remove()
        layer_one_input = captured["x"][:, -2:]  # (B, 2, D): per-image prompts as layer 0 left them
        assert torch.allclose(vision(inputs["images"], prompts, [layer_one_input]), shallow, atol=1e-6, rtol=0)
        assert not torch.allclose(vision(inputs["images"], prompts, [torch.zeros_like(prompts)]), shallow, atol=1e-4)

        classifier = build_maple(model, tokenizer, classnames, prompt_depth=1)
        embeddings = assemble_prompts(classifier.prompt_learner.ctx, classifier.pieces)
        token_ids = classifier.pieces.token_ids
        text = encode_text_with_deep_prompts(classifier.text_tower, embeddings, token_ids, [])
        changed = encode_text_with_deep_prompts(
            classifier.text_tower, embeddings, token_ids, [torch.zeros(2, classifier.text_tower.width)]
        )
        assert torch.allclose(text, classifier.text_features(), atol=0, rtol=0)
        assert not torch.allclose(changed, text, atol=1e-4)


def test_resnet_visual_tower_is_rejected_before_any_work(reference, monkeypatch):
    model, tokenizer, _, _, _, classnames = reference
    from open_clip.modified_resnet import ModifiedResNet

    resnet_model = open_clip.model.build_model_from_openai_state_dict(
        load_file(MODEL_FILE), quick_gelu=True, cast_dtype=None
    )
    resnet_model.visual = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=32, heads=1, image_size=32, width=8)
    calls = []
    monkeypatch.setattr(
        "models.prompting.methods.maple.split_context_prompt", lambda *args, **kwargs: calls.append(args)
    )
    with pytest.raises(UnsupportedBackboneError, match="ModifiedResNet.*ViT"):
        build_maple(resnet_model, tokenizer, classnames)
    assert calls == []


def test_prompt_depth_is_validated(reference):
    model, tokenizer, _, _, _, classnames = reference
    with pytest.raises(ValueError, match="prompt_depth must be in 1..2"):
        build_maple(model, tokenizer, classnames, prompt_depth=9)
