"""The `multi_source:` section of experiments.yaml: leave-one-domain-out splits over datasets of one class set, and
the bad splits refused when the catalog loads (no held-out domain, no source left, a held-out domain that is also a
source), each message naming the file, the entry and the field."""

from pathlib import Path

import pytest

from catalog_editing import catalog_copy, edit  # noqa: F401 (catalog_copy is a fixture)
from models.catalog import DEFAULT_CATALOG_DIR, CatalogError, load_catalog

SPG_ENTRY = {"method": "spg", "shots": [16], "seeds": [1]}


def set_multi_source(directory: Path, section) -> None:
    def change(content):
        content["grid"] += [SPG_ENTRY]
        content["multi_source"] = section

    edit(directory / "experiments.yaml", change)


def test_sources_default_to_the_rest_of_the_family(catalog_copy):
    set_multi_source(catalog_copy, {"experiments": ["coop-k16-s1", "spg-k16-s?"],
                                    "splits": [{"held_out": "ShapesSketch"}, {"held_out": "Shapes"}]})
    plan = load_catalog(catalog_copy).multi_source
    assert plan.experiments == ("coop-k16-s1", "spg-k16-s1")
    assert [(s.held_out, s.sources) for s in plan.splits] == [
        ("ShapesSketch", ("Shapes", "ShapesNoisy")), ("Shapes", ("ShapesSketch", "ShapesNoisy"))]


def test_explicit_sources_are_kept(catalog_copy):
    set_multi_source(catalog_copy, {"experiments": ["spg-k16-s1"],
                                    "splits": [{"held_out": "ShapesNoisy", "sources": ["ShapesSketch"]}]})
    (split,) = load_catalog(catalog_copy).multi_source.splits
    assert (split.held_out, split.sources) == ("ShapesNoisy", ("ShapesSketch",))


@pytest.mark.parametrize("split, message", [
    ({"sources": ["Shapes", "ShapesNoisy"]},
     r"experiments.yaml: multi_source.splits\[0\].held_out: missing"),
    ({"held_out": "Digits"},
     r"experiments.yaml: multi_source.splits\[0\].held_out: Digits is the only domain of its family.*no source"),
    ({"held_out": "ShapesSketch", "sources": ["Shapes", "ShapesSketch"]},
     r"experiments.yaml: multi_source.splits\[0\].sources: the held-out domain ShapesSketch is also a source"),
    ({"held_out": "ShapesSketch", "sources": ["Digits"]},
     r"experiments.yaml: multi_source.splits\[0\].sources: \['Digits'\] are not domains of ShapesSketch's class set"),
    ({"held_out": "ShapesSketch", "sources": []},
     r"experiments.yaml: multi_source.splits\[0\].sources: expected a non-empty list"),
    ({"held_out": "ShapeSketch"},
     r"experiments.yaml: multi_source.splits\[0\].held_out: unknown dataset 'ShapeSketch'"),
])
def test_bad_splits_are_refused_naming_file_entry_and_field(catalog_copy, split, message):
    set_multi_source(catalog_copy, {"experiments": ["spg-k16-s1"], "splits": [split]})
    with pytest.raises(CatalogError, match=message):
        load_catalog(catalog_copy)


def test_experiments_that_train_nothing_are_refused(catalog_copy):
    set_multi_source(catalog_copy, {"experiments": ["zeroshot"], "splits": [{"held_out": "Shapes"}]})
    with pytest.raises(CatalogError, match=r"multi_source.experiments: 'zeroshot' \(zero_shot\) trains nothing"):
        load_catalog(catalog_copy)


def test_default_catalog_has_no_multi_source_split():
    assert load_catalog(DEFAULT_CATALOG_DIR).multi_source.splits == ()
