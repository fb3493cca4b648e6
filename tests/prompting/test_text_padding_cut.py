"""The text tower drops the padding after the last end-of-text token (models/prompting/text_tower.py): under CLIP's
causal mask those positions cannot reach a pooled feature, so features and gradients equal the whole context's (within the
fp32 rounding the reference tests allow: measured, 6e-7 of the largest gradient entry, as far from float64 as the
whole context's), for plain prompts and for deep prompts; towers whose padding is not inert keep their whole context."""

from __future__ import annotations

import copy

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from models.prompting.deep_prompts import encode_text_with_deep_prompts  # noqa: E402
from models.prompting.text_tower import TextTower  # noqa: E402
from tests.prompting.reference_tolerance import assert_gradient_matches  # noqa: E402

PROMPTS = ["a photo of a cat.", "a blurry photo of a very large red triangle on a table.", "dog"]


def _inputs(reference_clip):
    model, tokenizer = reference_clip
    tower = TextTower(model)
    ids = tokenizer(PROMPTS, context_length=tower.context_length)
    embeddings = tower.embed_tokens(ids).detach().clone().requires_grad_(True)
    return tower, ids, embeddings


def _features_and_gradient(tower, embeddings, ids, cut: bool, encode=None):
    tower.cut_padding = cut
    embeddings.grad = None
    features = (encode or tower)(embeddings, ids)
    features.pow(2).sum().backward()
    return features.detach(), embeddings.grad.detach().clone()


def test_the_used_length_ends_at_the_last_end_of_text_token(reference_clip):
    tower, ids, _ = _inputs(reference_clip)
    assert tower.padding_is_inert
    last = int(ids.argmax(dim=-1).max())
    assert last + 1 < tower.context_length  # the case cuts something
    assert tower.used_length(ids) == last + 1
    tower.cut_padding = False
    assert tower.used_length(ids) == tower.context_length


def test_cut_features_and_gradients_equal_the_whole_context(reference_clip):
    tower, ids, embeddings = _inputs(reference_clip)
    whole, whole_gradient = _features_and_gradient(tower, embeddings, ids, cut=False)
    cut, cut_gradient = _features_and_gradient(tower, embeddings, ids, cut=True)
    torch.testing.assert_close(cut, whole, rtol=1e-5, atol=1e-5)
    used = tower.used_length(ids)
    assert_gradient_matches(cut_gradient[:, :used], whole_gradient[:, :used])
    # the padding never reached a feature, so its gradient is zero either way
    assert not cut_gradient[:, used:].any() and not whole_gradient[:, used:].any()


def test_deep_prompts_see_the_same_cut(reference_clip):
    tower, ids, embeddings = _inputs(reference_clip)
    generator = torch.Generator().manual_seed(0)
    layer_prompts = [torch.randn(2, tower.width, generator=generator) * 0.02]

    def encode(x, token_ids):
        return encode_text_with_deep_prompts(tower, x, token_ids, layer_prompts, prompt_start=1)

    whole, whole_gradient = _features_and_gradient(tower, embeddings, ids, cut=False, encode=encode)
    cut, cut_gradient = _features_and_gradient(tower, embeddings, ids, cut=True, encode=encode)
    torch.testing.assert_close(cut, whole, rtol=1e-5, atol=1e-5)
    used = tower.used_length(ids)
    assert_gradient_matches(cut_gradient[:, :used], whole_gradient[:, :used])


def test_a_tower_without_a_causal_mask_or_pooling_elsewhere_keeps_its_context(reference_clip):
    model, tokenizer = reference_clip
    unmasked = copy.deepcopy(model)
    unmasked.attn_mask = None
    tower = TextTower(unmasked)
    ids = tokenizer(PROMPTS, context_length=tower.context_length)
    assert not tower.padding_is_inert and tower.used_length(ids) == tower.context_length
    last_pooled = copy.deepcopy(model)
    last_pooled.text_pool_type = "last"
    tower = TextTower(last_pooled)
    assert not tower.padding_is_inert and tower.used_length(ids) == tower.context_length
    # a mask that lets a position see a later one is not causal
    leaky = copy.deepcopy(model)
    mask = leaky.attn_mask.clone()
    mask[0, -1] = 0.0
    leaky.attn_mask = mask
    assert not TextTower(leaky).causal()
