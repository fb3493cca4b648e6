"""The warehouse's SQL: tables, views and macros, created (idempotently) by every merge.

Schema (all accuracy-like values are fractions in [0, 1]; timestamps are UTC without a time zone):

- `experiments` (experiment_key PK, method, shots, seed, options JSON, config_hash): one row per experiment
  configuration, upserted by every run of it; its config_hash is of the experiment's own configuration (method,
  shots, seed, options: the same from every dataset and stage), unlike a run's, which also covers its dataset's
  templates and its stage's settings.
- `runs` (run_id PK, stage, dataset, experiment_key, partition_key, method, shots, seed, options JSON,
  dagster_run_id, code_version, config_hash, git_commit, backbone, backbone_weights_sha256, data_hash,
  templates JSON, started_at, finished_at, is_current, source_dataset, compute): every run ever recorded. Recording a
  run of a (stage, dataset, partition_key, source_dataset) marks the earlier runs of it `is_current = false`;
  they are kept. Recording a run whose backbone_weights_sha256 differs from that of current runs of the same
  backbone name (the backbone was retrained) supersedes those runs the same way, on every partition: results of
  old weights become history and never mix with the new ones (runs with a NULL hash are left alone).
  `source_dataset` is NULL for in-domain runs and names the dataset a prompt was trained on for transfer runs
  (stage `cross_dataset` / `domain_generalization`, dataset = the target), or the source domains joined by '+' for
  multi-source runs (stage `multi_source`, dataset = the held-out domain). Warehouses written before the column
  existed get it (NULL: in-domain) the next time the schema is ensured. `compute` says where
  and at which precision the run was computed ("cpu fp32"; on CUDA the GPU and its autocast dtypes); NULL for
  runs recorded before the column existed.
- `metrics` (run_id, dataset, experiment_key, split, metric, value): rows of CURRENT runs only, so a query over
  it never double counts a re-materialized partition. PK (run_id, split, metric).
- `metrics_history`: the same columns + superseded_at, superseded_by_run_id: rows of superseded runs.
- `per_class_metrics` (run_id, dataset, split, label, classname, accuracy, f1, support) and
  `per_class_metrics_history` (+ superseded_at, superseded_by_run_id). accuracy / f1 are NULL where undefined
  (no support / neither support nor predictions).
- `published_results` (file_row, method, variant, backbone, dataset, protocol, shots, metric, value, value_percent,
  source_key, source), `published_averages` (average, dataset) and `published_results_file` (catalog_file, sha256,
  n_rows): the catalog's published_results.yaml (models/warehouse/published.py), the numbers of the papers; value is
  a fraction like every accuracy here, value_percent as the source prints it; dataset is a dataset or an average of
  published_averages. Replaced whole when the file's sha256 changes (ensure_schema, and before every report).
- `merged_batches` (batch PK, run_id, merged_at): the pending batches merged so far (models/warehouse/pending.py),
  written in the transaction that merges each, so a batch found again after a crash is never inserted twice.
- predictions: `<predictions_dir>/run_id=<run_id>.parquet` per run (run_id, dataset, split, relative_path,
  label, predicted_label, confidence), exposed by the view `predictions` over the current runs' files. The
  directory always holds an empty, typed `run_id=__empty__.parquet` so the view works before any run wrote one.
  The view stores the directory's absolute path: after moving the workspace, call `ensure_schema()` again.

Views: `current_results` (current runs joined with their metrics), `results_by_config` (mean / sample std /
number of seeds over the seeds of each configuration: stage, dataset, source_dataset, backbone, method, shots,
options, split, metric; std is 0 for a single seed). Protocol views (test top-1): `few_shot_results` (in-domain
configurations trained on all classes, and zero-shot at 0 shots, per dataset and shots; `few_shot_seed_results`: its
rows per run and seed), `base_to_new_results`
(per dataset, base_to_new configurations and zero-shot: mean base and new top-1 and the harmonic mean of those
means), `base_to_new_averages` (the same averaged over datasets, harmonic mean of the averages as the papers
report it), `base_to_new_seed_averages` (per configuration and seed, base and new averaged over datasets and their
harmonic mean: the seed spread behind those averages), `cross_dataset_results` and
`domain_generalization_results` (per configuration and source: the source's own test split, each target, and the
average over targets; mean / std over seeds; zero-shot and other 0-shot configurations appear with their own
evaluation on each dataset as the reference), `multi_source_results` (per held-out domain of a multi-source split,
stage `multi_source` with source_dataset = the sources joined by '+', and zero-shot there as the reference row;
mean / std over seeds; `multi_source_seed_results`: its rows per run). Macros
`harmonic_mean(base, new)`, `transfer_seed_results(stage)`, `transfer_results(stage)`. `test_time_seed_results`: TPT
and DiffTPT runs (stage `test_time`) per seed and dataset, with their untuned reference rows (zero-shot, the
ensemble, the checkpoints they start from). `dashboards/README.md`
has examples.
"""

SCHEMA_TABLES = """
CREATE TABLE IF NOT EXISTS experiments (
    experiment_key VARCHAR PRIMARY KEY,
    method VARCHAR NOT NULL,
    shots INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    options JSON NOT NULL,
    config_hash VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    stage VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    experiment_key VARCHAR NOT NULL,
    partition_key VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    shots INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    options JSON NOT NULL,
    dagster_run_id VARCHAR,
    code_version VARCHAR,
    config_hash VARCHAR NOT NULL,
    git_commit VARCHAR,
    backbone VARCHAR NOT NULL,
    backbone_weights_sha256 VARCHAR,
    data_hash VARCHAR,
    templates JSON NOT NULL,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP NOT NULL,
    is_current BOOLEAN NOT NULL
);
ALTER TABLE runs ADD COLUMN IF NOT EXISTS source_dataset VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS compute VARCHAR;
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    experiment_key VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    value DOUBLE NOT NULL,
    PRIMARY KEY (run_id, split, metric)
);
CREATE TABLE IF NOT EXISTS metrics_history (
    run_id VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    experiment_key VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    value DOUBLE NOT NULL,
    superseded_at TIMESTAMP NOT NULL,
    superseded_by_run_id VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS per_class_metrics (
    run_id VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    label INTEGER NOT NULL,
    classname VARCHAR NOT NULL,
    accuracy DOUBLE,
    f1 DOUBLE,
    support INTEGER NOT NULL,
    PRIMARY KEY (run_id, split, label)
);
-- Bookkeeping of the pending batches merged so far (models/warehouse/pending.py): a batch found again after a crash
-- between its commit and the deletion of its folder is recognised here and never inserted twice.
CREATE TABLE IF NOT EXISTS merged_batches (
    batch VARCHAR PRIMARY KEY,
    run_id VARCHAR NOT NULL,
    merged_at TIMESTAMP NOT NULL
);
-- Published results (models/warehouse/published.py): the catalog's published_results.yaml, replaced whole when
-- the file changes; published_results_file names the file and its sha256.
CREATE TABLE IF NOT EXISTS published_results (
    file_row INTEGER NOT NULL,
    method VARCHAR NOT NULL,
    variant VARCHAR,
    backbone VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    protocol VARCHAR NOT NULL,
    shots INTEGER,
    metric VARCHAR NOT NULL,
    value DOUBLE NOT NULL,
    value_percent DOUBLE NOT NULL,
    source_key VARCHAR NOT NULL,
    source VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS published_averages (
    average VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS published_results_file (
    catalog_file VARCHAR NOT NULL,
    sha256 VARCHAR,
    n_rows INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS per_class_metrics_history (
    run_id VARCHAR NOT NULL,
    dataset VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    label INTEGER NOT NULL,
    classname VARCHAR NOT NULL,
    accuracy DOUBLE,
    f1 DOUBLE,
    support INTEGER NOT NULL,
    superseded_at TIMESTAMP NOT NULL,
    superseded_by_run_id VARCHAR NOT NULL
);
"""

SCHEMA_VIEWS = """
CREATE OR REPLACE MACRO harmonic_mean(base, new) AS
    CASE WHEN base + new = 0 THEN 0.0 ELSE 2.0 * base * new / (base + new) END;
CREATE OR REPLACE VIEW current_results AS
    SELECT r.run_id, r.stage, r.dataset, r.experiment_key, r.partition_key, r.method, r.shots, r.seed,
           CAST(r.options AS VARCHAR) AS options, r.backbone, r.config_hash, r.code_version, r.git_commit,
           r.started_at, r.finished_at, m.split, m.metric, m.value, r.source_dataset
    FROM runs AS r JOIN metrics AS m ON m.run_id = r.run_id
    WHERE r.is_current;
CREATE OR REPLACE VIEW results_by_config AS
    SELECT stage, dataset, source_dataset, backbone, method, shots, options, split, metric,
           avg(value) AS mean,
           coalesce(stddev_samp(value), 0.0) AS std,
           count(DISTINCT seed) AS n_seeds,
           count(*) AS n_runs
    FROM current_results
    GROUP BY stage, dataset, source_dataset, backbone, method, shots, options, split, metric;
-- Few-shot protocol: in-domain test top-1 of every configuration trained on all classes (its options carry no
-- protocol), per shot count; zero-shot appears at 0 shots. One row per run (few_shot_seed_results), then mean / std
-- over the seeds of each configuration (few_shot_results).
CREATE OR REPLACE VIEW few_shot_seed_results AS
    SELECT dataset, backbone, method, shots, options, seed, value, run_id
    FROM current_results
    WHERE stage = 'evaluation' AND source_dataset IS NULL AND split = 'test' AND metric = 'top1_accuracy'
      AND json_extract_string(options, '$.protocol') IS NULL AND json_extract_string(options, '$.setting') IS NULL;
CREATE OR REPLACE VIEW few_shot_results AS
    SELECT dataset, backbone, method, shots, options,
           avg(value) AS mean,
           coalesce(stddev_samp(value), 0.0) AS std,
           count(DISTINCT seed) AS n_seeds
    FROM few_shot_seed_results
    GROUP BY dataset, backbone, method, shots, options;
CREATE OR REPLACE VIEW base_to_new_results AS
    WITH per_config AS (
        SELECT dataset, backbone, method, shots, options,
               max(mean) FILTER (WHERE split = 'base') AS base_accuracy,
               max(std) FILTER (WHERE split = 'base') AS base_std,
               max(mean) FILTER (WHERE split = 'new') AS new_accuracy,
               max(std) FILTER (WHERE split = 'new') AS new_std,
               least(max(n_seeds) FILTER (WHERE split = 'base'), max(n_seeds) FILTER (WHERE split = 'new'))
                   AS n_seeds
        FROM results_by_config
        -- every evaluation scores base and new, but only base_to_new training leaves the new classes unseen;
        -- 0-shot configurations (zero-shot) saw no class and are the reference
        WHERE stage = 'evaluation' AND source_dataset IS NULL AND metric = 'top1_accuracy'
          AND split IN ('base', 'new')
          AND (shots = 0 OR json_extract_string(options, '$.protocol') = 'base_to_new')
          AND json_extract_string(options, '$.setting') IS NULL
        GROUP BY dataset, backbone, method, shots, options
    )
    SELECT *, harmonic_mean(base_accuracy, new_accuracy) AS harmonic_mean
    FROM per_config
    WHERE base_accuracy IS NOT NULL AND new_accuracy IS NOT NULL;
CREATE OR REPLACE VIEW base_to_new_averages AS
    SELECT backbone, method, shots, options,
           avg(base_accuracy) AS base_accuracy,
           avg(new_accuracy) AS new_accuracy,
           harmonic_mean(avg(base_accuracy), avg(new_accuracy)) AS harmonic_mean,
           count(*) AS n_datasets
    FROM base_to_new_results
    GROUP BY backbone, method, shots, options;
-- The seed spread behind base_to_new_averages: per configuration and seed, base and new top-1 averaged over the
-- datasets that seed was scored on (n_datasets), and the harmonic mean of those averages.
CREATE OR REPLACE VIEW base_to_new_seed_averages AS
    WITH per_dataset AS (
        SELECT dataset, backbone, method, shots, options, seed,
               avg(value) FILTER (WHERE split = 'base') AS base_accuracy,
               avg(value) FILTER (WHERE split = 'new') AS new_accuracy
        FROM current_results
        WHERE stage = 'evaluation' AND source_dataset IS NULL AND metric = 'top1_accuracy'
          AND split IN ('base', 'new')
          AND (shots = 0 OR json_extract_string(options, '$.protocol') = 'base_to_new')
          AND json_extract_string(options, '$.setting') IS NULL
        GROUP BY dataset, backbone, method, shots, options, seed
    )
    SELECT backbone, method, shots, options, seed,
           avg(base_accuracy) AS base_accuracy,
           avg(new_accuracy) AS new_accuracy,
           harmonic_mean(avg(base_accuracy), avg(new_accuracy)) AS harmonic_mean,
           count(*) AS n_datasets
    FROM per_dataset
    WHERE base_accuracy IS NOT NULL AND new_accuracy IS NOT NULL
    GROUP BY backbone, method, shots, options, seed;
-- Transfer protocols, one row per seed: the transferred checkpoints on each target (stage = the protocol), the same
-- checkpoints on their source's own test split, and 0-shot configurations (zero-shot), which learned nothing from
-- the source, with their own evaluation on the source and on every target of those transfers.
CREATE OR REPLACE MACRO transfer_seed_results(transfer_stage) AS TABLE
    WITH top1 AS (
        SELECT * FROM current_results WHERE split = 'test' AND metric = 'top1_accuracy'
    ),
    transferred AS (
        SELECT backbone, method, shots, options, seed, experiment_key, source_dataset, dataset, value
        FROM top1 WHERE stage = transfer_stage AND source_dataset IS NOT NULL
    ),
    in_domain AS (
        SELECT * FROM top1 WHERE stage = 'evaluation' AND source_dataset IS NULL
    ),
    on_source AS (
        SELECT i.backbone, i.method, i.shots, i.options, i.seed, i.experiment_key, i.dataset AS source_dataset,
               i.dataset, i.value
        FROM in_domain AS i
        SEMI JOIN (SELECT DISTINCT backbone, experiment_key, source_dataset FROM transferred) AS t
            ON i.backbone = t.backbone AND i.experiment_key = t.experiment_key AND i.dataset = t.source_dataset
    ),
    evaluated AS (
        SELECT DISTINCT backbone, source_dataset, dataset FROM transferred
        UNION SELECT DISTINCT backbone, source_dataset, source_dataset FROM transferred
    ),
    untrained AS (
        SELECT i.backbone, i.method, i.shots, i.options, i.seed, i.experiment_key, e.source_dataset, i.dataset,
               i.value
        FROM in_domain AS i JOIN evaluated AS e ON i.backbone = e.backbone AND i.dataset = e.dataset
        WHERE i.shots = 0 AND json_extract_string(i.options, '$.setting') IS NULL
    )
    SELECT *, dataset = source_dataset AS is_source
    FROM (SELECT * FROM transferred UNION ALL SELECT * FROM on_source UNION ALL SELECT * FROM untrained);
-- Per configuration and source: role 'source' (dataset = the source), 'target' (dataset = a target) and
-- 'average' (dataset NULL: per seed the mean over that seed's targets, then mean / std over seeds; n_targets).
CREATE OR REPLACE MACRO transfer_results(transfer_stage) AS TABLE
    WITH per_seed AS (
        SELECT * FROM transfer_seed_results(transfer_stage)
    ),
    seed_averages AS (
        SELECT backbone, method, shots, options, source_dataset, seed, avg(value) AS value,
               count(DISTINCT dataset) AS n_targets
        FROM per_seed WHERE NOT is_source
        GROUP BY backbone, method, shots, options, source_dataset, seed
    ),
    cells AS (
        SELECT backbone, method, shots, options, source_dataset, dataset,
               CASE WHEN is_source THEN 'source' ELSE 'target' END AS role, seed, value, NULL::BIGINT AS n_targets
        FROM per_seed
        UNION ALL
        SELECT backbone, method, shots, options, source_dataset, NULL, 'average', seed, value, n_targets
        FROM seed_averages
    )
    SELECT backbone, method, shots, options, source_dataset, dataset, role,
           avg(value) AS mean, coalesce(stddev_samp(value), 0.0) AS std, count(DISTINCT seed) AS n_seeds,
           max(n_targets) AS n_targets
    FROM cells
    GROUP BY backbone, method, shots, options, source_dataset, dataset, role;
CREATE OR REPLACE VIEW cross_dataset_results AS SELECT * FROM transfer_results('cross_dataset');
-- Limited-label settings (Menghini et al.), one row per run: SSL and UL score test top-1 on all classes, TRZSL the
-- harmonic mean of seen and unseen top-1 (both scored among all classes). strategy: the pseudolabel strategy, 'none'
-- without one. Plain zero-shot (no setting, no variant) is the reference row of SSL and UL; zero-shot with setting
-- trzsl (one run per split seed) that of TRZSL.
CREATE OR REPLACE VIEW limited_label_seed_results AS
    WITH scored AS (
        SELECT dataset, backbone, method, shots, seed, options,
               json_extract_string(options, '$.setting') AS run_setting,
               coalesce(json_extract_string(options, '$.pseudolabels.strategy'), 'none') AS strategy,
               max(value) FILTER (WHERE split = 'test' AND metric = 'top1_accuracy') AS top1,
               max(value) FILTER (WHERE split = 'seen' AND metric = 'top1_accuracy') AS seen_top1,
               max(value) FILTER (WHERE split = 'unseen' AND metric = 'top1_accuracy') AS unseen_top1,
               max(value) FILTER (WHERE split = 'seen_unseen' AND metric = 'harmonic_mean') AS seen_unseen_hm
        FROM current_results
        WHERE stage = 'evaluation' AND source_dataset IS NULL
        GROUP BY dataset, backbone, method, shots, seed, options
    )
    SELECT dataset, backbone, method, strategy, run_setting AS setting, seed, options,
           CASE WHEN run_setting = 'trzsl' THEN seen_unseen_hm ELSE top1 END AS score,
           top1, seen_top1, unseen_top1, seen_unseen_hm
    FROM scored WHERE run_setting IS NOT NULL
    UNION ALL
    SELECT dataset, backbone, method, strategy, reference.setting, seed, options, top1, top1, NULL, NULL, NULL
    FROM scored CROSS JOIN (VALUES ('ssl'), ('ul')) AS reference(setting)
    WHERE run_setting IS NULL AND shots = 0 AND method = 'zero_shot'
      AND json_extract_string(options, '$.variant') IS NULL;
CREATE OR REPLACE VIEW limited_label_results AS
    SELECT dataset, backbone, method, strategy, setting, options,
           avg(score) AS mean, coalesce(stddev_samp(score), 0.0) AS std, count(DISTINCT seed) AS n_seeds,
           avg(seen_top1) AS seen_top1, avg(unseen_top1) AS unseen_top1
    FROM limited_label_seed_results
    GROUP BY dataset, backbone, method, strategy, setting, options;
-- Averages over datasets: per seed the mean over the datasets that seed ran on, then mean and std over seeds.
CREATE OR REPLACE VIEW limited_label_averages AS
    WITH per_seed AS (
        SELECT backbone, method, strategy, setting, options, seed, avg(score) AS score,
               count(DISTINCT dataset) AS n_datasets
        FROM limited_label_seed_results
        GROUP BY backbone, method, strategy, setting, options, seed
    )
    SELECT backbone, method, strategy, setting, options, avg(score) AS mean,
           coalesce(stddev_samp(score), 0.0) AS std, count(*) AS n_seeds, min(n_datasets) AS n_datasets
    FROM per_seed
    GROUP BY backbone, method, strategy, setting, options;
-- Pseudolabel quality per round of every iterative run (accuracy against the pool's hidden labels, coverage,
-- calibration): `SELECT round, avg(value) FROM pseudolabel_rounds WHERE metric = 'pseudolabel_accuracy' ...`.
CREATE OR REPLACE VIEW pseudolabel_rounds AS
    SELECT dataset, backbone, method, experiment_key, seed,
           json_extract_string(options, '$.setting') AS setting,
           json_extract_string(options, '$.pseudolabels.strategy') AS strategy,
           CAST(substr(split, 7) AS INTEGER) AS round, metric, value, run_id
    FROM current_results
    WHERE stage = 'evaluation' AND starts_with(split, 'round_');
CREATE OR REPLACE VIEW domain_generalization_results AS SELECT * FROM transfer_results('domain_generalization');
-- Multi-source domain generalisation, one row per run: each configuration trained on the source domains of a split
-- (stage multi_source; source_dataset = the sources joined by '+') scored on the held-out domain (dataset), and as
-- the reference rows of every such domain the 0-shot configurations' (zero-shot's) own evaluation there
-- (source_dataset NULL, is_reference).
CREATE OR REPLACE VIEW multi_source_seed_results AS
    WITH top1 AS (
        SELECT * FROM current_results WHERE split = 'test' AND metric = 'top1_accuracy'
    ),
    trained AS (
        SELECT dataset, source_dataset, backbone, method, shots, options, seed, experiment_key, value, run_id,
               false AS is_reference
        FROM top1 WHERE stage = 'multi_source' AND source_dataset IS NOT NULL
    ),
    held_out AS (SELECT DISTINCT backbone, dataset FROM trained)
    SELECT * FROM trained
    UNION ALL
    SELECT i.dataset, NULL, i.backbone, i.method, i.shots, i.options, i.seed, i.experiment_key, i.value, i.run_id, true
    FROM top1 AS i SEMI JOIN held_out AS h ON i.backbone = h.backbone AND i.dataset = h.dataset
    WHERE i.stage = 'evaluation' AND i.source_dataset IS NULL AND i.shots = 0
      AND json_extract_string(i.options, '$.setting') IS NULL;
-- Per held-out domain (dataset) and configuration: test top-1 mean / sample std over seeds (n_seeds).
CREATE OR REPLACE VIEW multi_source_results AS
    SELECT dataset, source_dataset, backbone, method, shots, options, is_reference,
           avg(value) AS mean, coalesce(stddev_samp(value), 0.0) AS std, count(DISTINCT seed) AS n_seeds
    FROM multi_source_seed_results
    GROUP BY dataset, source_dataset, backbone, method, shots, options, is_reference;
"""


# Created after the `predictions` view, which it reads.
TEST_TIME_VIEWS = """
-- Test-time tuning (TPT, DiffTPT), one row per seed and dataset: the tuned runs (stage test_time; mode, and the
-- checkpoint they start from: start, start_method), and as reference rows on the same datasets the untuned
-- 0-shot configurations (zero-shot, the ensemble) and the trained checkpoints the runs start from (in domain on
-- the source, transferred to the shifted variants by domain_generalization). mode is NULL for reference rows.
-- A test-time run may score a subset of the test images (test_time.max_test_images): the reference rows are
-- scored from their predictions on the images the test-time runs of that dataset scored, so every row of TPT's
-- table counts the same images.
CREATE OR REPLACE VIEW test_time_seed_results AS
    WITH tuned_runs AS (
        SELECT run_id, backbone, coalesce(source_dataset, dataset) AS source_dataset, dataset,
               json_extract_string(options, '$.test_time.mode') AS mode, method AS start_method,
               experiment_key AS start, seed
        FROM runs WHERE is_current AND stage = 'test_time'
    ),
    tuned AS (
        SELECT t.backbone, t.source_dataset, t.dataset, t.mode, t.start_method, t.start, t.seed, m.value
        FROM tuned_runs AS t JOIN metrics AS m ON m.run_id = t.run_id
        WHERE m.split = 'test' AND m.metric = 'top1_accuracy'
    ),
    scored_images AS (
        SELECT DISTINCT t.backbone, t.source_dataset, p.dataset, p.relative_path
        FROM tuned_runs AS t JOIN predictions AS p ON p.run_id = t.run_id WHERE p.split = 'test'
    ),
    scored_datasets AS (SELECT DISTINCT backbone, source_dataset, dataset FROM tuned_runs),
    reference_runs AS (
        SELECT DISTINCT r.run_id, r.backbone, s.source_dataset, r.dataset, r.method, r.experiment_key, r.seed
        FROM runs AS r JOIN scored_datasets AS s ON r.backbone = s.backbone AND r.dataset = s.dataset
        WHERE r.is_current AND (
            (r.stage = 'evaluation' AND r.source_dataset IS NULL AND r.shots = 0
             AND json_extract_string(r.options, '$.setting') IS NULL)
            OR (r.shots > 0
                AND r.experiment_key IN (SELECT start FROM tuned_runs WHERE start_method <> 'zero_shot')
                AND ((r.stage = 'evaluation' AND r.source_dataset IS NULL AND r.dataset = s.source_dataset)
                     OR (r.stage = 'domain_generalization' AND r.source_dataset = s.source_dataset))))
    ),
    untuned AS (
        SELECT c.backbone, c.source_dataset, c.dataset, NULL AS mode, c.method AS start_method,
               c.experiment_key AS start, c.seed, avg(CASE WHEN p.predicted_label = p.label THEN 1.0 ELSE 0.0 END) AS value
        FROM reference_runs AS c
        JOIN predictions AS p ON p.run_id = c.run_id AND p.split = 'test'
        JOIN scored_images AS i ON i.backbone = c.backbone AND i.source_dataset = c.source_dataset
                               AND i.dataset = p.dataset AND i.relative_path = p.relative_path
        GROUP BY ALL
    )
    SELECT * FROM tuned UNION ALL SELECT * FROM untuned;
"""


def sql_string(text: str) -> str:
    """`text` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"
