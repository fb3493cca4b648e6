"""The catalog's test_time section, and TPT's table and pattern checks from per-seed results."""

from __future__ import annotations

import shutil

import polars as pl
import pytest
import yaml

from models.catalog import DEFAULT_CATALOG_DIR, CatalogError, load_catalog
from models.evaluation.phenomena import CONTRADICTED, NOT_SHOWN, SHOWN
from models.evaluation.test_time_table import row_label, tpt_pattern_checks, tpt_tables


def test_the_shipped_catalog_declares_tpt_tpt_plus_coop_and_difftpt_on_shapes_and_its_shifts():
    plan = load_catalog(DEFAULT_CATALOG_DIR).test_time
    assert plan.targets == {"Shapes": ("Shapes", "ShapesSketch", "ShapesNoisy")}
    assert {run.mode for run in plan.runs.values()} == {"tpt", "difftpt"}
    assert plan.run("tpt-coop-k16-s2").start == "coop-k16-s2" and plan.run("tpt-coop-k16-s2").seed == 2
    assert plan.run("tpt-zeroshot-s3").start == "zeroshot" and plan.run("tpt-zeroshot-s3").seed == 3
    assert plan.run("difftpt-zeroshot-s1").diffusion_backbone == "embedded-ddpm"
    quick = load_catalog(DEFAULT_CATALOG_DIR, grid="quick").test_time
    assert sorted(quick.runs) == ["difftpt-zeroshot-s1", "tpt-coop-k16-s1", "tpt-zeroshot-s1"]


def _catalog_with(tmp_path, test_time):
    directory = tmp_path / "catalog"
    shutil.copytree(DEFAULT_CATALOG_DIR, directory)
    experiments = yaml.safe_load((directory / "experiments.yaml").read_text())
    experiments["test_time"] = test_time
    (directory / "experiments.yaml").write_text(yaml.safe_dump(experiments))
    return directory


@pytest.mark.parametrize("section, message", [
    ({"sources": ["Shapes"], "modes": {"tpt": {"selection_ratio": 0.1}}, "runs": [{"mode": "tpt", "start": "zeroshot"}]},
     "test_time.modes.tpt: .*no setting"),
    ({"sources": ["Shapes"], "modes": {"tpt": {}}, "runs": [{"mode": "difftpt", "start": "zeroshot"}]},
     r"runs\[0\]: mode 'difftpt' is not one of"),
    ({"sources": ["Shapes"], "modes": {"tpt": {}}, "runs": [{"mode": "tpt", "start": "coop-k99-s?"}]},
     "matches no experiment"),
    ({"sources": ["Nowhere"], "modes": {"tpt": {}}, "runs": [{"mode": "tpt", "start": "zeroshot"}]}, "Nowhere"),
    ({"sources": ["Shapes"], "modes": {"tpt": {}}, "runs": [{"mode": "tpt", "start": "coop-k16-s1", "seeds": [4]}]},
     "has its own seed"),
    ({"sources": ["Shapes"], "modes": {"tpt": {}}, "runs": [{"mode": "tpt", "start": "coop-k16-s1-b2n"}]},
     "base classes only"),
    ({"sources": ["Shapes"], "modes": {"difftpt": {"n_generated_views": 0}},
      "runs": [{"mode": "difftpt", "start": "zeroshot"}]}, "n_generated_views"),
])
def test_a_bad_test_time_section_is_refused_naming_the_entry(tmp_path, section, message):
    with pytest.raises(CatalogError, match=message):
        load_catalog(_catalog_with(tmp_path, section))


def _rows(entries):
    return pl.DataFrame(entries, schema={"source_dataset": pl.String, "dataset": pl.String, "mode": pl.String,
                                         "start_method": pl.String, "start": pl.String, "seed": pl.Int64,
                                         "value": pl.Float64}, orient="row")


def test_tables_average_per_seed_and_checks_weigh_margins_against_the_seed_spread():
    entries = []
    for dataset, zero_shot in (("Shapes", 0.80), ("ShapesNoisy", 0.40), ("ShapesSketch", 0.60)):
        entries.append(("Shapes", dataset, None, "zero_shot", "zeroshot", 0, zero_shot))
        for seed, jitter in ((1, 0.0), (2, 0.01), (3, -0.01)):
            entries.append(("Shapes", dataset, "tpt", "zero_shot", "zeroshot", seed, zero_shot + 0.05 + jitter))
            entries.append(("Shapes", dataset, "difftpt", "zero_shot", "zeroshot", seed, zero_shot + 0.05 - jitter))
            entries.append(("Shapes", dataset, None, "coop", f"coop-k16-s{seed}", seed, zero_shot + 0.1))
            entries.append(("Shapes", dataset, "tpt", "coop", f"coop-k16-s{seed}", seed, zero_shot + 0.08))
    results = _rows(entries)
    (table,) = tpt_tables(results)
    assert table.datasets == ["Shapes", "ShapesNoisy", "ShapesSketch"]
    assert list(table.rows) == ["Zero-shot", "coop-k16", "TPT", "TPT + coop-k16", "DiffTPT"]  # TPT's row order
    assert table.rows["TPT"]["shifts"].mean == pytest.approx((0.45 + 0.65) / 2)
    assert table.rows["TPT"]["average"].n_seeds == 3
    verdicts = {check.claim: check.verdict for check in tpt_pattern_checks(results)}
    assert verdicts["Shapes, shifts: TPT beats zero-shot"] == SHOWN  # +5 points, seed std 1 point
    assert verdicts["Shapes, in domain: TPT beats zero-shot"] == SHOWN
    assert verdicts["Shapes, shifts: TPT + coop-k16 beats coop-k16"] == CONTRADICTED  # 2 points below, every seed
    assert verdicts["Shapes, average: DiffTPT beats TPT"] == NOT_SHOWN  # equal means, spread 2 points


def test_one_seed_never_shows_a_difference():
    results = _rows([("Shapes", "Shapes", None, "zero_shot", "zeroshot", 0, 0.5),
                     ("Shapes", "Shapes", "tpt", "zero_shot", "zeroshot", 1, 0.9)])
    (check,) = tpt_pattern_checks(results)
    assert check.verdict == NOT_SHOWN and check.n_seeds == 1


def test_row_labels_name_the_mode_and_the_start():
    assert row_label(None, "zero_shot", "zeroshot") == "Zero-shot"
    assert row_label(None, "zero_shot", "zeroshot-ensemble") == "Zero-shot (ensemble)"
    assert row_label(None, "coop", "coop-k16-s3") == "coop-k16"
    assert row_label("tpt", "zero_shot", "zeroshot") == "TPT"
    assert row_label("tpt", "coop", "coop-k16-s1") == "TPT + coop-k16"
    assert row_label("difftpt", "zero_shot", "zeroshot") == "DiffTPT"


@pytest.mark.parametrize("difftpt, message", [
    ({"diffusion_backbone": "sd-nowhere"}, "sd-nowhere.*is not a diffusion backbone"),
    ({"diffusion_backbone": "sd-image-variations", "diffusion": {"strength": 0.5}}, "modes.difftpt.diffusion"),
])
def test_difftpt_names_a_known_diffusion_backbone_and_settings_it_takes(tmp_path, difftpt, message):
    section = {"sources": ["Shapes"], "modes": {"difftpt": difftpt}, "runs": [{"mode": "difftpt", "start": "zeroshot"}]}
    with pytest.raises(CatalogError, match=message):
        load_catalog(_catalog_with(tmp_path, section))
