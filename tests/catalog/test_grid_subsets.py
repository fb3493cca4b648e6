"""Named subsets of the grid (grids.yaml): `promptlab run --grid quick` and $PROMPTLAB_GRID."""

import os
import subprocess
import sys

import pytest

from catalog_editing import catalog_copy, edit  # noqa: F401 (catalog_copy is a fixture)
from models.catalog import DEFAULT_CATALOG_DIR, CatalogError, load_catalog


def test_quick_grid_keeps_seed_1_at_three_shot_counts_with_the_full_grids_configurations():
    full = load_catalog(DEFAULT_CATALOG_DIR, grid="default")
    quick = load_catalog(DEFAULT_CATALOG_DIR, grid="quick")
    assert quick.grid == "quick" and full.grid == "default"
    assert set(quick.experiments) < set(full.experiments)
    # MVLPT's source runs come with the targets they start, at every seed they are averaged over
    sources = set(quick.multitask.experiments)
    assert {quick.experiments[key].seed for key in sources} == {1, 2, 3}
    trained = [e for e in quick.experiments.values() if e.seed is not None and e.key not in sources]
    assert {e.seed for e in trained} == {1}
    assert {e.shots for e in trained if e.setting is None} == {1, 4, 16}
    assert {e.setting for e in trained if e.shots is None} == {"ssl", "ul", "trzsl"}  # settings have no shots
    assert "zeroshot" in quick.experiments  # no shots or seed: passes those filters
    # Every method of the full grid is still there, with the same key and configuration hash, but SPG (its 70 GAN
    # epochs each score the sources' val images with per-image prompts: left to --grid spg)
    assert {e.method for e in quick.experiments.values()} == {e.method for e in full.experiments.values()} - {"spg"}
    for key, experiment in quick.experiments.items():
        assert experiment.config_hash == full.experiments[key].config_hash
    dropped = set(full.experiments) - set(quick.experiments)
    assert "coop-k16-s2" in dropped and "coop-k8-s1" in dropped
    # the settings with their labels alone and with FPL (one round); the 10-round strategies are left out
    assert {"coop-ssl-s1", "coop-ul-s1-fpl", "maple-trzsl-s1-fpl", "tfupt-ul-s1"} <= set(quick.experiments)
    assert not any(e.pseudolabels and e.pseudolabels.strategy in ("ifpl", "grip") for e in quick.experiments.values())
    # Transfer keeps the surviving checkpoints and the same targets.
    assert quick.transfer.experiments == tuple(k for k in full.transfer.experiments if k.endswith("-s1"))
    assert quick.transfer.targets == full.transfer.targets


def test_targets_grid_is_the_plain_configurations_the_issue_8_targets_are_measured_on():
    full = load_catalog(DEFAULT_CATALOG_DIR, grid="default")
    targets = load_catalog(DEFAULT_CATALOG_DIR, grid="targets")
    seeds = (1, 2, 3)
    expected = {"zeroshot", *(f"{method}-k{shots}-s{seed}" for method in ("linearprobe", "coop") for shots in (1, 16)
                              for seed in seeds),
                *(f"{method}-k16-s{seed}-b2n" for method in ("coop", "kgcoop", "cocoop", "promptsrc") for seed in seeds)}
    assert set(targets.experiments) == expected  # no CoOp variants (csc, -aug, ...), no other protocol's entries
    for key, experiment in targets.experiments.items():
        assert experiment.config_hash == full.experiments[key].config_hash
    assert targets.transfer.experiments == ("coop-k16-s1", "coop-k16-s2", "coop-k16-s3")


def test_the_grid_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("PROMPTLAB_GRID", "quick")
    assert load_catalog(DEFAULT_CATALOG_DIR).grid == "quick"
    monkeypatch.delenv("PROMPTLAB_GRID")
    assert load_catalog(DEFAULT_CATALOG_DIR).grid == "default"


def test_a_unknown_grid_is_named_with_the_known_ones():
    with pytest.raises(CatalogError, match=r"grids.yaml: no grid named 'fast'; known: \['default', 'demo', 'quick', 'standard', 'targets', 'baselines', 'seed_methods', 'paper_methods', 'spg', 'pseudolabels'\]"):
        load_catalog(DEFAULT_CATALOG_DIR, grid="fast")


@pytest.mark.parametrize("subset, message", [
    ({"seed": [1]}, r"grids.quick: unknown field\(s\) \['seed'\]"),
    ({"shots": 4}, r"grids.quick.shots: expected a non-empty list, got 4"),
    ({"methods": ["coop", "cooop"]}, r"grids.quick.methods: \['cooop'\] are not registered"),
    ({"methods": ["vpt_deep"], "shots": [3]}, r"grids.quick: selects no experiment"),
    ({"experiments": ["coop-k16-s?", "copo-*"]}, r"grids.quick.experiments: 'copo-\*' matches no experiment key"),
    ({"strategies": ["none", "gripp"]}, r"grids.quick.strategies: \['gripp'\] are not pseudolabel strategies"),
    ({"experiments": "coop-k16-s1"}, r"grids.quick.experiments: expected a non-empty list"),
    ({"datasets": ["Shapes", "Shapez"]},
     r"grids.quick.datasets: \['Shapez'\] are not datasets of datasets.yaml \(did you mean 'Shapes'\?\); known: "),
    ({"datasets": "Shapes"}, r"grids.quick.datasets: expected a non-empty list, got 'Shapes'"),
    ({"test_time": {"mode": ["tpt"]}}, r"grids.quick.test_time: unknown field\(s\) \['mode'\] \(did you mean 'modes'"),
    ({"test_time": ["tpt"]}, r"grids.quick.test_time: expected a mapping with fields \['modes', 'starts', "),
    ({"test_time": {"modes": ["tpt", "tpx"]}},
     r"grids.quick.test_time.modes: \['tpx'\] are not test-time modes \(did you mean 'tpt'\?\); known: "),
    ({"test_time": {"starts": ["zeroshot", "cop-k16-s?"]}},
     r"grids.quick.test_time.starts: 'cop-k16-s\?' matches no start of a test-time run"),
    ({"test_time": {"max_test_images": 0}}, r"grids.quick.test_time: 'max_test_images' must be an integer >= 1, got 0"),
    ({"test_time": {"max_test_images": "100"}}, r"grids.quick.test_time: 'max_test_images' must be an integer"),
    ({"test_time": {"modes": ["difftpt"], "starts": ["coop-k16-s?"]}}, r"grids.quick.test_time: keeps no test-time run"),
    ({"datasets": ["Colours"], "test_time": {"modes": ["tpt"]}}, r"grids.quick.test_time: keeps no test-time run"),
])
def test_bad_subsets_are_named(catalog_copy, subset, message):
    edit(catalog_copy / "grids.yaml", lambda c: c["grids"].update(quick=subset))
    with pytest.raises(CatalogError, match=message):
        load_catalog(catalog_copy, grid="quick")


def test_a_subset_without_transferred_checkpoints_has_no_transfer_partitions(catalog_copy):
    edit(catalog_copy / "grids.yaml", lambda c: c["grids"].update(probe={"methods": ["linear_probe", "zero_shot"]}))
    catalog = load_catalog(catalog_copy, grid="probe")
    assert {e.method for e in catalog.experiments.values()} == {"linear_probe", "zero_shot"}
    assert catalog.transfer.experiments == () and catalog.transfer.sources == ()


def test_the_cli_offers_the_catalogs_grids():
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--grid", "fast"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "--grid: invalid choice: 'fast'" in result.stderr and "quick" in result.stderr


def test_the_cli_runs_the_chosen_grid_and_names_what_it_lacks(tmp_path):
    """--grid reaches the Dagster definitions (their partitions) and the run: an experiment of the full grid that
    the quick grid leaves out is refused by name before anything runs."""
    # the shipped catalog (a test folder's conftest may have pointed PROMPTLAB_CATALOG at its own)
    environment = {**os.environ, "PROMPTLAB_WORKSPACE": str(tmp_path / "workspace"),
                   "DAGSTER_HOME": str(tmp_path / "dagster_home"), "PROMPTLAB_CATALOG": str(DEFAULT_CATALOG_DIR)}
    environment.pop("PROMPTLAB_GRID", None)
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--grid", "quick",
                             "--experiment", "coop-k8-s1"], capture_output=True, text=True, env=environment)
    assert result.returncode == 2
    assert "promptlab run: error: unknown experiment 'coop-k8-s1'; the grid (quick) has" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "workspace").exists()  # nothing ran


def test_the_pseudolabels_grid_is_the_limited_label_line_with_its_zero_shot_references():
    grid = load_catalog(DEFAULT_CATALOG_DIR, grid="pseudolabels")
    assert "zeroshot" in grid.experiments and "zeroshot-trzsl-s3" in grid.experiments
    assert all(e.setting is not None for k, e in grid.experiments.items() if k != "zeroshot")
    strategies = {(e.setting, e.pseudolabels.strategy) for e in grid.experiments.values() if e.pseudolabels}
    assert strategies == {(s, p) for s in ("ssl", "ul", "trzsl") for p in ("fpl", "ifpl", "grip")}
    assert {"tfup-ul-s1", "tfupt-ul-s1"} <= set(grid.experiments)


def test_a_settings_filter_keeps_those_settings_and_few_shot_names_the_rest(tmp_path):
    import shutil

    import yaml

    shutil.copytree(DEFAULT_CATALOG_DIR, tmp_path / "catalog")
    grids = {"grids": {"ul_only": {"settings": ["ul"]}, "few_only": {"settings": ["few_shot"]}}}
    (tmp_path / "catalog" / "grids.yaml").write_text(yaml.safe_dump(grids))
    ul = load_catalog(tmp_path / "catalog", grid="ul_only")
    assert ul.experiments and {e.setting for e in ul.experiments.values()} == {"ul"}
    few = load_catalog(tmp_path / "catalog", grid="few_only")
    assert "coop-k16-s1" in few.experiments and all(e.setting is None for e in few.experiments.values())


def test_standard_grid_is_the_whole_grid_but_the_iterative_pseudolabel_strategies_and_short_clip_lora():
    full = load_catalog(DEFAULT_CATALOG_DIR, grid="default")
    standard = load_catalog(DEFAULT_CATALOG_DIR, grid="standard")
    iterative = {key for key, e in full.experiments.items()
                 if e.pseudolabels is not None and e.pseudolabels.strategy in ("ifpl", "grip")}
    short_lora = {key for key, e in full.experiments.items() if e.method == "clip_lora" and e.shots != 16}
    assert iterative and short_lora and set(standard.experiments) == set(full.experiments) - iterative - short_lora
    assert all(standard.experiments[k].config_hash == full.experiments[k].config_hash for k in standard.experiments)
    assert standard.transfer.experiments == full.transfer.experiments


def test_the_demo_grid_runs_what_each_protocols_pattern_needs_at_three_seeds():
    """`make run`'s grid: zero-shot and few-shot CoOp and the probe (few-shot gain), base-to-new CoOp and KgCoOp
    (CoOp's new-class drop, KgCoOp's recovery), the 16-shot CoOp prompts transferred to the Shapes shifts, and TPT
    from zero-shot on fewer test images; every trained configuration at seeds 1-3, with the full grid's hashes."""
    full = load_catalog(DEFAULT_CATALOG_DIR, grid="default")
    demo = load_catalog(DEFAULT_CATALOG_DIR, grid="demo")
    assert list(demo.datasets) == ["Shapes", "ShapesSketch", "ShapesNoisy"]  # datasets.yaml's order
    seeds = (1, 2, 3)
    expected = {"zeroshot", *(f"{method}-k{shots}-s{seed}" for method in ("coop", "linearprobe") for shots in (1, 4, 16)
                              for seed in seeds),
                *(f"{method}-k16-s{seed}-b2n" for method in ("coop", "kgcoop") for seed in seeds)}
    assert set(demo.experiments) == expected
    for key, experiment in demo.experiments.items():
        assert experiment.config_hash == full.experiments[key].config_hash
    assert demo.transfer.experiments == ("coop-k16-s1", "coop-k16-s2", "coop-k16-s3")
    assert demo.transfer.targets == {"domain_generalization": {"Shapes": ("ShapesSketch", "ShapesNoisy")}}
    assert set(demo.test_time.runs) == {f"tpt-zeroshot-s{seed}" for seed in seeds}
    assert demo.test_time.targets == {"Shapes": ("Shapes", "ShapesSketch", "ShapesNoisy")}
    assert demo.test_time.max_test_images == 200 < full.test_time.max_test_images == 400
    # the run's settings are the full grid's; the number of test images makes it another configuration
    run = "tpt-zeroshot-s1"
    assert demo.test_time.run(run) == full.test_time.run(run)
    assert demo.test_time.lineage(run) != full.test_time.lineage(run)
    assert demo.test_time.lineage(run)["max_test_images"] == 200


def test_a_datasets_filter_keeps_those_datasets_and_the_transfer_and_test_time_plans_on_them(catalog_copy):
    edit(catalog_copy / "grids.yaml", lambda c: c["grids"].update(
        three={"datasets": ["Digits", "ColourShapes", "Shapes"]}, colours={"datasets": ["Colours"]}))
    full = load_catalog(catalog_copy)
    three = load_catalog(catalog_copy, grid="three")
    assert list(three.datasets) == ["Shapes", "ColourShapes", "Digits"]
    assert three.experiments.keys() == full.experiments.keys()  # no experiment filter: all of them
    # cross-dataset keeps its source and the targets among the three; Shapes has no shifted variant left
    assert three.transfer.targets == {"cross_dataset": {"ColourShapes": ("Shapes", "Digits")}}
    assert three.transfer.experiments == full.transfer.experiments
    assert three.test_time.targets == {"Shapes": ("Shapes",)} and three.test_time.runs == full.test_time.runs
    colours = load_catalog(catalog_copy, grid="colours")
    assert list(colours.datasets) == ["Colours"]
    assert colours.transfer.sources == () and colours.transfer.experiments == ()
    assert colours.test_time.runs == {} and colours.test_time.sources == ()


def test_a_test_time_block_keeps_its_modes_and_starts_and_may_score_fewer_images(catalog_copy):
    edit(catalog_copy / "grids.yaml", lambda c: c["grids"].update(
        coop_tpt={"seeds": [1, 2], "test_time": {"modes": ["tpt"], "starts": ["coop-k16-s?"]}},
        difftpt={"test_time": {"modes": ["difftpt"], "max_test_images": 20}}))
    full = load_catalog(catalog_copy)
    coop_tpt = load_catalog(catalog_copy, grid="coop_tpt")
    assert set(coop_tpt.test_time.runs) == {"tpt-coop-k16-s1", "tpt-coop-k16-s2"}  # the seeds filter applies too
    assert coop_tpt.test_time.max_test_images == full.test_time.max_test_images  # not set: the section's
    difftpt = load_catalog(catalog_copy, grid="difftpt")
    assert set(difftpt.test_time.runs) == {f"difftpt-zeroshot-s{seed}" for seed in (1, 2, 3)}
    assert difftpt.test_time.max_test_images == 20 and difftpt.test_time.targets == full.test_time.targets
    assert difftpt.experiments == full.experiments  # the block filters test-time runs only


def test_subsets_not_being_run_are_type_checked_but_may_name_datasets_a_smaller_catalog_lacks(catalog_copy):
    edit(catalog_copy / "grids.yaml", lambda c: c["grids"].update(other={"datasets": ["Caltech101"]}))
    assert load_catalog(catalog_copy, grid="quick").grid == "quick"  # `other` is not run: its names are not checked
    edit(catalog_copy / "grids.yaml", lambda c: c["grids"].update(other={"test_time": {"modes": ["tpx"]}}))
    with pytest.raises(CatalogError, match=r"grids.other.test_time.modes: \['tpx'\] are not test-time modes"):
        load_catalog(catalog_copy, grid="quick")


def test_the_baselines_grid_is_the_few_shot_comparison_at_five_shot_counts_without_test_time():
    grid = load_catalog(DEFAULT_CATALOG_DIR, grid="baselines")
    methods = {e.method for e in grid.experiments.values()}
    assert methods == {"zero_shot", "linear_probe", "coop", "tip_adapter", "tip_adapter_f", "clip_adapter", "taskres",
                       "lp_plus_plus", "clap", "clip_lora"}
    for method in methods - {"zero_shot"}:
        cells = {(e.shots, e.seed) for e in grid.experiments.values() if e.method == method}
        assert cells == {(k, s) for k in (1, 2, 4, 8, 16) for s in (1, 2, 3)}, method
    assert all(e.name is None and e.protocol == "all_classes" and e.augmentation is None
               for e in grid.experiments.values())  # the plain configurations only
    assert not grid.test_time.runs  # test_time: false
    full = load_catalog(DEFAULT_CATALOG_DIR)
    assert all(full.experiments[key].config_hash == e.config_hash for key, e in grid.experiments.items())


def test_an_exclude_filter_leaves_out_the_keys_it_matches_and_names_a_pattern_matching_none(catalog_copy):
    standard = load_catalog(DEFAULT_CATALOG_DIR, grid="standard")
    lora = {e.shots for e in standard.experiments.values() if e.method == "clip_lora"}
    assert lora == {16}  # CLIP-LoRA's long runs: 16 shots only in standard
    quick = load_catalog(DEFAULT_CATALOG_DIR, grid="quick")
    assert {e.shots for e in quick.experiments.values() if e.method == "clip_lora"} == {1}
    assert {e.shots for e in quick.experiments.values() if e.method == "tip_adapter"} == {1, 4, 16}

    def change(content):
        content["grids"]["quick"]["exclude"] = ["tipadapter-k*", "nosuchmethod-k1-*"]

    edit(catalog_copy / "grids.yaml", change)
    with pytest.raises(CatalogError, match=r"grids.quick.exclude: 'nosuchmethod-k1-\*' matches no experiment key"):
        load_catalog(catalog_copy, grid="quick")
