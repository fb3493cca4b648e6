-- Transfer tables: prompts learned on all classes of a source dataset, applied to other datasets' class names and
-- test splits. cross_dataset: every other dataset that is not a shifted variant of the source; domain_generalization:
-- the source's shifted variants (datasets.yaml `domain_shift_of`). Per protocol, configuration and source: the
-- source's own test split, each target, and the average over targets, "mean ± std" over seeds in percent. Zero-shot's
-- row is its own evaluation on each dataset (the reference).
WITH transfer AS (
    SELECT 'cross_dataset' AS protocol, * FROM cross_dataset_results
    UNION ALL BY NAME
    SELECT 'domain_generalization' AS protocol, * FROM domain_generalization_results
)
SELECT
    protocol,
    source_dataset,
    method,
    shots,
    options,
    role,
    coalesce(dataset, 'average over ' || n_targets || ' targets') AS dataset,
    printf('%.2f ± %.2f', 100 * mean, 100 * std) AS top1_percent,
    n_seeds
FROM transfer
ORDER BY protocol, source_dataset, method <> 'zero_shot', method, shots, options,
         CASE role WHEN 'source' THEN 0 WHEN 'target' THEN 1 ELSE 2 END, dataset;
