-- Confusion counts of one run's predictions (current runs only), most frequent pairs first.
-- Set the run id below; by default the most recently finished current run that stored predictions.
SET VARIABLE run_id = (
    SELECT r.run_id
    FROM runs AS r
    WHERE r.is_current AND r.run_id IN (SELECT DISTINCT run_id FROM predictions)
    ORDER BY r.finished_at DESC, r.run_id
    LIMIT 1
);

SELECT
    p.split,
    p.label,
    true_class.classname AS true_classname,
    p.predicted_label,
    predicted_class.classname AS predicted_classname,
    p.label = p.predicted_label AS is_correct,
    count(*) AS images,
    round(avg(p.confidence), 4) AS mean_confidence
FROM predictions AS p
LEFT JOIN per_class_metrics AS true_class
    ON true_class.run_id = p.run_id AND true_class.split = p.split AND true_class.label = p.label
LEFT JOIN per_class_metrics AS predicted_class
    ON predicted_class.run_id = p.run_id AND predicted_class.split = p.split
   AND predicted_class.label = p.predicted_label
WHERE p.run_id = getvariable('run_id')
GROUP BY ALL
ORDER BY images DESC, p.split, p.label, p.predicted_label;
