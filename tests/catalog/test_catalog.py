import pytest

from catalog_editing import catalog_copy, edit  # noqa: F401 (catalog_copy is a fixture)
from models.catalog import DEFAULT_CATALOG_DIR, CatalogError, load_catalog




def test_default_catalog_expands_the_grid_into_stable_keys():
    catalog = load_catalog(DEFAULT_CATALOG_DIR)
    assert {"Shapes", "Colours", "Textures", "ColourShapes", "Digits", "ShapesSketch", "ShapesNoisy"} <= set(
        catalog.datasets)
    assert catalog.datasets["ShapesSketch"].domain_shift_of == "Shapes"
    assert "zeroshot" in catalog.experiments
    coop = catalog.experiment("coop-k16-s2")
    assert (coop.method, coop.shots, coop.seed) == ("coop", 16, 2)
    assert catalog.experiment("coop-k16-s1-aug").augmentation is not None
    assert catalog.experiment("coop-k16-s1-fpl").pseudolabels.per_class == 16
    # The config hash changes with the seed but not between two loads.
    assert coop.config_hash == load_catalog(DEFAULT_CATALOG_DIR).experiment("coop-k16-s2").config_hash
    assert coop.config_hash != catalog.experiment("coop-k16-s1").config_hash


def test_dataset_without_template_is_named_in_the_error(catalog_copy):
    edit(catalog_copy / "datasets.yaml", lambda c: c["datasets"][1].pop("template"))
    with pytest.raises(CatalogError, match=r"datasets.yaml: datasets\[1\] \(Colours\)"):
        load_catalog(catalog_copy)


def test_unknown_method_parameter_names_the_grid_entry(catalog_copy):
    edit(catalog_copy / "experiments.yaml", lambda c: c["grid"][1].update(parameters={"n_ctx": 4}))
    with pytest.raises(CatalogError, match=r"experiments.yaml: grid\[1\].*n_ctx"):
        load_catalog(catalog_copy)


def test_duplicate_experiment_keys_are_rejected(catalog_copy):
    edit(catalog_copy / "experiments.yaml", lambda c: c["grid"].append(dict(c["grid"][1])))
    with pytest.raises(CatalogError, match="appears twice"):
        load_catalog(catalog_copy)


def test_missing_catalog_file_is_named(catalog_copy):
    (catalog_copy / "backbones.yaml").unlink()
    with pytest.raises(CatalogError, match="backbones.yaml"):
        load_catalog(catalog_copy)


def test_a_method_that_prompts_the_image_tower_can_be_in_a_grid(catalog_copy):
    edit(catalog_copy / "experiments.yaml",
         lambda c: c["grid"].append({"method": "maple", "shots": [16], "seeds": [7], "optimization": {"epochs": 2}}))
    experiment = load_catalog(catalog_copy).experiment("maple-k16-s7")
    assert experiment.method == "maple" and experiment.optimization["epochs"] == 2


def test_class_specific_context_is_refused_in_base_to_new(catalog_copy):
    edit(catalog_copy / "experiments.yaml", lambda c: c["grid"].append(
        {"method": "coop", "shots": [16], "seeds": [1], "protocol": "base_to_new",
         "parameters": {"class_specific_context": True}}))
    with pytest.raises(CatalogError, match="one state per class"):
        load_catalog(catalog_copy)


def test_an_experiment_can_replace_the_dataset_templates(catalog_copy):
    ensemble = ["a photo of a {}.", "a drawing of a {}.", "a {} shape."]
    edit(catalog_copy / "experiments.yaml",
         lambda c: c["grid"].append({"method": "zero_shot", "name": "myensemble", "templates": ensemble}))
    catalog = load_catalog(catalog_copy)
    experiment, plain = catalog.experiment("zeroshot-myensemble"), catalog.experiment("zeroshot")
    assert experiment.templates_for(catalog.dataset("Shapes")) == ensemble
    assert plain.templates_for(catalog.dataset("Shapes")) == list(catalog.dataset("Shapes").templates)
    assert experiment.variant_options()["variant"] == "myensemble"  # reported under its name
    assert "variant" not in plain.variant_options()
    assert "templates" not in plain.as_dict()  # existing experiments keep their config hash


def test_templates_without_a_placeholder_are_refused(catalog_copy):
    edit(catalog_copy / "experiments.yaml",
         lambda c: c["grid"].append({"method": "zero_shot", "name": "bad", "templates": ["a photo"]}))
    with pytest.raises(CatalogError, match="templates must be"):
        load_catalog(catalog_copy)


def test_an_unknown_pseudolabel_strategy_names_the_grid_entry_and_field(catalog_copy):
    edit(catalog_copy / "experiments.yaml", lambda c: c["grid"].append(
        {"method": "coop", "shots": [16], "seeds": [1], "pseudolabels": {"strategy": "gripp", "per_class": 16}}))
    with pytest.raises(CatalogError, match=r"grid\[\d+\]\.pseudolabels\.strategy: unknown strategy 'gripp'; "
                                           r"known: \['fpl', 'grip', 'ifpl'\]"):
        load_catalog(catalog_copy)
