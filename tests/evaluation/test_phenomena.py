import polars as pl
import pytest

from models.evaluation.phenomena import published_pattern_checks


def averages(rows):
    return pl.DataFrame(rows, schema=["method", "base_accuracy", "new_accuracy", "harmonic_mean"], orient="row")


def by_claim(checks):
    return {(c.claim, c.method): c for c in checks}


def test_the_published_pattern_is_recognised():
    checks = by_claim(published_pattern_checks(averages([
        ("zero_shot", 0.70, 0.74, 0.72), ("coop", 0.82, 0.63, 0.71), ("cocoop", 0.80, 0.72, 0.76),
        ("maple", 0.82, 0.75, 0.785)])))
    assert checks[("tuning beats zero-shot on base classes", "coop")].holds
    assert checks[("CoOp's new-class accuracy falls below zero-shot", "coop")].holds
    assert checks[("recovers harmonic mean over CoOp", "maple")].holds
    assert checks[("recovers harmonic mean over CoOp", "cocoop")].difference == pytest.approx(0.05)
    assert ("recovers harmonic mean over CoOp", "kgcoop") not in checks  # absent methods are not invented


def test_a_pattern_that_does_not_appear_is_reported_as_not_holding():
    checks = by_claim(published_pattern_checks(averages([
        ("zero_shot", 0.50, 0.40, 0.444), ("coop", 0.49, 0.45, 0.469), ("kgcoop", 0.48, 0.44, 0.459)])))
    assert not checks[("tuning beats zero-shot on base classes", "coop")].holds
    assert not checks[("CoOp's new-class accuracy falls below zero-shot", "coop")].holds
    assert not checks[("recovers harmonic mean over CoOp", "kgcoop")].holds


def test_several_rows_for_one_method_are_refused():
    with pytest.raises(ValueError, match="several rows.*coop"):
        published_pattern_checks(averages([("coop", 0.5, 0.5, 0.5), ("coop", 0.6, 0.6, 0.6)]))
