"""claims.yaml: the comparisons the papers claim, checked by the report on whatever the warehouse holds of them.

Each claim compares a subject with a reference, both named by experiment keys of experiments.yaml with `?` (or any
fnmatch pattern) standing for the seed, e.g. `ramt-k16-s?` against `coop-k16-s?`; the report averages each over the
datasets where both ran, pairs them by seed (zero-shot, deterministic, is the reference of every seed) and says
"shown" only when the margin clears the claim's threshold by more than twice its seed std
(models/evaluation/claims.py). A claim whose experiments have no rows yet is left out of the report.

    claims:
      - claim: R-AMT beats CoOp at 16 shots        # the claim in words
        subject: ramt-k16-s?                       # required: experiment keys, one per seed
        reference: coop-k16-s?                     # required: experiment keys, one per seed (or one: zeroshot)
        metric: top1_accuracy                      # optional: top1_accuracy (default), base_accuracy,
                                                   #   new_accuracy, harmonic_mean (base-to-new)
        stage: evaluation                          # optional: the warehouse stage (default evaluation)
        direction: above                           # optional: above (default) or below the reference
        threshold: 0                               # optional: points the margin must reach (default 0)
        source: R-AMT README, 16-shot average over 11 datasets   # required: where the claim is made

Refused when the catalog loads, naming the file, the claim's index and the field: unknown fields, a pattern that
matches two experiments of one seed, an unknown metric or direction, a negative threshold. A claim with a side that
matches no experiment is left out: a trimmed experiments.yaml does not run it (nothing can tell such a pattern from a
typo: `coop-k16-s?` is one character from a micro grid's `coop-k2-s?`; the project's own claims are tested to match
its grid).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from models.catalog.grid import ExperimentConfig
from models.catalog.validation import CatalogError, _check_fields, _field_error, _read_yaml, _shown

CLAIMS_FILE = "claims.yaml"
CLAIM_FIELDS = ("claim", "subject", "reference", "metric", "stage", "direction", "threshold", "source")
CLAIM_METRICS = ("top1_accuracy", "base_accuracy", "new_accuracy", "harmonic_mean")
DIRECTIONS = {"above": +1, "below": -1}


@dataclass(frozen=True)
class Claim:
    claim: str
    subject: tuple[str, ...]  # experiment keys, one per seed
    reference: tuple[str, ...]
    source: str
    metric: str = "top1_accuracy"
    stage: str = "evaluation"
    direction: int = +1
    threshold: float = 0.0  # a fraction (the file says points)
    subject_pattern: str = ""  # as the file writes them
    reference_pattern: str = ""


def _matched_keys(where: str, pattern: Any, experiments: Mapping[str, ExperimentConfig]) -> tuple[str, ...]:
    if not isinstance(pattern, str) or not pattern:
        raise CatalogError(f"{where}: expected an experiment key or pattern (e.g. coop-k16-s?), got {_shown(pattern)}")
    keys = tuple(key for key in experiments if fnmatchcase(key, pattern))
    seeds: dict[int | None, str] = {}
    for key in keys:
        seed = experiments[key].seed
        if seed in seeds:
            raise CatalogError(f"{where}: {_shown(pattern)} matches two experiments of seed {seed} ({seeds[seed]}, "
                               f"{key}); a claim pairs one experiment per seed (use `s?` for the seed only)")
        seeds[seed] = key
    return keys


def parse_claims(path: Path, raw: Any, experiments: Mapping[str, ExperimentConfig] | None) -> tuple[Claim, ...]:
    """The claims of `raw` (claims.yaml read), checked against the experiments of the whole grid; with
    `experiments` None (the report, which matches the patterns against the warehouse's keys) their fields only."""
    if raw is None:
        return ()
    if not isinstance(raw, dict) or set(raw) != {"claims"} or not isinstance(raw["claims"], list):
        raise CatalogError(f"{path.name}: expected one section `claims:` holding a list, got {_shown(raw)}")
    claims: list[Claim] = []
    for index, entry in enumerate(raw["claims"]):
        where = f"{path.name}: claims[{index}]"
        _check_fields(where, entry, CLAIM_FIELDS, required=("claim", "subject", "reference", "source"))
        for name in ("claim", "source"):
            if not isinstance(entry[name], str) or not entry[name].strip():
                raise _field_error(where, name, "a non-empty string", entry[name])
        metric = entry.get("metric", "top1_accuracy")
        if metric not in CLAIM_METRICS:
            raise _field_error(where, "metric", f"one of {list(CLAIM_METRICS)}", metric)
        direction = entry.get("direction", "above")
        if direction not in DIRECTIONS:
            raise _field_error(where, "direction", f"one of {list(DIRECTIONS)}", direction)
        threshold = entry.get("threshold", 0)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
            raise _field_error(where, "threshold", "points, 0 or more", threshold)
        stage = entry.get("stage", "evaluation")
        if not isinstance(stage, str) or not stage:
            raise _field_error(where, "stage", "a warehouse stage (evaluation, multi_source, ...)", stage)
        if experiments is None:
            for side in ("subject", "reference"):
                if not isinstance(entry[side], str) or not entry[side]:
                    raise _field_error(where, side, "an experiment key or pattern (e.g. coop-k16-s?)", entry[side])
            subject, reference = (entry["subject"],), (entry["reference"],)
        else:
            subject = _matched_keys(f"{where}.subject", entry["subject"], experiments)
            reference = _matched_keys(f"{where}.reference", entry["reference"], experiments)
        if not subject or not reference:  # a grid without this side's experiments (a trimmed experiments.yaml)
            continue
        if set(subject) & set(reference):
            raise CatalogError(f"{where}: subject and reference share {sorted(set(subject) & set(reference))}")
        if any(claim.claim == entry["claim"] for claim in claims):
            raise _field_error(where, "claim", "a claim not made by an earlier entry", entry["claim"])
        claims.append(Claim(entry["claim"], subject, reference, entry["source"], metric, stage,
                            DIRECTIONS[direction], float(threshold) / 100.0, entry["subject"], entry["reference"]))
    return tuple(claims)


def load_claims(directory: Path, experiments: Mapping[str, ExperimentConfig] | None) -> tuple[Claim, ...]:
    """The catalog's claims.yaml (none without the file); `experiments` None: the fields only (parse_claims)."""
    path = Path(directory) / CLAIMS_FILE
    return parse_claims(path, _read_yaml(path), experiments) if path.exists() else ()


def report_claims() -> tuple[Claim, ...]:
    """The claims the report checks: claims.yaml of $PROMPTLAB_CATALOG (else assets_catalog/), or of its suite's
    folder under $PROMPTLAB_SUITE, read without the rest of the catalog; the report matches their patterns against
    the warehouse's experiment keys."""
    import os

    from models.catalog.suites import DEFAULT_CATALOG_DIR, suite_directory

    directory = Path(os.environ.get("PROMPTLAB_CATALOG") or DEFAULT_CATALOG_DIR)
    suite = os.environ.get("PROMPTLAB_SUITE")
    return load_claims(suite_directory(directory, suite) if suite else directory, None)
