"""The `setting:` grid field and the `learning_settings:` section: keys, hashes and errors naming entry and field."""

import pytest

from catalog_editing import catalog_copy, edit  # noqa: F401 (catalog_copy is a fixture)
from models.catalog import DEFAULT_CATALOG_DIR, CatalogError, load_catalog

COOP = {"method": "coop", "optimization": {"epochs": 2}}


def test_setting_experiments_have_setting_keys_and_leave_existing_hashes_alone():
    catalog = load_catalog(DEFAULT_CATALOG_DIR)
    grip = catalog.experiment("coop-ssl-s2-grip")
    assert (grip.setting, grip.shots, grip.seed, grip.pseudolabels.strategy) == ("ssl", None, 2, "grip")
    assert grip.as_dict()["setting"] == "ssl" and grip.variant_options()["setting"] == "ssl"
    assert "setting" not in catalog.experiment("coop-k16-s1").as_dict()  # few-shot hashes do not move
    assert catalog.experiment("zeroshot-trzsl-s3").setting == "trzsl"
    assert catalog.learning_settings.split_seed(2) == 0 and catalog.learning_settings.labels_per_class == 2
    assert grip.where.startswith("experiments.yaml: grid[")


@pytest.mark.parametrize("entry, message", [
    ({**COOP, "setting": "semi"}, r"grid\[\d+\]\.setting: unknown learning setting 'semi'"),
    ({**COOP, "setting": "ssl", "shots": [16]}, r"grid\[\d+\]\.shots: an experiment in setting ssl"),
    ({**COOP, "setting": "ul"}, r"grid\[\d+\]\.pseudolabels: coop in ul \(no labels at all\)"),
    ({**COOP, "setting": "ssl", "protocol": "base_to_new"}, r"grid\[\d+\]: setting ssl runs on all classes"),
    ({"method": "zero_shot", "setting": "ssl"}, r"grid\[\d+\]\.setting: zero_shot does not train"),
    ({"method": "tfup", "setting": "ul", "pseudolabels": {"strategy": "fpl"}},
     r"grid\[\d+\]\.pseudolabels: tfup selects its own pseudolabels"),
    ({**COOP, "setting": "ssl", "pseudolabels": {"strategy": "gripp"}},
     r"grid\[\d+\]\.pseudolabels\.strategy: unknown strategy 'gripp'"),
    ({**COOP, "setting": "ssl", "pseudolabels": {"strategy": "grip", "labelled_weighting": "equal"}},
     r"grid\[\d+\]\.pseudolabels\.labelled_weighting: unknown weighting 'equal'"),
])
def test_a_bad_setting_entry_is_refused_naming_entry_and_field(catalog_copy, entry, message):
    edit(catalog_copy / "experiments.yaml", lambda c: c["grid"].append(entry))
    with pytest.raises(CatalogError, match=message):
        load_catalog(catalog_copy)


def test_a_trzsl_seed_without_a_split_seed_is_refused(catalog_copy):
    edit(catalog_copy / "experiments.yaml",
         lambda c: c["grid"].append({**COOP, "setting": "trzsl", "seeds": [4], "name": "extra"}))
    with pytest.raises(CatalogError, match=r"learning_settings.trzsl_split_seeds: experiment 'coop-trzsl-s4-extra' "
                                           r"has seed 4"):
        load_catalog(catalog_copy)


@pytest.mark.parametrize("section, message", [
    ({"labels_per_class": 0}, r"learning_settings.labels_per_class: expected an integer >= 1"),
    ({"labels": 2}, r"learning_settings: unknown field\(s\) \['labels'\]"),
    ({"trzsl_split_seeds": [500, 0]}, r"learning_settings.trzsl_split_seeds: expected a mapping"),
])
def test_a_bad_learning_settings_section_is_named(catalog_copy, section, message):
    edit(catalog_copy / "experiments.yaml", lambda c: c.update(learning_settings=section))
    with pytest.raises(CatalogError, match=message):
        load_catalog(catalog_copy)


def test_the_loss_weighting_is_a_grid_parameter_that_leaves_published_hashes_alone(catalog_copy):
    published = load_catalog(DEFAULT_CATALOG_DIR).experiment("coop-ssl-s1-grip")
    assert published.pseudolabels.labelled_weighting is None
    assert "labelled_weighting" not in published.as_dict()["pseudolabels"]  # hashes written before it stay
    edit(catalog_copy / "experiments.yaml", lambda c: c["grid"].append(
        {**COOP, "setting": "ssl", "name": "plweight",
         "pseudolabels": {"strategy": "grip", "labelled_weighting": "pseudo_over_labelled"}}))
    variant = load_catalog(catalog_copy).experiment("coop-ssl-s1-plweight-grip")
    assert variant.as_dict()["pseudolabels"]["labelled_weighting"] == "pseudo_over_labelled"
    assert variant.variant_options()["pseudolabels"]["labelled_weighting"] == "pseudo_over_labelled"
