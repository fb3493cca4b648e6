"""A dataset's template groups (datasets.yaml `template_groups`, read by MoCoOp) are refused when the catalog loads if
the group sizes do not cover the templates exactly, naming file, entry and field; the shipped catalogs' groups load."""

import re

import pytest

from models.catalog import DEFAULT_CATALOG_DIR, CatalogError, load_catalog
from tests.catalog.catalog_editing import catalog_copy, edit  # noqa: F401 (fixture)

WHERE = r"datasets.yaml: datasets\[0\] \(Shapes\): template_groups"


def _groups(content):
    return content["datasets"][0]["template_groups"]


CASES = [
    ("sizes-short", lambda c: _groups(c).update(groups=[1, 1, 1, 4, 1]),
     WHERE + r"\.groups: the sizes \[1, 1, 1, 4, 1\] add up to 8, but templates lists 9"),
    ("sizes-long", lambda c: _groups(c).update(groups=[1, 1, 1, 4, 3]),
     WHERE + r"\.groups: the sizes \[1, 1, 1, 4, 3\] add up to 10, but templates lists 9"),
    ("size-zero", lambda c: _groups(c).update(groups=[1, 1, 1, 0, 4, 2]),
     WHERE + r"\.groups\[3\]: a group size must be an integer >= 1, got 0"),
    ("size-negative", lambda c: _groups(c).update(groups=[3, -1, 1, 4, 2]),
     WHERE + r"\.groups\[1\]: a group size must be an integer >= 1, got -1"),
    ("size-fraction", lambda c: _groups(c).update(groups=[1.5, 1, 1, 4, 1.5]),
     WHERE + r"\.groups\[0\]: a group size must be an integer >= 1, got 1.5"),
    ("no-placeholder", lambda c: _groups(c)["templates"].__setitem__(2, "a photo."),
     WHERE + r"\.templates\[2\]: expected a string with exactly one '\{\}', got 'a photo.'"),
    ("missing-groups", lambda c: _groups(c).pop("groups"), WHERE + r"\.groups: missing"),
    ("field-typo", lambda c: _groups(c).update(group=[9]), WHERE + r": unknown field\(s\) \['group'\]"),
]


@pytest.mark.parametrize("change, message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_template_groups_that_do_not_cover_the_templates_are_refused_at_load(catalog_copy, change, message):
    edit(catalog_copy / "datasets.yaml", change)
    with pytest.raises(CatalogError) as raised:
        load_catalog(catalog_copy)
    assert re.search(message, str(raised.value)), str(raised.value)


def test_a_bad_mocoop_template_groups_parameter_is_named_by_methods_yaml(catalog_copy):
    edit(catalog_copy / "methods.yaml", lambda c: c["methods"]["mocoop"]["parameters"].update(
        template_groups={"templates": ["a {}.", "the {}."], "groups": [2, 0]}))
    with pytest.raises(CatalogError, match=r"methods.yaml.*mocoop.*template_groups\.groups\[1\]: a group size must be "
                                           r"an integer >= 1, got 0"):
        load_catalog(catalog_copy)


def test_every_dataset_that_trains_has_template_groups():
    """The embedded datasets and the coop suite's 11 (the authors' lists as written) load with their groups (the
    project's catalog, whatever $PROMPTLAB_CATALOG another test's fixture set)."""
    for suite in (None, "coop"):
        catalog = load_catalog(DEFAULT_CATALOG_DIR, suite=suite)
        for dataset in map(catalog.dataset, catalog.datasets):
            if not dataset.test_only:
                assert dataset.template_groups is not None, dataset.name
    caltech = load_catalog(DEFAULT_CATALOG_DIR, suite="coop").dataset("Caltech101").template_groups
    assert caltech.groups == (1, 1, 1, 4, 2) and caltech.first_templates[0] == "{} texture."
