"""The second table of ``leaderboard.md``: the interquartile mean (IQM) of test mIoU over the tasks of
one encoder and mode, with a stratified bootstrap interval (Agarwal et al. 2021).

A task (stratum) is one group of the leaderboard: the groups of an encoder and mode differ in decoder
(the decoder sweep) or dataset, whichever varies. Groups of another label fraction are pooled
separately: training on fewer labels is a harder task, not another draw of the same one. Only
encoders and modes with two tasks or more get a row: the IQM of one task is a trimmed mean over a
handful of seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from benchmark.report.runs import ORDER, Group
from benchmark.report.scores import Reader, test_miou
from benchmark.report.stats import DEFAULT_RESAMPLES, iqm, stratified_iqm_ci

TITLE = "Interquartile mean over tasks"
MISSING = "–"
TEXT_COLUMNS = ("encoder · mode", "over")  # left-aligned; numbers to the right


@dataclass
class Pool:
    """The groups of one encoder, mode and label fraction."""

    encoder: str
    mode: str
    fraction: float
    groups: list[Group]

    @property
    def over(self) -> str:
        """What tells its tasks apart: decoder, dataset or both; "settings" too where that is not all."""
        pairs = [(g.config.dataset, g.config.decoder) for g in self.groups]
        names = [name for i, name in enumerate(("dataset", "decoder")) if len({p[i] for p in pairs}) > 1]
        if len(set(pairs)) < len(pairs):  # e.g. one decoder from two sweeps with other overrides
            names.append("settings")
        return ", ".join(names)


def pools(groups: Sequence[Group]) -> list[Pool]:
    """The pools of two tasks or more, by encoder, then mode in display order, then fraction."""
    found: dict[tuple, Pool] = {}
    for group in groups:
        key = (group.config.encoder, group.config.mode, group.train_fraction)
        found.setdefault(key, Pool(*key, [])).groups.append(group)
    modes = ORDER["mode"]
    rank = {mode: i for i, mode in enumerate(modes)}
    kept = [p for p in found.values() if len(p.groups) > 1]
    return sorted(kept, key=lambda p: (p.encoder, rank.get(p.mode, len(modes)), p.mode, p.fraction))


def cells(strata: list[list[float]], scale: float, digits: int) -> list[str]:
    """IQM of all values and its stratified-bootstrap interval, as two cells."""
    values = [v for stratum in strata for v in stratum]
    if not values:
        return [MISSING, MISSING]
    lo, hi = stratified_iqm_ci(strata)
    interval = MISSING if math.isnan(lo) else f"[{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"
    return [f"{scale * iqm(values):.{digits}f}", interval]


def iqm_table(groups: Sequence[Group], read_norm: Reader | None) -> list[str]:
    """The section (heading, text, table); no lines when no encoder and mode has two tasks."""
    found = pools(groups)
    if not found:
        return []
    fractions = len({p.fraction for p in found}) > 1
    # one column for both, so that a row never starts like a leaderboard row ("| <encoder> |")
    header = ["encoder · mode", *(["label fraction"] if fractions else []), "tasks", "over", "runs",
              "IQM test mIoU", "95% CI"]
    header += ["IQM norm. mIoU", "95% CI"] if read_norm is not None else []
    lines = [
        "", f"## {TITLE}", "",
        "IQM = mean of the middle 50 % of the test mIoU of all runs of an encoder and mode (a quarter "
        "cut from each end, as scipy's `trim_mean(x, 0.25)`), pooled over its tasks: the rows above that "
        "differ in what `over` names. 95% CI: stratified percentile bootstrap (each task's seeds "
        f"resampled on their own, {DEFAULT_RESAMPLES:,} times). Raw mIoU of different datasets "
        "are not on one scale: "
        + ("across datasets, read the normalised columns." if read_norm is not None else
           "across datasets, compare normalised scores (they need a scratch `unet` group per dataset)."),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "".join("---|" if title in TEXT_COLUMNS else "---:|" for title in header),
    ]
    for pool in found:
        row = [f"{pool.encoder} · {pool.mode}", *([f"{pool.fraction:g}"] if fractions else [])]
        row += [str(len(pool.groups)), pool.over, str(sum(len(g.runs) for g in pool.groups))]
        row += cells([g.values(test_miou) for g in pool.groups], 100, 2)
        if read_norm is not None:
            strata = [g.values(read_norm) for g in pool.groups]
            row += cells(strata, 1, 2) if all(strata) else [MISSING, MISSING]  # a task without a baseline
        lines.append("| " + " | ".join(row) + " |")
    return lines
