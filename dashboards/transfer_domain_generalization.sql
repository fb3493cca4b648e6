-- Domain generalization: prompts learned on all classes of a source dataset, evaluated on its domain-shifted variants
-- (datasets.yaml `domain_shift_of`). Per configuration and source: the source's own test split, each shifted
-- variant, and the average over them, "mean ± std" over seeds in percent. Zero-shot's row is its own evaluation.
SELECT
    source_dataset,
    method,
    shots,
    options,
    role,
    coalesce(dataset, 'average over ' || n_targets || ' targets') AS dataset,
    printf('%.2f ± %.2f', 100 * mean, 100 * std) AS top1_percent,
    n_seeds
FROM domain_generalization_results
ORDER BY source_dataset, method <> 'zero_shot', method, shots, options,
         CASE role WHEN 'source' THEN 0 WHEN 'target' THEN 1 ELSE 2 END, dataset;
