"""Does the published base-to-new pattern appear? Checks on base/new/HM averages, for the report.

The prompt-learning papers (CoOp, CoCoOp, KgCoOp, MaPLe, PromptSRC; PAPERS.md) report, on 11 datasets with
ViT-B/16, that
  1. every tuned method beats zero-shot CLIP on the base classes it was trained on;
  2. CoOp's accuracy on new classes falls below zero-shot CLIP (it overfits the base classes);
  3. CoCoOp, KgCoOp and MaPLe recover harmonic mean over CoOp (and PromptSRC, the published best).
These are observations to report, not tests: each check says whether the claim holds here, with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

RECOVERS_HM_OVER_COOP = ("cocoop", "kgcoop", "maple", "promptsrc")


@dataclass(frozen=True)
class PatternCheck:
    claim: str
    method: str
    value: float
    reference: str
    reference_value: float
    holds: bool

    @property
    def difference(self) -> float:
        return self.value - self.reference_value


def published_pattern_checks(averages: pl.DataFrame) -> list[PatternCheck]:
    """Checks on one row per method: columns method, base_accuracy, new_accuracy, harmonic_mean (base-to-new
    averages over the same datasets; zero_shot's row is its own base/new scoring). Missing methods are skipped;
    without a zero-shot row nothing can be checked against it."""
    required = {"method", "base_accuracy", "new_accuracy", "harmonic_mean"}
    missing = required - set(averages.columns)
    if missing:
        raise ValueError(f"base-to-new averages lack column(s) {sorted(missing)}")
    duplicated = averages.group_by("method").len().filter(pl.col("len") > 1)["method"].to_list()
    if duplicated:
        raise ValueError(f"base-to-new averages have several rows for method(s) {sorted(duplicated)}; pass one each")
    rows = {row["method"]: row for row in averages.iter_rows(named=True)}
    checks: list[PatternCheck] = []
    zero_shot = rows.get("zero_shot")
    if zero_shot is not None:
        for method, row in sorted(rows.items()):
            if method != "zero_shot":
                checks.append(PatternCheck("tuning beats zero-shot on base classes", method, row["base_accuracy"],
                                           "zero_shot", zero_shot["base_accuracy"],
                                           row["base_accuracy"] > zero_shot["base_accuracy"]))
        if "coop" in rows:
            coop = rows["coop"]
            checks.append(PatternCheck("CoOp's new-class accuracy falls below zero-shot", "coop",
                                       coop["new_accuracy"], "zero_shot", zero_shot["new_accuracy"],
                                       coop["new_accuracy"] < zero_shot["new_accuracy"]))
    if "coop" in rows:
        coop = rows["coop"]
        for method in RECOVERS_HM_OVER_COOP:
            if method in rows:
                checks.append(PatternCheck("recovers harmonic mean over CoOp", method, rows[method]["harmonic_mean"],
                                           "coop", coop["harmonic_mean"],
                                           rows[method]["harmonic_mean"] > coop["harmonic_mean"]))
    return checks
