"""Per-group numbers of the report: mean ± std and bootstrap interval over seeds, and the test mIoU
normalised between the majority-class baseline (0) and the scratch UNet (1).

The majority-class mIoU comes from the test confusion matrix every completed run records (rows =
truth, so its row sums are the pixels of each class); the reference is the mean test mIoU of the
group whose encoder is ``unet`` on the same dataset and the same test split (the same class
supports), the one with the most labels (largest ``dataset.train_fraction``) if there are several,
so that every fraction is measured on one scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from benchmark.report.runs import Group, Run, number
from benchmark.report.stats import bootstrap_ci, majority_miou, mean, normalised, sample_std

REFERENCE_ENCODER = "unet"  # the scratch baseline normalised scores are measured against
Reader = Callable[[Run], float | None]


def split_metrics(run: Run, split: str) -> dict[str, Any]:
    metrics = getattr(run.result, split, None) if run.result is not None else None
    return metrics or {}


def metric(split: str, name: str, cls: str | None = None) -> Reader:
    """Reads a metric of a run (None when missing or NaN)."""

    def read(run: Run) -> float | None:
        value = split_metrics(run, split).get(name)
        if cls is not None:
            value = value.get(cls) if isinstance(value, dict) else None
        return number(value)

    return read


test_miou = metric("test", "mIoU")


@dataclass(frozen=True)
class Summary:
    """Values over seeds: their number, mean, sample std and 95 % bootstrap interval of the mean (NaN
    where undefined: no values, or one value for std and interval)."""

    n: int
    mean: float
    std: float
    lo: float
    hi: float


@lru_cache(maxsize=4096)
def _summary(values: tuple[float, ...]) -> Summary:
    return Summary(len(values), mean(values), sample_std(values), *bootstrap_ci(values))


def summarise(values: Iterable[float]) -> Summary:
    """The summary of ``values``; cached, as the tables and every plot ask for the same groups."""
    return _summary(tuple(values))


def class_support(run: Run) -> tuple[float, ...] | None:
    """Pixels of each class in the test truth (row sums of the test confusion matrix); None if not recorded."""
    try:
        matrix = np.asarray(split_metrics(run, "test").get("confusion_matrix"), dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.size == 0:
        return None
    return tuple(float(v) for v in matrix.sum(axis=1))


@dataclass(frozen=True)
class Baseline:
    """What a group's test mIoU is normalised with."""

    majority: float  # mIoU of predicting the most frequent class of its test split everywhere
    reference: Group  # the scratch UNet group of the same test split
    reference_miou: float  # its mean test mIoU

    def normalise(self, miou: float) -> float:
        return normalised(miou, self.majority, self.reference_miou)


def baselines(groups: Sequence[Group]) -> dict[tuple, Baseline]:
    """``Group.key`` -> its baseline, for the groups whose test split has a recorded confusion matrix
    and a UNet group on the same split."""
    found = {}
    supports = {g.key: class_support(g.runs[0]) for g in groups}
    for group in groups:
        support = supports[group.key]
        references = [
            g for g in groups
            if g.config.encoder == REFERENCE_ENCODER and g.config.dataset == group.config.dataset
            and supports[g.key] == support and g.values(test_miou)
        ]
        if support is None or not references:
            continue
        reference = max(references, key=lambda g: g.train_fraction)  # the first of the largest fraction
        majority = majority_miou(support)
        found[group.key] = Baseline(majority, reference, summarise(reference.values(test_miou)).mean)
    return found


def normalised_reader(groups: Sequence[Group], found: dict[tuple, Baseline]) -> Reader | None:
    """Reads a run's normalised test mIoU (None without a baseline or where undefined); None if no
    group has a baseline."""
    by_folder = {run.folder: found[g.key] for g in groups if g.key in found for run in g.runs}
    if not by_folder:
        return None

    def read(run: Run) -> float | None:
        miou = test_miou(run)
        baseline = by_folder.get(run.folder)
        return None if miou is None or baseline is None else number(baseline.normalise(miou))

    return read


def baseline_notes(groups: Sequence[Group], found: dict[tuple, Baseline]) -> list[str]:
    """One sentence per distinct baseline of ``groups``, for the text above a dataset's table."""
    notes: dict[str, None] = {}
    for group in groups:
        if group.key not in found:
            continue
        b = found[group.key]
        ref = b.reference
        named = " / ".join((ref.config.encoder, ref.config.decoder, ref.config.mode, *([ref.label] if ref.label else [])))
        notes[
            f"norm. mIoU = (mIoU − majority) / (reference − majority): 0 = the majority class everywhere "
            f"(mIoU {100 * b.majority:.2f} % on this test split), 1 = the scratch UNet `{named}` "
            f"(mean test mIoU {100 * b.reference_miou:.2f} %, n = {len(ref.runs)})."
        ] = None
    return list(notes)


def summary_columns(prefix: str, summary: Summary | None) -> dict[str, float | None]:
    """A summary as csv columns ``<prefix>_mean/_std/_ci95_lo/_ci95_hi`` (empty where undefined)."""
    fields = ("mean", "std", "ci95_lo", "ci95_hi")
    values = (summary.mean, summary.std, summary.lo, summary.hi) if summary is not None else (None,) * 4
    return {f"{prefix}_{name}": number(value) for name, value in zip(fields, values)}


def group_columns(group: Group | None, classes: Sequence[str], found: dict[tuple, Baseline]) -> dict[str, Any]:
    """The csv columns of a run's group: seeds, then mean, std and interval of test mIoU, per-class
    IoU and normalised mIoU (empty for runs outside the means)."""
    summaries: dict[str, Summary | None] = {"group_test_mIoU": None, **{f"group_test_IoU_{c}": None for c in classes}}
    summaries["group_norm_mIoU"] = None
    columns: dict[str, Any] = {"group_n": len(group.runs) if group is not None else None}
    baseline = found.get(group.key) if group is not None else None
    columns["majority_mIoU"] = baseline.majority if baseline is not None else None
    columns["reference_mIoU"] = baseline.reference_miou if baseline is not None else None
    if group is not None:
        summaries["group_test_mIoU"] = summarise(group.values(test_miou))
        summaries.update({f"group_test_IoU_{c}": summarise(group.values(metric("test", "IoU", c))) for c in classes})
        if baseline is not None:
            scores = [number(baseline.normalise(v)) for v in group.values(test_miou)]
            summaries["group_norm_mIoU"] = summarise(v for v in scores if v is not None)
    for prefix, summary in summaries.items():
        columns.update(summary_columns(prefix, summary))
    return columns
