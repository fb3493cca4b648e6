"""NoLA in the grid: UL entries load with their seeds; a malformed encoder name or crop range, and pseudolabels (it
selects its own), are refused when the catalog loads, naming the entry and field."""

import pytest

from catalog_editing import catalog_copy, edit  # noqa: F401 (catalog_copy is a fixture)
from models.catalog import CatalogError, load_catalog


def test_nola_ul_entries_load_with_their_seeds_and_parameters(catalog_copy):
    # the grid's own entry (85-100 % strong crops for the 32-pixel world) and one at the authors' 20-100 %
    edit(catalog_copy / "experiments.yaml", lambda c: c["grid"].append(
        {"method": "nola", "setting": "ul", "seeds": [1], "name": "authorcrops",
         "parameters": {"strong_crop_scale": [0.2, 1.0]}}))
    catalog = load_catalog(catalog_copy)
    runs = [catalog.experiment(f"nola-ul-s{seed}") for seed in (1, 2, 3)]
    assert [run.setting for run in runs] == ["ul"] * 3 and [run.seed for run in runs] == [1, 2, 3]
    assert all(run.parameters["strong_crop_scale"] == [0.85, 1.0] for run in runs)
    assert catalog.experiment("nola-ul-s1-authorcrops").parameters["strong_crop_scale"] == [0.2, 1.0]


@pytest.mark.parametrize("entry, message", [
    ({"method": "nola", "setting": "ul", "parameters": {"labeller_encoder": "dino_vitb16"}},
     r"grid\[\d+\]: nola: labeller_encoder: encoder 'dino_vitb16' is not 'backbone'"),
    ({"method": "nola", "setting": "ul", "parameters": {"strong_crop_scale": [0.0, 1.0]}},
     r"grid\[\d+\]: nola: strong_crop_scale must be \[low, high\]"),
    ({"method": "nola", "setting": "ul", "pseudolabels": {"strategy": "fpl"}},
     r"grid\[\d+\]\.pseudolabels: nola selects its own pseudolabels"),
])
def test_a_bad_nola_entry_is_refused_when_the_catalog_loads(catalog_copy, entry, message):
    edit(catalog_copy / "experiments.yaml", lambda c: c["grid"].append(entry))
    with pytest.raises(CatalogError, match=message):
        load_catalog(catalog_copy)
