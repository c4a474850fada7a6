"""Start-up checks of the composed config: every bad value is reported at once, before any work starts."""

from __future__ import annotations

import inspect
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from benchmark.compat import dataset_frames, pangaea_problems
from benchmark.data.subsets import requested_subset
from benchmark.models.segmentor import MODES, resolve_mode


class ConfigError(ValueError):
    """One or more config values cannot work; the message lists each with its fix."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _at_least(minimum: int) -> Callable[[Any], bool]:
    return lambda value: _is_int(value) and value >= minimum


def _one_of(*options: str) -> Callable[[Any], bool]:
    return lambda value: value in options


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


# key -> (check, what a valid value is); keys missing from a config are not checked.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "task.trainer.n_epochs": (_at_least(1), "an integer >= 1 (training epochs)"),
    "batch_size": (_at_least(1), "an integer >= 1 (training samples per process)"),
    "test_batch_size": (_at_least(1), "an integer >= 1 (full tiles per process at evaluation)"),
    "num_workers": (_at_least(0), "an integer >= 0 (DataLoader worker processes; 0 reads in the main process)"),
    "test_num_workers": (_at_least(0), "an integer >= 0 (DataLoader worker processes; 0 reads in the main process)"),
    "optimizer.lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "encoder_lr_scale": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (0 keeps the encoder's weights)"),
    "task.trainer.eval_interval": (_at_least(1), "an integer >= 1 (epochs between validations)"),
    "task.trainer.log_interval": (_at_least(1), "an integer >= 1 (iterations between loss logs)"),
    "task.trainer.ckpt_interval": (_optional(_at_least(1)), "null or an integer >= 1 (epochs between kept checkpoints)"),
    "task.trainer.resume_every_s": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (seconds between last.pt writes)"),
    "task.trainer.grad_clip": (_optional(lambda v: _is_number(v) and v > 0), "null or a number > 0"),
    "task.trainer.precision": (_one_of("auto", "fp32", "bf16"), "auto, fp32 or bf16"),
    "task.evaluator.sliding_inference_batch": (_at_least(1), "an integer >= 1 (windows per forward pass)"),
    "device": (_one_of("auto", "cpu", "cuda"), "auto, cpu or cuda"),
    "mode": (_one_of(*MODES), ", ".join(MODES[:-1]) + " or " + MODES[-1]),
    "cache_dtype": (_one_of("float16", "float32"), "float16 or float32"),
    "use_wandb": (lambda v: isinstance(v, bool), "true or false"),
    "freeze_encoder_norm": (lambda v: isinstance(v, bool), "true or false"),
    "data_on_device": (lambda v: isinstance(v, bool), "true or false"),
    "tuned_from": (_optional(lambda v: isinstance(v, str) and v != ""), "null or the name of a tuning trial's run folder"),
}
# Modes whose pretrained encoder trains, so that its norm layers can be kept as released.
NORM_FREEZING_MODES = ("partial", "progressive", "unfrozen")


def _window_problems(cfg: DictConfig) -> list[str]:
    """Crop and sliding-window strides must fit the encoder window."""
    window = OmegaConf.select(cfg, "encoder.input_size")
    if not _is_int(window):
        return []
    problems = []
    stride = OmegaConf.select(cfg, "train_crop_stride")
    if not (_is_int(stride) and 1 <= stride <= window):
        problems.append(
            f"train_crop_stride={stride!r}: must be an integer in [1, encoder.input_size={window}] "
            "(1 draws training crops anywhere, as PANGAEA does; larger values draw them from a fixed grid)"
        )
    stride = OmegaConf.select(cfg, "task.evaluator.stride")
    if stride is not None and not (_is_int(stride) and 1 <= stride <= window):
        problems.append(f"task.evaluator.stride={stride!r}: must be null (PANGAEA's grid) or an integer in [1, {window}]")
    return problems


def _encoder_label(cfg: DictConfig) -> str:
    """``encoder=<choice>`` as the user typed it (from Hydra when it composed this run, from a saved run's
    ``choices``), else the encoder class."""
    choice = HydraConfig.get().runtime.choices.get("encoder") if HydraConfig.initialized() else None
    choice = choice or OmegaConf.select(cfg, "choices.encoder")
    if choice:
        return f"encoder={choice}"
    return "encoder " + str(OmegaConf.select(cfg, "encoder._target_", default="?")).rpartition(".")[2]


def _weights_problems(cfg: DictConfig) -> list[str]:
    """An encoder without weights (``encoder_weights: null``) can only be trained from scratch."""
    if OmegaConf.select(cfg, "encoder.encoder_weights", default="absent") is not None:
        return []
    mode, finetune = OmegaConf.select(cfg, "mode"), OmegaConf.select(cfg, "finetune")
    try:
        effective = resolve_mode(mode, finetune)
    except ValueError:
        return []  # an unknown mode or a contradicting finetune is reported by its own rule
    if effective == "random":
        return []
    if finetune is not None:
        asked = f"finetune={str(finetune).lower()}, i.e. mode={effective}"
    else:
        asked = f"mode={mode}" + (", the default" if mode == "frozen" else "")
    if OmegaConf.select(cfg, "encoder.download_url") is None:  # the config says so: a from-scratch baseline
        return [
            f"{_encoder_label(cfg)} has no pretrained weights: it is a from-scratch baseline; run it with "
            f"mode=random (got {asked})"
        ]
    return [
        f"encoder.encoder_weights=null: {_encoder_label(cfg)} starts from its release file (got {asked}); "
        "set encoder.encoder_weights=<path to the file>, or run it with mode=random"
    ]


def _mode_setting_problems(cfg: DictConfig) -> list[str]:
    """Encoder settings the mode would ignore: an encoder learning rate (``encoder_lr_scale``,
    ``encoder_lr_decay``) with a frozen encoder, ``freeze_encoder_norm=true`` where no pretrained norm layer
    trains (frozen, lora) or none exists (random)."""
    try:
        mode = resolve_mode(OmegaConf.select(cfg, "mode"), OmegaConf.select(cfg, "finetune"))
    except ValueError:
        return []  # reported by the mode rule
    problems = []
    if mode == "frozen":
        if OmegaConf.select(cfg, "encoder_lr_scale", default=1.0) != 1.0:
            problems.append(f"encoder_lr_scale={cfg.encoder_lr_scale}: mode=frozen trains no encoder; drop it or choose a mode that trains the encoder")
        if OmegaConf.select(cfg, "encoder_lr_decay") is not None:
            problems.append(f"encoder_lr_decay={cfg.encoder_lr_decay}: mode=frozen trains no encoder; drop it or choose a mode that trains the encoder")
    if OmegaConf.select(cfg, "freeze_encoder_norm") is True and mode not in NORM_FREEZING_MODES:
        why = "holds no pretrained norm layers" if mode == "random" else "never trains its norm layers"
        problems.append(f"freeze_encoder_norm=true: mode={mode} {why}; use it with mode={', '.join(NORM_FREEZING_MODES)} or drop it")
    return problems


def _pairing_problems(cfg: DictConfig) -> list[str]:
    """A decoder built for a feature pyramid (``needs_pyramid``) needs an encoder that returns one."""
    try:
        decoder = get_class(str(OmegaConf.select(cfg, "decoder._target_")))
        encoder = get_class(str(OmegaConf.select(cfg, "encoder._target_")))
    except (ImportError, ValueError):  # a target that does not import is reported when the model is built
        return []
    if not getattr(decoder, "needs_pyramid", False) or getattr(encoder, "pyramid_output", False):
        return []
    return [
        f"decoder {decoder.__name__} needs an encoder whose maps halve in size level by level (encoder=unet); "
        f"{encoder.__name__} returns maps of one resolution: use another decoder (e.g. decoder=seg_upernet)"
    ]


def _unknown_setting_problems(cfg: DictConfig, group: str) -> list[str]:
    """Keys of ``cfg.<group>`` that its class's constructor does not take (e.g. ``decoder.channels`` left by an
    experiment for a decoder without channels), which would stop the run when the model is built."""
    settings = OmegaConf.select(cfg, group)
    try:
        built = get_class(str(settings.get("_target_"))) if settings is not None else None
    except (ImportError, ValueError):  # a target that does not import is reported when the model is built
        return []
    if built is None:
        return []
    parameters = inspect.signature(built.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    taken = [name for name in parameters if name != "self"]
    return [
        f"{group}.{key}={settings[key]!r}: {built.__name__} has no setting {key!r} (it takes {', '.join(taken)}); "
        f"drop it with ~{group}.{key}"
        for key in settings if not str(key).startswith("_") and key not in parameters
    ]


def _frames_problems(cfg: DictConfig) -> list[str]:
    """``dataset.multi_temporal`` agrees with the frames per sample of the dataset class (its ``frames``), and
    the encoder reads one frame at a time or all of them (``encoder.num_frames``)."""
    dataset = OmegaConf.select(cfg, "dataset")
    if dataset is None:
        return []
    try:
        declared = dataset_frames(dataset)
    except ValueError as error:
        return [str(error)]
    try:
        frames = getattr(get_class(str(dataset.get("_target_"))), "frames", 1)
    except (ImportError, ValueError):  # a target that does not import is reported when the dataset is built
        return []
    if declared != frames:
        return [f"dataset.multi_temporal={OmegaConf.select(cfg, 'dataset.multi_temporal')!r}: {cfg.dataset._target_} "
                f"samples have {frames} frame(s); set dataset.multi_temporal={frames if frames > 1 else 'false'}"]
    read = OmegaConf.select(cfg, "encoder.num_frames", default=1)
    if read not in (1, frames):
        return [f"encoder.num_frames={read}: the dataset has {frames} frame(s) per sample; set encoder.num_frames="
                f"{frames} (all at once) or 1 (each frame alone, merged by the temporal head)"]
    return []


def _subset_problems(cfg: DictConfig) -> list[str]:
    """``dataset.train_fraction`` in (0, 1] and ``dataset.subset_draw`` a whole number >= 0."""
    dataset = OmegaConf.select(cfg, "dataset")
    try:
        requested_subset(dataset if dataset is not None else {})
    except ValueError as error:
        return [str(error)]
    return []


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` cannot hold run folders, or None when a file can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return f"{error.strerror or error}"
    return None


def config_problems(cfg: DictConfig, check_work_dir: bool = True) -> list[str]:
    """One line per config value that cannot work, naming the key, the value and what it must be."""
    problems = []
    absent = object()
    for key, (check, valid) in RULES.items():
        if OmegaConf.select(cfg, key, default=absent) is absent:
            continue
        value = OmegaConf.select(cfg, key)
        if not check(value):
            problems.append(f"{key}={value!r}: must be {valid}")
    problems += _window_problems(cfg)
    problems += _weights_problems(cfg)
    problems += _mode_setting_problems(cfg)
    problems += _pairing_problems(cfg)
    problems += _unknown_setting_problems(cfg, "decoder")
    problems += _frames_problems(cfg)
    problems += _subset_problems(cfg)
    problems += pangaea_problems(cfg)
    if check_work_dir and "work_dir" in cfg:
        why = _unwritable(Path(os.path.expanduser(str(cfg.work_dir))))
        if why:
            problems.append(f"work_dir={cfg.work_dir}: cannot write there ({why}); choose a writable folder")
    return problems


def check_config(cfg: DictConfig, check_work_dir: bool = True) -> None:
    """Raise :class:`ConfigError` listing every problem of :func:`config_problems`."""
    problems = config_problems(cfg, check_work_dir)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
