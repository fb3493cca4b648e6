"""Class prompts in passes of text_chunk_size (models/prompting/text_passes.py): on the reference tiny CLIP with 37
classes, passes of 8 give the logits and gradients of one pass for every method that encodes learned prompts (and
TPT through them); the passes really are of 8 and are recomputed in the backward, and the forward keeps far less
for the backward than one pass does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from models.catalog.testtime_settings import published_settings  # noqa: E402
from models.prompting.methods import get_method, parse_method_parameters  # noqa: E402
from models.prompting.methods.registry import ClassifierContext  # noqa: E402
from models.prompting.text_passes import encode_in_passes  # noqa: E402
from models.testtime.tuning import TestTimeTuner  # noqa: E402
from tests.prompting.reference_tolerance import assert_gradient_matches  # noqa: E402

INPUTS_FILE = Path(__file__).resolve().parents[1] / "data" / "coop_cocoop_reference.safetensors"
N_CLASSES, CHUNK = 37, 8  # 4 full passes and one of 5
CLASSNAMES = list(IMAGENET_CLASSNAMES[:N_CLASSES])
UNCHUNKED = 1024  # more than the prompts of any case here: one pass

# The tiny CLIP has 2 layers per tower, so the published depths (9) are lowered to 2.
CASES = {
    "coop": ("coop", {}),
    "coop-class-specific-middle": ("coop", {"class_specific_context": True, "class_token_position": "middle"}),
    "kgcoop": ("kgcoop", {}),
    "prograd": ("prograd", {}),
    "cocoop": ("cocoop", {}),
    "maple": ("maple", {"prompt_depth": 2}),
    "maple-fp16-rounded": ("maple", {"prompt_depth": 2, "round_injected_prompts_to_fp16": True}),
    "promptsrc": ("promptsrc", {"text_prompt_depth": 2, "vision_prompt_depth": 2}),
}

pytestmark = pytest.mark.skipif(not INPUTS_FILE.exists(), reason="reference inputs not vendored in tests/data")


@pytest.fixture(scope="module")
def batch(reference_clip):
    """Images, their frozen image features and labels among the 37 classes."""
    model, _ = reference_clip
    images = load_file(INPUTS_FILE)["images"][:4]
    with torch.no_grad():
        features = model.encode_image(images)
    return images, features, torch.tensor([0, 9, 22, 36])


def build(reference_clip, method: str, overrides: dict, text_chunk_size: int):
    model, tokenizer = reference_clip
    context = ClassifierContext(model, tokenizer, CLASSNAMES, templates=["a photo of a {}."])
    parameters = parse_method_parameters(method, {**overrides, "text_chunk_size": text_chunk_size})
    return get_method(method).build(context, parameters)


def inputs_of(method: str, batch) -> torch.Tensor:
    images, features, _ = batch
    return features if get_method(method).frozen_image_encoder else images


def training_step(classifier, inputs: torch.Tensor, labels: torch.Tensor):
    """One step's logits and every trainable parameter's gradient, through the method's own backward_step (ProGrad
    projects its gradient there)."""
    classifier.train()
    _, logits = classifier.backward_step(inputs, labels)
    return logits.detach(), {name: p.grad.clone() for name, p in classifier.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", sorted(CASES))
def test_passes_of_eight_classes_equal_one_pass(reference_clip, batch, case):
    method, overrides = CASES[case]
    inputs, labels = inputs_of(method, batch), batch[2]
    one_pass = build(reference_clip, method, overrides, UNCHUNKED)
    chunked = build(reference_clip, method, overrides, CHUNK)
    logits, gradients = training_step(one_pass, inputs, labels)
    chunked_logits, chunked_gradients = training_step(chunked, inputs, labels)
    assert logits.shape == (len(labels), N_CLASSES)
    assert torch.allclose(chunked_logits, logits, atol=1e-5, rtol=0)
    assert set(chunked_gradients) == set(gradients) == set(one_pass.trainable_state())
    for name, gradient in gradients.items():
        assert gradient.abs().max() > 0, f"{name}: no gradient reached it"
        assert_gradient_matches(chunked_gradients[name], gradient, f"{case} {name}",
                                fp16_rounded=bool(overrides.get("round_injected_prompts_to_fp16")))
    # evaluation: plain passes (no checkpointing without gradients)
    one_pass.eval(), chunked.eval()
    with torch.no_grad():
        assert torch.allclose(chunked(inputs), one_pass(inputs), atol=1e-5, rtol=0)


def test_tpt_tunes_the_same_through_passes(reference_clip, batch):
    """TPT's entropy step on one image's views (CoOp's context from "a photo of a") through passes of 8 classes."""
    _, features, _ = batch
    views = features.repeat(2, 1) + 0.05 * torch.randn(8, features.shape[1], generator=torch.Generator().manual_seed(0))
    settings = published_settings("tpt", {"n_views": 8, "selection_fraction": 0.25, "steps": 2})
    predictions = []
    for text_chunk_size in (UNCHUNKED, CHUNK):
        classifier = build(reference_clip, "coop", {"context_init": "a photo of a"}, text_chunk_size)
        predictions.append(TestTimeTuner(classifier, settings).tune_and_predict(views))
    one_pass, chunked = predictions
    assert torch.allclose(chunked.logits_before, one_pass.logits_before, atol=1e-5, rtol=0)
    assert not torch.allclose(one_pass.logits_after, one_pass.logits_before, atol=1e-4, rtol=0), "TPT changed nothing"
    assert torch.allclose(chunked.logits_after, one_pass.logits_after, atol=1e-5, rtol=0)
    assert chunked.views_kept == one_pass.views_kept
    assert chunked.loss_after == pytest.approx(one_pass.loss_after, abs=1e-5)


def test_each_pass_holds_at_most_the_chunk_and_is_recomputed_in_the_backward(reference_clip, batch):
    classifier = build(reference_clip, "coop", {}, CHUNK)
    pass_sizes = []
    hook = classifier.text_tower.ln_final.register_forward_hook(
        lambda module, args, output: pass_sizes.append(output.shape[0]))
    try:
        logits = classifier(batch[1])
        forward_sizes = list(pass_sizes)
        logits.sum().backward()
    finally:
        hook.remove()
    assert forward_sizes == [8, 8, 8, 8, 5]
    assert pass_sizes == forward_sizes + forward_sizes[::-1]  # the backward recomputes each pass, last first


def test_cocoop_passes_run_over_image_class_prompts(reference_clip, batch):
    """4 images x 37 classes = 148 prompts, image-major, in passes of 8 (one pass holds the end of one image's
    classes and the start of the next's)."""
    classifier = build(reference_clip, "cocoop", {}, CHUNK)
    pass_sizes = []
    hook = classifier.text_tower.ln_final.register_forward_hook(
        lambda module, args, output: pass_sizes.append(output.shape[0]))
    try:
        with torch.no_grad():
            classifier(batch[1])
    finally:
        hook.remove()
    assert pass_sizes == [8] * 18 + [4]


def saved_for_backward(run) -> tuple[torch.Tensor, dict[int, int]]:
    """run()'s output and the distinct storages (data pointer -> bytes) autograd keeps for the backward while its
    forward runs (outside checkpointed passes, whose own hooks keep nothing but their inputs)."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = run()
    return output, storages


def test_the_forward_keeps_one_pass_of_activations_at_most(reference_clip, batch):
    """What the forward keeps for the backward: everything of every prompt in one pass; with passes of 8 (under
    checkpointing) none of the transformer's activations, so far less."""
    kept = {}
    for text_chunk_size in (UNCHUNKED, CHUNK):
        classifier = build(reference_clip, "coop", {}, text_chunk_size)
        # the frozen weights are read by the backward, not allocated for it
        weights = {t.untyped_storage().data_ptr() for t in [*reference_clip[0].parameters(), *classifier.buffers()]}
        logits, storages = saved_for_backward(lambda: classifier(batch[1]))
        kept[text_chunk_size] = sum(n for pointer, n in storages.items() if pointer not in weights)
        logits.sum().backward()  # still trains
        assert classifier.context.grad is not None
    tower = classifier.text_tower
    length = tower.used_length(classifier.pieces.token_ids)  # the positions a pass runs (padding cut)
    prompt_tokens_bytes = N_CLASSES * length * tower.width * 4  # one (C, L, width) fp32 activation
    assert kept[UNCHUNKED] > 10 * prompt_tokens_bytes  # every layer's activations of every prompt
    assert kept[CHUNK] < prompt_tokens_bytes  # not even one full-width activation of the 37 prompts
    assert kept[CHUNK] * 20 < kept[UNCHUNKED]


def test_encode_in_passes_covers_every_prompt_once():
    calls = []

    def encode(start, stop):
        calls.append((start, stop))
        return torch.arange(start, stop, dtype=torch.float32)

    with torch.no_grad():
        assert torch.equal(encode_in_passes(encode, 10, 4), torch.arange(10, dtype=torch.float32))
    assert calls == [(0, 4), (4, 8), (8, 10)]
    calls.clear()
    assert torch.equal(encode_in_passes(encode, 3, 4), torch.arange(3, dtype=torch.float32))
    assert calls == [(0, 3)]


@pytest.mark.parametrize("method", ["coop", "cocoop", "maple", "ivlp", "promptsrc", "kgcoop", "prograd", "pre"])
@pytest.mark.parametrize("bad", [0, -3])
def test_text_chunk_size_must_be_positive(method, bad):
    with pytest.raises(ValueError, match="text_chunk_size"):
        parse_method_parameters(method, {"text_chunk_size": bad})
