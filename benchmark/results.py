"""``results.json``: the one definition of what a run leaves in its folder, with its writer and reader.

Every run folder ends with a ``results.json`` (written atomically by rank 0): ``status`` is
``completed`` (config summary, best epoch, validation and test metrics, cost, versions) or ``failed``
(error and traceback); a run that was killed leaves none. ``schema_version`` says which layout a file
has; files without one were written before this module (version 1) and are read with the fields they
lack set to None. A run's identity (``RunConfig.identity``): config-group choices, mode, settings
overrides (hash), crop protocol, label fraction (fraction, draw, subset SHA-256) and seed. Fields added
within version 2 (label fraction, ``strategy``) read with their defaults from files without them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from benchmark.atomic import write_json

SCHEMA_VERSION = 2
RESULTS_FILE = "results.json"
STATUSES = ("completed", "failed")
# The config groups a run is composed from.
CHOICE_GROUPS = ("dataset", "encoder", "decoder", "preprocessing", "criterion", "task", "optimizer", "lr_scheduler", "temporal")
# What makes two runs the same experiment (one group of the report); with the seed, the same job.
EXPERIMENT_FIELDS = (*CHOICE_GROUPS, "mode", "settings_hash", "train_crop_stride", "train_fraction", "subset_draw", "subset_sha256")
JOB_FIELDS = (*EXPERIMENT_FIELDS, "seed")
SCALAR_METRICS = ("mIoU", "mF1", "mPrecision", "mRecall", "oAcc", "mAcc")
CLASS_METRICS = ("IoU", "F1", "Precision", "Recall")

# Metrics of one split as benchmark.engine.metrics computes them: SCALAR_METRICS (float, NaN when
# undefined), CLASS_METRICS ({class name: float}), "pixels" and "confusion_matrix".
Metrics = dict[str, Any]


class ResultsError(ValueError):
    """A results.json that does not follow the schema (the message names the file)."""


def settings_hash(settings: list[str] | tuple[str, ...]) -> str:
    """Short hash of a job's settings overrides ("" for none): the suffix of its run folder name."""
    return hashlib.sha1("\n".join(settings).encode()).hexdigest()[:8] if settings else ""


@dataclass(frozen=True)
class RunConfig:
    """The ``config`` block: what was run (the job identity first), then how it ran."""

    dataset: str
    encoder: str
    decoder: str
    mode: str  # one of segmentor.MODES
    seed: int
    preprocessing: str | None = None
    criterion: str | None = None
    task: str | None = None
    optimizer: str | None = None
    lr_scheduler: str | None = None
    temporal: str | None = None  # the head merging the frames' features (config group); None: single-date data
    settings: tuple[str, ...] = ()  # command-line overrides that change what is computed, sorted
    settings_hash: str = ""  # settings_hash(settings)
    train_crop_stride: int | None = None  # 1: random crop anywhere (PANGAEA); >1: crops on this grid
    train_fraction: float = 1.0  # share of the train split's tiles trained on (dataset.train_fraction)
    subset_draw: int = 0  # which stratified draw of that share (dataset.subset_draw)
    subset_sha256: str | None = None  # SHA-256 of the subset file (benchmark.data.subsets); None: the whole split
    strategy: dict[str, Any] = field(default_factory=dict)  # fine-tuning settings the mode used (rundir.strategy)
    encoder_weights: str | None = None
    n_epochs: int | None = None
    batch_size_per_process: int | None = None
    world_size: int | None = None
    device: str | None = None

    __hash__ = None  # type: ignore[assignment]  # holds a dict; identity() is the hashable key

    def identity(self, seed: bool = True) -> tuple[Any, ...]:
        """The job (``seed=True``) or the experiment (``seed=False``: what seeds repeat) as a tuple."""
        return tuple(getattr(self, name) for name in (JOB_FIELDS if seed else EXPERIMENT_FIELDS))


@dataclass(frozen=True)
class Cost:
    """The ``cost`` block (times in seconds; None: not recorded by the version that wrote the file)."""

    total_params: int
    trainable_params: int
    encoder_params: int | None = None
    wall_time_s: float | None = None  # the whole process, building to writing results
    train_time_s: float | None = None  # training epochs only
    epoch_time_s: float | None = None
    train_images_per_s: float | None = None
    val_time_s: float | None = None
    test_time_s: float | None = None
    feature_cache_time_s: float | None = None  # building or opening the frozen-encoder feature cache
    peak_memory_mb: float | None = None  # GPU max allocated on CUDA, peak RSS on CPU


@dataclass(frozen=True)
class RunResult:
    """A run's ``results.json``. Completed: config, best_epoch, val, test, cost. Failed: error, traceback."""

    status: str  # completed | failed
    run_dir: str
    versions: dict[str, str] = field(default_factory=dict)
    config: RunConfig | None = None
    best_epoch: int | None = None  # 1-based epoch of the best validation metric
    val: Metrics | None = None  # validation metrics of the best epoch
    test: Metrics | None = None  # test metrics of the best checkpoint
    cost: Cost | None = None
    error: str | None = None
    traceback: str | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ResultsError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout (fields that are None left out)."""
        data = {"schema_version": self.schema_version, **dataclasses.asdict(self)}
        if self.config is not None:
            data["config"]["settings"] = list(self.config.settings)
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "results.json") -> RunResult:
        """Validate parsed JSON; ``ResultsError`` naming ``source`` and every problem otherwise."""
        try:
            return _from_dict(data)
        except ResultsError as error:
            raise ResultsError(f"{source} is not a valid {RESULTS_FILE}: {error}") from None


def completed_result(
    run_dir: str | Path, config: RunConfig, *, best_epoch: int, val: Metrics, test: Metrics, cost: Cost,
    versions: dict[str, str],
) -> RunResult:
    """The result of a run that finished training and testing."""
    return RunResult("completed", str(run_dir), dict(versions), config, best_epoch, dict(val), dict(test), cost)


def failed_result(
    run_dir: str | Path, error: BaseException, versions: dict[str, str], config: RunConfig | None = None,
    traceback_text: str | None = None,
) -> RunResult:
    """The result of a run that stopped with ``error``, with its traceback (or ``traceback_text``: that of
    the process that failed first, under torchrun)."""
    return RunResult(
        "failed", str(run_dir), dict(versions), config,
        error=f"{type(error).__name__}: {error}",
        traceback=traceback_text or "".join(traceback.format_exception(error)),
    )


def results_path(run_dir_or_file: str | Path) -> Path:
    path = Path(run_dir_or_file)
    return path / RESULTS_FILE if path.is_dir() else path


def write_results(run_dir: str | Path, result: RunResult) -> Path:
    """Write ``<run_dir>/results.json`` atomically (readers see the old file or the new one)."""
    path = Path(run_dir) / RESULTS_FILE
    write_json(path, result.to_dict())
    return path


def read_results(run_dir_or_file: str | Path) -> RunResult:
    """The validated result in a run folder (or a results.json path); ``ResultsError`` if malformed."""
    path = results_path(run_dir_or_file)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ResultsError(f"{path} is not a valid {RESULTS_FILE}: not JSON ({error})") from None
    return RunResult.from_dict(data, path)


def completed_results(run_dir: str | Path) -> RunResult | None:
    """The result of a run folder whose run completed; None if it failed or has no results.json."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.is_file():
        return None
    result = read_results(path)
    return result if result.status == "completed" else None


# Validation ---------------------------------------------------------------------------------------


def _from_dict(data: Any) -> RunResult:
    if not isinstance(data, dict):
        raise ResultsError(f"expected a JSON object, found {type(data).__name__}")
    version = data.get("schema_version", 1)  # files without a version predate the schema
    if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise ResultsError(f"schema_version {version!r} is not one this version of geofm-bench reads (1..{SCHEMA_VERSION})")
    data = {**data, "schema_version": version}
    strict = version == SCHEMA_VERSION  # older files may carry fields since dropped
    fields = _known(RunResult, data, strict, "")
    if isinstance(fields.get("config"), dict):
        config = _known(RunConfig, fields["config"], strict, "config.")
        if isinstance(config.get("settings"), list):
            config["settings"] = tuple(config["settings"])
        if version == 1 and isinstance(config.get("settings"), tuple):
            config["settings_hash"] = settings_hash(config["settings"])
        fields["config"] = _build(RunConfig, config, "config")
    if isinstance(fields.get("cost"), dict):
        fields["cost"] = _build(Cost, _known(Cost, fields["cost"], strict, "cost."), "cost")
    return _build(RunResult, fields, "")


def _known(cls: type, data: dict[str, Any], strict: bool, where: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown and strict:
        raise ResultsError(f"unknown field(s) {', '.join(where + name for name in unknown)}")
    return {key: value for key, value in data.items() if key in names}


def _build(cls: type, fields: dict[str, Any], where: str) -> Any:
    """``cls(**fields)`` after checking each field's JSON type against the dataclass."""
    hints = get_type_hints(cls)
    problems = []
    for f in dataclasses.fields(cls):
        name = f"{where}.{f.name}" if where else f.name
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name not in fields:
            if required:
                problems.append(f"{name} is missing")
        elif not _conforms(fields[f.name], hints[f.name]):
            problems.append(f"{name} is {json.dumps(fields[f.name], default=str)[:80]}, expected {_describe(hints[f.name])}")
    if problems:
        raise ResultsError("; ".join(problems))
    return cls(**fields)


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a value read from JSON fits a field's annotation (ints count as floats, bools as neither)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_conforms(value, arg) for arg in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint in (int, float):
        allowed = (int,) if hint is int else (int, float)
        return isinstance(value, allowed) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, (tuple, list)) and all(_conforms(v, get_args(hint)[0]) for v in value)
    if origin is dict:
        key_type, value_type = get_args(hint)
        return isinstance(value, dict) and all(isinstance(k, key_type) and _conforms(v, value_type) for k, v in value.items())
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    if get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _problems(result: RunResult) -> list[str]:
    """What a result of its status must hold beyond the field types."""
    problems = []
    if result.status not in STATUSES:
        problems.append(f"status is {result.status!r}, expected one of {', '.join(STATUSES)}")
    if result.status == "completed":
        required = ("config", "best_epoch", "val", "test", "cost")
        problems += [f"a completed run needs {name}" for name in required if getattr(result, name) is None]
        for split in ("val", "test"):
            metrics = getattr(result, split)
            if metrics is not None and "mIoU" not in metrics:
                problems.append(f"{split} has no mIoU")
        config = result.config
        if config is not None and result.schema_version >= 2 and config.train_crop_stride is None:
            problems.append("config.train_crop_stride is missing")
        if config is not None and config.settings_hash != settings_hash(config.settings):
            problems.append(f"config.settings_hash {config.settings_hash!r} does not match config.settings")
        if config is not None:
            problems += _subset_problems(config)
    elif result.status == "failed" and not result.error:
        problems.append("a failed run needs its error")
    return problems


def _subset_problems(config: RunConfig) -> list[str]:
    """The label-fraction fields: a fraction in (0, 1], a draw >= 0, a SHA-256 (64 hex digits) only for a subset."""
    digest, problems = config.subset_sha256, []
    if not 0 < config.train_fraction <= 1:
        problems.append(f"config.train_fraction is {config.train_fraction}, expected a number in (0, 1]")
    if config.subset_draw < 0:
        problems.append(f"config.subset_draw is {config.subset_draw}, expected 0 or more")
    if digest is not None and (config.train_fraction == 1 or len(digest) != 64 or digest.strip("0123456789abcdef")):
        problems.append(f"config.subset_sha256 is {digest!r}, expected 64 hex digits for a train_fraction below 1")
    return problems
