"""The `transfer:` section of experiments.yaml: sources, targets per protocol, and the checkpoints it may name."""

from pathlib import Path

import pytest

from catalog_editing import catalog_copy, edit  # noqa: F401 (catalog_copy is a fixture)
from models.catalog import DEFAULT_CATALOG_DIR, CatalogError, load_catalog




def set_transfer(directory: Path, transfer, grid_additions=()) -> None:
    def change(content):
        content["grid"] += list(grid_additions)
        if transfer is None:
            content.pop("transfer", None)
        else:
            content["transfer"] = transfer

    edit(directory / "experiments.yaml", change)


def test_default_catalog_transfers_the_16_shot_prompts():
    plan = load_catalog(DEFAULT_CATALOG_DIR).transfer
    coop = [key for key in plan.experiments if key.startswith("coop-")]
    assert coop == ["coop-k16-s1", "coop-k16-s2", "coop-k16-s3"]  # "s?" leaves -aug / -fpl / -b2n out
    assert {"maple-k16-s1", "promptsrc-k16-s3", "cocoop-k16-s2"} <= set(plan.experiments)
    assert plan.sources == ("ColourShapes", "Shapes")
    # cross-dataset: every other dataset except shifted variants; DG: only the variants shifted from the source
    assert plan.targets_of("ColourShapes") == {"cross_dataset": ("Shapes", "Colours", "Textures", "Digits")}
    assert plan.targets_of("Shapes") == {"domain_generalization": ("ShapesSketch", "ShapesNoisy")}
    assert plan.targets_of("Digits") == {}


def test_domain_generalization_picks_only_the_source_variants(catalog_copy):
    edit(catalog_copy / "datasets.yaml", lambda c: c["datasets"].append(
        {"name": "ColoursFaded", "source": "embedded", "template": "a faded {}.", "domain_shift_of": "Colours"}))
    set_transfer(catalog_copy, {"experiments": ["coop-k16-s1"],
                                "cross_dataset": {"sources": ["Shapes", "ShapesSketch"]},
                                "domain_generalization": {"sources": ["Shapes", "Colours"]}})
    plan = load_catalog(catalog_copy).transfer
    assert plan.targets["domain_generalization"] == {"Shapes": ("ShapesSketch", "ShapesNoisy"),
                                                     "Colours": ("ColoursFaded",)}
    # neither the source's family nor any shifted variant is a cross-dataset target
    assert plan.targets["cross_dataset"]["Shapes"] == ("Colours", "Textures", "ColourShapes", "Digits")
    assert plan.targets["cross_dataset"]["ShapesSketch"] == ("Colours", "Textures", "ColourShapes", "Digits")


def test_explicit_targets_restrict_the_defaults_and_stray_ones_are_named(catalog_copy):
    set_transfer(catalog_copy, {"experiments": ["coop-k16-s1"],
                                "cross_dataset": {"sources": ["ColourShapes"], "targets": ["Digits", "Shapes"]}})
    assert load_catalog(catalog_copy).transfer.targets_of("ColourShapes") == {"cross_dataset": ("Shapes", "Digits")}
    set_transfer(catalog_copy, {"experiments": ["coop-k16-s1"],
                                "cross_dataset": {"sources": ["ColourShapes"], "targets": ["Digits", "ShapesSketch"]}})
    with pytest.raises(CatalogError, match=r"transfer.cross_dataset.targets: \['ShapesSketch'\] are not"):
        load_catalog(catalog_copy)


@pytest.mark.parametrize("entry, key", [
    ({"method": "coop", "name": "csc", "parameters": {"class_specific_context": True}}, "coop-k16-s9-csc"),
    ({"method": "linear_probe"}, "linearprobe-k16-s9"),
])
def test_a_class_specific_experiment_is_refused(catalog_copy, entry, key):
    set_transfer(catalog_copy, {"experiments": ["coop-k16-s1", key], "cross_dataset": {"sources": ["ColourShapes"]}},
                 grid_additions=[{**entry, "shots": [16], "seeds": [9]}])
    with pytest.raises(CatalogError, match=rf"experiments.yaml: transfer.experiments: '{key}'.*one state per class"):
        load_catalog(catalog_copy)


@pytest.mark.parametrize("experiments, message", [
    (["coop-k16-s1-b2n"], "protocol base_to_new"),
    (["zeroshot"], "learns nothing to transfer"),
    (["vpt_shallow-k16-s?"], "matches no experiment"),
    ([], "non-empty list"),
])
def test_experiments_that_cannot_be_transferred_are_named(catalog_copy, experiments, message):
    set_transfer(catalog_copy, {"experiments": experiments, "cross_dataset": {"sources": ["ColourShapes"]}})
    with pytest.raises(CatalogError, match=message):
        load_catalog(catalog_copy)


@pytest.mark.parametrize("section, message", [
    ({"domain_generalization": {"sources": ["Colours"]}}, "no dataset has domain_shift_of: Colours"),
    ({"cross_dataset": {"sources": ["Imagenet"]}}, r"unknown dataset\(s\) \['Imagenet'\]"),
    ({"cross_dataset": {"source": ["Shapes"]}}, r"unknown field\(s\) \['source'\] \(did you mean 'sources'\?\)"),
    ({}, "at least one of"),
    ({"crossdataset": {"sources": ["Shapes"]}}, r"unknown field\(s\) \['crossdataset'\]"),
])
def test_bad_sources_are_named(catalog_copy, section, message):
    set_transfer(catalog_copy, {"experiments": ["coop-k16-s1"], **section})
    with pytest.raises(CatalogError, match=message):
        load_catalog(catalog_copy)


def test_a_catalog_without_transfer_section_has_no_transfer_partitions(catalog_copy):
    set_transfer(catalog_copy, None)
    plan = load_catalog(catalog_copy).transfer
    assert plan.experiments == () and plan.sources == () and plan.targets_of("Shapes") == {}
