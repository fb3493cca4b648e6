"""With one seed there is no seed spread, so no pattern check may say "shown" (or "contradicted"): every family of
checks (base-to-new, few-shot, limited-label, test-time) goes through the one rule, verdict_beyond_spread."""

import polars as pl
import pytest

from models.evaluation.phenomena import (CONTRADICTED, NOT_SHOWN, SHOWN, few_shot_pattern_checks,
                                         limited_label_pattern_checks, published_pattern_checks,
                                         verdict_beyond_spread)

LIMITED_COLUMNS = ["dataset", "method", "strategy", "setting", "seed", "score"]


def limited_label_checks(rows) -> dict:
    frame = pl.DataFrame(rows, schema=LIMITED_COLUMNS, orient="row")
    return {check.claim: check for check in limited_label_pattern_checks(frame)}


def test_one_seed_per_strategy_is_not_shown_and_says_why():
    # GRIP 30 points over IFPL, and IFPL 30 over FPL, each from one seed: the old rule (margin > 2 x std 0) said shown
    checks = limited_label_checks([("a", "coop", "fpl", "ul", 1, 0.30), ("a", "coop", "ifpl", "ul", 1, 0.60),
                                   ("a", "coop", "grip", "ul", 1, 0.90), ("a", "zero_shot", "none", "ul", 0, 0.10)])
    for claim in ("coop ul: IFPL ≥ FPL", "coop ul: GRIP ≥ IFPL", "coop ul: GRIP beats zero-shot"):
        check = checks[claim]
        assert check.margin > 0.2 and check.spread == 0.0
        assert check.n_seeds == 1 and check.verdict == NOT_SHOWN
        assert check.reason == "1 seed: no seed spread to weigh the margin against"


def test_one_seed_against_a_contradiction_is_not_contradicted_either():
    checks = limited_label_checks([("a", "coop", "fpl", "ssl", 1, 0.90), ("a", "coop", "ifpl", "ssl", 1, 0.20)])
    assert checks["coop ssl: IFPL ≥ FPL"].margin < -0.5 and checks["coop ssl: IFPL ≥ FPL"].verdict == NOT_SHOWN


def test_the_fewer_seeded_side_decides():
    # IFPL ran 2 seeds, FPL 1: the pair has one seed of spread on one side only
    checks = limited_label_checks([("a", "coop", "fpl", "ssl", 1, 0.30), ("a", "coop", "ifpl", "ssl", 1, 0.60),
                                   ("a", "coop", "ifpl", "ssl", 2, 0.61)])
    assert checks["coop ssl: IFPL ≥ FPL"].n_seeds == 1 and checks["coop ssl: IFPL ≥ FPL"].verdict == NOT_SHOWN


def test_two_seeds_are_judged_against_their_spread():
    # the zero-shot reference is deterministic (one run): its single seed does not count against the subject's two
    checks = limited_label_checks([("a", "coop", "grip", "ul", 1, 0.60), ("a", "coop", "grip", "ul", 2, 0.62),
                                   ("a", "zero_shot", "none", "ul", 0, 0.10)])
    check = checks["coop ul: GRIP beats zero-shot"]
    assert check.n_seeds == 2 and check.verdict == SHOWN and check.reason.startswith("margin 51.00 > ")


@pytest.mark.parametrize("n_seeds, expected", [(0, NOT_SHOWN), (1, NOT_SHOWN), (2, SHOWN)])
def test_the_rule_needs_two_seeds(n_seeds, expected):
    assert verdict_beyond_spread(0.5, 0.0, n_seeds) == expected
    assert verdict_beyond_spread(-0.5, 0.0, n_seeds) == (CONTRADICTED if n_seeds >= 2 else NOT_SHOWN)


def test_every_check_family_says_not_shown_with_one_seed():
    base_to_new = published_pattern_checks(
        pl.DataFrame({"method": ["zero_shot", "coop", "kgcoop"], "base_accuracy": [0.5, 0.9, 0.9],
                      "new_accuracy": [0.6, 0.2, 0.5], "harmonic_mean": [0.55, 0.33, 0.64]}),
        pl.DataFrame({"method": ["coop", "kgcoop"], "seed": [1, 1], "base_accuracy": [0.9, 0.9],
                      "new_accuracy": [0.2, 0.5], "harmonic_mean": [0.33, 0.64]}))
    few_shot = few_shot_pattern_checks(pl.DataFrame(
        {"dataset": ["a"] * 3, "method": ["zero_shot", "coop", "linear_probe"], "shots": [0, 16, 16],
         "seed": [0, 1, 1], "value": [0.3, 0.9, 0.5]}))
    # (the test-time checks are PatternChecks too: tests/testtime/test_plan_and_table.py's one-seed case)
    checks = base_to_new + few_shot
    assert len(checks) >= 8
    assert all(check.n_seeds == 1 and check.verdict == NOT_SHOWN and "1 seed" in check.reason for check in checks)
