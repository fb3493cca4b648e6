import statistics

import polars as pl
import pytest

from models.evaluation.metrics import harmonic_mean
from models.evaluation.phenomena import (
    CONTRADICTED, NOT_SHOWN, SHOWN, few_shot_pattern_checks, limited_label_pattern_checks, published_pattern_checks)

COOP_BELOW = "CoOp's new-class accuracy falls below zero-shot"
COOP_THREE_POINTS = "CoOp's new-class accuracy at least 3 points below zero-shot's"
BEATS_ON_BASE = "tuning beats zero-shot on base classes"
RECOVERS = "recovers harmonic mean over CoOp"


def seed_rows(by_method: dict[str, dict[int, tuple[float, float]]]) -> pl.DataFrame:
    """Per method and seed (base, new) averaged over datasets; HM of those, as the warehouse view gives it."""
    rows = [(method, seed, base, new, harmonic_mean(base, new))
            for method, seeds in by_method.items() for seed, (base, new) in seeds.items()]
    return pl.DataFrame(rows, schema=["method", "seed", "base_accuracy", "new_accuracy", "harmonic_mean"],
                        orient="row")


def averages_of(seeds: pl.DataFrame) -> pl.DataFrame:
    """The averages over seeds, with the HM of the averages (as base_to_new_averages)."""
    means = seeds.group_by("method").agg(pl.col("base_accuracy").mean(), pl.col("new_accuracy").mean())
    return means.with_columns(harmonic_mean=2 * pl.col("base_accuracy") * pl.col("new_accuracy")
                              / (pl.col("base_accuracy") + pl.col("new_accuracy")))


def checks_of(by_method):
    seeds = seed_rows(by_method)
    return {(c.claim, c.method): c for c in published_pattern_checks(averages_of(seeds), seeds)}


def test_margins_beyond_two_seed_stds_are_shown():
    checks = checks_of({
        "zero_shot": {1: (0.70, 0.74)},
        "coop": {1: (0.81, 0.62), 2: (0.83, 0.64), 3: (0.82, 0.63)},
        "maple": {1: (0.81, 0.74), 2: (0.83, 0.76), 3: (0.82, 0.75)},
    })
    base = checks[(BEATS_ON_BASE, "coop")]
    assert base.margin == pytest.approx(0.12)  # method base minus zero-shot base
    assert base.seed_std == pytest.approx(statistics.stdev([0.11, 0.13, 0.12]))  # zero-shot adds no spread
    assert base.n_seeds == 3 and base.verdict == SHOWN
    below = checks[(COOP_BELOW, "coop")]
    assert below.margin == pytest.approx(0.11)  # zero-shot new minus CoOp new
    assert below.verdict == SHOWN and checks[(COOP_THREE_POINTS, "coop")].verdict == SHOWN
    recovers = checks[(RECOVERS, "maple")]
    coop_hm = harmonic_mean(0.82, 0.63)
    assert recovers.margin == pytest.approx(harmonic_mean(0.82, 0.75) - coop_hm)
    # paired by seed: maple and coop move together, so the spread of the difference is small
    paired = [harmonic_mean(b, n) - harmonic_mean(b, n - 0.12)
              for b, n in ((0.81, 0.74), (0.83, 0.76), (0.82, 0.75))]
    assert recovers.seed_std == pytest.approx(statistics.stdev(paired))
    assert recovers.verdict == SHOWN and recovers.reason.startswith(f"margin {100 * recovers.margin:.2f} > ")
    assert (RECOVERS, "kgcoop") not in checks  # absent methods are not invented


def test_margins_inside_two_seed_stds_are_not_shown():
    # CoOp's base is 1 point above zero-shot on average, but its seeds spread by 3 points.
    checks = checks_of({
        "zero_shot": {1: (0.70, 0.66)},
        "coop": {1: (0.68, 0.60), 2: (0.71, 0.63), 3: (0.74, 0.66)},
    })
    base = checks[(BEATS_ON_BASE, "coop")]
    assert base.margin == pytest.approx(0.01) and base.seed_std == pytest.approx(0.03)
    assert base.verdict == NOT_SHOWN
    assert base.reason == "margin 1.00 within -6.00 to 6.00 (threshold 0 ± 2 × seed std 3.00)"
    # 3 points below zero-shot on new: clearly below, but not clearly by 3 points
    assert checks[(COOP_BELOW, "coop")].margin == pytest.approx(0.03)
    assert checks[(COOP_BELOW, "coop")].verdict == NOT_SHOWN  # 3 < 2 × 3
    assert checks[(COOP_THREE_POINTS, "coop")].verdict == NOT_SHOWN


def test_the_three_point_threshold_is_its_own_claim():
    # CoOp reliably below zero-shot on new classes, but by 1 point, not 3.
    checks = checks_of({
        "zero_shot": {1: (0.70, 0.74)},
        "coop": {1: (0.80, 0.729), 2: (0.80, 0.731)},
    })
    assert checks[(COOP_BELOW, "coop")].verdict == SHOWN
    three_points = checks[(COOP_THREE_POINTS, "coop")]
    assert three_points.margin == pytest.approx(0.01) and three_points.threshold == pytest.approx(0.03)
    assert three_points.verdict == CONTRADICTED


def test_a_margin_the_other_way_beyond_two_stds_is_contradicted():
    checks = checks_of({
        "zero_shot": {1: (0.50, 0.40)},
        "coop": {1: (0.44, 0.45), 2: (0.46, 0.47)},
        "kgcoop": {1: (0.43, 0.43), 2: (0.45, 0.45)},
    })
    base = checks[(BEATS_ON_BASE, "coop")]
    assert base.margin == pytest.approx(-0.05) and base.verdict == CONTRADICTED and " < " in base.reason
    assert checks[(COOP_BELOW, "coop")].margin == pytest.approx(-0.06)
    assert checks[(COOP_BELOW, "coop")].verdict == CONTRADICTED
    recovers = checks[(RECOVERS, "kgcoop")]
    assert recovers.margin < 0 and recovers.verdict == CONTRADICTED


def test_a_single_seed_shows_nothing_however_large_the_margin():
    checks = checks_of({
        "zero_shot": {1: (0.50, 0.70)},
        "coop": {1: (0.90, 0.30)},
        "cocoop": {1: (0.90, 0.60)},
    })
    for check in checks.values():
        assert check.n_seeds == 1 and check.seed_std == 0.0
        assert check.verdict == NOT_SHOWN and "1 seed" in check.reason
    assert checks[(BEATS_ON_BASE, "coop")].margin == pytest.approx(0.40)


def test_against_coop_only_the_seeds_both_ran_are_paired():
    seeds = seed_rows({
        "coop": {1: (0.80, 0.60), 2: (0.80, 0.62)},
        "cocoop": {2: (0.80, 0.70), 3: (0.80, 0.71)},
    })
    checks = {(c.claim, c.method): c for c in published_pattern_checks(averages_of(seeds), seeds)}
    recovers = checks[(RECOVERS, "cocoop")]
    assert recovers.n_seeds == 1 and recovers.verdict == NOT_SHOWN
    assert not any(claim == BEATS_ON_BASE for claim, _ in checks)  # no zero-shot row: nothing against it


def test_several_rows_for_one_method_are_refused():
    seeds = seed_rows({"coop": {1: (0.5, 0.5)}})
    with pytest.raises(ValueError, match="averages have several rows.*coop"):
        published_pattern_checks(pl.concat([averages_of(seeds), averages_of(seeds)]), seeds)
    with pytest.raises(ValueError, match="seed averages have several rows.*coop"):
        published_pattern_checks(averages_of(seeds), pl.concat([seeds, seeds]))


def few_shot_rows(values: dict[tuple[str, int], dict[str, dict[int, float]]]) -> pl.DataFrame:
    rows = [(dataset, method, shots, seed, value) for (method, shots), by_dataset in values.items()
            for dataset, by_seed in by_dataset.items() for seed, value in by_seed.items()]
    return pl.DataFrame(rows, schema=["dataset", "method", "shots", "seed", "value"], orient="row")


def few_shot_checks_of(values):
    return {check.claim: check for check in few_shot_pattern_checks(few_shot_rows(values))}


def test_few_shot_claims_average_over_the_shared_datasets_and_weigh_the_seed_spread():
    checks = few_shot_checks_of({
        ("zero_shot", 0): {"a": {0: 0.50}, "b": {0: 0.60}, "c": {0: 0.90}},
        ("coop", 16): {"a": {1: 0.70, 2: 0.72, 3: 0.68}, "b": {1: 0.71, 2: 0.69, 3: 0.70}},  # no "c"
        ("linear_probe", 1): {"a": {1: 0.30, 2: 0.50, 3: 0.40}, "b": {1: 0.40, 2: 0.40, 3: 0.40}},
        ("linear_probe", 16): {"a": {1: 0.74, 2: 0.73, 3: 0.72}, "b": {1: 0.75, 2: 0.74, 3: 0.73}},
    })
    gain = checks["CoOp at 16 shots beats zero-shot"]
    assert gain.value == pytest.approx(0.70) and gain.reference_value == pytest.approx(0.55)  # "c" left out
    assert gain.margin == pytest.approx(0.15) and gain.n_seeds == 3
    assert gain.seed_std == pytest.approx(statistics.stdev([0.705 - 0.55, 0.705 - 0.55, 0.69 - 0.55]))
    assert gain.verdict == SHOWN and checks["CoOp at 16 shots beats zero-shot by at least 8 points"].verdict == SHOWN
    below = checks["the 1-shot linear probe falls below zero-shot"]
    assert below.margin == pytest.approx(0.55 - 0.40) and below.method == "linear_probe, 1 shot"
    assert below.seed_std == pytest.approx(statistics.stdev([0.20, 0.10, 0.15]))
    above = checks["CoOp stays above the linear probe at 16 shots"]
    # paired per seed: coop minus probe, averaged over the two datasets
    assert above.margin == pytest.approx(0.70 - 0.735)
    assert above.seed_std == pytest.approx(statistics.stdev([0.705 - 0.745, 0.705 - 0.735, 0.69 - 0.725]))
    assert above.verdict == CONTRADICTED and above.reference == "linear_probe, 16 shots"


def test_few_shot_gain_inside_the_spread_is_not_shown_and_missing_methods_are_skipped():
    checks = few_shot_checks_of({
        ("zero_shot", 0): {"a": {0: 0.50}},
        ("coop", 16): {"a": {1: 0.45, 2: 0.65, 3: 0.55}},
    })
    assert set(checks) == {"CoOp at 16 shots beats zero-shot",
                           "CoOp at 16 shots beats zero-shot by at least 8 points"}
    assert checks["CoOp at 16 shots beats zero-shot"].verdict == NOT_SHOWN
    assert checks["CoOp at 16 shots beats zero-shot by at least 8 points"].verdict == NOT_SHOWN


def test_the_baselines_claims_compare_tip_adapter_f_with_its_cache_and_coop_per_seed():
    checks = few_shot_checks_of({
        ("zero_shot", 0): {"a": {0: 0.50}},
        ("tip_adapter", 1): {"a": {1: 0.53, 2: 0.54, 3: 0.535}},
        ("tip_adapter", 4): {"a": {1: 0.60, 2: 0.61, 3: 0.62}},
        ("tip_adapter_f", 4): {"a": {1: 0.60, 2: 0.63, 3: 0.61}},
        ("tip_adapter", 16): {"a": {1: 0.62, 2: 0.62, 3: 0.62}},
        ("tip_adapter_f", 16): {"a": {1: 0.70, 2: 0.71, 3: 0.72}},
        ("coop", 16): {"a": {1: 0.69, 2: 0.73, 3: 0.66}},
        ("clip_lora", 16): {"a": {1: 0.60, 2: 0.61, 3: 0.59}},
    })
    assert checks["Tip-Adapter beats zero-shot at 1 shot"].verdict == SHOWN
    four = checks["Tip-Adapter-F beats Tip-Adapter at 4 shots"]
    assert four.margin == pytest.approx(0.0033333, abs=1e-6)
    assert four.seed_std == pytest.approx(statistics.stdev([0.0, 0.02, -0.01])) and four.verdict == NOT_SHOWN
    assert checks["Tip-Adapter-F beats Tip-Adapter at 16 shots"].verdict == SHOWN
    assert "Tip-Adapter-F beats Tip-Adapter at 8 shots" not in checks  # not run: skipped
    against_coop = checks["Tip-Adapter-F beats CoOp at 16 shots"]
    assert against_coop.seed_std == pytest.approx(statistics.stdev([0.01, -0.02, 0.06]))  # paired by seed
    assert against_coop.verdict == NOT_SHOWN
    assert checks["CLIP-LoRA beats CoOp at 16 shots"].verdict == CONTRADICTED


def test_few_shot_rows_must_be_one_per_seed():
    rows = few_shot_rows({("coop", 16): {"a": {1: 0.5}}})
    with pytest.raises(ValueError, match="several rows"):
        few_shot_pattern_checks(pl.concat([rows, rows]))


def limited_label_checks_of(scores: dict[tuple[str, str, str], dict[str, dict[int, float]]]):
    rows = [(dataset, method, strategy, setting, seed, score)
            for (method, strategy, setting), datasets in scores.items()
            for dataset, seeds in datasets.items() for seed, score in seeds.items()]
    frame = pl.DataFrame(rows, schema=["dataset", "method", "strategy", "setting", "seed", "score"], orient="row")
    return {c.claim: c for c in limited_label_pattern_checks(frame)}


def test_limited_label_claims_compare_strategies_on_the_datasets_both_ran():
    checks = limited_label_checks_of({
        ("zero_shot", "none", "ul"): {"easy": {0: 0.90}, "hard": {0: 0.40}},
        ("coop", "fpl", "ul"): {"easy": {1: 0.80, 2: 0.82}, "hard": {1: 0.50, 2: 0.52}},
        ("coop", "ifpl", "ul"): {"easy": {1: 0.81, 2: 0.83}, "hard": {1: 0.60, 2: 0.60}},
        ("coop", "grip", "ul"): {"hard": {1: 0.70, 2: 0.72}},  # ran on the hard dataset only
    })
    # GRIP against IFPL on "hard" alone: 71 against 60, not against IFPL's two-dataset 71
    grip = checks["coop ul: GRIP ≥ IFPL"]
    assert grip.datasets == ("hard",) and grip.margin == pytest.approx(0.11)
    assert grip.spread == pytest.approx(2 * statistics.stdev([0.70, 0.72])) and grip.verdict == SHOWN
    ifpl = checks["coop ul: IFPL ≥ FPL"]
    assert ifpl.datasets == ("easy", "hard") and ifpl.margin == pytest.approx(0.71 - 0.66)
    assert ifpl.spread == pytest.approx(2 * statistics.stdev([0.65, 0.67])) and ifpl.verdict == SHOWN
    # zero-shot is one run, averaged over the datasets of its comparison: "hard" alone against GRIP
    assert checks["coop ul: GRIP beats zero-shot"].reference_value == pytest.approx(0.40)
    assert checks["coop ul: GRIP beats zero-shot"].verdict == SHOWN
    assert checks["coop ul: IFPL beats zero-shot"].margin == pytest.approx(0.71 - 0.65)
    assert "coop ssl: GRIP ≥ IFPL" not in checks  # no SSL rows


def test_limited_label_margin_inside_or_against_the_spread():
    checks = limited_label_checks_of({
        ("coop", "fpl", "ssl"): {"a": {1: 0.60, 2: 0.70}},
        ("coop", "ifpl", "ssl"): {"a": {1: 0.62, 2: 0.70}},
        ("coop", "grip", "ssl"): {"a": {1: 0.40, 2: 0.41}},
    })
    assert checks["coop ssl: IFPL ≥ FPL"].verdict == NOT_SHOWN  # +1 point, seed std 7 points
    assert checks["coop ssl: GRIP ≥ IFPL"].verdict == CONTRADICTED  # -25.5 points, 2 x std 5.7


def test_limited_label_option_variants_of_one_configuration_are_refused():
    rows = pl.DataFrame([("a", "coop", "grip", "ul", 1, 0.5)] * 2,
                        schema=["dataset", "method", "strategy", "setting", "seed", "score"], orient="row")
    with pytest.raises(ValueError, match="several rows"):
        limited_label_pattern_checks(rows)
