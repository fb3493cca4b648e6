-- Base-to-new protocol (the papers' Table 1): per dataset, base / new top-1 and their harmonic mean in percent for
-- configurations trained on the base half and for zero-shot; first the average over datasets, whose HM is the HM of
-- the averaged base and new accuracies (as the papers report it). HM is computed by the views, never by hand.
WITH rows AS (
    SELECT 0 AS block, 'Average over ' || n_datasets || ' datasets' AS dataset, method, shots, options,
           base_accuracy, new_accuracy, harmonic_mean, n_datasets AS seeds_or_datasets
    FROM base_to_new_averages
    UNION ALL
    SELECT 1, dataset, method, shots, options, base_accuracy, new_accuracy, harmonic_mean, n_seeds
    FROM base_to_new_results
)
SELECT
    dataset,
    method,
    shots,
    options,
    round(100 * base_accuracy, 2) AS base_percent,
    round(100 * new_accuracy, 2) AS new_percent,
    round(100 * harmonic_mean, 2) AS hm_percent,
    seeds_or_datasets
FROM rows
ORDER BY block, dataset, method <> 'zero_shot', method, shots, options;
