"""Run directories: naming, choice on rank 0, logging, and what every run leaves behind."""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from benchmark.compat import IGNORED_KEYS, dataset_frames
from benchmark.data.subsets import recorded_sha256, requested_subset
from benchmark.distributed import DistContext, broadcast_object
from benchmark.results import CHOICE_GROUPS, RunConfig, settings_hash

log = logging.getLogger(__name__)

PACKAGES = ("geofm-bench", "torch", "hydra-core", "numpy", "rasterio")


class RunDirError(RuntimeError):
    """The requested run directory cannot be used as asked."""


# The keys of configs/sweep.yaml that benchmark/run.py does not know: how python -m benchmark.sweep runs jobs.
SWEEP_DRIVER_KEYS = ("nproc_per_node", "isolate", "lockstep", "dry_run")
# Overrides that say where or how a run executes, not what it computes: they do not make a new job.
# So do the PANGAEA keys this benchmark ignores (benchmark.compat), e.g. dataset.distribution=[0.9,0.1].
EXECUTION_KEYS = frozenset({
    "work_dir", "run_dir", "resume", "device", "num_workers", "test_num_workers", "use_wandb",
    "wandb_project", "task.trainer.use_wandb", "task.trainer.log_interval", "task.trainer.ckpt_interval",
    "task.trainer.resume_every_s",
    "dataset.root_path", "cache", "cache_dir", "data_on_device", "trusted_pickle_files", *SWEEP_DRIVER_KEYS,
}) | IGNORED_KEYS
# Overrides already spelled out in the run name.
NAMED_KEYS = frozenset({"dataset", "encoder", "decoder", "mode", "finetune", "seed"})


def setting_overrides() -> list[str]:
    """The command-line overrides of this Hydra job that change what the run computes, sorted, in
    :func:`canonical_overrides` spelling."""
    from hydra.core.hydra_config import HydraConfig

    overrides = canonical_overrides(HydraConfig.get().overrides.task if HydraConfig.initialized() else [])
    keys = EXECUTION_KEYS | NAMED_KEYS
    return sorted(o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in keys)


def canonical_overrides(overrides: Sequence[str]) -> list[str]:
    """Overrides spelled as Hydra's sweeper passes them to a job: one per key (the last), the value
    re-serialised (``optimizer.lr=1e-3`` -> ``optimizer.lr=0.001``). A job then has one identity whether
    it ran alone or as part of a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    final: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.get_key_element()
        final[key] = key if override.is_delete() and override.value() is None else f"{key}={override.get_value_element_as_str()}"
    return list(final.values())


def run_stem(choices: dict[str, str], mode: str, seed: int, settings: list[str]) -> str:
    """``<dataset>_<encoder>_<decoder>_<mode>_s<seed>[_<hash of other settings>]``: the job's identity.

    Runs that differ only in other overrides (``optimizer.lr=...``, ``experiment=...``) get a short hash
    of those overrides, so that ``resume=true`` never mistakes one for the other.
    """
    stem = f"{choices['dataset']}_{choices['encoder']}_{choices['decoder']}_{mode}_s{seed}"
    return f"{stem}_{settings_hash(settings)}" if settings else stem


def find_resumable(work_dir: Path, stem: str) -> Path | None:
    """Newest run folder under ``work_dir`` named ``*_<stem>`` (the job's earlier attempt), if any."""
    pattern = re.compile(r"\d{8}-\d{6}_" + re.escape(stem))
    candidates = sorted(p for p in work_dir.glob(f"*_{stem}") if p.is_dir() and pattern.fullmatch(p.name))
    return candidates[-1] if candidates else None


def choose_run_dir(cfg: DictConfig, choices: dict[str, str], mode: str, ctx: DistContext) -> tuple[Path, bool]:
    """Decide the run folder on rank 0 and share it: ``(path, resuming)``.

    ``run_dir`` names the folder; otherwise a new one ``<time>_<stem>`` is made under ``work_dir``,
    or with ``resume=true`` the newest folder of the same job is continued.
    """
    decision: tuple[str, bool] | str | None = None
    if ctx.is_main:
        try:
            decision = _decide(cfg, choices, mode)
        except RunDirError as error:
            decision = f"error: {error}"
    decision = broadcast_object(decision)
    if isinstance(decision, str):
        raise RunDirError(decision[len("error: "):])
    path, resuming = decision
    return Path(path), resuming


def _decide(cfg: DictConfig, choices: dict[str, str], mode: str) -> tuple[str, bool]:
    work_dir = Path(cfg.work_dir)
    stem = run_stem(choices, mode, cfg.seed, setting_overrides())
    if cfg.run_dir:
        path = Path(cfg.run_dir)
        has_checkpoint = (path / "checkpoints" / "last.pt").is_file()
        if has_checkpoint and not cfg.resume:
            raise RunDirError(f"{path} already holds a run; pass resume=true to continue it or choose another run_dir")
    else:
        previous = find_resumable(work_dir, stem) if cfg.resume else None
        path = previous or work_dir / f"{time.strftime('%Y%m%d-%H%M%S')}_{stem}"
        if previous is None and path.exists():
            raise RunDirError(f"{path} exists already (two runs of the same job started in one second?)")
        has_checkpoint = (path / "checkpoints" / "last.pt").is_file()
    if cfg.resume and not has_checkpoint:
        log.info("resume=true: no earlier checkpoint of this job, starting %s", path)
    path.mkdir(parents=True, exist_ok=True)
    return str(path), bool(cfg.resume and has_checkpoint)


LOG_FORMAT = "[%(asctime)s][%(levelname)s][%(name)s] %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def setup_logging(ctx: DistContext, log_file: Path | None) -> None:
    """Rank 0 logs INFO to the console and ``log_file``; other ranks only errors."""
    root = logging.getLogger()
    for handler in list(root.handlers):  # closed too: a sweep's process runs job after job
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    console.setLevel(logging.INFO if ctx.is_main else logging.ERROR)
    root.addHandler(console)
    if ctx.is_main and log_file is not None:
        file_handler = logging.FileHandler(log_file, mode="a")
        file_handler.setFormatter(formatter)
        root.addHandler(file_handler)
    root.setLevel(logging.INFO)


def package_versions() -> dict[str, str]:
    import torch

    versions = {"python": platform.python_version(), "torch_build": torch.__version__, "cuda": str(torch.version.cuda)}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# Files a saved run is reloaded from (``test``, ``predict``, tuning's final run): absolute in ``config.yaml``,
# so that they are found from any working folder.
SAVED_PATHS = ("dataset.root_path", "encoder.encoder_weights")


def save_config(cfg: DictConfig, choices: dict[str, str], mode: str, run_dir: Path) -> None:
    """``config.yaml``: the resolved config plus the chosen config groups and effective mode."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for key in SAVED_PATHS:
        group, _, name = key.partition(".")
        value = resolved.get(group, {}).get(name)
        if isinstance(value, str) and value and "://" not in value:
            resolved[group][name] = str(Path(value).expanduser().absolute())
    resolved["mode"] = mode
    resolved["choices"] = choices
    OmegaConf.save(OmegaConf.create(resolved), run_dir / "config.yaml")


def summary(cfg: DictConfig, choices: dict[str, str], mode: str, ctx: DistContext) -> RunConfig:
    """The ``config`` block of ``results.json``: the full job identity, then how the run was executed."""
    settings = tuple(setting_overrides())
    fraction, draw = requested_subset(cfg.dataset)
    return RunConfig(
        **{group: choices.get(group) for group in CHOICE_GROUPS if group != "temporal"},
        temporal=choices.get("temporal") if dataset_frames(cfg.dataset) > 1 else None,
        mode=mode,
        seed=int(cfg.seed),
        settings=settings,
        settings_hash=settings_hash(settings),
        train_crop_stride=int(cfg.train_crop_stride),
        train_fraction=fraction,
        subset_draw=draw,
        subset_sha256=recorded_sha256(cfg.dataset),  # the file the train split was read from
        strategy=strategy(cfg, mode),
        encoder_weights=cfg.encoder.get("encoder_weights") if mode != "random" else None,
        n_epochs=int(cfg.task.trainer.n_epochs),
        batch_size_per_process=int(cfg.batch_size),
        world_size=ctx.world_size,
        device=str(ctx.device),
    )


def strategy(cfg: DictConfig, mode: str) -> dict[str, Any]:
    """The fine-tuning settings ``mode`` uses, with their values (defaults included; those of other modes
    left out), for ``results.json`` and the report."""
    used: dict[str, Any] = {}
    if mode == "partial":
        used["unfreeze_last"] = int(cfg.unfreeze_last)
    if mode == "progressive":
        used.update({f"progressive.{key}": int(value) for key, value in cfg.progressive.items()})
    if mode == "lora":
        used.update({f"lora.{key}": value for key, value in OmegaConf.to_container(cfg.lora).items()})
    if mode != "frozen":
        used["encoder_lr_scale"] = float(cfg.encoder_lr_scale)
        if cfg.get("encoder_lr_decay") is not None:
            used["encoder_lr_decay"] = float(cfg.encoder_lr_decay)
    if cfg.get("freeze_encoder_norm"):
        used["freeze_encoder_norm"] = True
    return used
