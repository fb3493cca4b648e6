"""The pseudolabel rounds (models/limited_labels.py) on synthetic features: the authors' schedules, where the
pseudolabels come from, what is never pseudolabelled, and the epoch kept on validation."""

from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from models.limited_labels import (experiment_rows, pseudolabel_candidates, round_zero_selection,
                                   train_keeping_best, train_with_pseudolabels)
from models.pseudolabels import get_strategy
from models.prompting.training import predict_probabilities

NUM_CLASSES, DIM = 3, 4


class ToyClassifier(nn.Module):
    """A linear classifier with the attributes the rounds use (classnames, logit_scale, trainable_state)."""

    def __init__(self):
        super().__init__()
        self.classnames = [f"c{i}" for i in range(NUM_CLASSES)]
        self.register_buffer("logit_scale", torch.tensor(10.0))
        self.weight = nn.Parameter(torch.eye(NUM_CLASSES, DIM))

    def forward(self, features):
        return self.logit_scale * features @ self.weight.t()

    def trainable_state(self):
        return {name: p.detach().cpu().clone() for name, p in self.named_parameters()}


def pool(n_per_class=20, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(NUM_CLASSES), n_per_class)
    features = np.eye(NUM_CLASSES, DIM)[labels] + 0.6 * rng.standard_normal((len(labels), DIM))
    rows = pl.DataFrame({"relative_path": [f"p{i:03d}.png" for i in range(len(labels))], "label": labels})
    return rows, torch.tensor(features, dtype=torch.float32)


def sgd_train(seen):
    def train(classifier, training_set, after_epoch):
        seen.append(training_set)
        optimizer = torch.optim.SGD(classifier.parameters(), lr=0.05)
        inputs = training_set.view_inputs[:, 0] if training_set.view_inputs.dim() == 3 else training_set.view_inputs
        for epoch in range(1, 4):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(classifier(inputs), training_set.labels)
            loss.backward()
            optimizer.step()
            if after_epoch is not None:
                after_epoch(epoch)
        return SimpleNamespace(epoch_losses=[loss.item()], seconds=0.0, details={})
    return train


def run(strategy, labelled_n=2, classes=tuple(range(NUM_CLASSES)), per_class=5, validation=None, weighting=None):
    rows, features = pool()
    labelled_rows, pool_rows = rows.head(0), rows
    labelled = (features[:0].unsqueeze(1), torch.zeros(0, dtype=torch.long))
    if labelled_n:  # two labelled images per class, outside the pool
        picked = rows.group_by("label", maintain_order=True).head(labelled_n)
        labelled_rows = picked
        pool_rows = rows.join(picked, on="relative_path", how="anti")
        index = torch.tensor([int(p[1:4]) for p in picked["relative_path"]])
        labelled = (features[index].unsqueeze(1), torch.tensor(picked["label"].to_list()))
    pool_index = torch.tensor([int(p[1:4]) for p in pool_rows["relative_path"]])
    pool_features = features[pool_index]
    zero_shot = ToyClassifier()
    initial = round_zero_selection(get_strategy(strategy), per_class, pool_rows["relative_path"].to_list(),
                                   predict_probabilities(zero_shot, pool_features).numpy().astype(np.float64),
                                   classes)
    seen_sets, classifiers = [], []

    def build():
        classifiers.append(ToyClassifier())
        return classifiers[-1]

    result = train_with_pseudolabels(build, get_strategy(strategy, weighting), per_class, initial, labelled, validation,
                                     pool_features.unsqueeze(1), pool_features, pool_rows, classes,
                                     sgd_train(seen_sets))
    return result, seen_sets, classifiers, labelled_rows, pool_rows, pool_features


def test_grip_grows_k_by_the_published_schedule_until_the_whole_pool():
    result, sets, _, labelled_rows, pool_rows, _ = run("grip")
    pool_size = pool_rows.height  # 54 images, 3 classes
    assert [r.per_class for r in result.rounds] == [
        min(int((r + 1) * pool_size / 10 / NUM_CLASSES), pool_size // NUM_CLASSES) for r in range(10)]
    sizes = [r.selected.height for r in result.rounds]
    assert all(size <= pool_size for size in sizes) and sizes[-1] > sizes[0]
    for step in result.rounds:
        assert step.selected.group_by("pseudo_label").len()["len"].max() <= step.per_class
        assert step.selected["relative_path"].n_unique() == step.selected.height  # one class per image
        assert not set(step.selected["relative_path"]) & set(labelled_rows["relative_path"])
    # IFPL and GRIP weigh the labelled term by |L| / |PL| (FPL by |PL| / |L|)
    last = sets[-1]
    assert last.sample_weights[0].item() == pytest.approx(6 / result.rounds[-1].selected.height)


def test_ifpl_keeps_k_and_relabels_with_the_previous_rounds_prompts():
    result, _, classifiers, _, pool_rows, pool_features = run("ifpl", per_class=5)
    assert [r.per_class for r in result.rounds] == [5] * 10
    for r in range(1, 10):
        expected = round_zero_selection(get_strategy("fpl"), 5, pool_rows["relative_path"].to_list(),
                                        predict_probabilities(classifiers[r - 1], pool_features).numpy()
                                        .astype(np.float64), tuple(range(NUM_CLASSES)))
        assert result.rounds[r].selected.equals(expected)
    assert result.classifier is classifiers[-1] and len(classifiers) == 10  # re-initialised every round


def test_fpl_is_one_round_of_zero_shot_pseudolabels_weighted_pl_over_l():
    result, sets, _, _, _, _ = run("fpl", per_class=4)
    assert len(result.rounds) == 1 and result.rounds[0].per_class == 4
    assert sets[0].sample_weights[0].item() == pytest.approx(result.rounds[0].selected.height / 6)
    assert 0.0 <= result.rounds[0].quality["pseudolabel_accuracy"] <= 1.0


def test_a_weighting_chosen_in_the_grid_replaces_the_published_one_in_every_round():
    result, sets, _, _, _, _ = run("grip", weighting="pseudo_over_labelled")
    for step, training_set in zip(result.rounds, sets):  # GRIP's rounds, weighted as FPL: |PL| / |L|
        assert training_set.sample_weights[0].item() == pytest.approx(step.selected.height / 6)
        assert training_set.sample_weights[6:].eq(1.0).all()
    assert get_strategy("grip").labelled_weighting == "labelled_over_pseudo"  # the registry is left as published
    with pytest.raises(ValueError, match="unknown labelled-loss weighting 'equal'"):
        get_strategy("grip", "equal")


def test_trzsl_pseudolabels_only_the_unseen_classes():
    result, _, _, _, _, _ = run("ifpl", labelled_n=0, classes=(2,), per_class=5)
    for step in result.rounds:
        assert set(step.selected["pseudo_label"]) == {2}
    candidates = pseudolabel_candidates(["a", "b"], np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]), (1, 2))
    assert candidates["pseudo_label"].to_list() == [1, 2]
    assert candidates["confidence"].to_list() == pytest.approx([2 / 3, 2 / 3])


def test_k_beyond_the_pool_and_an_empty_pool_are_refused():
    with pytest.raises(ValueError, match="K = 30 per class needs 90 pool images"):
        run("ifpl", per_class=30)
    rows, _ = pool()
    with pytest.raises(ValueError, match="the unlabelled pool is empty"):
        train_with_pseudolabels(ToyClassifier, get_strategy("fpl"), 1, rows.head(0).with_columns(
            pseudo_label=pl.lit(0), confidence=pl.lit(1.0)), (torch.zeros(0, 1, DIM), torch.zeros(0).long()),
            None, torch.zeros(0, 1, DIM), torch.zeros(0, DIM), rows.head(0), (0, 1, 2), sgd_train([]))


def test_the_epoch_kept_is_the_best_on_validation_not_the_last():
    classifier = ToyClassifier()
    features = torch.eye(NUM_CLASSES, DIM)
    validation = (features, torch.arange(NUM_CLASSES))

    def train_away(classifier, training_set, after_epoch):  # each epoch moves the weights further from the truth
        for epoch in range(1, 4):
            with torch.no_grad():
                classifier.weight.copy_(torch.roll(torch.eye(NUM_CLASSES, DIM), shifts=epoch - 1, dims=0))
            after_epoch(epoch)
        return SimpleNamespace(epoch_losses=[0.0], seconds=0.0, details={})

    _, kept = train_keeping_best(classifier, None, validation, train_away)
    assert kept == 1 and torch.equal(classifier.weight, torch.eye(NUM_CLASSES, DIM))
    _, kept = train_keeping_best(ToyClassifier(), None, None, lambda c, t, after: SimpleNamespace())
    assert kept is None  # no validation (UL): the last epoch


def test_experiment_rows_never_put_labelled_or_test_images_in_the_pool():
    from models.data.learning_settings import seen_classes, setting_splits_table

    labels = np.repeat(np.arange(4), 10)
    splits = np.array((["train"] * 6 + ["val"] * 2 + ["test"] * 2) * 4)
    index = pl.DataFrame({"relative_path": [f"i{i:02d}.png" for i in range(40)], "label": labels, "split": splits,
                          "content_sha256": [f"h{i}" for i in range(40)]})
    train = index.filter(pl.col("split") == "train")
    table = setting_splits_table(train, ["a", "b", "c", "d"], [("ssl", 1), ("trzsl", 1), ("ul", 1)], 2, {1: 500})
    not_train = set(index.filter(pl.col("split") != "train")["relative_path"])
    for setting in ("ssl", "trzsl", "ul"):
        experiment = SimpleNamespace(key=f"coop-{setting}-s1", setting=setting, seed=1, pseudolabels=None)
        rows = experiment_rows(experiment, index, 4, setting_splits=table)
        assert not set(rows.pool["relative_path"]) & (set(rows.labelled["relative_path"]) | not_train)
        assert not set(rows.labelled["relative_path"]) & not_train
        if setting == "trzsl":
            assert set(rows.pool["label"]) == set(rows.pseudolabel_classes) and rows.seen_labels == seen_classes(4, 500)
    assert experiment_rows(SimpleNamespace(key="coop-ul-s1", setting="ul", seed=1, pseudolabels=None), index, 4,
                           setting_splits=table).labelled.height == 0
