"""The papers' claims (assets_catalog/claims.yaml, models/catalog/claims.py) checked on per-seed results.

A claim compares its subject's experiments with its reference's on the datasets where both ran: each side's value is
its mean over seeds per dataset, averaged over those datasets; the seed spread is the sample std over seeds of the
dataset-averaged margin, the seeds paired (a seed counts only where both sides ran it on every one of those datasets;
a reference with a single seedless experiment, zero-shot, is the reference of every seed). The verdict is the
report's one rule (models/evaluation/phenomena.py): "shown" only beyond twice that std.

Results come as one row per backbone, dataset, experiment key, stage and metric, with the seed of the run. A
harmonic-mean claim takes, as the papers and the base-to-new pattern checks do, the harmonic mean of the base and
new top-1 each averaged over the datasets first (per seed for the spread), 2 b n / (b + n).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from fnmatch import fnmatchcase

import polars as pl

from models.catalog.claims import Claim
from models.evaluation.phenomena import PatternCheck, _spread

BASE_AND_NEW = ("base_accuracy", "new_accuracy")
CLAIM_RESULT_COLUMNS = {"backbone", "dataset", "experiment_key", "stage", "seed", "metric", "value"}


def claim_checks(claims: Sequence[Claim], results: pl.DataFrame) -> list[tuple[str, Claim, PatternCheck]]:
    """(backbone, claim, check) for every claim with rows on both sides, per backbone that ran both."""
    missing = CLAIM_RESULT_COLUMNS - set(results.columns)
    if missing:
        raise ValueError(f"claim results lack column(s) {sorted(missing)}")
    # (backbone, stage, metric, key) -> dataset -> seed -> value
    values: dict[tuple, dict[str, dict[int | None, float]]] = {}
    for row in results.iter_rows(named=True):
        side = values.setdefault((row["backbone"], row["stage"], row["metric"], row["experiment_key"]), {})
        side.setdefault(row["dataset"], {})[row["seed"]] = row["value"]
    checks = []
    for backbone in sorted({key[0] for key in values}):
        for claim in claims:
            metrics = BASE_AND_NEW if claim.metric == "harmonic_mean" else (claim.metric,)
            sides = [{k[3]: v for k, v in values.items() if k[:3] == (backbone, claim.stage, metric)}
                     for metric in metrics]
            check = _check(claim, sides)
            if check is not None:
                checks.append((backbone, claim, check))
    return checks


def _side(pattern: str, by_key: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """dataset -> seed -> value over the experiments whose keys match a side's pattern (one per seed)."""
    merged: dict[str, dict] = {}
    for key in sorted(key for key in by_key if fnmatchcase(key, pattern)):
        for dataset, seeds in by_key[key].items():
            merged.setdefault(dataset, {}).update(seeds)
    return merged


def _harmonic_mean(base: float, new: float) -> float:
    return 2 * base * new / (base + new) if base + new > 0 else 0.0


def _check(claim: Claim, by_metric: list[dict[str, dict[str, dict]]]) -> PatternCheck | None:
    """`by_metric`: per metric the claim reads (top-1; or base and new for a harmonic mean), key -> dataset -> seed
    -> value."""
    subjects = [_side(claim.subject_pattern, by_key) for by_key in by_metric]
    references = [_side(claim.reference_pattern, by_key) for by_key in by_metric]
    datasets = sorted(set.intersection(*(set(side) for side in subjects + references)))
    if not datasets:
        return None
    combine = _harmonic_mean if len(by_metric) == 2 else (lambda value: value)

    def overall(sides):  # each metric: its mean over seeds per dataset, averaged over the datasets; then combined
        return combine(*(statistics.fmean(statistics.fmean(side[d].values()) for d in datasets) for side in sides))

    def of_seed(sides, seed):
        return combine(*(statistics.fmean(side[d][seed] for d in datasets) for side in sides))

    def seeds_of(sides):
        return set.intersection(*(set(side[d]) for side in sides for d in datasets))

    value, reference_value = overall(subjects), overall(references)
    subject_seeds, reference_seeds = seeds_of(subjects), seeds_of(references)
    if len(reference_seeds) == 1 and not subject_seeds & reference_seeds:  # one seedless reference (zero-shot)
        margins = [claim.direction * (of_seed(subjects, seed) - reference_value)
                   for seed in sorted(subject_seeds, key=str)]
    else:
        margins = [claim.direction * (of_seed(subjects, seed) - of_seed(references, seed))
                   for seed in sorted(subject_seeds & reference_seeds, key=str)]
    return PatternCheck(claim.claim, claim.subject_pattern, value, claim.reference_pattern, reference_value,
                        claim.direction, claim.threshold, *_spread(margins))
