"""The report's figures: test mIoU by decoder and mode, validation curves, test mIoU against cost, and
test mIoU against the label fraction when runs differ in it.

Groups that share dataset, encoder, decoder and mode but differ in settings (``Group.label``) get
bars, lines and points of their own, named by those settings. Error bars and bands are 95 % bootstrap
intervals of the mean over seeds (``benchmark.report.stats``), none for a single seed.

Figures are built as :class:`matplotlib.figure.Figure` objects, without pyplot: no GUI backend is chosen
or needed (``savefig`` renders with Agg), and figures are freed when dropped (pyplot never holds them).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from benchmark.report.runs import FRACTION, ORDER, Group
from benchmark.report.scores import summarise, test_miou
from benchmark.report.tables import cost, count

MODE_MARKERS = {"frozen": "o", "partial": "v", "progressive": "D", "lora": "P", "unfrozen": "s", "random": "^"}


def interval(values: Sequence[float], scale: float = 1.0) -> tuple[float, float, float]:
    """Mean, then how far the bootstrap interval reaches below and above it (0 and 0 for one value)."""
    summary = summarise(values)
    if math.isnan(summary.lo):
        return scale * summary.mean, 0.0, 0.0
    # matplotlib refuses negative error lengths; a percentile interval can, rarely, miss the mean itself
    return scale * summary.mean, scale * max(0.0, summary.mean - summary.lo), scale * max(0.0, summary.hi - summary.mean)


def label(name: str) -> str:
    return name.removeprefix("seg_")


def series(group: Group) -> str:
    """The legend entry of a group within its decoder: its mode, and its settings when groups differ."""
    return f"{group.config.mode} · {group.label}" if group.label else group.config.mode


def panels(keys: Sequence[Any], width: float = 5.5, height: float = 3.8) -> tuple[Figure, list[Any]]:
    """A figure with one axes per key (at most 3 per row)."""
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    figure = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = figure.subplots(nrows, ncols, squeeze=False)
    flat = list(axes.flat)
    for extra in flat[len(keys):]:
        extra.set_visible(False)
    return figure, flat[: len(keys)]


def save(figure: Figure, path: Path) -> None:
    figure.savefig(path, dpi=90)


def mode_rank(mode: str) -> int:
    order = ORDER["mode"]
    return order.index(mode) if mode in order else len(order)


def ordered_series(groups: Iterable[Group]) -> list[str]:
    """Series names, by mode in display order, then settings."""
    named = {series(g): (mode_rank(g.config.mode), g.config.mode, g.label) for g in groups}
    return sorted(named, key=lambda name: named[name])


def pairs_of(groups: Sequence[Group]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((g.config.dataset, g.config.encoder) for g in groups))


def miou_by_decoder_and_mode(groups: Sequence[Group]) -> Figure:
    """Bars: test mIoU per decoder, one bar per mode (and settings), error bar = 95 % interval of the mean;
    a panel per dataset x encoder."""
    plotted = [g for g in groups if g.values(test_miou)]
    names = ordered_series(plotted)
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    figure, axes = panels(pairs_of(plotted) or [("", "")])
    for (dataset, encoder), ax in zip(pairs_of(plotted), axes):
        mine = [g for g in plotted if (g.config.dataset, g.config.encoder) == (dataset, encoder)]
        decoders = list(dict.fromkeys(g.config.decoder for g in mine))
        width = 0.8 / max(sum(g.config.decoder == d for g in mine) for d in decoders)
        for i, decoder in enumerate(decoders):
            bars = sorted((g for g in mine if g.config.decoder == decoder), key=lambda g: names.index(series(g)))
            for j, group in enumerate(bars):  # the decoder's bars centred on its tick
                x = i + (j - (len(bars) - 1) / 2) * width
                mean, below, above = interval(group.values(test_miou), 100)
                ax.bar(x, mean, width, yerr=[[below], [above]], capsize=3, color=colours[series(group)])
                ax.text(x, mean + above + 1, f"{mean:.1f}\nn={len(group.runs)}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(decoders)), [label(d) for d in decoders])
        ax.set_ylim(0, 125)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("test mIoU (%)")
        ax.set_title(f"{dataset} · {encoder}", fontsize=10)
        shown = [name for name in names if any(series(g) == name for g in mine)]
        handles = [Patch(color=colours[name], label=name) for name in shown]
        if any(g.label for g in mine):  # long names: one per line, below the bars
            ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=7)
        else:
            ax.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8)
    return figure


def validation_curves(groups: Sequence[Group]) -> Figure:
    """Validation mIoU against epoch: mean over seeds per group (band = 95 % interval of the mean, where
    two seeds or more reached the epoch); a panel per dataset x encoder."""
    pairs = pairs_of(groups)
    figure, axes = panels(pairs)
    for (dataset, encoder), ax in zip(pairs, axes):
        for group in (g for g in groups if (g.config.dataset, g.config.encoder) == (dataset, encoder)):
            by_epoch: dict[int, list[float]] = defaultdict(list)
            for run in group.runs:
                for epoch, value in run.curve:
                    by_epoch[epoch].append(100 * value)
            epochs = sorted(by_epoch)
            if not epochs:
                continue
            name = f"{label(group.config.decoder)} / {series(group)} (n={len(group.runs)})"
            spans = [interval(by_epoch[e]) for e in epochs]
            line = ax.plot(epochs, [mean for mean, _, _ in spans], marker=".", label=name)[0]
            ax.fill_between(epochs, [m - below for m, below, _ in spans], [m + above for m, _, above in spans],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("validation mIoU (%)")
        ax.set_title(f"{dataset} · {encoder}", fontsize=10)
        if ax.get_lines():
            ax.legend(fontsize=7, title="decoder / mode", title_fontsize=8)
        ax.grid(alpha=0.3)
    return figure


def miou_against_cost(groups: Sequence[Group]) -> Figure:
    """Test mIoU against training time and trainable parameters (mean and 95 % interval of the mean over
    seeds); a row per dataset.

    Colour = decoder, marker = mode; points are labelled with the encoder when there are several and
    with their settings where groups differ in them.
    """
    datasets = list(dict.fromkeys(g.config.dataset for g in groups))
    figure = Figure(figsize=(12, 4.2 * len(datasets)), layout="constrained")
    axes = figure.subplots(len(datasets), 2, squeeze=False)
    colours = {d: f"C{i % 10}" for i, d in enumerate(dict.fromkeys(g.config.decoder for g in groups))}
    several_encoders = len({g.config.encoder for g in groups}) > 1
    axes_kinds = (("train_time_s", "training time (s)", "{:g}".format), ("trainable_params", "trainable parameters", count))
    for row, dataset in zip(axes, datasets):
        for ax, (name, title, fmt) in zip(row, axes_kinds):
            for group in (g for g in groups if g.config.dataset == dataset and g.values(cost(name)) and g.values(test_miou)):
                (x, *x_error), (y, *y_error) = interval(group.values(cost(name))), interval(group.values(test_miou), 100)
                ax.errorbar(x, y, xerr=[[e] for e in x_error], yerr=[[e] for e in y_error],
                            marker=MODE_MARKERS.get(group.config.mode, "D"), color=colours[group.config.decoder],
                            capsize=3, linestyle="none")
                text = " · ".join(t for t in (group.config.encoder if several_encoders else "", group.label) if t)
                if text:
                    ax.annotate(text, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _, fmt=fmt: fmt(value)))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(f"{title}, log scale")
            ax.set_ylabel("test mIoU (%)")
            ax.set_title(f"{dataset}: test mIoU against {title}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
    handles = [Line2D([], [], color=c, marker="o", linestyle="none", label=label(d)) for d, c in colours.items()]
    modes = sorted({g.config.mode for g in groups}, key=lambda m: (mode_rank(m), m))
    handles += [Line2D([], [], color="grey", marker=MODE_MARKERS.get(m, "D"), linestyle="none", label=m) for m in modes]
    figure.legend(handles=handles, loc="outside right center", fontsize=8, title="decoder, mode", title_fontsize=8)
    return figure


def fraction_panels(groups: Sequence[Group]) -> list[tuple[str, str, str]]:
    """(dataset, encoder, mode) of the groups that ran with two label fractions or more."""
    fractions: dict[tuple[str, str, str], set[float]] = defaultdict(set)
    for group in groups:
        if group.values(test_miou):
            fractions[(group.config.dataset, group.config.encoder, group.config.mode)].add(group.train_fraction)
    return [panel for panel, used in fractions.items() if len(used) > 1]


def fraction_lines(members: Sequence[Group]) -> dict[str, list[Group]]:
    """A panel's lines (legend name -> groups by fraction): one per decoder and per value of the other
    settings that differ within the panel; the fraction makes the points of a line."""
    others = {id(g): {k: v for k, v in g.settings.items() if k != FRACTION} for g in members}
    varying = [k for k in dict.fromkeys(k for o in others.values() for k in o) if len({o.get(k) for o in others.values()}) > 1]
    lines: dict[str, list[Group]] = defaultdict(list)
    for group in members:
        name = " · ".join([label(group.config.decoder), *(f"{k}={others[id(group)].get(k)}" for k in varying)])
        lines[name].append(group)
    return {name: sorted(line, key=lambda g: g.train_fraction) for name, line in lines.items()}


def miou_against_label_fraction(groups: Sequence[Group]) -> Figure:
    """Test mIoU against the share of training labels (mean, band = 95 % interval of the mean); a panel
    per dataset x encoder x mode, a line per decoder (and other settings where groups differ in them)."""
    keys = fraction_panels(groups)
    figure, axes = panels(keys or [("", "", "")])
    for (dataset, encoder, mode), ax in zip(keys, axes):
        members = [g for g in groups if (g.config.dataset, g.config.encoder, g.config.mode) == (dataset, encoder, mode)]
        lines = fraction_lines([g for g in members if g.values(test_miou)])
        for name, line_groups in lines.items():
            x = [g.train_fraction for g in line_groups]
            spans = [interval(g.values(test_miou), 100) for g in line_groups]
            line = ax.plot(x, [m for m, _, _ in spans], marker="o", label=name)[0]
            ax.fill_between(x, [m - below for m, below, _ in spans], [m + above for m, _, above in spans],
                            color=line.get_color(), alpha=0.15, linewidth=0)
            if len(x) == 1:  # a band of one point has no width: its interval as an error bar
                ax.errorbar(x, [spans[0][0]], yerr=[[spans[0][1]], [spans[0][2]]], ecolor=line.get_color(), capsize=3, fmt="none")
        ax.set_xscale("log")  # fractions such as 0.01, 0.1, 1 are evenly apart
        used = sorted({g.train_fraction for line_groups in lines.values() for g in line_groups})
        ax.set_xticks(used, [f"{value:g}" for value in used])  # the fractions run, not decades
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("label fraction (dataset.train_fraction), log scale")
        ax.set_ylabel("test mIoU (%)")
        ax.set_title(f"{dataset} · {encoder} · {mode}", fontsize=10)
        ax.legend(fontsize=7, title="decoder", title_fontsize=8)
        ax.grid(alpha=0.3, which="both")
    return figure


PLOTS = {
    "miou_by_decoder_mode.png": miou_by_decoder_and_mode,
    "val_miou_curves.png": validation_curves,
    "miou_vs_cost.png": miou_against_cost,
}
FRACTION_PLOT = "miou_vs_label_fraction.png"  # only when some encoder and mode ran with several fractions


def write_plots(groups: Sequence[Group], output: Path) -> list[Path]:
    """Draw and save every plot into ``output``."""
    plots = {**PLOTS, **({FRACTION_PLOT: miou_against_label_fraction} if fraction_panels(groups) else {})}
    written = []
    for name, draw in plots.items():
        save(draw(groups), output / name)
        written.append(output / name)
    return written
