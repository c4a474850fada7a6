"""Sweep results -> leaderboard and plots: ``python -m benchmark.report DIR... [--output OUT]``.

Every run folder below the given folders is collected (a folder holding ``results.json``,
``config.yaml``, ``metrics.jsonl`` or ``checkpoints/``). Completed runs feed the leaderboard; failed
runs, incomplete ones (no ``results.json``: interrupted or still running) and older repeats of a job
(same dataset, encoder, decoder, mode and seed: only the newest counts) are listed as such. Writes:

- ``leaderboard.csv``: one row per run folder (status, config, test and validation metrics,
  per-class test metrics, cost);
- ``leaderboard.md``: per dataset, one row per encoder x decoder x mode with mean ± std over seeds
  and the number of seeds, best value per column in bold; then the runs left out of the means;
- ``miou_by_decoder_mode.png``, ``val_miou_curves.png``, ``miou_vs_cost.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

RUN_MARKERS = ("results.json", "config.yaml", "metrics.jsonl", "checkpoints")
JOB_FIELDS = ("dataset", "encoder", "decoder", "mode", "seed")
GROUP_FIELDS = ("dataset", "encoder", "decoder", "mode")
SCALAR_METRICS = ("mIoU", "mF1", "mPrecision", "mRecall", "oAcc", "mAcc")
CLASS_METRICS = ("IoU", "F1", "Precision", "Recall")
CONFIG_COLUMNS = ("best_epoch", "n_epochs", "world_size", "device", "preprocessing", "encoder_weights")
# Display order of known names; others follow alphabetically.
ORDER = {
    "decoder": ("seg_linear", "seg_fcn", "seg_upernet", "seg_segformer", "seg_muster"),
    "mode": ("frozen", "unfrozen", "random"),
}


class ReportError(RuntimeError):
    """The folders hold nothing to report on."""


@dataclass
class Run:
    """One run folder and what it holds."""

    folder: Path
    status: str  # completed | failed | incomplete | superseded
    job: dict[str, Any]  # JOB_FIELDS (``?`` where unknown)
    results: dict[str, Any] = field(default_factory=dict)
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, val mIoU)
    note: str = ""

    @property
    def group(self) -> tuple[str, ...]:
        return tuple(str(self.job[k]) for k in GROUP_FIELDS)


@dataclass
class Group:
    """The counted runs of one dataset x encoder x decoder x mode, one per seed."""

    key: tuple[str, ...]
    runs: list[Run]

    def values(self, column: Callable[[Run], float | None]) -> list[float]:
        return [v for v in (column(run) for run in self.runs) if v is not None]


# --------------------------------------------------------------------------------------------------
# Collecting runs


def find_run_folders(roots: Sequence[Path]) -> list[Path]:
    """Run folders below ``roots`` (not searched further: checkpoints/ and wandb/ are theirs)."""
    found: dict[Path, None] = {}
    for root in roots:
        if not root.is_dir():
            raise ReportError(f"{root} is not a folder")
        for dirpath, dirnames, _ in os.walk(root):
            if any(os.path.exists(os.path.join(dirpath, marker)) for marker in RUN_MARKERS):
                found[Path(dirpath).resolve()] = None
                dirnames.clear()
            dirnames.sort()
    return list(found)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def job_from_config(folder: Path) -> dict[str, Any]:
    """The job fields of a run without (usable) results, from its ``config.yaml``."""
    job: dict[str, Any] = {k: "?" for k in JOB_FIELDS}
    path = folder / "config.yaml"
    if path.is_file():
        cfg = OmegaConf.load(path)
        choices = cfg.get("choices", {})
        job.update({k: choices[k] for k in ("dataset", "encoder", "decoder") if k in choices})
        job.update({k: cfg[k] for k in ("mode", "seed") if k in cfg})
    return job


def read_run(folder: Path) -> Run:
    """Status, job and results of one run folder."""
    epochs = read_jsonl(folder / "metrics.jsonl")
    curve = [(int(line["epoch"]), float(line["mIoU"])) for line in epochs if line.get("split") == "val"]
    path = folder / "results.json"
    if not path.is_file():
        done = f"last finished epoch {epochs[-1]['epoch']}" if epochs else "no epoch finished"
        return Run(folder, "incomplete", job_from_config(folder), curve=curve, note=f"no results.json (interrupted or still running); {done}")
    results = json.loads(path.read_text())
    status = str(results.get("status", "unknown"))
    if status != "completed":
        return Run(folder, status, job_from_config(folder), results, curve, str(results.get("error", "")))
    job = {k: results["config"][k] for k in JOB_FIELDS}
    return Run(folder, status, job, results, curve)


def mark_superseded(runs: list[Run]) -> None:
    """Keep the newest completed run of each job; older completed repeats become ``superseded``."""
    by_job: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        if run.status == "completed":
            by_job[tuple(run.job[k] for k in JOB_FIELDS)].append(run)
    for repeats in by_job.values():
        repeats.sort(key=lambda run: (run.folder / "results.json").stat().st_mtime_ns)
        for old in repeats[:-1]:
            old.status = "superseded"
            old.note = f"newer run of the same job: {repeats[-1].folder}"


def collect(roots: Sequence[Path]) -> list[Run]:
    """All runs below ``roots``, in display order."""
    folders = find_run_folders(roots)
    if not folders:
        listed = ", ".join(str(root) for root in roots)
        raise ReportError(f"no run folders (holding any of {', '.join(RUN_MARKERS)}) found under {listed}")
    runs = [read_run(folder) for folder in folders]
    mark_superseded(runs)
    return sorted(runs, key=lambda run: (*sort_key(run.group), str(run.job["seed"]), str(run.folder)))


def sort_key(group: tuple[str, ...]) -> tuple:
    key: list[Any] = []
    for name, value in zip(GROUP_FIELDS, group):
        order = ORDER.get(name, ())
        key.append((order.index(value) if value in order else len(order), value))
    return tuple(key)


def group_runs(runs: Iterable[Run]) -> list[Group]:
    """Completed runs by dataset x encoder x decoder x mode, in display order."""
    groups: dict[tuple[str, ...], list[Run]] = defaultdict(list)
    for run in runs:
        if run.status == "completed":
            groups[run.group].append(run)
    return [Group(key, groups[key]) for key in sorted(groups, key=sort_key)]


# --------------------------------------------------------------------------------------------------
# leaderboard.csv


def union(runs: Iterable[Run], keys: Callable[[Run], Iterable[str]]) -> list[str]:
    """The keys of all runs, in order of first appearance."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(keys(run)))
    return list(names)


def class_names(runs: Iterable[Run]) -> list[str]:
    return union(runs, lambda run: run.results.get("test", {}).get("IoU", {}))


def csv_row(run: Run, classes: Sequence[str], cost_columns: Sequence[str]) -> dict[str, Any]:
    results, config, cost = run.results, run.results.get("config", {}), run.results.get("cost", {})
    row: dict[str, Any] = {"status": run.status, **run.job}
    row.update({k: results.get(k, config.get(k)) for k in CONFIG_COLUMNS})
    for split in ("test", "val"):
        row.update({f"{split}_{m}": results.get(split, {}).get(m) for m in SCALAR_METRICS})
    for metric in CLASS_METRICS:
        row.update({f"test_{metric}_{c}": results.get("test", {}).get(metric, {}).get(c) for c in classes})
    row.update({k: cost.get(k) for k in cost_columns})
    row.update({"run_dir": str(run.folder), "note": run.note})
    return row


def write_csv(runs: Sequence[Run], path: Path) -> None:
    classes, cost_columns = class_names(runs), union(runs, lambda run: run.results.get("cost", {}))
    rows = [csv_row(run, classes, cost_columns) for run in runs]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------------
# leaderboard.md


@dataclass(frozen=True)
class Column:
    """A leaderboard column: how to read it from a run, how to show it, which way is better."""

    title: str
    read: Callable[[Run], float | None]
    fmt: Callable[[float], str]
    higher_is_better: bool
    with_std: bool = True


def metric(split: str, name: str, cls: str | None = None) -> Callable[[Run], float | None]:
    def read(run: Run) -> float | None:
        value = run.results.get(split, {}).get(name)
        return value.get(cls) if cls is not None and value is not None else value

    return read


def cost(name: str) -> Callable[[Run], float | None]:
    return lambda run: run.results.get("cost", {}).get(name)


def percent(value: float) -> str:
    return f"{100 * value:.2f}"


def count(value: float) -> str:
    """Parameter counts: 1.23 M, 45.6 k, 789."""
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    return f"{value / 1e3:.1f} k" if value >= 1e3 else f"{value:.0f}"


def columns(classes: Sequence[str]) -> list[Column]:
    return [
        Column("test mIoU", metric("test", "mIoU"), percent, True),
        *(Column(f"IoU {c}", metric("test", "IoU", c), percent, True) for c in classes),
        Column("mF1", metric("test", "mF1"), percent, True),
        Column("oAcc", metric("test", "oAcc"), percent, True),
        Column("mAcc", metric("test", "mAcc"), percent, True),
        Column("val mIoU", metric("val", "mIoU"), percent, True),
        Column("trainable params", cost("trainable_params"), count, False, with_std=False),
        Column("train time (s)", cost("train_time_s"), lambda v: f"{v:.1f}", False),
        Column("train images/s", cost("train_images_per_s"), lambda v: f"{v:.1f}", True),
        Column("peak memory (MB)", cost("peak_memory_mb"), lambda v: f"{v:.0f}", False, with_std=False),
    ]


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def cell(values: Sequence[float], column: Column, best: float | None) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    text = column.fmt(mean)
    if column.with_std and std is not None:
        text += f" ± {column.fmt(std)}"
    return f"**{text}**" if best is not None and mean == best else text


def dataset_table(groups: Sequence[Group], classes: Sequence[str]) -> list[str]:
    cols = columns(classes)
    means = [[mean_std(vs)[0] if (vs := g.values(c.read)) else None for c in cols] for g in groups]
    best = []
    for i, column in enumerate(cols):
        present = [row[i] for row in means if row[i] is not None and not math.isnan(row[i])]
        best.append((max if column.higher_is_better else min)(present) if present and len(groups) > 1 else None)
    header = ["encoder", "decoder", "mode", "n", *(c.title for c in cols)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 4 + "---:|" * len(cols)]
    for group in groups:
        cells = [cell(group.values(c.read), c, best[i]) for i, c in enumerate(cols)]
        lines.append("| " + " | ".join([*group.key[1:], str(len(group.runs)), *cells]) + " |")
    return lines


def escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def markdown(runs: Sequence[Run], groups: Sequence[Group]) -> str:
    lines = [
        "# Leaderboard",
        "",
        "Test metrics of each run's best-validation checkpoint in %, as mean ± sample std over seeds "
        "(n = number of seeds); val mIoU = best validation mIoU. Best value per column in **bold** "
        "(cost columns: lowest; images/s: highest). Train time and images/s count the training "
        "epochs only (building a frozen encoder's feature cache, when used, is a csv column of its "
        "own); peak memory is GPU memory on CUDA, the process's peak RSS on CPU.",
    ]
    for dataset in dict.fromkeys(g.key[0] for g in groups):
        in_dataset = [g for g in groups if g.key[0] == dataset]
        classes = class_names(run for g in in_dataset for run in g.runs)
        lines += ["", f"## {dataset}", "", *dataset_table(in_dataset, classes)]
    left_out = [run for run in runs if run.status != "completed"]
    if left_out:
        lines += [
            "",
            "## Runs not in the means",
            "",
            "| status | dataset | encoder | decoder | mode | seed | run folder | detail |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for run in left_out:
            detail = escape(run.note[:200])
            lines.append(f"| {run.status} | " + " | ".join(str(run.job[k]) for k in JOB_FIELDS) + f" | {run.folder} | {detail} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Plots


def label(name: str) -> str:
    return name.removeprefix("seg_")


def panels(keys: Sequence[tuple[str, ...]], width: float = 5.5, height: float = 3.8) -> tuple[Figure, list[Any]]:
    """A figure with one axes per key (at most 3 per row)."""
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, layout="constrained")
    flat = list(axes.flat)
    for extra in flat[len(keys):]:
        extra.set_visible(False)
    return figure, flat[: len(keys)]


def save(figure: Figure, path: Path) -> None:
    figure.savefig(path, dpi=90)
    plt.close(figure)


def mode_order(modes: Iterable[str]) -> list[str]:
    return sorted(set(modes), key=lambda mode: sort_key(("", "", "", mode)))


def plot_miou_by_decoder_and_mode(groups: Sequence[Group], path: Path) -> None:
    """Bars: test mIoU per decoder, one bar per mode, error bar = std over seeds; a panel per dataset x encoder."""
    test_miou = metric("test", "mIoU")
    pairs = list(dict.fromkeys(g.key[:2] for g in groups))
    modes = mode_order(g.key[3] for g in groups)
    colours = {mode: f"C{i}" for i, mode in enumerate(modes)}
    figure, axes = panels(pairs)
    for (dataset, encoder), ax in zip(pairs, axes):
        mine = [g for g in groups if g.key[:2] == (dataset, encoder)]
        decoders = list(dict.fromkeys(g.key[2] for g in mine))
        width = 0.8 / max(sum(g.key[2] == d for g in mine) for d in decoders)
        for i, decoder in enumerate(decoders):
            bars = sorted((g for g in mine if g.key[2] == decoder), key=lambda g: modes.index(g.key[3]))
            for j, group in enumerate(bars):  # the decoder's bars centred on its tick
                x = i + (j - (len(bars) - 1) / 2) * width
                mean, std = mean_std(group.values(test_miou))
                error = 100 * std if std is not None else 0.0
                ax.bar(x, 100 * mean, width, yerr=error, capsize=3, color=colours[group.key[3]])
                ax.text(x, 100 * mean + error + 1, f"{100 * mean:.1f}\nn={len(group.runs)}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(decoders)), [label(d) for d in decoders])
        ax.set_ylim(0, 125)
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel("test mIoU (%)")
        ax.set_title(f"{dataset} · {encoder}", fontsize=10)
        handles = [Patch(color=colours[m], label=m) for m in mode_order(g.key[3] for g in mine)]
        ax.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8)
    save(figure, path)


def plot_validation_curves(groups: Sequence[Group], path: Path) -> None:
    """Validation mIoU against epoch: mean over seeds per group (band = min..max); a panel per dataset x encoder."""
    pairs = list(dict.fromkeys(g.key[:2] for g in groups))
    figure, axes = panels(pairs)
    for (dataset, encoder), ax in zip(pairs, axes):
        for group in (g for g in groups if g.key[:2] == (dataset, encoder)):
            by_epoch: dict[int, list[float]] = defaultdict(list)
            for run in group.runs:
                for epoch, value in run.curve:
                    by_epoch[epoch].append(100 * value)
            epochs = sorted(by_epoch)
            if not epochs:
                continue
            line = ax.plot(epochs, [statistics.fmean(by_epoch[e]) for e in epochs], marker=".",
                           label=f"{label(group.key[2])} / {group.key[3]} (n={len(group.runs)})")[0]
            ax.fill_between(epochs, [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("validation mIoU (%)")
        ax.set_title(f"{dataset} · {encoder}", fontsize=10)
        ax.legend(fontsize=7, title="decoder / mode", title_fontsize=8)
        ax.grid(alpha=0.3)
    save(figure, path)


MODE_MARKERS = {"frozen": "o", "unfrozen": "s", "random": "^"}


def plot_miou_against_cost(groups: Sequence[Group], path: Path) -> None:
    """Test mIoU against training time and trainable parameters (mean ± std over seeds); a row per dataset.

    Colour = decoder, marker = mode; points are labelled with the encoder when there are several.
    """
    test_miou = metric("test", "mIoU")
    datasets = list(dict.fromkeys(g.key[0] for g in groups))
    figure, axes = plt.subplots(len(datasets), 2, figsize=(12, 4.2 * len(datasets)), squeeze=False, layout="constrained")
    colours = {d: f"C{i}" for i, d in enumerate(dict.fromkeys(g.key[2] for g in groups))}
    several_encoders = len({g.key[1] for g in groups}) > 1
    for row, dataset in zip(axes, datasets):
        axes_of_row = zip(row, (("train_time_s", "training time (s)", "{:g}".format), ("trainable_params", "trainable parameters", count)))
        for ax, (name, title, fmt) in axes_of_row:
            for group in (g for g in groups if g.key[0] == dataset and g.values(cost(name))):
                (x, x_std), (y, y_std) = mean_std(group.values(cost(name))), mean_std(group.values(test_miou))
                ax.errorbar(x, 100 * y, xerr=x_std, yerr=100 * y_std if y_std is not None else None,
                            marker=MODE_MARKERS.get(group.key[3], "D"), color=colours[group.key[2]], capsize=3, linestyle="none")
                if several_encoders:
                    ax.annotate(group.key[1], (x, 100 * y), fontsize=7, xytext=(4, 4), textcoords="offset points")
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _, fmt=fmt: fmt(value)))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(f"{title}, log scale")
            ax.set_ylabel("test mIoU (%)")
            ax.set_title(f"{dataset}: test mIoU against {title}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
    handles = [Line2D([], [], color=c, marker="o", linestyle="none", label=label(d)) for d, c in colours.items()]
    handles += [Line2D([], [], color="grey", marker=MODE_MARKERS.get(m, "D"), linestyle="none", label=m)
                for m in mode_order(g.key[3] for g in groups)]
    figure.legend(handles=handles, loc="outside right center", fontsize=8, title="decoder, mode", title_fontsize=8)
    save(figure, path)


# --------------------------------------------------------------------------------------------------
# Entry point


def write_report(roots: Sequence[Path], output: Path) -> list[Path]:
    """Collect the runs below ``roots`` and write the leaderboard and plots into ``output``."""
    runs = collect(roots)
    groups = group_runs(runs)
    output.mkdir(parents=True, exist_ok=True)
    written = [output / "leaderboard.csv", output / "leaderboard.md"]
    write_csv(runs, written[0])
    written[1].write_text(markdown(runs, groups))
    if groups:
        plots = {
            "miou_by_decoder_mode.png": plot_miou_by_decoder_and_mode,
            "val_miou_curves.png": plot_validation_curves,
            "miou_vs_cost.png": plot_miou_against_cost,
        }
        for name, plot in plots.items():
            plot(groups, output / name)
            written.append(output / name)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmark.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="folders searched for run folders (e.g. a sweep's work_dir)")
    parser.add_argument("--output", "-o", type=Path, help="where the report goes (default: the first folder)")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.dirs, args.output or args.dirs[0])
    except ReportError as error:
        sys.exit(f"error: {error}")
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
