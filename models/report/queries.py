"""Every number of the report is one of these queries over the warehouse's views; Python only formats and plots.

Result queries name a configuration by its (backbone, method, options), which the report puts in words
(models/evaluation/configurations.py). The published-pattern queries pick the plain configuration of each method
(no variant, no setting) through _PATTERN_LABELS, as they always have.
"""


# The plain configuration of each method for the pattern checks: the label a method gets when it ran with one option
# set, or with options that only name a protocol or a variant ('coop + base_to_new'); any other configuration's
# label carries its option keys or its settings hash and is never plain.
_PATTERN_LABELS = """
WITH evaluation AS (
    SELECT * FROM results_by_config WHERE stage = 'evaluation'
),
option_variety AS (
    SELECT method, count(DISTINCT options) AS n_options,
           count(DISTINCT json_extract_string(options, '$.settings_hash')) AS n_settings
    FROM evaluation GROUP BY method
),
backbone_variety AS (
    SELECT count(DISTINCT backbone) AS n_backbones FROM evaluation
),
base_labels AS (
    SELECT DISTINCT e.backbone, e.method, e.options,
        CASE WHEN b.n_backbones > 1 THEN e.backbone || ' / ' ELSE '' END
        || e.method
        || CASE
             WHEN v.n_options <= 1 THEN ''
             WHEN json_extract_string(e.options, '$.settings_hash') IS NULL THEN ' ' || e.options
             ELSE coalesce(' + ' || nullif(array_to_string(
                      list_transform(
                          list_sort(list_filter(json_keys(e.options), k -> k <> 'settings_hash')),
                          k -> CASE WHEN k IN ('protocol', 'variant') THEN json_extract_string(e.options, '$.' || k)
                                    ELSE k END),
                      ' + '), ''), '')
           END AS base_label
    FROM evaluation AS e JOIN option_variety AS v USING (method) CROSS JOIN backbone_variety AS b
),
labels AS (
    SELECT backbone, method, options,
        base_label || CASE WHEN count(*) OVER (PARTITION BY backbone, method, base_label) > 1
                           THEN ' [' || json_extract_string(options, '$.settings_hash') || ']' ELSE '' END
            AS configuration
    FROM base_labels
),
labelled AS (
    SELECT e.*, l.configuration FROM evaluation AS e JOIN labels AS l USING (backbone, method, options)
)
"""


RUN_COUNTS_SQL = """
SELECT count(*) AS runs,
       count(*) FILTER (WHERE is_current) AS current_runs,
       max(finished_at) AS latest_finished_at
FROM runs
"""


DATASETS_SQL = "SELECT DISTINCT dataset FROM runs WHERE is_current ORDER BY dataset"


# The headline compares like with like: the few-shot protocol (all classes, labelled shots; view few_shot_results),
# zero-shot against the best trained configuration of each dataset.
HEADLINE_SQL = """
WITH zero_shot AS (
    SELECT dataset, max(mean) AS zero_shot_top1 FROM few_shot_results WHERE method = $zero_shot GROUP BY dataset
),
best_trained AS (
    SELECT dataset, backbone, method, options, shots, mean, std, n_seeds FROM few_shot_results
    WHERE method <> $zero_shot
    QUALIFY row_number() OVER (PARTITION BY dataset ORDER BY mean DESC, method, options, shots) = 1
)
SELECT d.dataset, z.zero_shot_top1, b.backbone, b.method, b.options, b.shots AS best_shots,
       b.mean AS best_top1, b.std AS best_std, b.n_seeds AS best_n_seeds, b.mean - z.zero_shot_top1 AS gain
FROM (SELECT DISTINCT dataset FROM few_shot_results) AS d
LEFT JOIN zero_shot AS z USING (dataset)
LEFT JOIN best_trained AS b USING (dataset)
ORDER BY d.dataset
"""

HEADLINE_AVERAGE_SQL = f"""
SELECT avg(zero_shot_top1) AS mean_zero_shot_top1,
       count(zero_shot_top1) AS n_zero_shot_datasets,
       avg(best_top1) AS mean_best_top1,
       count(best_top1) AS n_best_datasets,
       avg(gain) AS mean_gain,
       count(gain) AS n_gain_datasets
FROM ({HEADLINE_SQL})
"""

_TEST_TOP1 = "stage = 'evaluation' AND split = 'test' AND metric = 'top1_accuracy'"

CONFIGURATION_AVERAGES_SQL = f"""
SELECT backbone, method, options, shots, avg(mean) AS mean_top1, count(DISTINCT dataset) AS n_datasets
FROM results_by_config WHERE {_TEST_TOP1}
GROUP BY backbone, method, options, shots
ORDER BY method <> $zero_shot, method, options, shots
"""

CROSS_DATASET_SQL = """
SELECT dataset, backbone, method, options, shots,
       max(mean) FILTER (WHERE metric = 'top1_accuracy') AS top1_mean,
       max(std) FILTER (WHERE metric = 'top1_accuracy') AS top1_std,
       max(n_seeds) FILTER (WHERE metric = 'top1_accuracy') AS top1_seeds,
       max(mean) FILTER (WHERE metric = 'macro_f1') AS macro_f1_mean,
       max(std) FILTER (WHERE metric = 'macro_f1') AS macro_f1_std,
       max(n_seeds) FILTER (WHERE metric = 'macro_f1') AS macro_f1_seeds,
       max(mean) FILTER (WHERE metric = 'expected_calibration_error') AS ece_mean,
       max(std) FILTER (WHERE metric = 'expected_calibration_error') AS ece_std,
       max(n_seeds) FILTER (WHERE metric = 'expected_calibration_error') AS ece_seeds
FROM results_by_config WHERE stage = 'evaluation' AND split = 'test'
GROUP BY dataset, backbone, method, options, shots
HAVING top1_mean IS NOT NULL
ORDER BY dataset, method <> $zero_shot, method, options, shots
"""

# The datasets an average over few-shot results is over: those a trained configuration ran on. Zero-shot also runs
# on test-only datasets (ImageNet's shifts, the targets of transfer), which no trained configuration can; without
# any trained configuration, every dataset.
_AVERAGED_FEW_SHOT_DATASETS = """
averaged_datasets AS (
    SELECT DISTINCT dataset FROM few_shot_results
    WHERE NOT (method = $zero_shot OR shots = 0)
       OR NOT EXISTS (SELECT 1 FROM few_shot_results WHERE NOT (method = $zero_shot OR shots = 0))
),
dataset_count AS (SELECT count(*) AS n FROM averaged_datasets)"""

# Few-shot protocol (view few_shot_results), with CoOp's first panel: the average over datasets of the points that
# were measured on every averaged dataset (std left out: it is not a mean over seeds). `datasets`: those a row is
# over, sorted (one for a dataset's row).
FEW_SHOT_SQL = f"""
WITH few_shot AS (
    SELECT dataset, backbone, method, options, method = $zero_shot OR shots = 0 AS is_zero_shot, shots, mean, std,
           n_seeds
    FROM few_shot_results
),
{_AVERAGED_FEW_SHOT_DATASETS}
SELECT 0 AS panel, 'Average over ' || n || ' datasets' AS dataset, backbone, method, options, is_zero_shot, shots,
       avg(mean) AS mean, NULL::DOUBLE AS std, NULL::BIGINT AS n_seeds, list(dataset ORDER BY dataset) AS datasets
FROM few_shot CROSS JOIN dataset_count
WHERE dataset IN (SELECT dataset FROM averaged_datasets)
GROUP BY backbone, method, options, is_zero_shot, shots, n
HAVING count(DISTINCT dataset) = n AND n > 1
UNION ALL
SELECT 1, dataset, backbone, method, options, is_zero_shot, shots, mean, std, n_seeds, [dataset] FROM few_shot
ORDER BY panel, dataset, is_zero_shot DESC, method, options, shots
"""

# The same average per seed, laid out as CLIP-LoRA's Table 1 (methods x shots): per configuration, shots and seed the
# test top-1 averaged over the averaged datasets (a seed enters only where it ran on every one of them), then mean and
# sample std over seeds of those averages.
FEW_SHOT_AVERAGES_SQL = f"""
WITH {_AVERAGED_FEW_SHOT_DATASETS},
per_dataset AS (
    SELECT dataset, backbone, method, options, shots, seed, avg(value) AS value
    FROM few_shot_seed_results WHERE dataset IN (SELECT dataset FROM averaged_datasets)
    GROUP BY dataset, backbone, method, options, shots, seed
),
per_seed AS (
    SELECT backbone, method, options, shots, seed, avg(value) AS value, count(*) AS n_datasets,
           list(dataset ORDER BY dataset) AS datasets
    FROM per_dataset GROUP BY backbone, method, options, shots, seed
)
SELECT backbone, method, options, method = $zero_shot OR shots = 0 AS is_zero_shot, shots, avg(value) AS mean,
       coalesce(stddev_samp(value), 0.0) AS std, count(*) AS n_seeds, any_value(datasets) AS datasets
FROM per_seed CROSS JOIN dataset_count
WHERE n_datasets = n
GROUP BY backbone, method, options, shots
ORDER BY is_zero_shot DESC, method, options, shots
"""

# Transfer protocols (views cross_dataset_results / domain_generalization_results): one row per configuration,
# source and role ('source', 'target', 'average').
_TRANSFER_SQL = """
SELECT source_dataset, role, dataset, backbone, method, options, shots, mean, std, n_seeds, n_targets
FROM transfer_view
ORDER BY source_dataset, method <> $zero_shot, method, options, shots, role, dataset
"""
CROSS_DATASET_TRANSFER_SQL = _TRANSFER_SQL.replace("transfer_view", "cross_dataset_results")
DOMAIN_GENERALIZATION_SQL = _TRANSFER_SQL.replace("transfer_view", "domain_generalization_results")

BASE_TO_NEW_SQL = """
SELECT dataset, backbone, method, options, shots, base_accuracy, base_std, new_accuracy, new_std, harmonic_mean,
       n_seeds, [dataset] AS datasets
FROM base_to_new_results
ORDER BY dataset, method <> $zero_shot, method, options, shots
"""

BASE_TO_NEW_AVERAGES_SQL = """
SELECT a.backbone, a.method, a.options, a.shots, a.base_accuracy, a.new_accuracy, a.harmonic_mean, a.n_datasets,
       d.datasets
FROM base_to_new_averages AS a
JOIN (SELECT backbone, method, options, shots, list(dataset ORDER BY dataset) AS datasets
      FROM base_to_new_results GROUP BY backbone, method, options, shots) AS d
    USING (backbone, method, options, shots)
ORDER BY a.method <> $zero_shot, a.method, a.options, a.shots
"""


# ------------------------------------------------------------------------------------------- published results
PUBLISHED_TABLES_SQL = """
SELECT count(*) AS n FROM information_schema.tables WHERE table_name IN ('published_results', 'published_averages')
"""


def published_comparison_sql(measured_sql: str, protocol: str, measured: dict[str, str], keys: tuple[str, ...]) -> str:
    """The published numbers beside the rows of `measured_sql` (a report query with the columns `keys`, backbone,
    method, options, shots and `datasets`, the sorted datasets a row is over): one row per measured row and metric
    (`measured`: published metric name -> the column holding it) with a published number of the same protocol,
    metric, backbone, method and shots over the same datasets (a dataset, or an average of published_averages), with
    the difference measured - published. Only plain configurations are compared (the method alone, or with its
    protocol: the configurations the pattern checks pick), with the published rows of the plain method (no variant).
    """
    columns = [*keys, "backbone", "method", "options", "shots"]
    values = "\n    UNION ALL\n    ".join(
        f"SELECT {', '.join(columns)}, datasets, '{metric}' AS metric, {column} AS measured FROM measured"
        for metric, column in measured.items())
    return _PATTERN_LABELS + f""",
plain AS (
    SELECT backbone, method, options FROM labels
    WHERE configuration IN (method, method || ' + base_to_new', backbone || ' / ' || method,
                            backbone || ' / ' || method || ' + base_to_new')
),
published AS (
    SELECT p.metric, p.backbone, p.method, p.shots, p.value, coalesce(a.datasets, [p.dataset]) AS datasets
    FROM published_results AS p
    LEFT JOIN (SELECT average, list(dataset ORDER BY dataset) AS datasets FROM published_averages GROUP BY average)
        AS a ON a.average = p.dataset
    WHERE p.protocol = '{protocol}' AND p.variant IS NULL
),
measured AS ({measured_sql}),
measured_values AS (
    {values}
)
SELECT {', '.join(f'm.{column}' for column in columns)}, m.metric, p.value AS published,
       m.measured - p.value AS difference
FROM measured_values AS m
SEMI JOIN plain AS c ON c.backbone = m.backbone AND c.method = m.method AND c.options = m.options
JOIN published AS p ON p.metric = m.metric AND p.backbone = m.backbone AND p.method = m.method
                   AND p.shots IS NOT DISTINCT FROM m.shots AND p.datasets = m.datasets
WHERE m.measured IS NOT NULL
"""


# One base-to-new configuration per method for the published-pattern checks: the plain one (zero-shot with the
# dataset's template, each tuned method's base_to_new run without further variants).
PATTERN_AVERAGES_SQL = _PATTERN_LABELS + """
SELECT a.method, l.configuration, a.base_accuracy, a.new_accuracy, a.harmonic_mean, a.n_datasets
FROM base_to_new_averages AS a JOIN labels AS l USING (backbone, method, options)
WHERE l.configuration IN (a.method, a.method || ' + base_to_new')
ORDER BY a.method
"""


# The same configurations per seed, for the seed spread of each margin; a seed enters only where it was scored on
# every dataset of its configuration's average.
PATTERN_SEED_AVERAGES_SQL = _PATTERN_LABELS + """
SELECT s.method, s.seed, s.base_accuracy, s.new_accuracy, s.harmonic_mean
FROM base_to_new_seed_averages AS s
JOIN labels AS l USING (backbone, method, options)
JOIN base_to_new_averages AS a USING (backbone, method, shots, options)
WHERE l.configuration IN (s.method, s.method || ' + base_to_new') AND s.n_datasets = a.n_datasets
ORDER BY s.method, s.seed
"""


# Per-seed test top-1 of the plain few-shot configurations (zero-shot with the dataset's template, each method without
# variants), for CoOp's few-shot claims.
FEW_SHOT_PATTERN_SQL = _PATTERN_LABELS + """
SELECT r.dataset, r.method, r.shots, r.seed, avg(r.value) AS value
FROM current_results AS r JOIN labels AS l USING (backbone, method, options)
WHERE r.stage = 'evaluation' AND r.source_dataset IS NULL AND r.split = 'test' AND r.metric = 'top1_accuracy'
  AND json_extract_string(r.options, '$.protocol') IS NULL AND l.configuration = r.method
GROUP BY r.dataset, r.method, r.shots, r.seed
ORDER BY r.dataset, r.method, r.shots, r.seed
"""


OTHER_EVALUATION_SPLITS_SQL = """
SELECT dataset, split, backbone, method, options, shots, mean, std, n_seeds
FROM results_by_config
WHERE stage = 'evaluation' AND metric = 'top1_accuracy' AND split NOT IN ('test', 'base', 'new')
ORDER BY dataset, split, method <> $zero_shot, method, options, shots
"""

# Every configuration the report names, so that a name clash is seen across sections.
CONFIGURATIONS_SQL = """
SELECT DISTINCT backbone, method, options FROM results_by_config
WHERE stage IN ('evaluation', 'cross_dataset', 'domain_generalization', 'multi_source')
ORDER BY method, options, backbone
"""


STAGE_RESULTS_SQL = """
SELECT stage, dataset, method, shots, options, split, metric, mean, std, n_seeds
FROM results_by_config WHERE stage = $stage
ORDER BY dataset, method, shots, options, split, metric
"""


OTHER_STAGES_SQL = """
SELECT DISTINCT stage FROM runs
WHERE is_current AND stage NOT IN ('evaluation', 'pseudolabels', 'cross_dataset', 'domain_generalization',
                                   'test_time', 'multi_source')
ORDER BY stage
"""


RUNS_BY_STAGE_SQL = """
SELECT stage, count(*) AS runs, count(*) FILTER (WHERE is_current) AS current_runs,
       count(DISTINCT dataset) AS datasets, min(started_at) AS first_started_at, max(finished_at) AS last_finished_at
FROM runs GROUP BY stage ORDER BY stage
"""


PROVENANCE_SQL = """
WITH facts AS (
    SELECT 'code version' AS field, coalesce(code_version, '(none)') AS value, is_current FROM runs
    UNION ALL SELECT 'git commit', coalesce(git_commit, '(none)'), is_current FROM runs
    UNION ALL SELECT 'backbone (weights sha256)',
                     backbone || ' (' || coalesce(backbone_weights_sha256, 'unknown') || ')', is_current FROM runs
    UNION ALL SELECT 'config hash', config_hash, is_current FROM runs
    UNION ALL SELECT 'data hash (' || dataset || ')', coalesce(data_hash, '(none)'), is_current FROM runs
    UNION ALL SELECT 'computed on', coalesce(compute, '(not recorded)'), is_current FROM runs
)
SELECT field, value, count(*) AS runs, count(*) FILTER (WHERE is_current) AS current_runs
FROM facts GROUP BY field, value ORDER BY field, current_runs DESC, value
"""


CURRENT_CODE_VERSIONS_SQL = """
SELECT count(DISTINCT coalesce(code_version, '(none)')) AS n_code_versions FROM runs WHERE is_current
"""


LIMITED_LABEL_SEED_SQL = """
SELECT dataset, method, strategy, setting, seed, score FROM limited_label_seed_results WHERE score IS NOT NULL
ORDER BY dataset, method, strategy, setting, seed
"""


LIMITED_LABEL_SQL = """
SELECT * FROM (
    SELECT dataset, method, strategy, setting, mean, std, n_seeds FROM limited_label_results
    UNION ALL
    SELECT NULL, method, strategy, setting, mean, std, n_seeds FROM limited_label_averages
)
ORDER BY method <> 'zero_shot', method, strategy, setting, dataset
"""


# Pseudolabel accuracy per round (against the hidden labels) of the learning settings' runs (a few-shot FPL run has
# one round and no setting), averaged over datasets per seed, then over seeds.
PSEUDOLABEL_ROUNDS_SQL = """
WITH per_seed AS (
    SELECT method, strategy, setting, round, seed, avg(value) AS value, count(DISTINCT dataset) AS n_datasets
    FROM pseudolabel_rounds WHERE metric = 'pseudolabel_accuracy' AND setting IS NOT NULL
    GROUP BY ALL
)
SELECT method, strategy, setting, round, avg(value) AS mean, stddev_samp(value) AS std, count(*) AS n_seeds,
       max(n_datasets) AS n_datasets
FROM per_seed GROUP BY ALL
ORDER BY setting, method, strategy, round
"""


TEST_TIME_SEED_SQL = "SELECT * FROM test_time_seed_results"
TEST_TIME_DETAILS_SQL = """
SELECT coalesce(source_dataset, dataset) AS source_dataset, dataset, experiment_key,
       json_extract_string(options, '$.test_time.mode') AS mode, method, seed,
       max(value) FILTER (WHERE split = 'test' AND metric = 'top1_accuracy') AS top1,
       max(value) FILTER (WHERE split = 'before_tuning' AND metric = 'top1_accuracy') AS before_tuning,
       max(value) FILTER (WHERE metric = 'mean_views_kept') AS views_kept,
       max(value) FILTER (WHERE metric = 'mean_entropy_before') AS entropy_before,
       max(value) FILTER (WHERE metric = 'mean_entropy_after') AS entropy_after,
       max(value) FILTER (WHERE metric = 'images_per_second') AS images_per_second
FROM current_results WHERE stage = 'test_time'
GROUP BY ALL ORDER BY source_dataset, mode, experiment_key, dataset, seed
"""


BENCHMARK_VIEW_EXISTS_SQL = """
SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'latest_benchmark'
"""
THROUGHPUT_SQL = """
SELECT benchmark, method, variant, batch_size, images_per_second, baseline_variant, speedup, target_speedup,
       meets_target, peak_rss_mb, rss_delta_mb, peak_cuda_mb, bench_run_id, finished_at, device, torch_version,
       backbone, backbone_weights_sha256, weights_source, dataset, git_commit, load_average
FROM latest_benchmark
ORDER BY benchmark = 'training' DESC, benchmark, backbone, device, dataset, bench_run_id, method, variant
"""


# Per-seed results by experiment key for the catalog's claims (claims.yaml): in-domain top-1 on the test split (or on
# base and new classes: base_accuracy, new_accuracy) of every stage but transfer, where the run has no source dataset
# or is a multi-source run (dataset = the held-out domain).
CLAIM_RESULTS_SQL = """
SELECT backbone, dataset, experiment_key, stage, seed,
       CASE split WHEN 'base' THEN 'base_accuracy' WHEN 'new' THEN 'new_accuracy' ELSE metric END AS metric,
       avg(value) AS value
FROM current_results
WHERE metric = 'top1_accuracy' AND split IN ('test', 'base', 'new') AND experiment_key IS NOT NULL
  AND stage NOT IN ('cross_dataset', 'domain_generalization')
GROUP BY ALL
ORDER BY ALL
"""
