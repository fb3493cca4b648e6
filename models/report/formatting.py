"""How the report writes numbers: accuracies stored as fractions are shown in percent, a configuration's value as
"mean ± std (n seeds)" over its seeds (sample std, 0 for one seed), '–' where there is none."""

from __future__ import annotations

# Metrics shown in percent; any other metric (counts, losses) is shown as a plain number.
_FRACTION_METRIC_SUFFIXES = ("accuracy", "f1", "calibration_error", "precision", "recall", "coverage")


def is_fraction_metric(metric: str) -> bool:
    return metric.endswith(_FRACTION_METRIC_SUFFIXES)


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:.2f}"


def seeds_text(n_seeds: int | None) -> str:
    return "" if n_seeds is None else f" ({n_seeds} seed{'s' if n_seeds != 1 else ''})"


def format_mean_std(mean: float | None, std: float | None, n_seeds: int | None, percent: bool = True) -> str:
    """'mean ± std (n seeds)', in percent with two decimals for fractions; '–' when there is no value."""
    if mean is None:
        return "–"
    if percent:
        return f"{100.0 * mean:.2f} ± {100.0 * (std or 0.0):.2f}{seeds_text(n_seeds)}"
    return f"{mean:.4g} ± {(std or 0.0):.4g}{seeds_text(n_seeds)}"


def percent_pm(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{100.0 * mean:.2f} ± {100.0 * (std or 0.0):.2f}"


def signed_points(value: float | None) -> str:
    return "–" if value is None else f"{100.0 * value:+.2f}"
