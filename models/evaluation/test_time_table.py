"""TPT's table and its published pattern, from per-seed results (the warehouse view test_time_seed_results).

Rows, as TPT's Table 1 (Shu et al. 2022) lays them out: zero-shot, the prompt ensemble, the trained checkpoints
(CoOp), TPT, TPT + CoOp, DiffTPT; columns: the source dataset, its shifted variants, the average over all and the
average over the shifts (out of distribution). Published pattern (ViT-B/16, ImageNet and its four shifts):
TPT beats zero-shot CLIP in domain (66.73 -> 68.98) and on the shifts (OOD average 57.20 -> 60.81), TPT + CoOp beats
CoOp on the shifts (59.28 -> 62.84), and DiffTPT beats TPT (+5.13 points on average, DiffTPT's abstract). Each claim
is a PatternCheck: shown only when the margin exceeds twice its seed std, and never from one seed.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

import polars as pl

from models.evaluation.phenomena import PatternCheck

SEED_RESULT_COLUMNS = {"source_dataset", "dataset", "mode", "start_method", "start", "seed", "value"}
MODE_NAMES = {"tpt": "TPT", "difftpt": "DiffTPT"}
ZERO_SHOT = "zero_shot"


def configuration_of(experiment_key: str) -> str:
    """The experiment key without its seed: coop-k16-s2 -> coop-k16."""
    return re.sub(r"-s\d+$", "", experiment_key)


def row_label(mode: str | None, start_method: str, start: str) -> str:
    configuration = configuration_of(start)
    if mode is None:
        if start_method == ZERO_SHOT:
            return "Zero-shot" if configuration == "zeroshot" else f"Zero-shot ({configuration.removeprefix('zeroshot-')})"
        return configuration
    name = MODE_NAMES.get(mode, mode)
    return name if start_method == ZERO_SHOT else f"{name} + {configuration}"


def _row_rank(label: str) -> tuple[int, str]:
    if label.startswith("Zero-shot"):
        return (0 if label == "Zero-shot" else 1), label
    for rank, name in ((4, "DiffTPT"), (3, "TPT")):
        if label.startswith(name):
            return rank, label
    return 2, label


@dataclass(frozen=True)
class Cell:
    mean: float
    std: float
    n_seeds: int


@dataclass
class TestTimeTable:
    __test__ = False  # not a pytest test class, despite its name

    source: str
    datasets: list[str]  # the source first, then its shifted variants
    rows: dict[str, dict[str, Cell]] = field(default_factory=dict)  # label -> column (dataset/average/shifts) -> Cell


def _scores(seed_results: pl.DataFrame) -> dict[str, dict[str, dict[str, dict[int, float]]]]:
    missing = SEED_RESULT_COLUMNS - set(seed_results.columns)
    if missing:
        raise ValueError(f"test-time seed results lack columns {sorted(missing)}")
    scores: dict[str, dict[str, dict[str, dict[int, float]]]] = {}
    for r in seed_results.iter_rows(named=True):
        label = row_label(r["mode"], r["start_method"], r["start"])
        by_dataset = scores.setdefault(r["source_dataset"], {}).setdefault(label, {}).setdefault(r["dataset"], {})
        if r["seed"] in by_dataset:
            raise ValueError(f"two results for {label} on {r['dataset']} (source {r['source_dataset']}) seed "
                             f"{r['seed']}: several option variants of one configuration")
        by_dataset[r["seed"]] = float(r["value"])
    return scores


def _cell(values: list[float]) -> Cell:
    return Cell(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))


def _per_seed_average(by_dataset: dict[str, dict[int, float]], datasets: list[str]) -> dict[int, float]:
    """Per seed, the mean over `datasets` (a seed counts where it ran on all of them)."""
    if not datasets or any(d not in by_dataset for d in datasets):
        return {}
    seeds = set.intersection(*(set(by_dataset[d]) for d in datasets))
    return {seed: statistics.fmean(by_dataset[d][seed] for d in datasets) for seed in sorted(seeds)}


def _shifts(rows: dict[str, dict[str, dict[int, float]]], source: str) -> list[str]:
    """The source's shifted variants: every other dataset its test-time runs scored, by name."""
    return sorted({d for by_dataset in rows.values() for d in by_dataset} - {source})


def tpt_tables(seed_results: pl.DataFrame) -> list[TestTimeTable]:
    """One table per source dataset of the test-time runs."""
    tables = []
    for source, rows in _scores(seed_results).items():
        datasets = [source, *_shifts(rows, source)]
        table = TestTimeTable(source, datasets)
        for label in sorted(rows, key=_row_rank):
            by_dataset = rows[label]
            cells = {d: _cell(list(by_dataset[d].values())) for d in datasets if d in by_dataset}
            for column, over in (("average", datasets), ("shifts", datasets[1:])):
                per_seed = _per_seed_average(by_dataset, over)
                if per_seed:
                    cells[column] = _cell(list(per_seed.values()))
            table.rows[label] = cells
        tables.append(table)
    return tables


def tpt_pattern_checks(seed_results: pl.DataFrame) -> list[PatternCheck]:
    """TPT > zero-shot (source; shifts), TPT + <checkpoint> > <checkpoint> (shifts), DiffTPT > TPT (average)."""
    checks = []
    for source, rows in _scores(seed_results).items():
        shifts = _shifts(rows, source)
        columns = {"in domain": [source], "shifts": shifts, "average": [source, *shifts]}

        def compare(claim: str, subject: str, reference: str, column: str) -> None:
            over = columns[column]
            if subject not in rows or reference not in rows or not over:
                return
            subject_seeds = _per_seed_average(rows[subject], over)
            reference_seeds = _per_seed_average(rows[reference], over)
            if not subject_seeds or not reference_seeds:
                return
            reference_deterministic = len(reference_seeds) == 1 and reference.startswith("Zero-shot")
            if reference_deterministic:
                margins = [value - next(iter(reference_seeds.values())) for value in subject_seeds.values()]
            else:  # paired by seed
                margins = [subject_seeds[s] - reference_seeds[s] for s in subject_seeds if s in reference_seeds]
            if not margins:
                return
            checks.append(PatternCheck(
                claim=f"{source}, {column}: {claim}", method=subject,
                value=statistics.fmean(subject_seeds.values()), reference=reference,
                reference_value=statistics.fmean(reference_seeds.values()), direction=1, threshold=0.0,
                seed_std=statistics.stdev(margins) if len(margins) > 1 else 0.0, n_seeds=len(margins)))

        compare("TPT beats zero-shot", "TPT", "Zero-shot", "in domain")
        compare("TPT beats zero-shot", "TPT", "Zero-shot", "shifts")
        for label in rows:
            if label.startswith("TPT + "):
                checkpoint = label.removeprefix("TPT + ")
                compare(f"TPT + {checkpoint} beats {checkpoint}", label, checkpoint, "shifts")
        compare("DiffTPT beats TPT", "DiffTPT", "TPT", "average")
    return checks
