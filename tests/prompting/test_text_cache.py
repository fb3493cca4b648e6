"""The zero-shot text features are encoded once per (backbone, class names, templates) and read from the cache
(models.prompting.text_cache), bit for bit, by every method that uses the template ensemble."""

import pytest
import torch

from models.experiments import build_classifier
from models.prompting.text_cache import TextCacheWarning, TextFeatureCache

CLASSNAMES = ["cat", "dog", "bird"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


def _cache(tmp_path, weights="ab" * 32):
    return TextFeatureCache(tmp_path / "text", "reference", weights)


def _count_text_passes(model, monkeypatch):
    calls = []
    original = model.transformer.forward
    monkeypatch.setattr(model.transformer, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


@pytest.mark.parametrize("method", ["zero_shot", "kgcoop", "prograd"])
def test_the_ensemble_is_encoded_once_and_read_back_bit_for_bit(tmp_path, reference_clip, method, monkeypatch):
    model, tokenizer = reference_clip
    plain = build_classifier(model, tokenizer, method, {}, CLASSNAMES, TEMPLATES)
    calls = _count_text_passes(model, monkeypatch)
    first = build_classifier(model, tokenizer, method, {}, CLASSNAMES, TEMPLATES, text_cache=_cache(tmp_path))
    encoded = len(calls)
    assert encoded >= len(TEMPLATES)
    again = build_classifier(model, tokenizer, method, {}, CLASSNAMES, TEMPLATES, text_cache=_cache(tmp_path))
    text_passes_of_method = encoded - len(TEMPLATES)  # a learned prompt's own text passes are not cached
    assert len(calls) - encoded == text_passes_of_method
    for one, other in ((plain, first), (first, again)):
        assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), other.state_dict().values()))


def test_other_classes_templates_or_weights_are_other_entries(tmp_path, reference_clip):
    model, tokenizer = reference_clip
    cache = _cache(tmp_path)
    build_classifier(model, tokenizer, "zero_shot", {}, CLASSNAMES, TEMPLATES, text_cache=cache)
    build_classifier(model, tokenizer, "zero_shot", {}, CLASSNAMES[:2], TEMPLATES, text_cache=cache)
    build_classifier(model, tokenizer, "zero_shot", {}, CLASSNAMES, TEMPLATES[:1], text_cache=cache)
    build_classifier(model, tokenizer, "zero_shot", {}, CLASSNAMES, TEMPLATES, text_cache=_cache(tmp_path, "cd" * 32))
    assert len(list((tmp_path / "text").glob("*.safetensors"))) == 4


def test_a_damaged_entry_is_moved_aside_and_recomputed(tmp_path, reference_clip):
    model, tokenizer = reference_clip
    cache = _cache(tmp_path)
    reference = build_classifier(model, tokenizer, "zero_shot", {}, CLASSNAMES, TEMPLATES, text_cache=cache)
    (entry,) = (tmp_path / "text").glob("*.safetensors")
    data = bytearray(entry.read_bytes())
    data[-2] ^= 0xFF
    entry.write_bytes(bytes(data))
    with pytest.warns(TextCacheWarning, match=entry.name):
        rebuilt = build_classifier(model, tokenizer, "zero_shot", {}, CLASSNAMES, TEMPLATES, text_cache=cache)
    assert torch.equal(rebuilt.text_features(), reference.text_features())
    assert entry.with_name(entry.name + ".corrupt").exists() and entry.exists()
