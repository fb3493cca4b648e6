"""A grid entry's `selection:` (a declared model-selection policy, never test), `views:` (an augmented view recipe) and
the optimizer settings are checked when the catalog loads, naming file, entry and field; what they resolve to is part
of the experiment's hash only when the entry sets it, so that the hashes of existing experiments do not move."""

import re

import pytest

from models.catalog import CatalogError, load_catalog
from models.prompting.methods import METHODS
from models.prompting.view_recipes import ViewRecipe
from tests.catalog.catalog_editing import catalog_copy, edit  # noqa: F401 (fixture)


def _coop(content):
    return next(entry for entry in content["grid"] if entry.get("method") == "coop")


def _coop_settings(content):
    return next(entry for entry in content["grid"] if entry.get("method") == "coop" and entry.get("setting"))


@pytest.mark.parametrize("change, message", [
    (lambda c: _coop(c).update(selection="best_test"),
     r"grid\[\d+\] \(coop\): 'selection' must be one of \['last', 'few_shot_val', 'full_val'\] \(selecting on "
     r"test is not a policy"),
    (lambda c: _coop(c).update(selection=3), r"grid\[\d+\] \(coop\): 'selection' must be one of"),
    (lambda c: _coop(c).update(views={"passes": 4, "crop_scale": [0, 1]}),
     r"grid\[\d+\]: views.crop_scale must be \[low, high\] with 0 < low <= high <= 1"),
    (lambda c: _coop(c).update(views={"passes": 4, "crop_scale": [0.5, 1.5]}), r"views.crop_scale"),
    (lambda c: _coop(c).update(views={"passes": 0}), r"views.passes must be an integer >= 1"),
    (lambda c: _coop(c).update(views={"passes": 2, "flips": True}), r"views has unknown field\(s\) \['flips'\]"),
    (lambda c: _coop(c).setdefault("optimization", {}).update(optimizer="rmsprop"),
     r"'optimization.optimizer' must be one of \['sgd', 'adam', 'adamw'\], got 'rmsprop'"),
    (lambda c: _coop(c).setdefault("optimization", {}).update(betas=[0.9, 1.5]), r"'optimization.betas'"),
    (lambda c: _coop(c).setdefault("optimization", {}).update(eps=0.0), r"'optimization.eps' must be a finite "
                                                                          r"number > 0"),
    (lambda c: _coop(c).setdefault("optimization", {}).update(iterations_per_shot=0),
     r"'optimization.iterations_per_shot' must be an integer >= 1"),
    (lambda c: _coop_settings(c).setdefault("optimization", {}).update(iterations_per_shot=500),
     r"iterations_per_shot' needs shots"),
    (lambda c: next(e for e in c["grid"] if e["method"] == "zero_shot").update(selection="full_val"),
     r"zero_shot learns nothing, so it has no 'selection' or 'views' to set"),
])
def test_bad_selection_views_and_optimizer_settings_are_refused_naming_the_entry(catalog_copy, change, message):
    edit(catalog_copy / "experiments.yaml", change)
    with pytest.raises(CatalogError) as raised:
        load_catalog(catalog_copy)
    assert str(raised.value).startswith("experiments.yaml: grid[")
    assert re.search(message, str(raised.value)), str(raised.value)


def test_set_policies_and_recipes_resolve_and_enter_the_hash_only_when_set(catalog_copy):
    before = load_catalog(catalog_copy).experiments
    edit(catalog_copy / "experiments.yaml", lambda c: _coop(c).update(
        selection="full_val", views={"passes": 3, "crop_scale": [0.5, 1.0], "flip": False}))
    after = load_catalog(catalog_copy).experiments
    changed = [key for key in before if before[key].config_hash != after[key].config_hash]
    unchanged = [key for key in before if key not in changed]
    assert changed and all(after[key].method == "coop" for key in changed) and unchanged
    experiment = after[changed[0]]
    assert experiment.selection_policy == "full_val"
    assert experiment.view_recipe == ViewRecipe(passes=3, crop_scale=(0.5, 1.0), flip=False)
    assert experiment.variant_options()["selection"] == "full_val"
    untouched = before[unchanged[0]]
    assert "selection" not in untouched.as_dict() and "views" not in untouched.as_dict()
    assert untouched.selection_policy == METHODS[untouched.method].selection


def test_every_registered_method_declares_a_policy_and_says_how_the_authors_selected():
    for spec in METHODS.values():
        if spec.trains_prompts:
            assert spec.selection in ("last", "few_shot_val", "full_val")
            assert spec.selection_note, f"{spec.name} does not say how its authors selected"
