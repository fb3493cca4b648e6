"""The `initialisations:` section of experiments.yaml (GRAM, PVP): which upstream prompt each experiment starts from,
and the bad input refused when the catalog loads (an unknown initialisation, a method or prompt that is not the
initialisation's, an upstream method without one, fewer than 2 domains, a PVP entry without epochs), each message
naming the file, the entry and the field."""

import pytest

from catalog_editing import catalog_copy, edit  # noqa: F401 (catalog_copy is a fixture)
from models.catalog import DEFAULT_CATALOG_DIR, CatalogError, load_catalog


def test_default_catalog_starts_gram_and_pvp_experiments_from_their_initialisations():
    plan = load_catalog(DEFAULT_CATALOG_DIR).initialisations
    assert sorted(plan.entries) == ["gram-coop", "pvp-vpt"]
    assert plan.of("gramcoop-k4-s2").name == "gram-coop" and plan.of("pvpvpt-k16-s1").name == "pvp-vpt"
    assert plan.of("coop-k4-s2") is None
    assert plan.entries["gram-coop"].meta["n_domains"] == 4


def change_catalog(directory, initialisations=None, grid=()):
    def change(content):
        if initialisations is not None:
            content["initialisations"] = initialisations
        content["grid"] += list(grid)

    edit(directory / "experiments.yaml", change)


GRAM = {"method": "gram_coop", "parameters": {"context_init": "a photo of a"}, "meta": {"n_domains": 4}}
PVP = {"method": "pvp_vpt", "optimization": {"epochs": 2}}


@pytest.mark.parametrize("initialisations, grid, message", [
    ({"gram-coop": {**GRAM, "meta": {"n_domains": 1}}, "pvp-vpt": PVP}, [],
     r"experiments.yaml: initialisations.gram-coop.meta.n_domains: GRAM mines its tasks from at least 2 domains"),
    ({"gram-coop": {**GRAM, "meta": {"n_domain": 4}}, "pvp-vpt": PVP}, [],
     r"experiments.yaml: initialisations.gram-coop.*n_domain.*did you mean 'n_domains'"),
    ({"gram-coop": {**GRAM, "method": "coop"}, "pvp-vpt": PVP}, [],
     r"experiments.yaml: initialisations.gram-coop.*method.*an upstream method"),
    ({"gram-coop": GRAM, "pvp-vpt": {"method": "pvp_vpt"}}, [],
     r"experiments.yaml: initialisations.pvp-vpt.optimization.epochs: PVP's pre-training needs"),
    ({"gram-coop": GRAM, "pvp-vpt": PVP}, [{"method": "gram_coop", "name": "x", "initialisation": "gram-cop",
                                           "parameters": {"context_init": "a photo of a"}}],
     r"experiments.yaml: grid\[\d+\] \(gramcoop-k16-s1-x\).initialisation: unknown initialisation 'gram-cop' "
     r"\(did you mean 'gram-coop'\?\)"),
    ({"gram-coop": GRAM, "pvp-vpt": PVP}, [{"method": "gram_vpt", "initialisation": "gram-coop"}],
     r"\(gramvpt-k16-s1\).initialisation: gram-coop is a gram_coop prompt, the experiment trains gram_vpt"),
    ({"gram-coop": GRAM, "pvp-vpt": PVP}, [{"method": "gram_coop", "name": "x", "initialisation": "gram-coop"}],
     r"\(gramcoop-k16-s1-x\).parameters: .* differ from initialisation gram-coop's"),
    ({"gram-coop": GRAM, "pvp-vpt": PVP}, [{"method": "pvp_coop"}],
     r"\(pvpcoop-k16-s1\).initialisation: pvp_coop starts from a prompt learned upstream"),
    ({"gram-coop": GRAM, "pvp-vpt": PVP}, [{"method": "coop", "name": "x", "initialisation": "gram-coop"}],
     r"\(coop-k16-s1-x\).initialisation: gram-coop is a gram_coop prompt, the experiment trains coop"),
])
def test_bad_initialisation_input_is_refused_naming_file_entry_and_field(catalog_copy, initialisations, grid,
                                                                          message):
    change_catalog(catalog_copy, initialisations, grid)
    with pytest.raises(CatalogError, match=message):
        load_catalog(catalog_copy)
