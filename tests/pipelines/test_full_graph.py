"""The whole graph, in-process, on the micro grid: world -> curation -> augmentation -> pseudolabels ->
training -> evaluation -> DuckDB -> report."""

import json

import duckdb
import dagster as dg
import pytest

from models.storage import read_parquet_file
from pipelines.cli import run_graph
from pipelines.definitions import defs
from pipelines.partitions import multi_partition_key
from pipelines.resources import PromptLabResource

HEALTHY = ["Shapes", "Digits"]
EXPERIMENTS = ["zeroshot", "coop-k2-s1", "coop-k2-s2", "coop-k2-s1-aug", "coop-k2-s1-fpl", "coop-k2-s1-b2n",
               "maple-k2-s1-b2n", "promptsrc-k2-s1", "zeroshot-trzsl-s1", "coop-ssl-s1-grip", "coop-trzsl-s1-ifpl",
               "coop-ul-s1-fpl", "tfup-ul-s1", "tfupt-ul-s1", "vptshallow-ul-s1-ifpl", "maple-trzsl-s1-grip",
               "gramcoop-k2-s1", "pvpvpt-k2-s1"]
BEYOND_POOL = "coop-ssl-s1-fpl"  # asks K = 50 pseudolabels per class of pools that hold 3 images per class


@pytest.fixture(scope="module")
def graph_run():
    messages = []
    summary = run_graph(None, None, log=messages.append)
    return summary, PromptLabResource().workspace()


def read(workspace, sql):
    with duckdb.connect(str(workspace.warehouse_path), read_only=True) as connection:
        return connection.execute(sql).fetchall()


def test_definitions_validate_and_show_the_lineage():
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()

    def parents(name):
        return {key.to_user_string() for key in graph.get(dg.AssetKey(name)).parent_keys}

    assert "dataset_index" in parents("fewshot_subsets")
    assert {"fewshot_subsets", "tiny_diffusion_model"} <= parents("augmented_images")
    assert "fewshot_subsets" in parents("pseudolabels")
    assert {"augmented_images", "pseudolabels", "tiny_clip_backbone"} <= parents("prompt_checkpoints")
    assert "prompt_checkpoints" in parents("evaluation_metrics")
    assert "evaluation_metrics" in parents("cross_dataset_report")


def test_every_healthy_partition_has_current_metrics_and_the_broken_dataset_none(graph_run):
    summary, workspace = graph_run
    assert summary["failures"] == ["curation_job[Broken]"] + [f"experiment_job[{d}|{BEYOND_POOL}]" for d in HEALTHY]
    rows = read(workspace, """
        SELECT r.dataset, r.experiment_key, count(*) FROM metrics m JOIN runs r USING (run_id)
        WHERE r.stage = 'evaluation' AND m.metric = 'top1_accuracy' AND m.split = 'test' GROUP BY ALL""")
    assert sorted((d, e) for d, e, n in rows) == sorted((d, e) for d in HEALTHY for e in EXPERIMENTS)
    assert all(n == 1 for _, _, n in rows)
    assert read(workspace, "SELECT count(*) FROM runs WHERE dataset = 'Broken'") == [(0,)]
    splits = {s for (s,) in read(workspace, "SELECT DISTINCT split FROM metrics")}
    assert {"test", "base", "new", "base_new"} <= splits
    seeds = read(workspace, """SELECT dataset, n_seeds FROM results_by_config WHERE stage = 'evaluation'
                               AND method = 'coop' AND shots = 2
                               AND split = 'test' AND metric = 'top1_accuracy' AND options NOT LIKE '%augmentation%'
                               AND options NOT LIKE '%pseudolabels%' AND options NOT LIKE '%protocol%'""")
    assert sorted(seeds) == [("Digits", 2), ("Shapes", 2)]  # seeds are averaged, not separate configurations
    values = [v for (v,) in read(workspace, "SELECT value FROM metrics WHERE metric = 'top1_accuracy'")]
    assert all(0.0 <= v <= 1.0 for v in values)


def test_results_carry_their_lineage(graph_run):
    _, workspace = graph_run
    from models.provenance import sha256_file

    instance = dg.DagsterInstance.get()
    rows = read(workspace, """SELECT dagster_run_id, partition_key, code_version, config_hash, git_commit, backbone,
                                     backbone_weights_sha256, data_hash, templates, compute
                              FROM runs WHERE is_current""")
    weights = sha256_file(workspace.tiny_clip_dir / "open_clip_model.safetensors")
    threads = __import__("torch").get_num_threads()  # the jobs ran in this process, with its threads
    for run_id, partition, code, config, commit, backbone, weights_hash, data_hash, templates, compute in rows:
        assert instance.get_run_by_id(run_id) is not None
        assert "|" in partition and code and config and commit and data_hash and templates
        assert (backbone, weights_hash) == ("tiny-clip", weights)
        assert compute == f"cpu fp32, {threads} thread{'s' if threads != 1 else ''}"  # the suite runs on CPU


def test_pseudolabel_accuracy_is_recorded(graph_run):
    _, workspace = graph_run
    rows = read(workspace, """SELECT r.dataset, m.value FROM metrics m JOIN runs r USING (run_id)
                              WHERE r.stage = 'pseudolabels' AND m.metric = 'pseudolabel_accuracy'""")
    assert sorted(d for d, _ in rows) == sorted(HEALTHY * 6)  # round 0 of the six pseudolabelled experiments
    assert all(0.0 <= v <= 1.0 for _, v in rows)


def test_learning_setting_splits_are_curated_and_checked(graph_run):
    import polars as pl

    _, workspace = graph_run
    for dataset in HEALTHY:
        splits = read_parquet_file(workspace.setting_splits_path(dataset))
        assert {(s, seed) for s, seed in splits.select("setting", "seed").unique().iter_rows()} == {
            ("ssl", 1), ("trzsl", 1), ("ul", 1)}
        test_paths = read_parquet_file(workspace.index_path(dataset)).filter(pl.col("split") != "train")
        assert splits.join(test_paths, on="relative_path", how="semi").height == 0
    instance = dg.DagsterInstance.get()
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("learning_setting_splits"), "no_eval_image_in_pool")])
    assert records  # the GX suite ran on the splits


def test_iterative_strategies_record_every_round_and_trzsl_scores_seen_and_unseen(graph_run):
    _, workspace = graph_run
    rounds = read(workspace, """SELECT dataset, experiment_key, count(DISTINCT round), max(value)
                                FROM pseudolabel_rounds WHERE metric = 'pseudolabel_accuracy' GROUP BY ALL""")
    by_key = {(d, e): (n, v) for d, e, n, v in rounds}
    for dataset in HEALTHY:
        assert by_key[(dataset, "coop-ssl-s1-grip")][0] == 10
        assert by_key[(dataset, "coop-trzsl-s1-ifpl")][0] == 10
        assert by_key[(dataset, "coop-ul-s1-fpl")][0] == 1
        assert by_key[(dataset, "vptshallow-ul-s1-ifpl")][0] == 10  # visual prompts relabel the pool too
        assert by_key[(dataset, "maple-trzsl-s1-grip")][0] == 10
    grip_k = read(workspace, """SELECT round, value FROM pseudolabel_rounds WHERE dataset = 'Shapes'
                                AND experiment_key = 'coop-ssl-s1-grip' AND metric = 'num_pseudolabels'
                                ORDER BY round""")
    sizes = [v for _, v in grip_k]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]  # GRIP's K grows with the round
    splits = read(workspace, """SELECT DISTINCT m.split FROM metrics m JOIN runs r USING (run_id)
                                WHERE r.experiment_key IN ('zeroshot-trzsl-s1', 'coop-trzsl-s1-ifpl')""")
    assert {"seen", "unseen", "seen_unseen"} <= {s for (s,) in splits}
    table = read(workspace, """SELECT dataset, method, strategy, setting FROM limited_label_results""")
    assert ("Shapes", "zero_shot", "none", "ssl") in table and ("Shapes", "zero_shot", "none", "trzsl") in table
    assert ("Digits", "coop", "grip", "ssl") in table and ("Digits", "coop", "fpl", "ul") in table
    assert ("Shapes", "tfup", "none", "ul") in table and ("Shapes", "tfup_t", "none", "ul") in table
    # settings stay out of the few-shot and base-to-new views
    for view in ("few_shot_results", "base_to_new_results"):
        assert read(workspace, f"""SELECT count(*) FROM {view}
                                   WHERE json_extract_string(options, '$.setting') IS NOT NULL""") == [(0,)]


def test_k_beyond_the_pool_fails_before_training_naming_the_grid_entry_and_writes_nothing(graph_run):
    _, workspace = graph_run
    result = defs.resolve_job_def("experiment_job").execute_in_process(
        instance=dg.DagsterInstance.get(), partition_key=multi_partition_key("Shapes", BEYOND_POOL),
        raise_on_error=False)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_key == "pseudolabels"
    message = failure.step_failure_data.error.cause.message if failure.step_failure_data.error.cause else ""
    message += failure.step_failure_data.error.message
    assert f"({BEYOND_POOL}).pseudolabels.per_class (Shapes)" in message and "K = 50 per class" in message
    assert "grid[" in message
    # nothing downstream ran, nothing was written: no pseudolabels, no checkpoint, no warehouse rows
    ran = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    assert "prompt_checkpoints" not in ran and "evaluation_metrics" not in ran
    for dataset in HEALTHY:
        assert not workspace.pseudolabels_path(dataset, BEYOND_POOL).exists()
        assert not workspace.checkpoint_dir(dataset, BEYOND_POOL).exists()
    assert read(workspace, f"SELECT count(*) FROM runs WHERE experiment_key = '{BEYOND_POOL}'") == [(0,)]


def test_failed_expectations_block_the_broken_dataset(graph_run):
    result = defs.resolve_job_def("curation_job").execute_in_process(
        instance=dg.DagsterInstance.get(), partition_key="Broken", raise_on_error=False)
    assert not result.success
    failed = {e.check_name: e.metadata["details"].value for e in result.get_asset_check_evaluations() if not e.passed}
    assert "circle/train_0.png" in failed["images_decode"]
    assert "square/missing.png" in failed["files_exist"]
    assert "hexagon" in failed["labels_match_classnames"]
    materialized = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert "fewshot_subsets" not in {k.split("/")[-1] for k in materialized}


def test_report_is_self_contained(graph_run):
    summary, workspace = graph_run
    html = workspace.report_path.read_text()
    assert "Shapes" in html and "Digits" in html and "data:image/png;base64," in html
    assert "Limited-label settings and pseudolabels" in html and "Shapes TRZSL" in html
    assert 'src="http' not in html and 'href="http' not in html


def test_rematerializing_a_partition_replaces_its_rows_and_keeps_history(graph_run):
    _, workspace = graph_run
    query = """SELECT m.split, m.metric, m.value FROM metrics m JOIN runs r USING (run_id)
               WHERE r.partition_key = 'Shapes|coop-k2-s1' AND r.stage = 'evaluation' ORDER BY 1, 2"""
    before = read(workspace, query)
    runs_before = read(workspace, "SELECT count(*) FROM runs")[0][0]
    result = defs.resolve_job_def("experiment_job").execute_in_process(
        instance=dg.DagsterInstance.get(), partition_key=multi_partition_key("Shapes", "coop-k2-s1"))
    assert result.success
    after = read(workspace, query)
    assert after == before  # same config and seed, same numbers; and no duplicate rows
    assert read(workspace, "SELECT count(*) FROM runs")[0][0] == runs_before + 1
    assert read(workspace, """SELECT count(*) FROM metrics_history h JOIN runs r USING (run_id)
                              WHERE r.partition_key = 'Shapes|coop-k2-s1'""")[0][0] >= len(before)


def test_world_models_are_not_retrained_when_current(graph_run):
    result = defs.resolve_job_def("embedded_world_job").execute_in_process(instance=dg.DagsterInstance.get())
    reused = {m.asset_key.to_user_string(): m.metadata["reused"].value
              for m in result.get_asset_materialization_events() for m in [m.materialization]}
    assert reused == {"pretraining_corpus": True, "tiny_clip_backbone": True, "tiny_diffusion_model": True}


def test_a_newly_trained_checkpoint_is_requested_for_evaluation(graph_run):
    instance = dg.DagsterInstance.get()
    selection = dg.AssetSelection.assets("evaluation_metrics")
    first = dg.evaluate_automation_conditions(defs, instance, asset_selection=selection)
    key = multi_partition_key("Digits", "zeroshot")
    trained = defs.resolve_job_def("experiment_job").get_subset(
        asset_selection={dg.AssetKey("prompt_checkpoints")}
    ).execute_in_process(instance=instance, partition_key=key)
    assert trained.success
    second = dg.evaluate_automation_conditions(defs, instance, asset_selection=selection, cursor=first.cursor)
    requested = second.get_requested_partitions(dg.AssetKey("evaluation_metrics"))
    assert key in requested


def test_base_to_new_trains_on_base_classes_only_and_scores_both_halves(graph_run):
    import json

    _, workspace = graph_run
    split = json.loads(workspace.class_split_path("Shapes").read_text())
    checkpoint = json.loads((workspace.checkpoint_dir("Shapes", "coop-k2-s1-b2n") / "prompt_config.json").read_text())
    assert checkpoint["classnames"] == [split["classnames"][i] for i in split["base_labels"]]
    assert checkpoint["training_composition"] == {"labelled": 2 * len(split["base_labels"])}
    rows = dict(read(workspace, """SELECT m.split || '/' || m.metric, m.value FROM metrics m JOIN runs r USING (run_id)
                                   WHERE r.partition_key = 'Shapes|coop-k2-s1-b2n' AND r.stage = 'evaluation'"""))
    base, new = rows["base/top1_accuracy"], rows["new/top1_accuracy"]
    expected = 0.0 if base + new == 0 else 2 * base * new / (base + new)
    assert abs(rows["base_new/harmonic_mean"] - expected) < 1e-12


def test_vision_prompt_methods_train_on_images_and_are_evaluated(graph_run):
    from safetensors.torch import load_file

    _, workspace = graph_run
    for dataset in HEALTHY:
        maple = workspace.checkpoint_dir(dataset, "maple-k2-s1-b2n")
        state = load_file(str(maple / "prompt_parameters.safetensors"))
        # text context, its vision projection and the layer-1 prompts of both towers were learned and saved
        assert {"prompt_learner.ctx", "prompt_learner.proj.weight", "prompt_learner.compound_prompts_text.0"} <= set(state)
        config = json.loads((workspace.checkpoint_dir(dataset, "promptsrc-k2-s1") / "prompt_config.json").read_text())
        assert len(config["epoch_losses"]) == 2
    rows = read(workspace, """SELECT r.experiment_key, m.split FROM metrics m JOIN runs r USING (run_id)
                               WHERE r.experiment_key IN ('maple-k2-s1-b2n', 'promptsrc-k2-s1')
                               AND m.metric = 'top1_accuracy'""")
    assert {("maple-k2-s1-b2n", "base"), ("maple-k2-s1-b2n", "new"), ("promptsrc-k2-s1", "test")} <= set(rows)


TRANSFERRED = ["coop-k2-s1", "coop-k2-s2", "promptsrc-k2-s1"]  # the micro transfer section: Shapes -> Digits


def test_transfer_writes_one_run_per_source_and_target_with_the_target_class_names(graph_run):
    summary, workspace = graph_run
    assert summary["skipped"] == []
    graph = defs.resolve_asset_graph()
    parents = {key.to_user_string() for key in graph.get(dg.AssetKey("transfer_metrics")).parent_keys}
    assert parents == {"prompt_checkpoints", "dataset_index", "base_new_classes"}
    report_parents = graph.get(dg.AssetKey("cross_dataset_report")).parent_keys
    assert "transfer_metrics" in {key.to_user_string() for key in report_parents}
    runs = read(workspace, """SELECT run_id, source_dataset, dataset, experiment_key, partition_key, method FROM runs
                              WHERE is_current AND stage = 'cross_dataset' ORDER BY experiment_key""")
    assert [(s, d, e, p) for _, s, d, e, p, _ in runs] == [("Shapes", "Digits", key, f"Shapes|{key}")
                                                           for key in TRANSFERRED]
    digits = json.loads(workspace.class_split_path("Digits").read_text())["classnames"]
    assert digits != json.loads(workspace.class_split_path("Shapes").read_text())["classnames"]
    for run_id, *_ in runs:
        classes = read(workspace, f"""SELECT label, classname FROM per_class_metrics
                                      WHERE run_id = '{run_id}' ORDER BY label""")
        assert [name for _, name in classes] == digits  # scored among Digits' own classes
    predictions = read(workspace, """SELECT DISTINCT p.dataset, p.split FROM predictions p JOIN runs r USING (run_id)
                                     WHERE r.stage = 'cross_dataset'""")
    assert predictions == [("Digits", "test")]
    # zero-shot is the reference row (its own evaluations), the source column is the in-domain evaluation
    table = {(m, role, d): (mean, n) for m, role, d, mean, n in read(workspace, """
        SELECT method, role, dataset, mean, n_seeds FROM cross_dataset_results WHERE source_dataset = 'Shapes'""")}
    assert {(m, role, d) for m, role, d in table} == {
        (m, role, d) for m in ("coop", "promptsrc", "zero_shot")
        for role, d in (("source", "Shapes"), ("target", "Digits"), ("average", None))}
    assert table[("coop", "target", "Digits")][1] == 2
    transferred = read(workspace, """SELECT avg(m.value) FROM metrics m JOIN runs r USING (run_id)
                                     WHERE r.stage = 'cross_dataset' AND r.method = 'coop'
                                     AND m.split = 'test' AND m.metric = 'top1_accuracy'""")[0][0]
    assert abs(table[("coop", "target", "Digits")][0] - transferred) < 1e-12
    in_domain = read(workspace, """SELECT m.value FROM metrics m JOIN runs r USING (run_id)
                                   WHERE r.stage = 'evaluation' AND r.partition_key = 'Digits|zeroshot'
                                   AND m.split = 'test' AND m.metric = 'top1_accuracy'""")[0][0]
    assert table[("zero_shot", "target", "Digits")][0] == in_domain
    report = workspace.report_path.read_text()
    assert "<h2>Cross-dataset transfer" in report and "<h3>Source: Shapes</h3>" in report


def test_rematerializing_a_transfer_partition_replaces_only_its_own_runs(graph_run):
    _, workspace = graph_run
    transfer = "SELECT m.value FROM metrics m JOIN runs r USING (run_id) WHERE r.stage = 'cross_dataset' " \
               "AND r.experiment_key = 'promptsrc-k2-s1' AND m.metric = 'top1_accuracy'"
    in_domain = "SELECT run_id FROM runs WHERE is_current AND dataset = 'Digits' AND stage = 'evaluation'"
    before, in_domain_before = read(workspace, transfer), read(workspace, in_domain)
    result = defs.resolve_job_def("transfer_job").execute_in_process(
        instance=dg.DagsterInstance.get(), partition_key=multi_partition_key("Shapes", "promptsrc-k2-s1"))
    assert result.success
    assert read(workspace, transfer) == before  # same checkpoint, same numbers (images through the vision prompts)
    assert read(workspace, in_domain) == in_domain_before  # the in-domain Digits runs stay current
    history = read(workspace, """SELECT r.stage, r.source_dataset, count(*) FROM runs r
                                 WHERE NOT r.is_current AND r.experiment_key = 'promptsrc-k2-s1' GROUP BY ALL""")
    assert history == [("cross_dataset", "Shapes", 1)]


TEST_TIME_RUNS = [("Shapes|difftpt-zeroshot-s1", "zeroshot", "zero_shot", 1, "difftpt"),
                  ("Shapes|tpt-coop-k2-s1", "coop-k2-s1", "coop", 1, "tpt"),
                  ("Shapes|tpt-zeroshot-s1", "zeroshot", "zero_shot", 1, "tpt"),
                  ("Shapes|tpt-zeroshot-s2", "zeroshot", "zero_shot", 2, "tpt")]


def test_test_time_runs_evaluate_their_start_with_the_mode_and_settings_in_the_lineage(graph_run):
    summary, workspace = graph_run
    assert not [f for f in summary["failures"] if "test_time" in f]
    runs = read(workspace, """
        SELECT r.partition_key, r.experiment_key, r.method, r.seed, json_extract_string(r.options, '$.test_time.mode'),
               r.config_hash, r.templates, r.source_dataset, r.run_id
        FROM runs AS r WHERE r.is_current AND r.stage = 'test_time' ORDER BY 1""")
    assert [row[:5] for row in runs] == TEST_TIME_RUNS
    assert len({row[5] for row in runs}) == len(runs)  # the mode, settings and seed enter the configuration hash
    assert json.loads(runs[2][6]) == ["a photo of a {}."]  # the zero-shot start's context, as a template
    assert all(row[7] is None for row in runs)  # Shapes is the source itself
    for row in runs:
        metrics = dict(((split, metric), value) for split, metric, value in read(
            workspace, f"SELECT split, metric, value FROM metrics WHERE run_id = '{row[8]}'"))
        assert 0.0 <= metrics[("test", "top1_accuracy")] <= 1.0
        assert 0.0 <= metrics[("before_tuning", "top1_accuracy")] <= 1.0
        assert metrics[("test", "mean_views_kept")] >= 1 and metrics[("test", "images_per_second")] > 0
        count = read(workspace, f"SELECT count(*) FROM predictions WHERE run_id = '{row[8]}'")[0][0]
        assert count == 10  # max_test_images
    # DiffTPT's generated views are cached per (generator, seed, image): 10 images x 4 variations
    folders = [p for p in workspace.variation_cache_dir.rglob("*-n4") if p.is_dir()]
    assert len(folders) == 10 and all(len(list(f.glob("*.png"))) == 4 for f in folders)
    table = read(workspace, "SELECT mode, start, seed FROM test_time_seed_results WHERE dataset = 'Shapes' ORDER BY 1, 2, 3")
    assert (None, "zeroshot", 0) in table and (None, "coop-k2-s1", 1) in table  # the untuned reference rows
    assert ("tpt", "zeroshot", 2) in table and ("difftpt", "zeroshot", 1) in table
    assert "Test-time tuning (TPT, DiffTPT)" in workspace.report_path.read_text()


def test_image_features_encode_each_dataset_once_and_experiments_only_read_them(graph_run):
    """features_job ran after curation: the cache holds the dataset's set in its namespaces, and no experiment after
    it encoded an original view again (no shard of that namespace is newer than the asset's materialization; the
    mirrored view of test images, which only the transductive pools read, is encoded on demand)."""
    _, workspace = graph_run
    instance = dg.DagsterInstance.get()
    for dataset in HEALTHY:
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("image_features"), asset_partitions=[dataset]),
            limit=1).records
        batching = record.asset_materialization.metadata["batching"].value
        assert batching.startswith("canonical-batches-of-64-in-set-")
        namespaces = {folder: json.loads((folder / "namespace.json").read_text())
                      for folder in workspace.feature_cache_dir.iterdir() if (folder / "namespace.json").is_file()}
        views = {folder: space["view"] for folder, space in namespaces.items() if space["batching"] == batching}
        assert sorted(views.values()) == ["mirrored", "original"]
        (original,) = [folder for folder, view in views.items() if view == "original"]
        shard_times = [path.stat().st_mtime for path in original.glob("shard-*.safetensors")]
        assert shard_times and max(shard_times) <= record.timestamp + 1.0


def test_upstream_initialisations_are_learned_once_and_start_their_experiments(graph_run):
    """GRAM's and PVP's initialisations are learned on the micro corpus before the experiments that name them, and
    each experiment's checkpoint records the initialisation it started from."""
    from safetensors.torch import load_file

    from models.experiments import read_checkpoint_config
    from models.experiments.initialisations import initialisation_dir

    summary, workspace = graph_run
    assert "initialisations: GRAM / PVP prompts on the corpus" in summary["stage_seconds"]
    for name, key in (("gram-coop", "gramcoop-k2-s1"), ("pvp-vpt", "pvpvpt-k2-s1")):
        stored = load_file(str(initialisation_dir(workspace, name) / "prompt_parameters.safetensors"))
        assert stored
        for dataset in HEALTHY:
            config = read_checkpoint_config(workspace.checkpoint_dir(dataset, key))
            assert config["source_prompt"]["name"] == name
