"""The training split kept on the device (``data_on_device=true``): each tile read and put through the
deterministic steps before its crop (normalisation, band mapping) once, then held as device tensors; each
epoch's crops and the steps after them (flips) run on the device.

The crops are those of the plain path: the same per-sample generator
(:func:`~benchmark.data.preprocessing.sample_rng`), which the steps before the crop do not draw from, gives
the same windows and flips, and the batches are identical (``tests/test_resident.py``). What it saves is
reading and normalising every tile every epoch, and on a GPU the copy of every batch from host memory.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from benchmark.data.preprocessing import PreprocessedDataset, RandomCrop, Sample, sample_rng

log = logging.getLogger(__name__)


class ResidentDataError(ValueError):
    """The training split cannot be kept on the device as configured."""


def split_at_crop(steps: list[Any]) -> tuple[list[Any], list[Any]]:
    """``(before, from_crop)``: the steps up to the first random one, which must be the crop, and the rest."""
    first_random = next((i for i, step in enumerate(steps) if not getattr(step, "deterministic", False)), len(steps))
    if first_random < len(steps) and not isinstance(steps[first_random], RandomCrop):
        raise ResidentDataError(
            f"data_on_device=true keeps the training tiles after the steps before their random crop, but "
            f"{type(steps[first_random]).__name__} is random and comes before any crop: move it after the "
            "RandomCrop in the preprocessing config, or set data_on_device=false")
    return list(steps[:first_random]), list(steps[first_random:])


def sample_on(sample: Sample, device: torch.device) -> Sample:
    return {**sample, "image": {m: x.to(device) for m, x in sample["image"].items()},
            "target": sample["target"].to(device)}


def check_fits(nbytes: int, device: torch.device) -> None:
    """Stop before filling the GPU: the split (estimated from its first tile) must leave a fifth of the
    free memory for training."""
    if device.type != "cuda":
        return
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes > 0.8 * free:
        raise ResidentDataError(
            f"data_on_device=true: the training split needs about {nbytes / 2**30:.1f} GiB on {device}, which has "
            f"{free / 2**30:.1f} GiB free: set data_on_device=false (or train on a smaller split)")


class ResidentTiles(Dataset):
    """``tiles`` (a training split with its steps) held on ``device`` after the deterministic steps before
    the crop; ``[(index, epoch)]`` gives the sample the plain split gives, as tensors on ``device``."""

    def __init__(self, tiles: PreprocessedDataset, device: torch.device, show_progress: bool = True) -> None:
        before, self.steps = split_at_crop(tiles.steps)
        self.seed = tiles.seed
        unused = np.random.default_rng(0)  # deterministic steps draw nothing
        self.samples: list[Sample] = []
        for index in tqdm(range(len(tiles.dataset)), desc="training split to the device", disable=not show_progress,
                          leave=False):
            sample = dict(tiles.dataset[index])
            for step in before:
                sample = step(sample, unused)
            self.samples.append(sample_on(sample, device))
            if index == 0:
                check_fits(self.nbytes() * len(tiles.dataset), device)
        log.info("training split on %s: %d tiles, %.1f MiB", device, len(self.samples), self.nbytes() / 2**20)

    def nbytes(self) -> int:
        return sum(x.nbytes for s in self.samples for x in [*s["image"].values(), s["target"]])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        index, epoch = key
        rng = sample_rng(self.seed, epoch, index)
        sample = dict(self.samples[index])
        for step in self.steps:
            sample = step(sample, rng)
        return sample
