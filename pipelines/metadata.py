"""Materialization metadata the Dagster UI shows well: training curves as a plot (a PNG inside markdown, which the
UI renders inline) beside a per-epoch table, counts as tables, and paths a person can open.

Every piece of data written into Markdown (a class name, a path, a dataset name) goes through models.markdown: the
UI renders Markdown with its HTML, so a class named `<svg onload=...>` would be an element, and a `|` in a path
would shift a table's columns."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import dagster as dg

from models.markdown import markdown_text


def curve_plot(title: str, curves: Mapping[str, Sequence[float]], x_label: str = "epoch") -> dg.MetadataValue:
    """Markdown holding a small PNG line plot of each named curve over epochs (1, 2, ...)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state in a run worker
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(4.8, 2.6), dpi=80)
    axes = figure.subplots()
    for name, values in curves.items():
        axes.plot(range(1, len(values) + 1), list(values), marker="o", markersize=3, label=name)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel(x_label)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    if len(curves) > 1:
        axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return dg.MetadataValue.md(f"![{markdown_text(title)}](data:image/png;base64,{encoded})")


def curve_table(curves: Mapping[str, Sequence[float]], x_label: str = "epoch") -> dg.MetadataValue:
    """The curves' values, one row per epoch (a table the UI sorts and copies)."""
    length = max((len(values) for values in curves.values()), default=0)
    records = [dg.TableRecord({x_label: i + 1, **{name: round(float(values[i]), 4) for name, values in curves.items()
                                                   if i < len(values)}}) for i in range(length)]
    columns = [dg.TableColumn(x_label, "int")] + [dg.TableColumn(name, "float") for name in curves]
    return dg.MetadataValue.table(records, schema=dg.TableSchema(columns))


def training_curves(title: str, curves: Mapping[str, Sequence[float]]) -> dict[str, dg.MetadataValue]:
    """`<name>_plot` and `<name>_by_epoch` entries for the curves (nothing when there is no epoch)."""
    curves = {name: values for name, values in curves.items() if values}
    if not curves:
        return {}
    return {"training_curves": curve_plot(title, curves), "training_curves_by_epoch": curve_table(curves)}


def counts_table(counts: Mapping[str, int | float], key: str = "part", value: str = "images") -> dg.MetadataValue:
    """A two-column table of named counts (training-set composition, kept vs generated...)."""
    records = [dg.TableRecord({key: str(name), value: count}) for name, count in counts.items()]
    kind = "float" if any(isinstance(count, float) for count in counts.values()) else "int"
    return dg.MetadataValue.table(records, schema=dg.TableSchema([dg.TableColumn(key, "string"),
                                                                  dg.TableColumn(value, kind)]))


def frame_table(frame) -> dg.MetadataValue:
    """A polars DataFrame as a table (column types from the frame)."""
    kinds = {"Int": "int", "UInt": "int", "Float": "float", "Boolean": "bool"}

    def kind(dtype) -> str:
        return next((name for prefix, name in kinds.items() if str(dtype).startswith(prefix)), "string")

    schema = dg.TableSchema([dg.TableColumn(name, kind(dtype)) for name, dtype in frame.schema.items()])
    return dg.MetadataValue.table([dg.TableRecord(row) for row in frame.iter_rows(named=True)], schema=schema)


def path_value(path: Path | str) -> dg.MetadataValue:
    return dg.MetadataValue.path(str(path))
