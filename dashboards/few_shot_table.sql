-- Few-shot protocol: test top-1 per dataset and configuration (rows) against the number of labelled images per
-- class K (columns), "mean ± std" over seeds in percent; zero-shot sits in column 0, the reference line of
-- CoOp's accuracy-vs-shots figure. Configurations: method + options (protocol all_classes only).
PIVOT (
    SELECT dataset, backbone, method, options, shots,
           printf('%.2f ± %.2f (%d)', 100 * mean, 100 * std, n_seeds) AS top1_percent_and_seeds
    FROM few_shot_results
)
ON shots
USING first(top1_percent_and_seeds)
ORDER BY dataset, method <> 'zero_shot', method, options;
