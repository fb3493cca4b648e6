-- Every run ever recorded for one partition (current and superseded), with its test top-1.
-- Set the partition key below; by default the partition of the most recently finished run.
SET VARIABLE partition_key = (SELECT partition_key FROM runs ORDER BY finished_at DESC, run_id LIMIT 1);

WITH all_metrics AS (
    SELECT run_id, split, metric, value, NULL::TIMESTAMP AS superseded_at FROM metrics
    UNION ALL
    SELECT run_id, split, metric, value, superseded_at FROM metrics_history
)
SELECT
    r.stage,
    r.dataset,
    r.partition_key,
    r.run_id,
    r.dagster_run_id,
    r.is_current,
    r.started_at,
    r.finished_at,
    m.superseded_at,
    r.code_version,
    r.git_commit,
    r.config_hash,
    m.split,
    round(100 * m.value, 2) AS top1_percent
FROM runs AS r
LEFT JOIN all_metrics AS m ON m.run_id = r.run_id AND m.metric = 'top1_accuracy'
WHERE r.partition_key = getvariable('partition_key')
ORDER BY r.stage, r.dataset, r.started_at, r.run_id, m.split;
