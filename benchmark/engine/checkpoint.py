"""Run checkpoints: atomic save, safe load, and the random-number state a resumed run needs.

A checkpoint holds plain values and tensors only (the RNG state included, see :func:`rng_state`), so it
loads with ``weights_only=True`` through :func:`~benchmark.engine.safe_load.safe_torch_load`.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from benchmark.atomic import remove_interrupted_writes, write_atomically
from benchmark.engine.safe_load import CheckpointReadError, PathLike, safe_torch_load

log = logging.getLogger(__name__)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` that never leaves a half-written file under ``path``."""
    write_atomically(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | Path, trusted: Iterable[PathLike] | None = None) -> dict[str, Any]:
    """Read a run checkpoint written by :func:`save_checkpoint` (on CPU, tensors-only unpickling).

    ``trusted``: files to unpickle in full (``trusted_pickle_files``); default: those of the enclosing
    :func:`~benchmark.engine.safe_load.trusted_pickle_files` block.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    hint = ("Checkpoints are written atomically, so it was damaged or cut short after it was written "
            "(a full disk, an incomplete copy?): restore it, or use another checkpoint of the run.")
    checkpoint = safe_torch_load(path, trusted, damaged_hint=hint)
    if not isinstance(checkpoint, dict) or not {"model", "epoch"} <= set(checkpoint):
        found = f"the keys {sorted(map(str, checkpoint))[:8]}" if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointReadError(
            f"{path} is not a checkpoint written by benchmark/run.py (expected the keys 'model' and 'epoch', "
            f"found {found}); an encoder's release file goes in encoder.encoder_weights instead"
        )
    return checkpoint


def rng_state() -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) RNG states as tensors, ints and tuples only.

    Plain values keep run checkpoints loadable with ``weights_only=True``.
    """
    version, internal, gauss_next = random.getstate()
    kind, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": (int(version), tuple(int(v) for v in internal), gauss_next),
        "numpy": {
            "bit_generator": str(kind),
            "key": torch.from_numpy(key.astype(np.int64)),  # MT19937's 624 uint32 words
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the RNGs back to ``state`` from :func:`rng_state` (or the numpy-tuple form of older checkpoints)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (
            numpy_state["bit_generator"],
            numpy_state["key"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices); loader workers are seeded by the loader itself."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def clear_run_folder(run_dir: Path) -> None:
    """Remove what an attempt that never wrote ``last.pt`` left in ``run_dir``: metrics, results, checkpoints."""
    remove_partial_writes(run_dir)
    stale = [run_dir / "metrics.jsonl", run_dir / "results.json", *(run_dir / "checkpoints").glob("*.pt")]
    for path in stale:
        if path.is_file():
            log.info("Removing %s left by an interrupted earlier attempt", path)
            path.unlink()


def keep_epochs_of(run_dir: Path, last_epoch: int) -> None:
    """Before resuming after ``last_epoch`` (0-based): drop partial writes and the metric lines of later
    epochs (they will be run again; a line cut short by the kill belongs to a later epoch too)."""
    remove_partial_writes(run_dir)
    path = run_dir / "metrics.jsonl"
    if path.exists():
        lines = path.read_text().splitlines()[: last_epoch + 1]
        path.write_text("".join(line + "\n" for line in lines))


def remove_partial_writes(run_dir: Path) -> None:
    for folder in (run_dir, run_dir / "checkpoints"):
        for path in remove_interrupted_writes(folder):
            log.info("Removed %s, the remains of a write that was interrupted", path)
