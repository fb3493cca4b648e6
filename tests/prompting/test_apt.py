"""APT on the reference tiny CLIP: zero gates are zero-shot CLIP whatever the prompts, the gated prompt term is the
hand-computed aggregation, only prompts and gates train, bad input is refused, and the shared loop trains it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

open_clip = pytest.importorskip("open_clip")
from safetensors.torch import load_file  # noqa: E402

from models.catalog import CatalogError  # noqa: E402
from models.catalog.grid import parse_methods  # noqa: E402
from models.prompting.attention_variants import decoupled_block, prompt_aggregation  # noqa: E402
from models.prompting.methods import get_method, parse_method_parameters  # noqa: E402
from models.prompting.methods.registry import ClassifierContext  # noqa: E402
from models.prompting.training import OptimizationConfig, train_prompt_parameters  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
INPUTS_FILE = DATA / "coop_cocoop_reference.safetensors"
CLASSNAMES = ["golden retriever", "tabby cat", "sports car", "airliner", "red panda"]
TEMPLATES = ["a photo of a {}."]
SMALL = {"prompt_depth": 2, "n_tokens": 3}  # the tiny CLIP has 2 blocks per tower

pytestmark = pytest.mark.skipif(not INPUTS_FILE.exists(), reason="reference inputs not vendored in tests/data")


@pytest.fixture(scope="module")
def inputs():
    stored = load_file(INPUTS_FILE)
    return stored["images"], stored["labels"].long()


def build(model, tokenizer, method="apt", **overrides):
    context = ClassifierContext(model, tokenizer, CLASSNAMES, templates=list(TEMPLATES))
    return get_method(method).build(context, parse_method_parameters(method, overrides))


@pytest.mark.parametrize("depth", [2, 1])  # 1: the second block runs frozen
def test_zero_gates_are_zero_shot_clip_whatever_the_prompts(reference_clip, inputs, depth):
    model, tokenizer = reference_clip
    images, _ = inputs
    classifier = build(model, tokenizer, **{**SMALL, "prompt_depth": depth})
    with torch.no_grad():
        for prompt in classifier.layer_prompts:
            prompt.mul_(50.0)  # large prompts: still no effect while the gates are zero
        expected = build(model, tokenizer, "zero_shot")(model.encode_image(images))
        assert torch.allclose(classifier.image_features(images), model.encode_image(images), atol=1e-5, rtol=0)
        assert torch.allclose(classifier(images), expected, atol=1e-5, rtol=0)
        classifier.gates.gates.fill_(0.5)
        assert not torch.allclose(classifier(images), expected, atol=1e-3)  # the identity is not vacuous


def test_the_prompt_term_is_the_gated_softmax_over_the_prompts_alone(reference_clip):
    """The aggregation on a hand case (1 query, 2 prompts, 2-wide head), then one block: its output minus the frozen
    block's equals out_proj of g * softmax_P(Q K_P^T / sqrt(d)) V_P, before the MLP (checked on ln_2's input)."""
    queries = torch.tensor([[[[1.0, 0.0]]]])
    keys = torch.tensor([[[[2.0, 0.0], [0.0, 1.0]]]])
    values = torch.tensor([[[[1.0, 2.0], [3.0, -1.0]]]])
    scores = torch.tensor([2.0, 0.0]) / 2 ** 0.5
    weights = torch.exp(scores) / torch.exp(scores).sum()
    expected = weights[0] * values[0, 0, 0] + weights[1] * values[0, 0, 1]
    assert torch.allclose(prompt_aggregation(queries, keys, values)[0, 0, 0], expected, atol=1e-6)

    model, _ = reference_clip
    block = model.visual.transformer.resblocks[0]
    generator = torch.Generator().manual_seed(0)
    width, heads = block.attn.embed_dim, block.attn.num_heads
    x = torch.randn(2, 5, width, generator=generator)
    prompts = torch.randn(3, width, generator=generator)
    gate = torch.tensor([0.7] + [-0.3] * (heads - 1)).view(1, -1, 1, 1)
    captured = []
    hook = block.ln_2.register_forward_hook(lambda module, args, output: captured.append(args[0]))
    try:
        decoupled_block(block, x, prompts, None, gate, update_prompts=False)
        frozen = block(x)
    finally:
        hook.remove()
    after_attention, frozen_after_attention = captured
    head_width = width // heads

    def split(t):
        return t.view(t.shape[0], t.shape[1], heads, head_width).transpose(1, 2)

    w_q, w_k, w_v = block.attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = block.attn.in_proj_bias.chunk(3)
    q = split(block.ln_1(x) @ w_q.T + b_q)
    k_p = split((block.ln_1(prompts) @ w_k.T + b_k).unsqueeze(0))
    v_p = split((block.ln_1(prompts) @ w_v.T + b_v).unsqueeze(0))
    term = gate * torch.softmax(q @ k_p.transpose(-1, -2) / head_width ** 0.5, dim=-1) @ v_p
    term = term.transpose(1, 2).reshape(2, 5, width) @ block.attn.out_proj.weight.T
    assert torch.allclose(after_attention - frozen_after_attention, term, atol=1e-5)
    assert not torch.allclose(frozen, decoupled_block(block, x, prompts, None, gate, False)[0], atol=1e-4)


def test_gradients_reach_prompts_and_gates_only(reference_clip, inputs):
    model, tokenizer = reference_clip
    images, labels = inputs
    classifier = build(model, tokenizer, **SMALL)
    loss, _ = classifier.training_loss(images, labels)
    loss.backward()
    trainable = {name for name, p in classifier.named_parameters() if p.requires_grad}
    assert trainable == {"layer_prompts.0", "layer_prompts.1", "gates.gates"} == set(classifier.trainable_state())
    assert classifier.gates.gates.grad.abs().sum() > 0
    # At zero gates the prompts have no effect, so no gradient yet (a LoRA with B = 0).
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in classifier.layer_prompts)
    assert all(p.grad is None for p in model.parameters())
    classifier.zero_grad()
    with torch.no_grad():
        classifier.gates.gates.fill_(0.1)
    classifier.training_loss(images, labels)[0].backward()
    assert all(p.grad.abs().sum() > 0 for p in classifier.layer_prompts)
    assert all(p.grad is None for p in model.parameters())


def test_depth_beyond_the_tower_is_refused(reference_clip):
    model, tokenizer = reference_clip
    with pytest.raises(ValueError, match="vision prompt_depth must be in 1..2"):
        build(model, tokenizer, prompt_depth=3, n_tokens=2)
    with pytest.raises(ValueError, match="vision prompt_depth must be in 1..2"):
        build(model, tokenizer)  # the published depth 12 does not fit the 2-block tower


@pytest.mark.parametrize("overrides, message", [
    ({"n_tokens": 0}, r"apt: n_tokens must be an integer >= 1"),
    ({"prompt_depth": 0}, r"apt: prompt_depth must be an integer >= 1"),
])
def test_bad_parameters_are_refused_when_the_catalog_loads(tmp_path, overrides, message):
    methods_file = tmp_path / "methods.yaml"
    methods_file.write_text(yaml.safe_dump({"methods": {"apt": {"parameters": overrides}}}))
    with pytest.raises(CatalogError, match=r"methods.yaml: methods.apt: " + message):
        parse_methods(methods_file)


def test_training_loop_trains_apt_from_images(reference_clip, inputs):
    model, tokenizer = reference_clip
    images, labels = inputs
    classifier = build(model, tokenizer, **SMALL)
    before = {k: v.clone() for k, v in classifier.trainable_state().items()}
    history = train_prompt_parameters(classifier, images, labels,
                                      OptimizationConfig(epochs=2, batch_size=4, learning_rate=0.05, warmup_epochs=0))
    after = classifier.trainable_state()
    assert not torch.equal(before["gates.gates"], after["gates.gates"])
    assert not torch.equal(before["layer_prompts.0"], after["layer_prompts.0"])  # moved once the gates opened
    assert all(torch.isfinite(torch.tensor(loss)) for loss in history.epoch_losses)
    assert all(not p.requires_grad for p in model.parameters())
    assert F.cross_entropy(classifier(images), labels).isfinite()
