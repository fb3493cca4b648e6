"""The `multitask:` section of experiments.yaml (MVLPT): its source runs, their seed averages and the targets that
start from them, where each runs, and the bad input refused when the catalog loads (a target dataset that is also a
source, fewer than 2 sources, a target of another prompt type than its source runs, unknown datasets), each message
naming the file, the entry and the field."""

from pathlib import Path

import pytest

from catalog_editing import catalog_copy, edit  # noqa: F401 (catalog_copy is a fixture)
from models.catalog import DEFAULT_CATALOG_DIR, CatalogError, load_catalog

SOURCES = ["Shapes", "Colours", "Textures", "ColourShapes"]


def set_multitask(directory: Path, section=None, extra_grid=()) -> None:
    def change(content):
        content["grid"] += list(extra_grid)
        if section is None:
            content.pop("multitask", None)
        else:
            content["multitask"] = section

    edit(directory / "experiments.yaml", change)


def test_default_catalog_averages_three_seeds_per_shot_count_and_starts_the_targets():
    catalog = load_catalog(DEFAULT_CATALOG_DIR)
    plan = catalog.multitask
    assert plan.sources == tuple(SOURCES) and plan.target_datasets == ("ShapesNoisy", "Digits")
    assert plan.averages["mvlptcoop-k16-source"] == tuple(f"mvlptcoop-k16-s{seed}-source" for seed in (1, 2, 3))
    assert sorted(plan.averages) == ["mvlptcoop-k1-source", "mvlptcoop-k16-source", "mvlptcoop-k4-source"]
    assert plan.average_of("mvlptcoop-k4-s2") == "mvlptcoop-k4-source" and plan.average_of("coop-k4-s2") is None
    # a source run trains on the pooled sources only, a target on the targets only
    assert not any(catalog.runs_on(name, "mvlptcoop-k16-s1-source") for name in catalog.datasets)
    assert [name for name in catalog.datasets if catalog.runs_on(name, "mvlptcoop-k16-s1")] == ["Digits",
                                                                                                "ShapesNoisy"]
    assert catalog.runs_on("Shapes", "coop-k16-s1")


def test_a_subset_keeps_the_source_runs_and_datasets_of_its_targets():
    catalog = load_catalog(DEFAULT_CATALOG_DIR, grid="seed_methods")
    assert list(catalog.datasets) == ["Digits", "ShapesNoisy"]
    assert {f"mvlptcoop-k{k}-s{s}-source" for k in (1, 4, 16) for s in (1, 2, 3)} <= set(catalog.experiments)
    assert catalog.dataset("Colours").name == "Colours"  # a source outside the subset's datasets, still curated
    quick = load_catalog(DEFAULT_CATALOG_DIR, grid="quick")  # seed 1 only: the averages keep all three seeds
    assert quick.multitask.averages["mvlptcoop-k1-source"] == tuple(f"mvlptcoop-k1-s{s}-source" for s in (1, 2, 3))
    assert load_catalog(DEFAULT_CATALOG_DIR, grid="demo").multitask.averages == {}


VPT_TARGET = {"method": "mvlpt_vpt", "shots": [16], "seeds": [1], "parameters": {"prompt_depth": 4},
              "optimization": {"epochs": 2}}
SECTION = {"sources": SOURCES, "experiments": ["mvlptcoop-k*-s?-source"], "targets": ["ShapesNoisy", "Digits"]}


@pytest.mark.parametrize("section, extra_grid, message", [
    ({**SECTION, "targets": ["Digits", "Shapes"]}, [],
     r"experiments.yaml: multitask.targets: \['Shapes'\] are also sources"),
    ({**SECTION, "sources": ["Shapes"]}, [],
     r"experiments.yaml: multitask.sources: MVLPT trains one prompt jointly on several datasets; \['Shapes'\] is one"),
    ({**SECTION, "sources": ["Shapes", "Colors"]}, [],
     r"experiments.yaml: multitask.sources: unknown dataset\(s\) \['Colors'\]"),
    ({**SECTION, "targets": ["Digit"]}, [],
     r"experiments.yaml: multitask.targets: unknown dataset\(s\) \['Digit'\]"),
    (SECTION, [VPT_TARGET],
     r"experiments.yaml: grid\[\d+\] \(mvlptvpt-k16-s1\): mvlpt_vpt has no source prompt to start from.*source runs "
     r"at 16 shots are \{'mvlptcoop-k16-source': 'mvlpt_coop'\}: another prompt type"),
    ({**SECTION, "experiments": ["coop-k16-s?"]}, [],
     r"experiments.yaml: multitask.experiments: 'coop-k16-s1' \(coop\) is not an MVLPT method"),
    ({key: value for key, value in SECTION.items() if key != "sources"}, [],
     r"experiments.yaml: multitask: missing required field\(s\) \['sources'\]"),
    (None, [],
     r"experiments.yaml: grid\[\d+\] \(mvlptcoop-k1-s1-source\): mvlpt_coop starts from a multitask source prompt, "
     r"but experiments.yaml has no `multitask:` section"),
])
def test_bad_multitask_input_is_refused_naming_file_entry_and_field(catalog_copy, section, extra_grid, message):
    set_multitask(catalog_copy, section, extra_grid)
    with pytest.raises(CatalogError, match=message):
        load_catalog(catalog_copy)


def test_a_target_with_other_parameters_than_its_source_runs_is_refused(catalog_copy):
    target = {"method": "mvlpt_coop", "name": "csc", "shots": [4], "seeds": [1],
              "parameters": {"context_init": "a photo of a", "class_specific_context": True}}
    set_multitask(catalog_copy, SECTION, [target])
    with pytest.raises(CatalogError, match=r"\(mvlptcoop-k4-s1-csc\): mvlpt_coop has no source prompt.*other "
                                           r"parameters than this target's"):
        load_catalog(catalog_copy)


def test_targets_default_to_every_dataset_that_is_not_a_source(catalog_copy):
    set_multitask(catalog_copy, {**SECTION, "targets": None})
    assert load_catalog(catalog_copy).multitask.target_datasets == ("Digits", "ShapesSketch", "ShapesNoisy")


def test_a_run_trains_the_source_runs_its_targets_start_from_and_curates_the_sources():
    from models.plan.selection import run_selection

    catalog = load_catalog(DEFAULT_CATALOG_DIR, grid="seed_methods")
    selected = run_selection(catalog, None, ["mvlptcoop-k16-s1"])
    assert selected.partitions == (("Digits", "mvlptcoop-k16-s1"), ("ShapesNoisy", "mvlptcoop-k16-s1"))
    assert selected.multitask == tuple(f"mvlptcoop-k16-s{seed}-source" for seed in (1, 2, 3))
    assert set(selected.datasets) == {"Digits", "ShapesNoisy", *SOURCES}
    # a source run named alone trains alone, on no single dataset
    alone = run_selection(catalog, None, ["mvlptcoop-k4-s2-source"])
    assert (alone.partitions, alone.multitask) == ((), ("mvlptcoop-k4-s2-source",))
    # nothing of MVLPT where no target is selected
    plain = run_selection(load_catalog(DEFAULT_CATALOG_DIR), ["Shapes"], None)
    assert plain.multitask == () and not any("mvlpt" in key for _, key in plain.partitions)
