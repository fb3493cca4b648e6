"""A configuration in words, shared by `promptlab results` and the report: the method, the protocol, the learning
setting, the pseudolabel strategy, diffusion augmentation and a grid entry's variant name. The short settings hash
is added only where two different configurations would otherwise read the same (their parameters differ and no
option says how).
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl

# The protocol a configuration's in-domain results belong to, in the order the report shows them: configurations of
# one protocol are compared with each other, never with another protocol's.
FEW_SHOT = "few-shot"
BASE_TO_NEW = "base-to-new"
PROTOCOL_ORDER = (FEW_SHOT, "SSL", "UL", "TRZSL", BASE_TO_NEW)


def options_of(options: Any) -> dict[str, Any]:
    """A run's options as a dict (the warehouse stores them as JSON text)."""
    if isinstance(options, dict):
        return options
    return json.loads(options) if options else {}


def describe_configuration(method: str, options: Any) -> str:
    """A configuration in words: `coop`, `coop, base-to-new`, `coop, SSL, GRIP pseudolabels`, `coop (csc)`,
    `zero_shot (ensemble)`, `coop, diffusion augmentation`."""
    options = options_of(options)
    words = [method + (f" ({options['variant']})" if options.get("variant") else "")]
    if options.get("protocol") == "base_to_new":
        words.append("base-to-new")
    if options.get("setting"):
        words.append(str(options["setting"]).upper())
    pseudolabels = options.get("pseudolabels")
    if isinstance(pseudolabels, dict) and pseudolabels.get("strategy"):
        words.append(f"{str(pseudolabels['strategy']).upper()} pseudolabels")
    if options.get("augmentation"):
        words.append("diffusion augmentation")
    return ", ".join(words)


def protocol_of(options: Any) -> str:
    """few-shot (all classes, labelled shots), SSL / UL / TRZSL (a learning setting) or base-to-new."""
    options = options_of(options)
    if options.get("setting"):
        return str(options["setting"]).upper()
    if options.get("protocol") == "base_to_new":
        return BASE_TO_NEW
    return FEW_SHOT if not options.get("protocol") else str(options["protocol"])


def with_shots(configuration: str, shots: int) -> str:
    """The label where rows of several shot counts share a table: `coop, 16 shots`; a 0-shot row (zero-shot, a
    learning setting) keeps its name alone."""
    return configuration if not shots else f"{configuration}, {shots} shot{'s' if shots != 1 else ''}"


def configuration_labels(frame: pl.DataFrame) -> pl.DataFrame:
    """The distinct (backbone, method, options) of `frame` with `configuration` in words, prefixed by the backbone
    when there are several; where two option sets read the same, their settings hashes tell them apart."""
    labels = frame.select("backbone", "method", "options").unique(maintain_order=True)
    labels = labels.with_columns(pl.struct("method", "options").map_elements(
        lambda row: describe_configuration(row["method"], row["options"]), return_dtype=pl.String)
        .alias("configuration"))
    if labels["backbone"].n_unique() > 1:
        labels = labels.with_columns((pl.col("backbone") + " / " + pl.col("configuration")).alias("configuration"))
    clashing = pl.col("configuration").is_duplicated()
    return labels.with_columns(pl.when(clashing).then(
        pl.col("configuration") + " [" + pl.col("options").map_elements(
            lambda options: str(options_of(options).get("settings_hash", "")), return_dtype=pl.String) + "]")
        .otherwise(pl.col("configuration")).alias("configuration"))
