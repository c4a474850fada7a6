"""``leaderboard.csv`` (one row per run folder) and ``leaderboard.md`` (one row per experiment)."""

from __future__ import annotations

import csv
import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from benchmark.report.runs import CROPS, JOB_FIELDS, OTHER_CHOICES, Group, Run, crop_protocol, differences, number
from benchmark.results import CLASS_METRICS, SCALAR_METRICS, Cost

CSV_JOB_COLUMNS = (*JOB_FIELDS, *OTHER_CHOICES, "train_crop_stride", "settings", "settings_hash")
CONFIG_COLUMNS = ("best_epoch", "n_epochs", "world_size", "device", "encoder_weights")
COST_COLUMNS = tuple(f.name for f in dataclasses.fields(Cost))
MISSING = "–"  # a value that is missing or undefined (NaN)


def split_metrics(run: Run, split: str) -> dict[str, Any]:
    metrics = getattr(run.result, split, None) if run.result is not None else None
    return metrics or {}


def class_names(runs: Iterable[Run]) -> list[str]:
    """The classes of all runs' test metrics, in order of first appearance."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(split_metrics(run, "test").get("IoU") or {}))
    return list(names)


# --------------------------------------------------------------------------------------------------
# leaderboard.csv


def csv_row(run: Run, classes: Sequence[str]) -> dict[str, Any]:
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
    row.update({"run_dir": str(run.folder), "note": run.note})
    return row


def write_csv(runs: Sequence[Run], path: Path) -> None:
    classes = class_names(runs)
    rows = [csv_row(run, classes) for run in runs]
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
    """Reads a metric of a run (None when missing or NaN)."""

    def read(run: Run) -> float | None:
        value = split_metrics(run, split).get(name)
        if cls is not None:
            value = value.get(cls) if isinstance(value, dict) else None
        return number(value)

    return read


def cost(name: str) -> Callable[[Run], float | None]:
    return lambda run: number(getattr(run.result.cost, name, None)) if run.result is not None else None


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
        return MISSING
    mean, std = mean_std(values)
    text = column.fmt(mean)
    if column.with_std and std is not None:
        text += f" ± {column.fmt(std)}"
    return f"**{text}**" if best is not None and mean == best else text


def setting_titles(groups: Sequence[Group]) -> list[str]:
    """The settings columns of a dataset's table: where its groups differ, the crop protocol always last."""
    names = dict.fromkeys(name for g in groups for name in g.settings)
    names.pop(CROPS, None)
    return [*names, CROPS]


def dataset_table(groups: Sequence[Group], classes: Sequence[str]) -> list[str]:
    cols = columns(classes)
    means = [[mean_std(vs)[0] if (vs := g.values(c.read)) else None for c in cols] for g in groups]
    best = []
    for i, column in enumerate(cols):
        present = [row[i] for row in means if row[i] is not None]
        best.append((max if column.higher_is_better else min)(present) if present and len(groups) > 1 else None)
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
    "(n = number of seeds); val mIoU = best validation mIoU; – = undefined (NaN) or not recorded. "
    "A row is one experiment: runs are averaged only when everything but the seed is the same "
    "(every config group, mode, settings overrides, training-crop protocol); the columns between mode "
    "and n show the settings in which a dataset's rows differ, the line above the table those they "
    f"share. {CROPS}: random = one encoder-size crop anywhere in the tile per epoch (train_crop_stride=1, "
    "PANGAEA); grid N = crops start on an N-pixel grid. Best value per column in **bold** (cost "
    "columns: lowest; images/s: highest). Train time and images/s count the training epochs only "
    "(building a frozen encoder's feature cache, when used, is a csv column of its own); peak memory "
    "is GPU memory on CUDA, the process's peak RSS on CPU."
)


def markdown(runs: Sequence[Run], groups: Sequence[Group]) -> str:
    lines = ["# Leaderboard", "", PREAMBLE]
    for dataset in dict.fromkeys(g.config.dataset for g in groups):
        in_dataset = [g for g in groups if g.config.dataset == dataset]
        classes = class_names(run for g in in_dataset for run in g.runs)
        _, shared = differences(in_dataset)
        same = ", ".join(f"`{name}={value}`" for name, value in shared.items() if name != CROPS)
        lines += ["", f"## {dataset}", ""]
        lines += [f"Same in all rows: {escape(same)}.", ""] if same else []
        lines += dataset_table(in_dataset, classes)
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
