"""TFUP and TFUP-T: the representative selection, the multi-level similarity, and the published property that a
cache of pseudolabelled pool images corrects a zero-shot classifier whose text features miss the pool's clusters."""

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from models.experiments import (TrainingSet, build_classifier, load_prompt_checkpoint, save_prompt_checkpoint,
                                train_prompts)
from models.prompting.methods import get_method, parse_method_parameters
from models.prompting.tfup_cache import cache_size, select_representatives, semantic_similarity
from models.prompting.training import OptimizationConfig

CATALOG = Path(__file__).resolve().parents[2] / "assets_catalog"
TEMPLATES = ["a photo of a {}."]
N_CLASSES = 5
CLASSNAMES = [f"class {index}" for index in range(N_CLASSES)]
# The authors' TFUP-T schedule (methods.yaml); a pool of 200 images is one batch per epoch.
TFUP_T_OPTIMIZATION = OptimizationConfig(epochs=30, batch_size=256, learning_rate=0.012, weight_decay=0.1, seed=1)


pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tests/conftest.py


def build(reference_clip, method, **parameters):
    model, tokenizer = reference_clip
    return build_classifier(model, tokenizer, method, parameters, CLASSNAMES, TEMPLATES)


def shifted_pool(reference_clip, seed, per_class=40, views=1, shift=1.0, noise=0.5):
    """Features of N_CLASSES clusters, each centred on its class's text direction moved by a fixed random shift,
    so that zero-shot CLIP misreads part of the pool. Raw (unnormalised) like cached features; view 1 is a
    second noisy draw standing in for the mirrored image."""
    text = F.normalize(build(reference_clip, "zero_shot").class_text_features, dim=-1)
    directions = F.normalize(text - text.mean(0), dim=-1)  # the tiny tower's class texts are very alike
    shifts = F.normalize(torch.randn(N_CLASSES, text.shape[1], generator=torch.Generator().manual_seed(7)), dim=-1)
    centres = F.normalize(directions + shift * shifts, dim=-1)
    labels = torch.arange(N_CLASSES).repeat_interleave(per_class)
    generator = torch.Generator().manual_seed(seed)
    features = centres[labels].unsqueeze(1) + noise * torch.randn(
        len(labels), views, text.shape[1], generator=generator) / text.shape[1] ** 0.5
    return 3.0 * (features if views > 1 else features[:, 0]), labels


def unsupervised_set(pool, validation=None):
    """The ul setting's training set: no labelled images, only the unlabelled pool (and maybe val images)."""
    width = pool.shape[-1]
    return TrainingSet(torch.empty(0, 2, width), torch.empty(0, dtype=torch.long), validation=validation,
                       unlabelled=pool)


def accuracy(classifier, features, labels):
    with torch.no_grad():
        return float((classifier(features).argmax(1) == labels).float().mean())


def authors_selection(probabilities, per_class):
    """refine_few_shots_without_label as the authors wrote it (loops, no de-duplication), for reference."""
    chosen = []
    for label in range(probabilities.shape[1]):
        candidates = probabilities[:, label].sort(descending=True).indices[: 2 * per_class]
        rows = probabilities[candidates]
        scores = torch.stack([torch.sum(row * torch.log(row / rows)) for row in rows])
        chosen.append(candidates[scores.sort().indices[:per_class]].tolist())
    return chosen


def test_cache_and_training_sizes_follow_the_authors_clamps():
    # K = clamp(int(0.3 N / C), 9, 16); K_t = max(9, int(0.75 N / C))
    assert cache_size(100, 10, 0.3, 9, 16) == 9
    assert cache_size(400, 10, 0.3, 9, 16) == 12
    assert cache_size(1000, 10, 0.3, 9, 16) == 16
    assert cache_size(100, 10, 0.75, 9) == 9
    assert cache_size(400, 10, 0.75, 9) == 30


def test_selection_keeps_the_k_most_prototypical_not_the_most_confident():
    # Three classes, each a tight cluster of 5 around (0.6, 0.2, 0.2) rotated; one extra image is class 0's most
    # probable (0.66) but distributed unlike its cluster, so its summed KL to the other candidates is the largest.
    generator = torch.Generator().manual_seed(0)
    rows = []
    for label in range(3):
        base = torch.full((3,), 0.2)
        base[label] = 0.6
        rows.append((base.log() + 0.05 * torch.randn(5, 3, generator=generator)).softmax(-1))
    outlier = torch.tensor([[0.66, 0.30, 0.04]])
    probabilities = torch.cat([*rows, outlier])
    outlier_index = len(probabilities) - 1
    assert probabilities[:, 0].argmax() == outlier_index

    selection = select_representatives(probabilities.log(), per_class=3)
    assert [len(members) for members in selection.members] == [3, 3, 3]
    assert outlier_index not in selection.members[0]
    # no image is wanted by two classes here, so the choice and its order (smallest summed KL first) are the
    # authors' own
    assert selection.contested == 0
    assert selection.members == authors_selection(probabilities.double(), 3)


def test_an_image_enters_one_class_only_the_one_it_is_most_probable_for():
    probabilities = (torch.randn(24, 6, generator=torch.Generator().manual_seed(3))).softmax(-1).double()
    authors = authors_selection(probabilities, 3)
    taken_by = {}
    for label, members in enumerate(authors):
        for image in members:
            taken_by.setdefault(image, []).append(label)
    shared = {image: labels for image, labels in taken_by.items() if len(labels) > 1}
    assert shared, "the authors' rule must put some image in several classes here, or the test shows nothing"

    selection = select_representatives(probabilities.log(), per_class=3)
    everyone = [image for members in selection.members for image in members]
    assert len(everyone) == len(set(everyone))  # each image in one class at most
    assert [len(members) for members in selection.members] == [3] * 6  # displaced classes took their next choice
    owner = {image: label for label, members in enumerate(selection.members) for image in members}
    for image, labels in shared.items():
        # both claimants proposed it; it went to the class it is most probable for among those that asked
        assert probabilities[image, owner[image]] >= probabilities[image, labels].max()
    assert selection.contested >= len(shared)


def test_semantic_similarity_spans_0_to_2_per_row_and_ignores_empty_slots():
    generator = torch.Generator().manual_seed(1)
    queries = (3 * torch.randn(7, 4, generator=generator)).log_softmax(-1)
    keys = (3 * torch.randn(6, 4, generator=generator)).log_softmax(-1)
    valid = torch.tensor([True, True, True, True, False, False])
    similarity = semantic_similarity(queries, keys, valid)
    assert similarity.shape == (7, 6)
    assert similarity.min() >= 0 and similarity.max() <= 2
    # min-max per row over the valid keys: the semantically nearest key gets 2, the farthest 0
    assert torch.allclose(similarity[:, valid].amax(1), torch.full((7,), 2.0))
    assert torch.allclose(similarity[:, valid].amin(1), torch.zeros(7))
    # what the empty slots hold does not move the valid keys' similarity
    changed = keys.clone()
    changed[~valid] = torch.tensor([-30.0, 0.0, 0.0, 0.0]).log_softmax(-1)
    assert torch.equal(semantic_similarity(queries, changed, valid)[:, valid], similarity[:, valid])


def test_without_cache_weight_tfup_is_exactly_zero_shot_clip(reference_clip):
    pool, _ = shifted_pool(reference_clip, seed=1)
    test, _ = shifted_pool(reference_clip, seed=2)
    zero_shot = build(reference_clip, "zero_shot")
    silent = build(reference_clip, "tfup", cache_weight=0.0)
    silent.fit(unsupervised_set(pool))
    with torch.no_grad():
        assert torch.equal(silent(test), zero_shot(test))
        tfup = build(reference_clip, "tfup")
        tfup.fit(unsupervised_set(pool))
        assert (tfup(test) - zero_shot(test)).abs().max() > 0.1  # the cache is what alpha weighs


def test_a_cache_of_pool_images_corrects_a_biased_zero_shot_classifier(reference_clip):
    pool, pool_labels = shifted_pool(reference_clip, seed=1)
    test, test_labels = shifted_pool(reference_clip, seed=2)
    tfup = build(reference_clip, "tfup")
    history = train_prompts(tfup, unsupervised_set(pool), OptimizationConfig(epochs=0))
    zero_shot_accuracy = accuracy(build(reference_clip, "zero_shot"), test, test_labels)
    assert zero_shot_accuracy < 0.9
    assert accuracy(tfup, test, test_labels) >= zero_shot_accuracy + 0.1
    details = history.details
    assert details["cache_per_class"] == cache_size(len(pool), N_CLASSES, 0.3, 9, 16) == 12
    assert details["cache_size"] == 12 * N_CLASSES and details["cache_smallest_class"] == 12
    # the cache holds K unit-norm pool images per class (slots of max_cache_per_class; -1 = empty)
    labels = tfup.cache_labels.view(N_CLASSES, 16)
    assert torch.equal((labels >= 0).sum(1), torch.full((N_CLASSES,), 12))
    assert torch.allclose(tfup.cache_keys[tfup.cache_labels >= 0].norm(dim=-1), torch.ones(12 * N_CLASSES))
    assert len(history.epoch_losses) == 1 and history.steps == 0
    # fit never sees the pool's labels; scored with them, the selected cache is nearly pure, also for the class
    # that zero-shot CLIP misreads
    with torch.no_grad():
        members, cache_labels = select_representatives(tfup.pool_log_probabilities(pool), 12).indices_and_labels()
    assert float((pool_labels[members] == cache_labels).float().mean()) >= 0.9


@pytest.mark.parametrize("method", ["tfup", "tfup_t"])
def test_the_checkpoint_rebuilds_identical_logits(reference_clip, tmp_path, method):
    model, tokenizer = reference_clip
    pool, _ = shifted_pool(reference_clip, seed=1, views=2)
    test, _ = shifted_pool(reference_clip, seed=2)
    classifier = build(reference_clip, method)
    train_prompts(classifier, unsupervised_set(pool), TFUP_T_OPTIMIZATION)
    state = classifier.trainable_state()
    assert {"cache_keys", "cache_labels"} <= set(state)
    if method == "tfup_t":
        assert {"text_residual", "image_adapter.0.weight", "image_adapter.2.weight"} <= set(state)
        assert classifier.text_residual.abs().max() > 0
    save_prompt_checkpoint(tmp_path / method, classifier,
                           {"method": method, "parameters": {}, "classnames": CLASSNAMES, "templates": TEMPLATES})
    loaded, _ = load_prompt_checkpoint(tmp_path / method, model, tokenizer)
    with torch.no_grad():
        assert torch.equal(loaded(test), classifier(test))
        assert not torch.equal(build(reference_clip, method)(test), classifier(test))  # the state carries it


def test_tfup_t_is_deterministic_for_a_seed(reference_clip):
    pool, _ = shifted_pool(reference_clip, seed=1, views=2)
    test, test_labels = shifted_pool(reference_clip, seed=2)
    logits, histories = [], []
    for seed in (1, 1, 2):
        classifier = build(reference_clip, "tfup_t")
        histories.append(train_prompts(classifier, unsupervised_set(pool),
                                       OptimizationConfig(**{**TFUP_T_OPTIMIZATION.__dict__, "seed": seed})))
        with torch.no_grad():
            logits.append(classifier(test))
    assert torch.equal(logits[0], logits[1])
    assert histories[0].epoch_losses == histories[1].epoch_losses
    assert not torch.equal(logits[0], logits[2])  # the seed draws the adapter and the batches
    history = histories[0]
    assert len(history.epoch_losses) == 30 and history.steps == 30
    assert history.details["strong_view"] == "mirrored"
    assert history.details["refined_per_class"] == cache_size(len(pool), N_CLASSES, 0.75, 9) == 30
    assert len(history.details["pseudolabelled_fraction_by_epoch"]) == 25  # epochs 6-30 pseudolabel the pool
    assert accuracy(classifier, test, test_labels) >= accuracy(build(reference_clip, "zero_shot"), test, test_labels)


def test_tfup_t_keeps_the_best_epoch_on_validation_else_the_last(reference_clip):
    pool, _ = shifted_pool(reference_clip, seed=1, views=2)
    val, val_labels = shifted_pool(reference_clip, seed=3, per_class=4)
    test, _ = shifted_pool(reference_clip, seed=2)
    # Val "labels" that are zero-shot CLIP's predictions: training moves TFUP-T away from them (towards the pool's
    # clusters), so the best val epoch is an early one, not the last.
    with torch.no_grad():
        misleading = (val, build(reference_clip, "zero_shot")(val).argmax(1))
    assert not torch.equal(misleading[1], val_labels)
    last = build(reference_clip, "tfup_t")
    last_history = last.fit(unsupervised_set(pool), TFUP_T_OPTIMIZATION)
    assert last_history.details["model_selection"] == "last_epoch"
    assert last_history.details["selected_epoch"] == 30 and last_history.details["validation_accuracies"] == []

    selected = build(reference_clip, "tfup_t")
    history = selected.fit(unsupervised_set(pool, validation=misleading), TFUP_T_OPTIMIZATION)
    details = history.details
    accuracies = details["validation_accuracies"]
    assert details["model_selection"] == "validation" and len(accuracies) == 30
    best = max(range(30), key=lambda epoch: (accuracies[epoch], -epoch))  # the first best epoch
    assert details["selected_epoch"] == best + 1 < 30
    assert accuracy(selected, *misleading) == accuracies[best] > accuracies[-1]
    # the same run without validation ends at the last epoch: evaluating on val draws nothing from the seed
    assert accuracy(last, *misleading) == accuracies[-1]
    with torch.no_grad():
        assert not torch.equal(selected(test), last(test))


@pytest.mark.parametrize("method", ["tfup", "tfup_t"])
@pytest.mark.parametrize("pool", [None, torch.empty(0, 32)])
def test_a_missing_or_empty_pool_is_refused(reference_clip, method, pool):
    classifier = build(reference_clip, method)
    with pytest.raises(ValueError, match="unlabelled pool"):
        train_prompts(classifier, unsupervised_set(pool) if pool is not None else TrainingSet(
            torch.empty(0, 2, 32), torch.empty(0, dtype=torch.long)), TFUP_T_OPTIMIZATION)


def test_tfup_t_refuses_a_run_without_epochs(reference_clip):
    pool, _ = shifted_pool(reference_clip, seed=1)
    with pytest.raises(ValueError, match="epochs"):
        build(reference_clip, "tfup_t").fit(unsupervised_set(pool), OptimizationConfig(epochs=0))


def test_registered_as_class_specific_pool_methods_with_the_catalog_defaults():
    methods = yaml.safe_load((CATALOG / "methods.yaml").read_text())["methods"]
    for name in ("tfup", "tfup_t"):
        spec = get_method(name)
        assert spec.trains_prompts and spec.frozen_image_encoder and spec.adapts_from_pool
        assert not spec.transfers_to_other_classes()
        # the catalog states the published defaults, no more and no less
        assert parse_method_parameters(name, methods[name]["parameters"]) == spec.parameters_type()
        assert set(methods[name]["parameters"]) == {field.name for field in dataclasses.fields(spec.parameters_type)}
    assert methods["tfup"]["optimization"] == {"epochs": 0}
    with pytest.raises(ValueError, match="max_cache_per_class"):
        parse_method_parameters("tfup", {"min_cache_per_class": 17})
