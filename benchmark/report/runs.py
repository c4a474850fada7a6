"""Run folders -> runs (status, job, result) -> groups of one experiment each, repeated over seeds.

A group is every completed run with the same job identity except the seed (``RunConfig.identity``:
all config-group choices, mode, settings overrides by hash, training-crop protocol) and the same
label fraction (``dataset.train_fraction`` of its config.yaml or results.json, 1.0 where neither
records one). Within one dataset, the settings in which groups differ (overrides, and the fine-tuning
settings each mode used, ``RunConfig.strategy``) become ``Group.settings``
(display name -> value): the extra columns of the leaderboard and the labels of the plots.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from benchmark.models.segmentor import MODES
from benchmark.results import CHOICE_GROUPS, RESULTS_FILE, ResultsError, RunConfig, RunResult, read_results

RUN_MARKERS = (RESULTS_FILE, "config.yaml", "metrics.jsonl", "checkpoints")
JOB_FIELDS = ("dataset", "encoder", "decoder", "mode", "seed")  # named in every table
OTHER_CHOICES = tuple(g for g in CHOICE_GROUPS if g not in JOB_FIELDS)
CROPS = "train crops"  # column title of the training-crop protocol
DEFAULT = "(default)"  # a settings override a group does not have
NOT_USED = "-"  # a fine-tuning setting (RunConfig.strategy) a group's mode does not use
TUNED_FROM, TUNED = "tuned_from", "tuned"  # the override benchmark.tuning sets; its column
UNKNOWN = "?"  # not recorded (files written before results.json schema 2)
FRACTION = "dataset.train_fraction"  # share of the training labels a run used; 1.0 when not recorded
# Display order of known names; others follow alphabetically.
ORDER = {
    "decoder": ("seg_linear", "seg_fcn", "seg_upernet", "seg_segformer", "seg_muster"),
    "mode": MODES,
}


class ReportError(RuntimeError):
    """The folders hold nothing to report on."""


@dataclass
class Run:
    """One run folder and what it holds."""

    folder: Path
    status: str  # completed | failed | incomplete | invalid | superseded
    job: dict[str, Any]  # JOB_FIELDS and what else is known of the job (UNKNOWN where not)
    result: RunResult | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, val mIoU)
    note: str = ""
    train_fraction: float = 1.0  # FRACTION as train_fraction() reads it


@dataclass
class Group:
    """The counted runs of one experiment, one per seed."""

    config: RunConfig  # of its first run; the experiment's fields are the same in all
    runs: list[Run]
    settings: dict[str, str] = field(default_factory=dict)  # where it differs from its dataset's other groups

    @property
    def key(self) -> tuple[Any, ...]:
        return (*self.config.identity(seed=False), self.train_fraction)

    @property
    def train_fraction(self) -> float:
        return self.runs[0].train_fraction  # the same in all: part of the grouping key

    @property
    def label(self) -> str:
        """What tells this group from others of the same dataset, encoder, decoder and mode ("" if nothing)."""
        return ", ".join(f"{value} crops" if name == CROPS else f"{name}={value}" for name, value in self.settings.items())

    def values(self, column: Callable[[Run], float | None]) -> list[float]:
        return [v for v in (column(run) for run in self.runs) if v is not None]


def number(value: Any) -> float | None:
    """A metric or cost as a float; None when missing or undefined (NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def crop_protocol(stride: int | None) -> str:
    """``random`` (stride 1: a crop anywhere, PANGAEA) or ``grid N`` (crops start on an N-pixel grid)."""
    if stride is None:
        return UNKNOWN
    return "random" if stride == 1 else f"grid {stride}"


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
    """The records of a JSON-lines file; a line cut short by a killed run is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def job_from_config(folder: Path) -> dict[str, Any]:
    """The job of a run without a completed result, from its ``config.yaml``."""
    job: dict[str, Any] = {k: UNKNOWN for k in JOB_FIELDS}
    path = folder / "config.yaml"
    if path.is_file():
        cfg = OmegaConf.load(path)
        job.update(cfg.get("choices", {}))
        job.update({k: cfg[k] for k in ("mode", "seed", "train_crop_stride") if k in cfg})
    return job


def train_fraction(folder: Path, config: RunConfig | None = None) -> float:
    """The share of training labels a run used: ``dataset.train_fraction`` of its config.yaml, else the
    ``train_fraction`` its results.json records (where the schema has one), else 1.0 (all labels: runs
    of versions without label fractions)."""
    try:
        value = number(OmegaConf.select(OmegaConf.load(folder / "config.yaml"), FRACTION, default=None))
    except (OSError, yaml.YAMLError, OmegaConfBaseException):  # a missing or torn file is no reason to stop
        value = None
    if value is None:
        value = number(getattr(config, "train_fraction", None))
    return 1.0 if value is None else value


def job_from_result(config: RunConfig) -> dict[str, Any]:
    job = {name: getattr(config, name) for name in (*JOB_FIELDS, *OTHER_CHOICES, "train_crop_stride", "settings_hash")}
    return {**job, "settings": " ".join(config.settings)}


def read_run(folder: Path) -> Run:
    """Status, job and result of one run folder, with its label fraction."""
    run = read_status(folder)
    run.train_fraction = train_fraction(folder, run.result.config if run.result is not None else None)
    run.job["train_fraction"] = run.train_fraction
    return run


def read_status(folder: Path) -> Run:
    """Status, job and result of one run folder (a malformed results.json makes it ``invalid``)."""
    epochs = read_jsonl(folder / "metrics.jsonl")
    curve = [(int(line["epoch"]), v) for line in epochs if line.get("split") == "val" and (v := number(line.get("mIoU"))) is not None]
    if not (folder / RESULTS_FILE).is_file():
        done = f"last finished epoch {epochs[-1]['epoch']}" if epochs else "no epoch finished"
        return Run(folder, "incomplete", job_from_config(folder), curve=curve, note=f"no results.json (interrupted or still running); {done}")
    try:
        result = read_results(folder)
    except ResultsError as error:
        return Run(folder, "invalid", job_from_config(folder), curve=curve, note=str(error))
    if result.status != "completed":
        return Run(folder, result.status, job_from_config(folder), result, curve, result.error or "")
    assert result.config is not None  # the schema guarantees it for completed runs
    return Run(folder, result.status, job_from_result(result.config), result, curve)


def mark_superseded(runs: list[Run]) -> None:
    """Keep the newest completed run of each job (full identity, seed included, and label fraction);
    older repeats are ``superseded``."""
    by_job: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        if run.status == "completed" and run.result is not None and run.result.config is not None:
            by_job[(*run.result.config.identity(seed=True), run.train_fraction)].append(run)
    for repeats in by_job.values():
        repeats.sort(key=lambda run: (run.folder / RESULTS_FILE).stat().st_mtime_ns)
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
    return sorted(runs, key=lambda run: (sort_key(run.job), str(run.job.get("seed")), str(run.folder)))


# --------------------------------------------------------------------------------------------------
# Grouping


def sort_key(fields: dict[str, Any]) -> tuple:
    """Dataset, encoder, decoder and mode in display order, then the other identity fields and the label fraction."""
    key: list[Any] = []
    for name in ("dataset", "encoder", "decoder", "mode", *OTHER_CHOICES, "train_crop_stride", FRACTION, "settings_hash"):
        if name == FRACTION:  # fewest labels first, as numbers ("0.05" < "0.1")
            key.append((0, float(fields.get("train_fraction") or 1.0)))
            continue
        value = "" if fields.get(name) is None else str(fields[name])
        order = ORDER.get(name, ())
        key.append((order.index(value) if value in order else len(order), value))
    return tuple(key)


def group_runs(runs: Iterable[Run]) -> list[Group]:
    """Completed runs by experiment (identity minus seed), in display order, with their differences set."""
    by_key: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        if run.status == "completed" and run.result is not None and run.result.config is not None:
            # runs that used another share of the labels are never averaged, whether or not the
            # fraction was a command-line override (then it is also in the settings hash)
            by_key[(*run.result.config.identity(seed=False), run.train_fraction)].append(run)
    groups = [Group(members[0].result.config, members) for members in by_key.values()]  # type: ignore[union-attr]
    groups.sort(key=lambda g: sort_key({**job_from_result(g.config), "train_fraction": g.train_fraction}))
    for dataset in dict.fromkeys(g.config.dataset for g in groups):
        mark_differences([g for g in groups if g.config.dataset == dataset])
    return groups


def described(config: RunConfig, fraction: float = 1.0) -> dict[str, str]:
    """An experiment's settings beyond dataset, encoder, decoder and mode: display name -> value (the
    label fraction as read from config.yaml)."""
    settings = {name: str(getattr(config, name)) if getattr(config, name) is not None else NOT_USED if name == "temporal"
                else UNKNOWN for name in OTHER_CHOICES}
    for override in config.settings:
        key, _, value = override.partition("=")
        # choices and crops have columns of their own; the fraction is shown as used (below)
        own_column = key.lstrip("+~") in (*CHOICE_GROUPS, FRACTION) or key.lstrip("+") == "train_crop_stride"
        if key == TUNED_FROM:
            settings[TUNED] = "yes"
        elif not own_column:
            settings[key] = value if not key.startswith("~") else "(removed)"
    settings.update({key: f"{value:g}" if isinstance(value, float) else str(value) for key, value in config.strategy.items()})
    settings[FRACTION] = f"{fraction:g}"  # the value used, also where it was no override
    settings[CROPS] = crop_protocol(config.train_crop_stride)
    return settings


def absent(name: str, groups: Sequence[Group]) -> str:
    """What a group shows for a setting it lacks: a strategy setting its mode does not use, or the default."""
    if name == TUNED:
        return "no"
    return NOT_USED if any(name in g.config.strategy for g in groups) else DEFAULT


def differences(groups: Sequence[Group]) -> tuple[list[str], dict[str, str]]:
    """The settings that differ between ``groups`` (names) and those they share (name -> value)."""
    settings = [described(g.config, g.train_fraction) for g in groups]
    names = list(dict.fromkeys(name for s in settings for name in s))
    differing, shared = [], {}
    for name in names:
        values = {s.get(name, absent(name, groups)) for s in settings}
        if len(values) > 1:
            differing.append(name)
        else:
            shared[name] = values.pop()
    return differing, shared


def mark_differences(groups: Sequence[Group]) -> None:
    """Set each group's ``settings`` to where the groups of one dataset differ; where that leaves two
    groups looking alike (e.g. an override equal to the default), their settings hash tells them apart."""
    differing, _ = differences(groups)
    for group in groups:
        settings = described(group.config, group.train_fraction)
        group.settings = {name: settings.get(name, absent(name, groups)) for name in differing}
    seen: dict[tuple, int] = defaultdict(int)
    for group in groups:
        seen[(group.config.encoder, group.config.decoder, group.config.mode, group.label)] += 1
    for group in groups:
        if seen[(group.config.encoder, group.config.decoder, group.config.mode, group.label)] > 1:
            group.settings["settings hash"] = group.config.settings_hash or "none"
