"""TPT and DiffTPT's tuning loop: published properties, determinism, caching, reset, and bad input."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from models.augmentation.generation import GenerationProvenance
from models.catalog.testtime_settings import ViewRecipe
from models.experiments import build_classifier
from models.testtime.selection import (ViewLayout, average_entropy, difftpt_code_filter, difftpt_paper_filter,
                                       lowest_entropy, view_entropy)
from models.testtime.tuning import TestTimeTuner, published_settings, tune_test_images
from models.testtime.views import conventional_views, input_size, view_generator


def coop_from_words(backbone, classnames, words="a photo of a"):
    return build_classifier(backbone.model, backbone.tokenizer, "coop", {"context_init": words}, classnames,
                            ["a photo of a {}."])


def run(backbone, images, settings, generator=None, **kwargs):
    tuner = TestTimeTuner(coop_from_words(backbone, images.classnames), settings)
    return tune_test_images(tuner, True, backbone, images.image_dir, images.relative_paths, images.content_hashes,
                            generator=generator, **kwargs)


class ShiftedCopies:
    """A deterministic stand-in generator: each variation is the source rolled by a seeded offset."""

    provenance = GenerationProvenance("shifted-copies", "embedded_img2img", "test", "0" * 64, 1, 0.5, None, 32)

    def __init__(self):
        self.calls = 0

    def generate(self, images, seeds, num_variations):
        self.calls += 1
        out = []
        for image, seed in zip(images, seeds):
            rng = np.random.default_rng(seed)
            array = np.asarray(image.convert("RGB"))
            out.append([Image.fromarray(np.roll(array, tuple(rng.integers(-3, 4, 2)), axis=(0, 1)))
                        for _ in range(num_variations)])
        return out


def test_views_are_drawn_per_image_from_the_seed(tiny_clip, shapes_test_images):
    from models.data.index import load_images

    image = load_images(shapes_test_images.image_dir, shapes_test_images.relative_paths[:1])[0]
    digest = shapes_test_images.content_hashes[0]
    preprocess, size = tiny_clip.preprocess_eval, input_size(tiny_clip.preprocess_eval)
    for augmentation in ("random_resized_crop", "augmix"):
        recipe = ViewRecipe(8, augmentation)
        first = conventional_views(image, preprocess, size, recipe, view_generator(1, digest))
        again = conventional_views(image, preprocess, size, recipe, view_generator(1, digest))
        other = conventional_views(image, preprocess, size, recipe, view_generator(2, digest))
        assert first.shape == (8, 3, size, size)
        assert torch.equal(first, again)
        assert torch.equal(first[0], preprocess(image.convert("RGB")))  # v0 is the original, untouched
        assert torch.equal(first[0], other[0]) and not torch.equal(first[1:], other[1:])
    rrc = conventional_views(image, preprocess, size, ViewRecipe(8, "random_resized_crop"), view_generator(1, digest))
    mixed = conventional_views(image, preprocess, size, ViewRecipe(8, "augmix"), view_generator(1, digest))
    assert not torch.equal(rrc[1:], mixed[1:])


def test_selection_keeps_the_lowest_entropy_views_and_the_loss_is_the_mean_predictions_entropy():
    logits = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 2.0]])
    assert lowest_entropy(logits, 0.4).tolist() == [3, 1]
    assert lowest_entropy(logits, 0.1).tolist() == [3]  # int(5 * 0.1) = 0: at least one view is kept
    probabilities = logits.softmax(-1).mean(0)
    assert float(average_entropy(logits)) == pytest.approx(float(-(probabilities * probabilities.log()).sum()), abs=1e-6)
    entropies = view_entropy(logits)
    assert entropies[3] < entropies[1] < entropies[4] < entropies[2] < entropies[0]


def test_difftpt_filters():
    # v0 votes class 0; views 1-3 agree with it, 4-5 vote class 1 confidently (dissimilar logits).
    logits = torch.tensor([[4.0, 0, 0], [3.0, 0, 0], [6.0, 0, 0], [2.0, 0.5, 0], [0, 9.0, 0], [0, 8.0, 0]])
    kept = difftpt_code_filter(logits, cosine_fraction=0.6, entropy_fraction=0.5)
    # cosine keeps int(5 * 0.6) = 3 of views 1-5 (1, 2, 3: aligned with v0), v0 joins: 4 candidates, 2 kept by entropy
    assert sorted(kept.tolist()) == [0, 2]
    features = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    features[5] = features[0] * 2  # generated view 5 is the original's direction
    layout = ViewLayout(n_conventional=3, n_generated=2)
    kept = difftpt_paper_filter(logits, features, layout, cosine_fraction=0.5, entropy_fraction=0.5)
    assert 5 in kept.tolist() and 4 not in kept.tolist()  # the generated view most like v0 in image space
    assert set(kept.tolist()) - {4, 5} == {2, 0}  # conventional (v0 included): the 2 lowest-entropy of 4


def test_zero_steps_predict_exactly_what_zero_shot_predicts(tiny_clip, shapes_test_images):
    """METHODS-2 (TPT): with no step, TPT from "a photo of a" is zero-shot CLIP with "a photo of a {}."."""
    from models.experiments import features_for_images, predict_log_probabilities

    images = shapes_test_images
    result = run(tiny_clip, images, published_settings("tpt", {"steps": 0, "n_views": 8}))
    zero_shot = build_classifier(tiny_clip.model, tiny_clip.tokenizer, "zero_shot", {}, images.classnames,
                                 ["a photo of a {}."])
    features = features_for_images(tiny_clip, images.image_dir, images.relative_paths, images.content_hashes, None)
    expected = predict_log_probabilities(zero_shot, features)
    np.testing.assert_allclose(result.log_probabilities, expected, atol=1e-4)
    np.testing.assert_allclose(result.log_probabilities_before, result.log_probabilities, atol=1e-4)


def test_one_step_lowers_the_entropy_of_the_selected_views_and_changes_predictions(tiny_clip, noisy_test_images):
    result = run(tiny_clip, noisy_test_images, published_settings("tpt", {"n_views": 32}))
    lowered = np.array(result.loss_after) < np.array(result.loss_before)
    assert lowered.mean() >= 0.9, (result.loss_before, result.loss_after)
    assert all(k == 3 for k in result.views_kept)  # int(32 * 0.1)
    assert not np.allclose(result.log_probabilities, result.log_probabilities_before)


def test_prompt_and_optimizer_are_reset_for_every_image(tiny_clip, shapes_test_images):
    images = shapes_test_images
    settings = published_settings("tpt", {"n_views": 16, "steps": 2})
    both = run(tiny_clip, images, settings)
    tuner = TestTimeTuner(coop_from_words(tiny_clip, images.classnames), settings)
    last_alone = tune_test_images(tuner, True, tiny_clip, images.image_dir, images.relative_paths[-1:],
                                  images.content_hashes[-1:])
    np.testing.assert_array_equal(both.log_probabilities[-1], last_alone.log_probabilities[0])
    assert torch.equal(tuner.tuned[0].detach(), tuner.initial[0]) is False  # tuned away from the start ...
    tuner.reset()
    assert torch.equal(tuner.tuned[0].detach(), tuner.initial[0])  # ... and back


def test_reruns_are_identical_and_the_seed_changes_the_views(tiny_clip, shapes_test_images, tmp_path):
    settings = published_settings("tpt", {"n_views": 16})
    first = run(tiny_clip, shapes_test_images, settings)
    cached = run(tiny_clip, shapes_test_images, settings, feature_cache_dir=tmp_path / "features")
    from_cache = run(tiny_clip, shapes_test_images, settings, feature_cache_dir=tmp_path / "features")
    np.testing.assert_array_equal(first.log_probabilities, run(tiny_clip, shapes_test_images, settings).log_probabilities)
    np.testing.assert_array_equal(first.log_probabilities, cached.log_probabilities)
    np.testing.assert_array_equal(first.log_probabilities, from_cache.log_probabilities)
    assert cached.encoded_views == 16 * len(shapes_test_images.relative_paths) and from_cache.encoded_views == 0
    other = run(tiny_clip, shapes_test_images, dataclasses.replace(settings, seed=2))
    assert not np.array_equal(first.log_probabilities, other.log_probabilities)


def test_a_prompted_image_tower_is_tuned_through_its_vision_prompts(tiny_clip, shapes_test_images):
    images = shapes_test_images
    maple = build_classifier(tiny_clip.model, tiny_clip.tokenizer, "maple", {"prompt_depth": 2},
                             images.classnames, [images.template])
    tuner = TestTimeTuner(maple, published_settings("tpt", {"n_views": 8}))
    result = tune_test_images(tuner, False, tiny_clip, images.image_dir, images.relative_paths[:4],
                              images.content_hashes[:4])
    assert result.encoded_views == 0  # nothing through the feature cache: the views pass the prompted tower
    assert not np.allclose(result.log_probabilities, result.log_probabilities_before)


@pytest.mark.parametrize("rule", ["code", "paper"])
def test_difftpt_scores_generated_views_cached_per_image(tiny_clip, shapes_test_images, tmp_path, rule):
    images = shapes_test_images
    settings = published_settings("difftpt", {"n_views": 9, "n_generated_views": 8, "filter": rule, "steps": 2})
    generator = ShiftedCopies()
    first = run(tiny_clip, images, settings, generator=generator, variation_cache_dir=tmp_path / "generated")
    calls = generator.calls
    again = run(tiny_clip, images, settings, generator=generator, variation_cache_dir=tmp_path / "generated")
    assert generator.calls == calls  # the second run read every image's variations from the cache
    np.testing.assert_array_equal(first.log_probabilities, again.log_probabilities)
    if rule == "code":  # 16 other views, 12 by cosine, + v0 = 13, 30 % by entropy = 3
        assert set(first.views_kept) == {3}
    tpt = run(tiny_clip, images, published_settings("tpt", {"n_views": 9, "steps": 2}))
    assert not np.array_equal(first.log_probabilities, tpt.log_probabilities)


def test_bad_settings_and_inputs_fail_clearly(tiny_clip, shapes_test_images, tmp_path):
    with pytest.raises(ValueError, match="no setting"):
        published_settings("tpt", {"selection_ratio": 0.1})
    with pytest.raises(ValueError, match="selection_fraction"):
        published_settings("tpt", {"selection_fraction": 0.0})
    with pytest.raises(ValueError, match="mode"):
        published_settings("ttt")
    with pytest.raises(ValueError, match="generated"):
        published_settings("tpt", {"n_generated_views": 3})
    with pytest.raises(ValueError, match="VariationGenerator"):
        run(tiny_clip, shapes_test_images, published_settings("difftpt", {"n_views": 4, "n_generated_views": 2}))
    broken = tmp_path / "broken"
    (broken / "circle").mkdir(parents=True)
    (broken / "circle" / "bad.png").write_bytes(b"not a png")
    tuner = TestTimeTuner(coop_from_words(tiny_clip, shapes_test_images.classnames),
                          published_settings("tpt", {"n_views": 4}))
    with pytest.raises(Exception, match="bad.png"):
        tune_test_images(tuner, True, tiny_clip, broken, ["circle/bad.png"], ["0" * 64])
    zero_shot = build_classifier(tiny_clip.model, tiny_clip.tokenizer, "zero_shot", {}, ["a", "b"], ["{}"])
    with pytest.raises(ValueError, match="no prompt parameters"):
        TestTimeTuner(zero_shot, published_settings("tpt"))


def test_few_views_keep_at_least_one(tiny_clip, shapes_test_images):
    result = run(tiny_clip, shapes_test_images, published_settings("tpt", {"n_views": 4}))
    assert set(result.views_kept) == {1}
    assert all(math.isfinite(x) for x in result.loss_after)


def test_difftpt_generates_each_images_pool_once_for_every_seed(tiny_clip, shapes_test_images, tmp_path):
    """As the authors (one offline pool per image), the generated views do not depend on the run's seed."""
    images, generator = shapes_test_images, ShiftedCopies()
    settings = published_settings("difftpt", {"n_views": 5, "n_generated_views": 4, "steps": 1})
    run(tiny_clip, images, settings, generator=generator, variation_cache_dir=tmp_path)
    calls = generator.calls
    run(tiny_clip, images, dataclasses.replace(settings, seed=2), generator=generator, variation_cache_dir=tmp_path)
    assert generator.calls == calls
    run(tiny_clip, images, dataclasses.replace(settings, seed=2, generation_seed=None), generator=generator,
        variation_cache_dir=tmp_path)
    assert generator.calls > calls  # generation_seed None: the run's seed draws a new pool


def test_the_zero_shot_start_takes_the_dataset_templates_words_so_no_step_is_its_zero_shot_row(
        tiny_clip, noisy_test_images, tmp_path):
    import json

    from models.experiments import features_for_images, predict_log_probabilities
    from models.testtime.start import starting_classifier, zero_shot_context

    assert zero_shot_context("template", ["a blurry photo of a {}."]) == "a blurry photo of a"
    assert zero_shot_context("template", ["a photo of a {} object."]) == "a photo of a"  # name not at the end
    assert zero_shot_context("template", ["a {}.", "the {}."]) == "a photo of a"  # an ensemble has no one context
    assert zero_shot_context("itap of a", ["a blurry photo of a {}."]) == "itap of a"
    images = noisy_test_images
    (tmp_path / "prompt_config.json").write_text(json.dumps({"method": "zero_shot", "config_hash": "h"}))
    classifier, start = starting_classifier(tmp_path, tiny_clip, images.classnames, [images.template], "template")
    assert start["context_init"] == images.template.removesuffix(" {}.")
    tuner = TestTimeTuner(classifier, published_settings("tpt", {"steps": 0, "n_views": 4}))
    result = tune_test_images(tuner, True, tiny_clip, images.image_dir, images.relative_paths, images.content_hashes)
    zero_shot = build_classifier(tiny_clip.model, tiny_clip.tokenizer, "zero_shot", {}, images.classnames,
                                 [images.template])
    features = features_for_images(tiny_clip, images.image_dir, images.relative_paths, images.content_hashes, None)
    np.testing.assert_allclose(result.log_probabilities, predict_log_probabilities(zero_shot, features), atol=1e-4)


def test_a_partly_cached_view_set_is_encoded_whole_so_its_bits_do_not_depend_on_the_cache(tiny_clip, tmp_path):
    """The views the cache misses are computed in their image's whole view set (its fixed batch): the set is encoded
    whole even when some of its views were cached (a store is atomic per call, so this only hardens an edge), and the
    bits are those of encoding the set cold."""
    from models.testtime.tuning import ViewEncoder

    generator = torch.Generator().manual_seed(0)
    size = input_size(tiny_clip.preprocess_eval)
    pixels = torch.randn(8, 3, size, size, generator=generator)
    keys = [f"{index:064x}" for index in range(8)]
    cold = ViewEncoder(tiny_clip, tmp_path / "cold").features([pixels], [keys])[0]
    warm_encoder = ViewEncoder(tiny_clip, tmp_path / "warm")
    warm_encoder.features([pixels[5:]], [keys[5:]])  # three views cached first, in a pass of their own
    partly = warm_encoder.features([pixels], [keys])[0]
    assert torch.equal(partly[:5], cold[:5])
    assert warm_encoder.encoded == 3 + 8
