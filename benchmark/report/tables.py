"""``leaderboard.csv`` (one row per run folder) and ``leaderboard.md`` (one row per experiment)."""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from benchmark.report.iqm import iqm_table
from benchmark.report.runs import (
    CROPS, FRACTION, JOB_FIELDS, OTHER_CHOICES, Group, Run, crop_protocol, differences, group_runs, number,
)
from benchmark.report.scores import (
    Baseline, Reader, baseline_notes, baselines, group_columns, metric, normalised_reader, split_metrics, summarise,
    test_miou,
)
from benchmark.report.stats import DEFAULT_RESAMPLES, mean, sample_std
from benchmark.results import CLASS_METRICS, SCALAR_METRICS, Cost

CSV_JOB_COLUMNS = (*JOB_FIELDS, *OTHER_CHOICES, "train_crop_stride", "train_fraction", "settings", "settings_hash")
CONFIG_COLUMNS = ("best_epoch", "n_epochs", "world_size", "device", "encoder_weights")
COST_COLUMNS = tuple(f.name for f in dataclasses.fields(Cost))
MISSING = "–"  # a value that is missing or undefined (NaN)


def class_names(runs: Iterable[Run]) -> list[str]:
    """The classes of all runs' test metrics, in order of first appearance."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(split_metrics(run, "test").get("IoU") or {}))
    return list(names)


# --------------------------------------------------------------------------------------------------
# leaderboard.csv


def csv_row(run: Run, classes: Sequence[str], group: Group | None, found: dict[tuple, Baseline]) -> dict[str, Any]:
    """The run's own numbers, then those of its group (empty for runs outside the means)."""
    result = run.result
    config, cost = (result.config, result.cost) if result is not None else (None, None)
    row: dict[str, Any] = {"status": run.status, **{k: run.job.get(k) for k in CSV_JOB_COLUMNS}}
    row.update({k: getattr(result if k == "best_epoch" else config, k, None) for k in CONFIG_COLUMNS})
    for split in ("test", "val"):
        row.update({f"{split}_{m}": split_metrics(run, split).get(m) for m in SCALAR_METRICS})
    for metric in CLASS_METRICS:
        per_class = split_metrics(run, "test").get(metric) or {}
        row.update({f"test_{metric}_{c}": per_class.get(c) for c in classes})
    row.update({k: getattr(cost, k, None) for k in COST_COLUMNS})
    miou, baseline = test_miou(run), found.get(group.key) if group is not None else None
    row["norm_mIoU"] = number(baseline.normalise(miou)) if baseline is not None and miou is not None else None
    row.update(group_columns(group, classes, found))
    row.update({"run_dir": str(run.folder), "note": run.note})
    return row


def write_csv(runs: Sequence[Run], path: Path, groups: Sequence[Group] | None = None) -> None:
    """One row per run folder; ``groups``: those of ``runs`` (grouped here when not given)."""
    classes = class_names(runs)
    groups = group_runs(runs) if groups is None else groups
    by_folder = {run.folder: group for group in groups for run in group.runs}
    found = baselines(groups)
    rows = [csv_row(run, classes, by_folder.get(run.folder), found) for run in runs]
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
    interval: bool = False  # the 95 % bootstrap interval of the mean instead of mean ± std


def cost(name: str) -> Callable[[Run], float | None]:
    return lambda run: number(getattr(run.result.cost, name, None)) if run.result is not None else None


def percent(value: float) -> str:
    return f"{100 * value:.2f}"


def count(value: float) -> str:
    """Parameter counts: 1.23 M, 45.6 k, 789."""
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    return f"{value / 1e3:.1f} k" if value >= 1e3 else f"{value:.0f}"


def columns(classes: Sequence[str], read_norm: Reader | None = None) -> list[Column]:
    """The numbers of a dataset's table; normalised mIoU where its groups have a baseline."""
    normalised = [Column("norm. mIoU", read_norm, lambda v: f"{v:.2f}", True)] if read_norm is not None else []
    return [
        Column("test mIoU", metric("test", "mIoU"), percent, True),
        Column("test mIoU 95% CI", metric("test", "mIoU"), percent, True, interval=True),
        *normalised,
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
    return mean(values), sample_std(values) if len(values) > 1 else None


def cell(values: Sequence[float], column: Column, best: float | None) -> str:
    if not values:
        return MISSING
    if column.interval:
        summary = summarise(values)
        return MISSING if math.isnan(summary.lo) else f"[{column.fmt(summary.lo)}, {column.fmt(summary.hi)}]"
    average, std = mean_std(values)
    text = column.fmt(average)
    if column.with_std and std is not None:
        text += f" ± {column.fmt(std)}"
    return f"**{text}**" if best is not None and average == best else text


def setting_titles(groups: Sequence[Group]) -> list[str]:
    """The settings columns of a dataset's table: where its groups differ, the crop protocol always last."""
    names = dict.fromkeys(name for g in groups for name in g.settings)
    names.pop(CROPS, None)
    return [*names, CROPS]


def dataset_table(groups: Sequence[Group], classes: Sequence[str], read_norm: Reader | None = None) -> list[str]:
    cols = columns(classes, read_norm)
    means = [[mean_std(vs)[0] if (vs := g.values(c.read)) else None for c in cols] for g in groups]
    best = []
    for i, column in enumerate(cols):
        present = [row[i] for row in means if row[i] is not None]
        ranked = present and len(groups) > 1 and not column.interval  # an interval is never "best"
        best.append((max if column.higher_is_better else min)(present) if ranked else None)
    settings = setting_titles(groups)
    header = ["encoder", "decoder", "mode", *settings, "n", *(c.title for c in cols)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * (4 + len(settings)) + "---:|" * len(cols)]
    for group in groups:
        named = [group.config.encoder, group.config.decoder, group.config.mode]
        shown = [escape(group.settings.get(name, "")) for name in settings[:-1]]
        crops = crop_protocol(group.config.train_crop_stride)
        cells = [cell(group.values(c.read), c, best[i]) for i, c in enumerate(cols)]
        lines.append("| " + " | ".join([*named, *shown, crops, str(len(group.runs)), *cells]) + " |")
    return lines


def escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


PREAMBLE = (
    "Test metrics of each run's best-validation checkpoint in %, as mean ± sample std over seeds "
    "(n = number of seeds); test mIoU 95% CI = percentile bootstrap interval of the mean test mIoU (the seeds "
    f"resampled with replacement {DEFAULT_RESAMPLES:,} times; – for one seed; with 2 or 3 seeds "
    "it is their range); norm. mIoU (where a scratch `unet` group ran on the same test split) = "
    "0 at the majority-class baseline, 1 at that UNet; val mIoU = best validation mIoU; – = undefined "
    "(NaN) or not recorded. "
    "A row is one experiment: runs are averaged only when everything but the seed is the same "
    "(every config group, mode, settings overrides, training-crop protocol, label fraction); the columns between mode "
    "and n show the settings in which a dataset's rows differ, the line above the table those they "
    f"share. {CROPS}: random = one encoder-size crop anywhere in the tile per epoch (train_crop_stride=1, "
    "PANGAEA); grid N = crops start on an N-pixel grid. Best value per column in **bold** (cost "
    "columns: lowest; images/s: highest). Train time and images/s count the training epochs only "
    "(building a frozen encoder's feature cache, when used, is a csv column of its own); peak memory "
    "is GPU memory on CUDA, the process's peak RSS on CPU."
)


def markdown(runs: Sequence[Run], groups: Sequence[Group]) -> str:
    lines = ["# Leaderboard", "", PREAMBLE]
    found = baselines(groups)
    for dataset in dict.fromkeys(g.config.dataset for g in groups):
        in_dataset = [g for g in groups if g.config.dataset == dataset]
        classes = class_names(run for g in in_dataset for run in g.runs)
        _, shared = differences(in_dataset)
        shown = {name: value for name, value in shared.items() if name != CROPS and (name, value) != (FRACTION, "1")}
        same = ", ".join(f"`{name}={value}`" for name, value in shown.items())
        lines += ["", f"## {dataset}", ""]
        lines += [f"Same in all rows: {escape(same)}.", ""] if same else []
        notes = baseline_notes(in_dataset, found)
        lines += [*notes, ""] if notes else []
        lines += dataset_table(in_dataset, classes, normalised_reader(in_dataset, found))
    lines += iqm_table(groups, normalised_reader(groups, found))
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
            job = " | ".join(str(run.job.get(k)) for k in JOB_FIELDS)
            lines.append(f"| {run.status} | {job} | {run.folder} | {escape(run.note[:200])} |")
    return "\n".join(lines) + "\n"
