"""The PANGAEA config keys this benchmark accepts, and what becomes of each.

Commands and configs written for PANGAEA keep working: its keys stay in our configs with PANGAEA's
spelling, and this module is the one place that handles them. Each is either

* ``ignored``: it changes nothing here (logged once at start-up, not part of the job identity); a value
  that would ask for something this benchmark does not do is a config error naming what is supported;
* ``alias``: PANGAEA's spelling of one of our keys, which takes its value before the run starts;
* ``read``: a key we use too, but not a parameter of every dataset class.

Keys of ``cfg.dataset`` reach the dataset class only where its constructor has a parameter of that name
(:func:`dataset_arguments`): ``HLSBurnScars`` takes none of them, ``SyntheticBurnScars`` takes ``img_size``.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Literal

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from benchmark.models.segmentor import MODES, resolve_mode

log = logging.getLogger(__name__)


def _wandb_switch(cfg: DictConfig) -> bool:
    """``use_wandb`` or PANGAEA's ``task.trainer.use_wandb``: either one turns Weights & Biases on."""
    ours, theirs = cfg.use_wandb, cfg.task.trainer.use_wandb
    if ours and theirs is False:  # the trainer key defaults to ${use_wandb}: someone set it to false
        raise ValueError(
            "use_wandb=true contradicts task.trainer.use_wandb=false: they are one switch "
            "(task.trainer.use_wandb is PANGAEA's spelling). Give only one of the two."
        )
    return bool(ours or theirs)


def _mode(cfg: DictConfig) -> str:
    """``mode`` after PANGAEA's ``finetune`` (an unknown mode is left to the start-up checks to report)."""
    return resolve_mode(cfg.mode, cfg.finetune) if cfg.mode in MODES else cfg.mode


def _train_fraction(cfg: DictConfig) -> Any:
    """``dataset.train_fraction`` after PANGAEA's ``limited_label_train`` (which wins over the default)."""
    theirs, ours = cfg.limited_label_train, cfg.dataset.get("train_fraction", 1.0)
    if theirs is None:
        return ours
    if ours != 1.0 and ours != theirs:
        raise ValueError(
            f"limited_label_train={theirs} contradicts dataset.train_fraction={ours}: they are one setting "
            "(limited_label_train is PANGAEA's spelling). Give only one of the two."
        )
    return theirs


@dataclass(frozen=True)
class PangaeaKey:
    """What this benchmark does with one PANGAEA config key."""

    action: Literal["ignored", "alias", "read"]
    why: str                                        # logged at start-up; in the error for an unsupported value
    supported: tuple[Any, ...] | None = None        # the values that work (None: any)
    alias_of: str | None = None                     # our key that takes the value of ``resolve``
    resolve: Callable[[DictConfig], Any] | None = None


PANGAEA_KEYS: dict[str, PangaeaKey] = {
    "dataset.dataset_name": PangaeaKey("ignored", "a dataset is named by its config group (dataset=...)"),
    "dataset.img_size": PangaeaKey(
        "read", "the tile side: encoder.input_size under preprocessing=seg_resize_input_layer, and the scene "
        "size of dataset=synthetic_burnscars",
    ),
    "dataset.multi_temporal": PangaeaKey(
        "read", "the frames per sample T (false or 1: single date), checked against the dataset; Prithvi reads the "
        "T frames at once, single-date encoders run per frame, and a temporal head (temporal=ltae|linear|mean) "
        "merges the frames' features before the decoder",
    ),
    "dataset.multi_modal": PangaeaKey(
        "ignored", "a dataset's modalities are the keys of dataset.bands", supported=(False, True),
    ),
    "dataset.distribution": PangaeaKey(
        "ignored", "class frequencies for PANGAEA's weighted_cross_entropy criterion, which this benchmark "
        "does not have",
    ),
    "task.evaluator.inference_mode": PangaeaKey(
        "ignored", "full tiles are always evaluated through encoder-size sliding windows; for one pass over "
        "the whole tile use preprocessing=seg_resize_input_layer, which sizes the encoder to the tile",
        supported=("sliding",),
    ),
    "task.trainer.use_wandb": PangaeaKey(
        "alias", "PANGAEA's spelling of use_wandb", supported=(True, False), alias_of="use_wandb",
        resolve=_wandb_switch,
    ),
    "finetune": PangaeaKey(
        "alias", "true = unfrozen, false = frozen", supported=(None, True, False), alias_of="mode",
        resolve=_mode,
    ),
    "limited_label_train": PangaeaKey(
        "alias", "the share of the training tiles to train on", alias_of="dataset.train_fraction",
        resolve=_train_fraction,
    ),
    "limited_label_strategy": PangaeaKey(
        "ignored", "label subsets are always stratified (by burn-pixel share, benchmark/data/subsets.py)",
        supported=(None, "stratified"),
    ),
    "limited_label_val": PangaeaKey(
        "ignored", "models are chosen on the whole validation split", supported=(None, 1, 1.0),
    ),
    "stratification_bins": PangaeaKey(
        "ignored", "label subsets are stratified by burn-pixel share in bins of their own (benchmark/data/subsets.py)",
    ),
    "data_replicate": PangaeaKey(
        "ignored", "each epoch draws one crop per training tile; raise task.trainer.n_epochs for more steps",
        supported=(None, 1),
    ),
    "use_final_ckpt": PangaeaKey(
        "ignored", "the checkpoint of the best validation epoch is tested (checkpoints/last.pt holds the final "
        "one: python benchmark/run.py --config-name=test ckpt_dir=<run dir> ckpt=last)", supported=(None, False),
    ),
}

# Keys that change nothing a run computes: they do not make a new job (benchmark.rundir).
IGNORED_KEYS = frozenset(key for key, entry in PANGAEA_KEYS.items() if entry.action == "ignored")
DATASET_KEYS = tuple(key.removeprefix("dataset.") for key in PANGAEA_KEYS if key.startswith("dataset."))

_ABSENT = object()


def _show(value: Any) -> str:
    """``value`` as it would be typed on the command line (``false``, ``[0.9, 0.1]``, ``sliding``)."""
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return value if isinstance(value, str) else json.dumps(value)


def _is_supported(value: Any, supported: tuple[Any, ...]) -> bool:
    # by type too: 1 == True, and multi_temporal=1 must not pass as a boolean (nor use_wandb=1)
    return any(type(value) is type(option) and value == option for option in supported)


def pangaea_problems(cfg: DictConfig) -> list[str]:
    """One line per PANGAEA key whose value cannot work here, naming the key and the values that can."""
    problems = []
    for key, entry in PANGAEA_KEYS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        if entry.supported is not None and not _is_supported(value, entry.supported):
            options = " or ".join(_show(option) for option in entry.supported)
            problems.append(f"{key}={_show(value)}: must be {options}; {entry.why}")
        elif entry.resolve is not None:
            try:
                entry.resolve(cfg)
            except ValueError as error:
                problems.append(str(error))
    return problems


def frame_count(value: Any) -> int:
    """PANGAEA's ``multi_temporal`` (false, null or a count >= 1) as a number of frames per sample."""
    if value is False or value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"dataset.multi_temporal={value!r}: must be false or the number of frames per sample (>= 1)")
    return value


def dataset_frames(dataset: Any) -> int:
    """The frames per sample of a dataset config (its ``multi_temporal``)."""
    return frame_count(dataset.get("multi_temporal", False))


def runs_per_frame(cfg: Any) -> bool:
    """A single-date encoder on multi-temporal data: it runs on each frame (the dataset has T > 1 frames,
    the encoder reads ``encoder.num_frames``, 1 unless set). Either way the ``temporal`` head merges the
    frames' features."""
    return dataset_frames(cfg.dataset) > 1 and int(cfg.encoder.get("num_frames", 1)) == 1


def apply_aliases(cfg: DictConfig) -> None:
    """Give our keys the values of their PANGAEA spellings (``finetune`` -> ``mode``, ``task.trainer.use_wandb``
    -> ``use_wandb``), so that the run reads one key each. Call after :func:`pangaea_problems` found none."""
    for key, entry in PANGAEA_KEYS.items():
        if entry.resolve is not None and OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT:
            OmegaConf.update(cfg, entry.alias_of, entry.resolve(cfg))


def log_pangaea_keys(cfg: DictConfig) -> None:
    """One log line per PANGAEA key of ``cfg``: ignored (and why), or which key of ours it sets."""
    for key, entry in PANGAEA_KEYS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT or value is None:
            continue
        if entry.action == "alias":
            what = f"sets {entry.alias_of}={_show(OmegaConf.select(cfg, entry.alias_of))} ({entry.why})"
        else:
            what = f"is ignored: {entry.why}" if entry.action == "ignored" else f"is used as {entry.why}"
        log.info("PANGAEA key %s=%s %s", key, _show(value), what)


def dataset_arguments(dataset: DictConfig) -> dict[str, Any]:
    """``dataset`` resolved, without the PANGAEA keys that its ``_target_`` class has no parameter for."""
    arguments = OmegaConf.to_container(dataset, resolve=True)
    parameters = inspect.signature(get_class(arguments["_target_"])).parameters
    for key in DATASET_KEYS:
        if key not in parameters:
            arguments.pop(key, None)
    return arguments
