"""DPL on the reference tiny CLIP: the class prompt's tokens attend among themselves exactly as in the frozen model
whatever the prompts, zero gates are zero-shot CLIP, the prompts read the class prompt's words (not the padding),
only prompts and gates train, bad input is refused, and the shared loop trains it."""

from __future__ import annotations

import pytest
import torch
import yaml

open_clip = pytest.importorskip("open_clip")

from models.catalog import CatalogError  # noqa: E402
from models.catalog.grid import parse_methods  # noqa: E402
from models.prompting.attention_variants import decoupled_block  # noqa: E402
from models.prompting.methods import get_method, parse_method_parameters  # noqa: E402
from models.prompting.methods.registry import ClassifierContext  # noqa: E402
from models.prompting.training import OptimizationConfig, train_prompt_parameters  # noqa: E402

CLASSNAMES = ["golden retriever", "tabby cat", "sports car", "airliner", "red panda"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}."]
SMALL = {"n_context": 3}


def build(model, tokenizer, method="dpl", classnames=CLASSNAMES, **overrides):
    context = ClassifierContext(model, tokenizer, list(classnames), templates=list(TEMPLATES))
    return get_method(method).build(context, parse_method_parameters(method, overrides))


def text_inputs(model, tokenizer):
    classifier = build(model, tokenizer, **SMALL)
    x, mask, _ = classifier.text_tower.inputs(classifier.token_embeddings, classifier.token_ids)
    return classifier, x, mask


def test_instance_attention_is_the_frozen_models_whatever_the_prompts(reference_clip):
    """Each block, with its gate at zero, gives X the frozen block's output for any prompts, under the causal mask;
    with a gate, X's output moves and the prompts' own output depends on X (they read the words)."""
    model, tokenizer = reference_clip
    classifier, x, mask = text_inputs(model, tokenizer)
    generator = torch.Generator().manual_seed(0)
    heads = model.transformer.resblocks[0].attn.num_heads
    zero, gate = torch.zeros(1, heads, 1, 1), torch.full((1, heads, 1, 1), 0.4)
    with torch.no_grad():
        for block in model.transformer.resblocks:
            frozen = block(x, attn_mask=mask)
            for scale in (0.02, 5.0):
                prompts = scale * torch.randn(x.shape[0], 3, x.shape[-1], generator=generator)
                x_out, p_out = decoupled_block(block, x, prompts, mask, zero, update_prompts=True)
                assert torch.allclose(x_out, frozen, atol=1e-5, rtol=0)
                assert p_out.shape == prompts.shape and not torch.allclose(p_out, prompts)
            gated, p_out = decoupled_block(block, x, prompts, mask, gate, update_prompts=True)
            assert not torch.allclose(gated, frozen, atol=1e-4)
            _, p_other = decoupled_block(block, x.flip(0), prompts, mask, gate, update_prompts=True)
            assert not torch.allclose(p_out, p_other, atol=1e-4)  # language-conditioned: other words, other prompts


def test_zero_gates_are_zero_shot_clip_with_the_first_template(reference_clip):
    model, tokenizer = reference_clip
    classifier = build(model, tokenizer, **SMALL)
    with torch.no_grad():
        for prompt in classifier.layer_prompts:
            prompt.mul_(50.0)
        plain = model.encode_text(tokenizer([f"a photo of a {name}." for name in CLASSNAMES]))
        assert torch.allclose(classifier.text_features(), plain, atol=1e-5, rtol=0)
        classifier.gates.gates.fill_(0.5)
        assert not torch.allclose(classifier.text_features(), plain, atol=1e-3)


def test_prompts_never_read_the_padding_so_passes_do_not_matter(reference_clip):
    """Classes of different token lengths share a pass; each class's features equal its features alone."""
    model, tokenizer = reference_clip
    # Depth 1: the prompts the first block updates (having read the words) are the ones the second block's X reads.
    classnames = ["cat", "golden retriever", "red panda asleep on a branch"]
    classifier = build(model, tokenizer, classnames=classnames, **SMALL)
    lengths = {int(ids.argmax()) for ids in classifier.token_ids}
    assert len(lengths) > 1  # the pass holds padding for its shorter prompts
    with torch.no_grad():
        classifier.gates.gates.fill_(0.5)
        together = classifier.text_features()
        alone = build(model, tokenizer, classnames=classnames, **SMALL, text_chunk_size=1)
        alone.load_state_dict(classifier.state_dict())
        assert torch.allclose(alone.text_features(), together, atol=1e-5, rtol=0)


def test_gradients_reach_prompts_and_gates_only(reference_clip, toy_features):
    model, tokenizer = reference_clip
    features, labels = toy_features
    classifier = build(model, tokenizer, **SMALL, prompt_depth=2)
    with torch.no_grad():
        classifier.gates.gates.fill_(0.1)
    labels = labels % len(CLASSNAMES)
    classifier.training_loss(features, labels)[0].backward()
    trainable = {name for name, p in classifier.named_parameters() if p.requires_grad}
    assert trainable == {"layer_prompts.0", "layer_prompts.1", "gates.gates"} == set(classifier.trainable_state())
    assert all(p.grad.abs().sum() > 0 for p in classifier.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.parameters())


def test_depth_beyond_the_tower_is_refused(reference_clip):
    model, tokenizer = reference_clip
    with pytest.raises(ValueError, match="text prompt_depth must be in 1..2"):
        build(model, tokenizer, prompt_depth=3)


@pytest.mark.parametrize("overrides, message", [
    ({"n_context": 0}, r"dpl: n_context must be an integer >= 1"),
    ({"prompt_depth": 0}, r"dpl: prompt_depth must be an integer >= 1"),
    ({"template": "a photo"}, r"dpl: template must be a string with exactly one"),
])
def test_bad_parameters_are_refused_when_the_catalog_loads(tmp_path, overrides, message):
    methods_file = tmp_path / "methods.yaml"
    methods_file.write_text(yaml.safe_dump({"methods": {"dpl": {"parameters": overrides}}}))
    with pytest.raises(CatalogError, match=r"methods.yaml: methods.dpl: " + message):
        parse_methods(methods_file)


def test_training_loop_trains_dpl_on_cached_features(reference_clip, toy_features):
    model, tokenizer = reference_clip
    features, labels = toy_features
    classifier = build(model, tokenizer, **SMALL)
    before = {k: v.clone() for k, v in classifier.trainable_state().items()}
    history = train_prompt_parameters(classifier, features, labels % len(CLASSNAMES),
                                      OptimizationConfig(epochs=2, batch_size=8, learning_rate=0.05, warmup_epochs=0))
    after = classifier.trainable_state()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(torch.tensor(loss)) for loss in history.epoch_losses)
    assert all(not p.requires_grad for p in model.parameters())
