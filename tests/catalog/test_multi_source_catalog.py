"""The `multi_source:` section of experiments.yaml: leave-one-domain-out splits over datasets of one class set, and
the bad splits refused when the catalog loads (no held-out domain, no source left, a held-out domain that is also a
source, a domain held out twice, an experiment that is not a plain all-classes few-shot one), each message naming the
file, the entry and the field; the shipped section, and what grid subsets leave of it."""

from pathlib import Path

import pytest

from catalog_editing import catalog_copy, edit  # noqa: F401 (catalog_copy is a fixture)
from models.catalog import DEFAULT_CATALOG_DIR, CatalogError, load_catalog

def set_multi_source(directory: Path, section) -> None:
    def change(content):
        content["multi_source"] = section

    edit(directory / "experiments.yaml", change)


def test_sources_default_to_the_rest_of_the_family(catalog_copy):
    set_multi_source(catalog_copy, {"experiments": ["coop-k16-s1", "spg-k16-s?"],
                                    "splits": [{"held_out": "ShapesSketch"}, {"held_out": "Shapes"}]})
    plan = load_catalog(catalog_copy).multi_source
    assert plan.experiments == ("coop-k16-s1", "spg-k16-s1", "spg-k16-s2", "spg-k16-s3")
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


@pytest.mark.parametrize("key, message", [
    ("coop-k16-s1-b2n", r"'coop-k16-s1-b2n' was trained with protocol base_to_new"),
    ("coop-k16-s1-aug", r"'coop-k16-s1-aug' trains from a learning setting, pseudolabels, augmentation"),
    ("coop-k16-s1-fpl", r"'coop-k16-s1-fpl' trains from a learning setting, pseudolabels, augmentation"),
    ("coop-ssl-s1", r"'coop-ssl-s1' trains from a learning setting, pseudolabels, augmentation"),
])
def test_experiments_that_are_not_plain_all_class_few_shot_are_refused(catalog_copy, key, message):
    set_multi_source(catalog_copy, {"experiments": [key], "splits": [{"held_out": "Shapes"}]})
    with pytest.raises(CatalogError, match=r"experiments.yaml: multi_source.experiments: " + message):
        load_catalog(catalog_copy)


def test_a_domain_held_out_twice_is_refused(catalog_copy):
    # a partition is keyed by its held-out domain: two splits holding it out would share one
    set_multi_source(catalog_copy, {"experiments": ["spg-k16-s1"], "splits": [
        {"held_out": "ShapesNoisy"}, {"held_out": "ShapesNoisy", "sources": ["Shapes"]}]})
    with pytest.raises(CatalogError, match=r"multi_source.splits\[1\].held_out: ShapesNoisy is already held out"):
        load_catalog(catalog_copy)


def test_shipped_section_holds_each_shapes_domain_out_with_coop_and_spg():
    plan = load_catalog(DEFAULT_CATALOG_DIR).multi_source
    assert plan.experiments == ("coop-k16-s1", "coop-k16-s2", "coop-k16-s3", "spg-k16-s1", "spg-k16-s2", "spg-k16-s3")
    assert [(s.held_out, s.sources) for s in plan.splits] == [
        ("Shapes", ("ShapesSketch", "ShapesNoisy")), ("ShapesSketch", ("Shapes", "ShapesNoisy")),
        ("ShapesNoisy", ("Shapes", "ShapesSketch"))]
    assert plan.partition_keys()[:2] == [("Shapes", "coop-k16-s1"), ("Shapes", "coop-k16-s2")]
    assert len(plan.partition_keys()) == 18


def test_grid_subsets_keep_the_splits_whose_domains_and_experiments_they_keep():
    # the spg grid keeps every split with CoOp and SPG at seeds 1-3; seed_methods runs on ShapesNoisy and Digits, so
    # no split has its sources there; quick keeps seed 1 of CoOp (it leaves SPG to the spg grid); demo keeps the three
    # domains and CoOp but says
    # `multi_source: false`
    spg = load_catalog(DEFAULT_CATALOG_DIR, grid="spg").multi_source
    assert len(spg.splits) == 3 and len(spg.experiments) == 6
    assert load_catalog(DEFAULT_CATALOG_DIR, grid="seed_methods").multi_source.partition_keys() == []
    assert load_catalog(DEFAULT_CATALOG_DIR, grid="quick").multi_source.experiments == ("coop-k16-s1",)
    assert load_catalog(DEFAULT_CATALOG_DIR, grid="demo").multi_source.partition_keys() == []


def test_a_grid_subset_turns_the_section_off_with_false_only(catalog_copy):
    def change(content):
        content["grids"]["demo"]["multi_source"] = True

    edit(catalog_copy / "grids.yaml", change)
    with pytest.raises(CatalogError, match=r"grids.yaml: grids.demo.multi_source: only `false`"):
        load_catalog(catalog_copy, grid="quick")
