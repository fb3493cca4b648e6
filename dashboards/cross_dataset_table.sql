-- Cross-dataset table: test top-1 / macro-F1 / ECE per dataset, method and shot count,
-- "mean ± std (n seeds)" in percent over the seeds of the current runs.
SELECT
    dataset,
    method,
    shots,
    options,
    printf('%.2f ± %.2f (%d seeds)', 100 * max(mean) FILTER (WHERE metric = 'top1_accuracy'),
           100 * max(std) FILTER (WHERE metric = 'top1_accuracy'),
           max(n_seeds) FILTER (WHERE metric = 'top1_accuracy')) AS top1_percent,
    round(100 * max(mean) FILTER (WHERE metric = 'macro_f1'), 2) AS macro_f1_percent,
    round(100 * max(mean) FILTER (WHERE metric = 'expected_calibration_error'), 2) AS ece_percent
FROM results_by_config
WHERE stage = 'evaluation' AND split = 'test'
GROUP BY dataset, backbone, method, shots, options
HAVING max(mean) FILTER (WHERE metric = 'top1_accuracy') IS NOT NULL
ORDER BY dataset, method, shots;
