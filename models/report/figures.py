"""The report's charts, one per question, drawn with matplotlib and embedded as PNG data URIs: the few-shot curves
(one panel per dataset and their average), the base-to-new bars (base, new and HM per configuration), the transfer
heat map (configurations against source and targets), the pseudolabel accuracy per round and the training
throughput. Every legend sits outside the plotting area, so it never covers a bar or a curve."""

from __future__ import annotations

import base64
import io

import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from models.report.blocks import Image

COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974",
          "#64B5CD")
_LINE_STYLES = ("-", "--", ":", "-.")


def _image(figure: Figure, alt: str) -> Image:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    # No software/version metadata, so the same numbers give the same bytes; "tight" keeps an outside legend.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight")
    return Image(alt, "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))


def _style(index: int) -> dict:
    """A color, and past ten lines a line style too, so that no two lines look alike."""
    return {"color": COLORS[index % len(COLORS)], "linestyle": _LINE_STYLES[(index // len(COLORS)) % 4]}


def shot_curves(results: pl.DataFrame) -> Image:
    """Test top-1 against shots per class (log2 axis), one panel per dataset (the average panel first), one line per
    configuration, zero-shot as a flat dashed line; one legend for every panel, right of them."""
    datasets = results["dataset"].unique(maintain_order=True).to_list()
    configurations = results["configuration"].unique(maintain_order=True).to_list()
    columns = min(3, len(datasets))
    rows_of_plots = (len(datasets) + columns - 1) // columns
    figure = Figure(figsize=(3.4 * columns, 2.9 * rows_of_plots), layout="constrained")
    handles: dict[str, object] = {}
    for plot_index, dataset in enumerate(datasets):
        axes = figure.add_subplot(rows_of_plots, columns, plot_index + 1)
        of_dataset = results.filter(pl.col("dataset") == dataset)
        for index, configuration in enumerate(configurations):
            rows = of_dataset.filter(pl.col("configuration") == configuration)
            if rows.height == 0:
                continue
            style = _style(index)
            if rows["is_zero_shot"][0] or rows["shots"].max() == 0:
                line = axes.axhline(rows["mean"][0] * 100, color=style["color"], linestyle="--")
            else:
                rows = rows.filter(pl.col("shots") > 0)
                # panels of averages over datasets carry no std
                errors = None if rows["std"].is_null().all() else (rows["std"].fill_null(0.0) * 100).to_list()
                line = axes.errorbar(rows["shots"].to_list(), (rows["mean"] * 100).to_list(), yerr=errors,
                                     marker="o", markersize=4, capsize=3, **style)
            handles.setdefault(configuration, line)
        shot_counts = sorted(set(of_dataset["shots"].to_list()) - {0})
        if shot_counts:
            # Few-shot protocols double the shots (1, 2, 4, 8, 16): a log2 axis spaces them evenly.
            axes.set_xscale("log", base=2)
            axes.set_xticks(shot_counts, [str(count) for count in shot_counts])
            axes.minorticks_off()
        axes.set_title(dataset, fontsize="medium")
        axes.set_xlabel("shots per class")
        axes.set_ylabel("test top-1 (%)")
        axes.grid(alpha=0.3)
    figure.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize="small",
                  title="configuration (dashed: 0 shots)", title_fontsize="small")
    return _image(figure, "few-shot curves: test top-1 accuracy against shots per class, one panel per dataset and "
                          "their average")


def base_to_new_bars(averages: pl.DataFrame) -> Image:
    """Base, new and their harmonic mean per configuration (averaged over datasets), as horizontal bar groups."""
    labels = averages["configuration"].to_list()
    figure = Figure(figsize=(7.5, 1.0 + 0.55 * len(labels)), layout="constrained")
    axes = figure.add_subplot()
    height = 0.26
    for index, (column, name) in enumerate((("base_accuracy", "base"), ("new_accuracy", "new"),
                                            ("harmonic_mean", "HM"))):
        positions = [row + (index - 1) * height for row in range(len(labels))]
        axes.barh(positions, (averages[column] * 100).to_list(), height, label=name, color=COLORS[index])
    axes.set_yticks(range(len(labels)), labels, fontsize="small")
    axes.invert_yaxis()
    axes.set_xlabel("top-1 (%), averaged over datasets")
    axes.grid(axis="x", alpha=0.3)
    figure.legend(loc="outside right upper", fontsize="small")
    return _image(figure, "base-to-new bars: base, new and harmonic-mean top-1 per configuration")


def transfer_heat_map(configurations: list[str], columns: list[str], values: list[list[float | None]],
                      title: str) -> Image:
    """Configurations (rows) against the source, each target and the average (columns); every cell's top-1 in
    percent is written in it and the color scale stands beside the map."""
    figure = Figure(figsize=(2.2 + 1.1 * len(columns), 1.2 + 0.45 * len(configurations)), layout="constrained")
    axes = figure.add_subplot()
    grid = [[float("nan") if value is None else 100 * value for value in row] for row in values]
    image = axes.imshow(grid, cmap="viridis", aspect="auto", vmin=0, vmax=100)
    for row, line in enumerate(grid):
        for column, value in enumerate(line):
            if value == value:  # not NaN
                axes.text(column, row, f"{value:.1f}", ha="center", va="center", fontsize="small",
                          color="white" if value < 60 else "black")
    axes.set_xticks(range(len(columns)), columns, rotation=20, ha="right", fontsize="small")
    axes.set_yticks(range(len(configurations)), configurations, fontsize="small")
    axes.set_title(title, fontsize="medium")
    figure.colorbar(image, ax=axes, label="test top-1 (%)")
    return _image(figure, f"transfer heat map: {title}, test top-1 of each configuration on each dataset")


def pseudolabel_round_curves(rounds: pl.DataFrame) -> Image:
    """Pseudolabel accuracy against round, one panel per learning setting, a line per method x strategy; the legend
    right of the panels."""
    settings = [s for s in ("ssl", "ul", "trzsl") if s in set(rounds["setting"].to_list())]
    figure = Figure(figsize=(3.6 * len(settings) + 1.5, 3.0), layout="constrained")
    handles: dict[str, object] = {}
    lines = rounds.select("method", "strategy").unique(maintain_order=True).rows()
    for plot_index, setting in enumerate(settings):
        axes = figure.add_subplot(1, len(settings), plot_index + 1)
        of_setting = rounds.filter(pl.col("setting") == setting)
        for index, (method, strategy) in enumerate(lines):
            line = of_setting.filter((pl.col("method") == method) & (pl.col("strategy") == strategy)).sort("round")
            if line.height == 0:
                continue
            errors = None if line["std"].is_null().all() else (line["std"].fill_null(0.0) * 100).to_list()
            drawn = axes.errorbar(line["round"].to_list(), (line["mean"] * 100).to_list(), yerr=errors, marker="o",
                                  markersize=3, capsize=2, **_style(index))
            handles.setdefault(f"{method}, {strategy.upper()}", drawn)
        axes.set_xticks(sorted(set(of_setting["round"].to_list())))  # whole rounds, even for one
        axes.set_title(setting.upper(), fontsize="medium")
        axes.set_xlabel("round (0: zero-shot)")
        axes.set_ylabel("pseudolabel accuracy (%)")
        axes.grid(alpha=0.3)
    figure.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize="small")
    return _image(figure, "pseudolabel accuracy against round, one panel per learning setting")


_VARIANT_ORDER = ("cached", "re-encoded", "image-prompted", "batched", "per-image")


def throughput_bars(results: pl.DataFrame) -> Image:
    labels = [f"{r['method']} ({r['variant']})" for r in results.iter_rows(named=True)]
    figure = Figure(figsize=(7.5, 0.8 + 0.32 * len(labels)), layout="constrained")
    axes = figure.add_subplot()
    colors = [COLORS[_VARIANT_ORDER.index(v) % len(COLORS)] if v in _VARIANT_ORDER else COLORS[-1]
              for v in results["variant"]]
    axes.barh(range(len(labels)), results["images_per_second"].to_list(), color=colors)
    axes.set_yticks(range(len(labels)), labels, fontsize="small")
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("training images per second (log scale)")
    axes.grid(axis="x", alpha=0.3)
    return _image(figure, "horizontal bar chart of training images per second per method and variant")
