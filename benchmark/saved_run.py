"""A finished (or interrupted) run, loaded back from its folder: its settings and its trained model.

The commands that use a run (``--config-name=test``, ``predict``, ``embed``) take ``ckpt_dir=<run folder>``;
the run's ``config.yaml`` says how to rebuild it, and ``key=value`` overrides on their command line win
over it (e.g. ``encoder.encoder_weights=...`` when the release file moved).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from benchmark import builders
from benchmark.config_checks import check_config
from benchmark.distributed import DistContext
from benchmark.engine.checkpoint import load_checkpoint
from benchmark.models.segmentor import Segmentor
from benchmark.results import CHOICE_GROUPS


def merge_overrides(saved: DictConfig, overrides: list[str], own_keys: Sequence[str]) -> DictConfig:
    """Apply command-line ``key=value`` overrides to a saved run config (they win); ``own_keys`` belong to
    the command itself (``ckpt_dir``, ``inputs``...) and are left out."""
    dotlist = []
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key in own_keys:
            continue
        if key.startswith("~") or not _:
            raise ValueError(f"cannot apply override {override!r} to a saved run; use key=value")
        if key in CHOICE_GROUPS or (key in saved and OmegaConf.is_dict(saved[key]) and "." not in key):
            raise ValueError(
                f"{override!r} would swap a whole config group; a saved run is used with the groups "
                f"it was trained with ({key}={saved.choices.get(key, '?')}). Override single keys instead, "
                f"e.g. {key}.<name>=<value>."
            )
        dotlist.append(f"{key}={value}")
    return OmegaConf.merge(saved, OmegaConf.from_dotlist(dotlist))


def load_run_config(cfg: DictConfig, own_keys: Sequence[str]) -> DictConfig:
    """``cfg.ckpt_dir``'s saved config with this command line's overrides, checked; trust in pickled files
    comes from this command line only, never from a run folder someone handed over."""
    config_path = Path(cfg.ckpt_dir) / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: ckpt_dir must be a run folder made by benchmark/run.py")
    run_cfg = merge_overrides(OmegaConf.load(config_path), list(HydraConfig.get().overrides.task), own_keys)
    check_config(run_cfg, check_work_dir=False)
    run_cfg.trusted_pickle_files = list(cfg.trusted_pickle_files)
    return run_cfg


def checkpoint_file(ckpt_dir: str | Path, ckpt: str) -> Path:
    """``best`` / ``last`` in the run's ``checkpoints/`` folder, or a path; raises if it is not a file."""
    path = Path(ckpt) if ckpt not in ("best", "last") else Path(ckpt_dir) / "checkpoints" / f"{ckpt}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found: give ckpt=best, ckpt=last or the path of a checkpoint file")
    return path


def load_trained_model(run_cfg: DictConfig, checkpoint_path: Path, ctx: DistContext) -> tuple[Segmentor, dict[str, Any]]:
    """The run's encoder + decoder with the checkpoint's trained weights (a frozen encoder from its release
    file), and the checkpoint itself."""
    model = builders.build_segmentor(run_cfg, run_cfg.mode, ctx)
    checkpoint = load_checkpoint(checkpoint_path, trusted=run_cfg.trusted_pickle_files)
    model.load_trainable_state_dict(checkpoint["model"])
    model.eval()
    return model, checkpoint
