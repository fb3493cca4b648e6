"""The library side of multi-source training (models/experiments/multi_source.py), before any backbone is loaded: only
the split's sources are built into training sets (the held-out domain's inputs are refused, and nothing is read),
the domains share one class set, and only plain all-classes few-shot experiments train on several domains."""

from types import SimpleNamespace

import pytest

import models.experiments.training_sets as training_sets
from models.catalog import DEFAULT_CATALOG_DIR, load_catalog
from models.experiments.multi_source import (DomainSplit, check_multi_source_experiment, check_same_classes,
                                             source_training_sets, train_multi_source)

SPLIT = DomainSplit("ShapesSketch", ("Shapes", "ShapesNoisy"))


def inputs(name, experiment_key="spg-k16-s1", classnames=("circle", "square")):
    experiment = load_catalog(DEFAULT_CATALOG_DIR).experiment(experiment_key)
    return SimpleNamespace(dataset=SimpleNamespace(name=name), experiment=experiment, classnames=list(classnames))


@pytest.fixture
def built(monkeypatch):
    """The datasets whose few-shot training set gets built."""
    names = []
    monkeypatch.setattr(training_sets, "fewshot_training_set",
                        lambda inputs, workspace, backbone, labels: names.append(inputs.dataset.name) or "a set")
    return names


def test_only_the_sources_are_built_in_the_splits_order(built):
    sets = source_training_sets(SPLIT, {"ShapesNoisy": inputs("ShapesNoisy"), "Shapes": inputs("Shapes")}, None, None)
    assert built == ["Shapes", "ShapesNoisy"] and list(sets) == ["Shapes", "ShapesNoisy"]


@pytest.mark.parametrize("given", [["Shapes", "ShapesNoisy", "ShapesSketch"], ["Shapes", "ShapesSketch"], ["Shapes"]])
def test_the_held_out_domain_or_a_missing_source_is_refused_before_anything_is_read(built, given):
    with pytest.raises(ValueError, match="the sources of the split holding ShapesSketch out are"):
        source_training_sets(SPLIT, {name: inputs(name) for name in given}, None, None)
    with pytest.raises(ValueError):
        train_multi_source(SPLIT, {name: inputs(name) for name in given}, None, None)
    assert built == []


def test_domains_of_different_class_sets_are_refused(built):
    sources = {"Shapes": inputs("Shapes"), "ShapesNoisy": inputs("ShapesNoisy", classnames=("square", "circle"))}
    with pytest.raises(ValueError, match="ShapesNoisy's classes .* differ from Shapes's"):
        train_multi_source(SPLIT, sources, None, None)
    assert built == []
    assert check_same_classes({"a": ["x", "y"], "b": ["x", "y"]}) == ["x", "y"]


@pytest.mark.parametrize("key, message", [
    ("zeroshot", "trains nothing"), ("coop-k16-s1-b2n", "protocol base_to_new"),
    ("coop-k16-s1-aug", "augmentation"), ("coop-k16-s1-fpl", "pseudolabels"), ("coop-ssl-s1", "learning setting"),
])
def test_only_plain_all_class_few_shot_experiments_train_on_several_domains(key, message):
    with pytest.raises(ValueError, match=message):
        check_multi_source_experiment(load_catalog(DEFAULT_CATALOG_DIR).experiment(key))
    check_multi_source_experiment(load_catalog(DEFAULT_CATALOG_DIR).experiment("spg-k16-s1"))
