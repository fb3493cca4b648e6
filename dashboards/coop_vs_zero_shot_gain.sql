-- Gain of a trained method over zero-shot on each dataset, in points of test top-1, per shot count.
-- Edit the two method names to compare other methods.
SET VARIABLE trained_method = 'coop';
SET VARIABLE zero_shot_method = 'zero_shot';

WITH test_top1 AS (
    SELECT dataset, method, shots, mean, std, n_seeds
    FROM results_by_config
    WHERE stage = 'evaluation' AND split = 'test' AND metric = 'top1_accuracy'
),
zero_shot AS (
    SELECT dataset, max(mean) AS zero_shot_top1
    FROM test_top1 WHERE method = getvariable('zero_shot_method')
    GROUP BY dataset
)
SELECT
    t.dataset,
    t.shots,
    round(100 * z.zero_shot_top1, 2) AS zero_shot_percent,
    round(100 * t.mean, 2) AS trained_percent,
    round(100 * t.std, 2) AS trained_std_percent,
    t.n_seeds,
    round(100 * (t.mean - z.zero_shot_top1), 2) AS gain_points
FROM test_top1 AS t
JOIN zero_shot AS z USING (dataset)
WHERE t.method = getvariable('trained_method')
ORDER BY t.dataset, t.shots;
