"""Catalog values that used to fail late or silently (issue 11 §4, the hostile probe) are refused when the catalog
loads, naming file, entry and field, and the nearest valid key for a typo; the CLI exits with code 2 before any stage
runs. Before: `shots: 0` became 16 shots, `shots: 4` raised a raw TypeError, `shots: ['4']` reached polars, `[0]`,
`[-1]`, `[2.5]` and `seeds: [-1]` failed inside prompt_checkpoints, an optimization typo only at training, a backbone
typo as `BackboneEntry.__init__() got an unexpected keyword argument`, `split_seed: abc` as `invalid literal for
int()`, and a world.yaml typo in embedded_world_job."""

import os
import re
import subprocess
import sys

import pytest

from models.catalog import CatalogError, load_catalog
from tests.catalog.catalog_editing import catalog_copy, edit  # noqa: F401 (fixture)


def _coop(content):
    return next(entry for entry in content["grid"] if entry.get("method") == "coop" and "shots" in entry)


def _zero_shot(content):
    return next(entry for entry in content["grid"] if entry.get("method") == "zero_shot")


def _augment_a_pseudolabel_entry(content):
    augmented = next(entry for entry in content["grid"] if entry.get("augmentation"))
    pseudolabelled = next(entry for entry in content["grid"] if entry.get("pseudolabels") and not entry.get("setting"))
    pseudolabelled["augmentation"] = augmented["augmentation"]


def _rename(mapping, old, new):
    mapping[new] = mapping.pop(old)


SHOTS = r"experiments.yaml: grid\[\d+\] \(coop\): 'shots' must be a non-empty list of distinct integers >= 1"
CASES = [
    ("shots-0-scalar", "experiments.yaml", lambda c: _coop(c).update(shots=0), SHOTS + r".*got 0$"),
    ("shots-4-scalar", "experiments.yaml", lambda c: _coop(c).update(shots=4), SHOTS + r".*got 4$"),
    ("shots-string", "experiments.yaml", lambda c: _coop(c).update(shots=["4"]), SHOTS + r".*got \['4'\]"),
    ("shots-zero", "experiments.yaml", lambda c: _coop(c).update(shots=[0]), SHOTS + r".*got \[0\]"),
    ("shots-negative", "experiments.yaml", lambda c: _coop(c).update(shots=[-1]), SHOTS + r".*got \[-1\]"),
    ("shots-fraction", "experiments.yaml", lambda c: _coop(c).update(shots=[2.5]), SHOTS + r".*got \[2.5\]"),
    ("seeds-negative", "experiments.yaml", lambda c: _coop(c).update(seeds=[-1]),
     r"grid\[\d+\] \(coop\): 'seeds' must be a non-empty list of distinct integers >= 0.*got \[-1\]"),
    ("zero-shot-negative-shots", "experiments.yaml", lambda c: _zero_shot(c).update(shots=[-2]),
     r"grid\[0\] \(zeroshot\): 'shots' must be .* >= 0.*got \[-2\]"),
    ("optimization-typo", "experiments.yaml",
     lambda c: _coop(c).setdefault("optimization", {}).update(epohcs=3),
     r"grid\[\d+\] \(coop\) optimization: unknown field\(s\) \['epohcs'\] \(did you mean 'epochs'\?\)"),
    ("grid-entry-typo", "experiments.yaml", lambda c: _rename(_coop(c), "shots", "shotz"),
     r"grid\[\d+\] \(coop\): unknown field\(s\) \['shotz'\] \(did you mean 'shots'\?\)"),
    ("method-typo", "experiments.yaml", lambda c: _coop(c).update(method="cooop"),
     r"grid\[\d+\]: unknown method 'cooop' \(did you mean 'coop'\?\)"),
    ("backbone-unknown-key", "backbones.yaml", lambda c: c["backbones"][0].update(pretraind="x"),
     r"backbones.yaml: backbones\[0\] \(tiny-clip\): unknown field\(s\) \['pretraind'\] "
     r"\(did you mean 'pretrained'\?\)"),
    ("backbone-missing-source", "backbones.yaml", lambda c: c["backbones"][0].pop("source"),
     r"backbones.yaml: backbones\[0\] \(tiny-clip\): missing required field\(s\) \['source'\]"),
    ("split-seed-text", "datasets.yaml", lambda c: c["datasets"][0].update(split_seed="abc"),
     r"datasets.yaml: datasets\[0\] \(Shapes\): 'split_seed' must be an integer >= 0, got 'abc'"),
    # a dataset that reads images through links leading outside its folder says so (models/data/layouts)
    ("follow-symlinks-text", "datasets.yaml", lambda c: c["datasets"][0].update(follow_symlinks="yes"),
     r"datasets.yaml: datasets\[0\] \(Shapes\): 'follow_symlinks' must be true or false, got 'yes'"),
    ("world-field-typo", "world.yaml", lambda c: _rename(c["tiny_clip"], "epochs", "epochz"),
     r"world.yaml: tiny_clip: unknown field\(s\) \['epochz'\] \(did you mean 'epochs'\?\)"),
    ("world-section-typo", "world.yaml", lambda c: _rename(c, "corpus", "corpuss"),
     r"world.yaml: unknown field\(s\) \['corpuss'\] \(did you mean 'corpus'\?\)"),
    # the pool's rounds take no augmented images: the combination would silently train without them
    ("augmentation-with-pseudolabels", "experiments.yaml", _augment_a_pseudolabel_entry,
     r"grid\[\d+\]: augmentation cannot be combined with pseudolabels"),
]


@pytest.mark.parametrize("file_name, change, message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_value_is_refused_at_load_naming_file_entry_and_field(catalog_copy, file_name, change, message):
    edit(catalog_copy / file_name, change)
    with pytest.raises(CatalogError) as raised:
        load_catalog(catalog_copy)
    assert re.search(message, str(raised.value)), str(raised.value)


def test_the_cli_exits_2_with_one_line_before_any_stage_runs(catalog_copy, tmp_path):
    edit(catalog_copy / "experiments.yaml", lambda c: _coop(c).update(shots=4))
    environment = {**os.environ, "PROMPTLAB_CATALOG": str(catalog_copy),
                   "PROMPTLAB_WORKSPACE": str(tmp_path / "workspace"), "DAGSTER_HOME": str(tmp_path / "home")}
    environment.pop("PROMPTLAB_GRID", None)
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "run"], capture_output=True, text=True,
                            env=environment, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("promptlab run: error: experiments.yaml: grid[")
    assert "'shots' must be a non-empty list" in lines[0]
    assert not (tmp_path / "workspace").exists() and not (tmp_path / "home").exists()
