import math

import numpy as np
import pytest
import torch

from models.experiments import (build_classifier, combine_training_sets, evaluation_splits,
                                load_prompt_checkpoint, save_prompt_checkpoint)
from models.prompting.methods import get_method, parse_method_parameters
from models.prompting.training import OptimizationConfig, learning_rate_at, predict_probabilities, train_prompt_parameters

CLASSNAMES = ["red", "green", "blue"]


def test_warmup_then_cosine_schedule():
    config = OptimizationConfig(epochs=10, learning_rate=0.002, warmup_epochs=1, warmup_learning_rate=1e-5)
    assert learning_rate_at(0, config) == 1e-5
    assert math.isclose(learning_rate_at(5, config), 0.001)
    assert learning_rate_at(9, config) < learning_rate_at(2, config)


def test_coop_training_lowers_loss_and_only_moves_the_context(reference_clip, toy_features):
    model, tokenizer = reference_clip
    features, labels = toy_features
    frozen_before = model.token_embedding.weight.clone()
    classifier = build_classifier(model, tokenizer, "coop", {"n_context": 4}, CLASSNAMES, ["a photo of a {}."])
    initial_context = classifier.context.detach().clone()
    history = train_prompt_parameters(classifier, features, labels,
                                OptimizationConfig(epochs=30, batch_size=8, learning_rate=0.05, seed=1))
    assert history.epoch_losses[-1] < 0.75 * history.epoch_losses[0]
    assert history.epoch_accuracies[-1] > 0.5  # chance is 1/3
    assert not torch.equal(classifier.context, initial_context)
    assert torch.equal(model.token_embedding.weight, frozen_before)
    assert list(classifier.trainable_state()) == ["context"]


def test_same_seed_same_numbers(reference_clip, toy_features):
    model, tokenizer = reference_clip
    features, labels = toy_features
    runs = []
    for _ in range(2):
        classifier = build_classifier(model, tokenizer, "coop", {"n_context": 4}, CLASSNAMES, ["a photo of a {}."])
        train_prompt_parameters(classifier, features, labels, OptimizationConfig(epochs=3, batch_size=8, seed=7))
        runs.append(classifier.context.detach().clone())
    assert torch.equal(runs[0], runs[1])


def test_checkpoint_round_trip_reproduces_predictions(tmp_path, reference_clip, toy_features):
    model, tokenizer = reference_clip
    features, labels = toy_features
    classifier = build_classifier(model, tokenizer, "coop", {"n_context": 4, "class_specific_context": True},
                                  CLASSNAMES, ["a photo of a {}."])
    train_prompt_parameters(classifier, features, labels, OptimizationConfig(epochs=2, batch_size=8))
    config = {"method": "coop", "parameters": {"n_context": 4, "class_specific_context": True},
              "classnames": CLASSNAMES, "templates": ["a photo of a {}."]}
    directory = save_prompt_checkpoint(tmp_path / "checkpoint", classifier, config)
    assert sorted(p.name for p in directory.iterdir()) == ["prompt_config.json", "prompt_parameters.safetensors"]
    reloaded, reloaded_config = load_prompt_checkpoint(directory, model, tokenizer)
    assert reloaded_config["classnames"] == CLASSNAMES
    assert torch.allclose(predict_probabilities(reloaded, features), predict_probabilities(classifier, features))


def test_zero_shot_ensemble_is_the_mean_of_normalized_template_features(reference_clip):
    model, tokenizer = reference_clip
    templates = ["a photo of a {}.", "a drawing of a {}."]
    ensemble = build_classifier(model, tokenizer, "zero_shot", {}, CLASSNAMES, templates)
    singles = [build_classifier(model, tokenizer, "zero_shot", {}, CLASSNAMES, [t]) for t in templates]
    expected = torch.stack([s.text_features() for s in singles]).mean(dim=0)
    assert torch.allclose(ensemble.text_features(), expected, atol=1e-6)
    assert not get_method("zero_shot").trains_prompts


def test_unknown_method_parameter_is_rejected_by_name():
    with pytest.raises(ValueError, match="n_ctx"):
        parse_method_parameters("coop", {"n_ctx": 4})
    with pytest.raises(KeyError, match="known methods"):
        get_method("no_such_method")


def test_pseudolabelled_and_labelled_sets_weigh_equally():
    labelled = (torch.zeros(4, 2, 8), torch.tensor([0, 1, 0, 1]))
    pseudo = (torch.ones(12, 2, 8), torch.tensor([0] * 6 + [1] * 6))
    combined = combine_training_sets(labelled, None, pseudo)
    assert combined.composition == {"labelled": 4, "pseudolabelled": 12}
    weights = combined.sample_weights
    assert math.isclose(weights[:4].sum().item(), weights[4:].sum().item())
    # IFPL and GRIP weigh the labelled term by |L| / |PL| instead (Menghini et al.'s update_training_set)
    iterative = combine_training_sets(labelled, None, pseudo, strategy="grip").sample_weights
    assert torch.allclose(iterative[:4], torch.full((4,), 4 / 12)) and torch.equal(iterative[4:], torch.ones(12))


def test_base_and_new_splits_are_scored_among_their_own_classes():
    probabilities = np.array([[0.1, 0.5, 0.4, 1e-9], [0.6, 0.1, 0.1, 0.2], [0.1, 0.1, 0.7, 0.1]])
    splits = evaluation_splits(np.log(probabilities), np.array([0, 0, 2]), ["a", "b", "c"], ["w", "x", "y", "z"],
                               base_labels=[0, 1], new_labels=[2, 3])
    by_name = {s.split: s for s in splits}
    assert set(by_name) == {"test", "base", "new"}
    np.testing.assert_allclose(by_name["test"].probabilities, probabilities)
    base = by_name["base"]
    assert base.relative_paths == ["a", "b"] and base.classnames == ["w", "x"]
    np.testing.assert_allclose(base.probabilities[0], [0.1 / 0.6, 0.5 / 0.6])
    assert list(by_name["new"].labels) == [0] and by_name["new"].label_map == [2, 3]


def test_a_subset_whose_probabilities_all_underflow_is_still_scored(reference_clip):
    """A confident classifier (a linear probe with C = 1e7) can give every base class a probability that underflows
    to 0 in float64; the base split is then the softmax of their log-probabilities, not 0 / 0."""
    from models.experiments import predict_log_probabilities
    from models.prompting.methods.linear_probe import LinearProbeClassifier

    model, tokenizer = reference_clip
    classifier = build_classifier(model, tokenizer, "linear_probe", {}, ["w", "x", "y", "z"], ["a photo of a {}."])
    assert isinstance(classifier, LinearProbeClassifier)
    with torch.no_grad():  # logits: 0 and -1 for the base classes, 2000 for class y
        classifier.weight.zero_()
        classifier.bias.copy_(torch.tensor([0.0, -1.0, 2000.0, 0.0]))
    log_probabilities = predict_log_probabilities(classifier, torch.randn(1, classifier.weight.shape[1]))
    assert np.isfinite(log_probabilities).all() and np.exp(log_probabilities)[0, :2].sum() == 0.0
    splits = {s.split: s for s in evaluation_splits(log_probabilities, np.array([0]), ["a"], ["w", "x", "y", "z"],
                                                    base_labels=[0, 1], new_labels=[2, 3])}
    np.testing.assert_allclose(splits["base"].probabilities[0], [1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1))])


def test_a_checkpoint_can_be_applied_with_other_templates(tmp_path, reference_clip):
    from models.prompting.prompt_assembly import template_ensemble_features

    model, tokenizer = reference_clip
    trained = ["a photo of a {}."]
    target = ["a sketch of a {}.", "a drawing of the {}."]
    classifier = build_classifier(model, tokenizer, "zero_shot", {}, CLASSNAMES, trained)
    directory = save_prompt_checkpoint(tmp_path / "ckpt", classifier,
                                       {"method": "zero_shot", "parameters": {}, "classnames": CLASSNAMES,
                                        "templates": trained})
    same, config = load_prompt_checkpoint(directory, model, tokenizer)
    assert config["templates"] == trained
    other, config = load_prompt_checkpoint(directory, model, tokenizer, classnames=["cat", "dog"], templates=target)
    assert config["templates"] == target and config["trained_templates"] == trained
    expected = template_ensemble_features(classifier.text_tower, tokenizer, ["cat", "dog"], target)
    torch.testing.assert_close(other.text_features(), expected)
    assert not torch.allclose(same.text_features()[:2], other.text_features())


def test_a_checkpoint_from_other_backbone_weights_is_refused(tmp_path, reference_clip):
    model, tokenizer = reference_clip
    classifier = build_classifier(model, tokenizer, "zero_shot", {}, CLASSNAMES, ["a photo of a {}."])
    directory = save_prompt_checkpoint(tmp_path / "ckpt", classifier,
                                       {"method": "zero_shot", "parameters": {}, "classnames": CLASSNAMES,
                                        "templates": ["a photo of a {}."], "backbone_weights_sha256": "a" * 64})
    load_prompt_checkpoint(directory, model, tokenizer, backbone_weights_sha256="a" * 64)
    with pytest.raises(ValueError, match="ckpt: the checkpoint was trained on other backbone weights"):
        load_prompt_checkpoint(directory, model, tokenizer, backbone_weights_sha256="b" * 64)


def test_cached_features_do_not_depend_on_the_images_encoded_with_them(tmp_path, reference_clip):
    """Two workspaces that cache different subsets of a dataset get bit-identical features for the images they
    share: both compute them in the dataset's canonical batches (models.prompting.features.ImageSet)."""
    from dataclasses import dataclass

    from PIL import Image

    from models.experiments import features_for_images
    from models.prompting.features import ImageSet
    from models.provenance import sha256_file

    @dataclass
    class Backbone:
        model: torch.nn.Module
        preprocess_eval: object
        weights_sha256: str = "ab" * 32
        spec: object = type("Spec", (), {"name": "reference"})()
        device: torch.device = torch.device("cpu")

    def preprocess(image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)

    model, _ = reference_clip
    rng = np.random.default_rng(0)
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    paths = [f"{index}.png" for index in range(40)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image_dir / path)
    hashes = [sha256_file(image_dir / path) for path in paths]
    backbone = Backbone(model, preprocess)
    dataset = ImageSet.of(image_dir, paths, hashes, batch_size=16)
    small = features_for_images(backbone, dataset, paths[5:8], hashes[5:8], tmp_path / "cache_a")
    large = features_for_images(backbone, dataset, paths, hashes, tmp_path / "cache_b")
    assert torch.equal(small, large[5:8])
    with torch.no_grad():  # and they are the model's features, up to that rounding
        batched = model.encode_image(torch.stack([preprocess(Image.open(image_dir / p)) for p in paths]))
    torch.testing.assert_close(large, batched)
