-- The 20 classes with the lowest test accuracy, averaged over the seeds of the current runs of each
-- dataset / method / shot count.
SELECT
    r.dataset,
    r.method,
    r.shots,
    c.label,
    c.classname,
    round(100 * avg(c.accuracy), 2) AS accuracy_percent,
    round(100 * avg(c.f1), 2) AS f1_percent,
    sum(c.support) AS support_over_seeds,
    count(DISTINCT r.seed) AS n_seeds
FROM per_class_metrics AS c
JOIN runs AS r ON r.run_id = c.run_id
WHERE r.is_current AND r.stage = 'evaluation' AND c.split = 'test' AND c.accuracy IS NOT NULL
GROUP BY r.dataset, r.method, r.shots, r.options, c.label, c.classname
ORDER BY accuracy_percent, r.dataset, r.method, r.shots, c.label
LIMIT 20;
