"""Preprocessing steps on samples ``{"image": {modality: (C, T, H, W)}, "target": (H, W), "meta"}``.

Steps are composed in ``configs/preprocessing/*.yaml`` (one list per split) and receive their
arguments from the dataset and encoder configs by interpolation, so a step never needs to know which
dataset or encoder it serves. Random steps draw from the ``numpy`` generator they are given, which
the dataset wrapper seeds from (seed, epoch, index): the same sample gets the same crop whatever the
number of workers or processes, and a resumed run repeats the uninterrupted one.

Each step says whether it is ``deterministic`` (draws nothing from the generator and gives the same
output for the same input): the frozen-encoder feature cache can precompute everything but the choice
of the training crop, so it accepts only deterministic steps besides :class:`RandomCrop`.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from benchmark.data.bands import canonical_band_dict
from benchmark.data.windows import pad_to_window, window_grid, window_starts

log = logging.getLogger(__name__)

Sample = dict[str, Any]
_reported: set[str] = set()


def log_once(level: int, message: str) -> None:
    """Log ``message`` the first time only (each split builds its own band adapter)."""
    if message not in _reported:
        _reported.add(message)
        log.log(level, message)


class BandConfigError(ValueError):
    """The dataset cannot provide what the encoder needs."""


class NormalizeMeanStd:
    """``(x - mean) / std`` per band, with the dataset's statistics ``{modality: [per band]}``."""

    deterministic = True

    def __init__(self, data_mean: Mapping[str, Sequence[float]], data_std: Mapping[str, Sequence[float]]) -> None:
        self.mean = {m: torch.tensor(v, dtype=torch.float32).view(-1, 1, 1, 1) for m, v in data_mean.items()}
        self.std = {m: torch.tensor(v, dtype=torch.float32).view(-1, 1, 1, 1) for m, v in data_std.items()}

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        sample["image"] = {m: (x - self.mean[m]) / self.std[m] for m, x in sample["image"].items()}
        return sample


class BandAdapter:
    """Select and order the dataset's bands as the encoder expects them, by name.

    Bands the encoder needs but the dataset lacks are filled with 0, the mean after normalisation
    (reported once). A whole modality the encoder needs but the dataset lacks is a config error.
    """

    deterministic = True

    def __init__(self, dataset_bands: Mapping[str, Sequence[str]], encoder_bands: Mapping[str, Sequence[str]]) -> None:
        dataset_bands = canonical_band_dict(dataset_bands)
        encoder_bands = canonical_band_dict(encoder_bands)
        missing_modalities = sorted(set(encoder_bands) - set(dataset_bands))
        if missing_modalities:
            raise BandConfigError(
                f"The encoder needs modality {', '.join(missing_modalities)} but the dataset only has "
                f"{', '.join(dataset_bands)}. Choose an encoder for {', '.join(dataset_bands)} data "
                "(e.g. an optical variant) or a dataset that provides that modality."
            )
        self.plan: dict[str, list[int | None]] = {}
        for modality, wanted in encoder_bands.items():
            have = dataset_bands[modality]
            self.plan[modality] = [have.index(b) if b in have else None for b in wanted]
            filled = [b for b in wanted if b not in have]
            if filled:
                log_once(
                    logging.WARNING,
                    f"The dataset lacks {modality} band(s) {', '.join(filled)} that the encoder "
                    "expects: they are filled with the normalised mean (0).",
                )
            unused = [b for b in have if b not in wanted]
            if unused:
                log_once(logging.INFO, f"Dataset {modality} band(s) {', '.join(unused)} are not used by the encoder.")

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        adapted = {}
        for modality, plan in self.plan.items():
            x = sample["image"][modality]
            zeros = x.new_zeros(x.shape[1:])
            adapted[modality] = torch.stack([x[i] if i is not None else zeros for i in plan])
        sample["image"] = adapted
        return sample


class RandomCrop:
    """A ``size`` x ``size`` crop at a position drawn uniformly from the grid of window starts at
    ``stride`` (:func:`~benchmark.data.windows.window_grid`); ``stride=1`` allows every position
    (PANGAEA's random crop). Smaller tiles are padded first (image with 0 = the normalised mean,
    target with ``ignore_index``).

    A coarser stride gives each tile a fixed, small set of windows whose frozen-encoder features can
    be cached; the draw is the same whether they are cached or not (:meth:`draw`).
    """

    deterministic = False

    def __init__(self, size: int, ignore_index: int = -1, stride: int = 1) -> None:
        if stride is None or not 1 <= stride <= size:
            raise ValueError(f"RandomCrop stride must be in [1, size={size}], got {stride} (train_crop_stride)")
        self.size = int(size)
        self.ignore_index = int(ignore_index)
        self.stride = int(stride)

    def grid(self, height: int, width: int) -> list[tuple[int, int]]:
        """``(top, left)`` of the windows of a ``height`` x ``width`` (padded) tile, in draw order."""
        return window_grid(height, width, self.size, self.stride)

    def draw(self, height: int, width: int, rng: np.random.Generator) -> int:
        """Index in :meth:`grid` of the window ``rng`` picks for a (padded) tile: a row, then a column."""
        rows = len(window_starts(height, self.size, self.stride))
        columns = len(window_starts(width, self.size, self.stride))
        return int(rng.integers(rows)) * columns + int(rng.integers(columns))

    def windows(self, sample: Sample) -> list[Sample]:
        """Every window of the grid, in :meth:`grid` order."""
        sample = pad_to(sample, self.size, self.ignore_index)
        return [self.cut(sample, top, left) for top, left in self.grid(*sample["target"].shape)]

    def cut(self, sample: Sample, top: int, left: int) -> Sample:
        rows, columns = slice(top, top + self.size), slice(left, left + self.size)
        return {
            **sample,
            "image": {m: x[..., rows, columns] for m, x in sample["image"].items()},
            "target": sample["target"][rows, columns],
        }

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        sample = pad_to(sample, self.size, self.ignore_index)
        h, w = sample["target"].shape
        top, left = self.grid(h, w)[self.draw(h, w, rng)]
        return self.cut(sample, top, left)


class RandomFlip:
    """Horizontal / vertical flips with the given probabilities (0 disables)."""

    def __init__(self, horizontal: float = 0.5, vertical: float = 0.5) -> None:
        self.horizontal = float(horizontal)
        self.vertical = float(vertical)

    @property
    def deterministic(self) -> bool:
        return not (self.horizontal or self.vertical)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for probability, axis in ((self.horizontal, -1), (self.vertical, -2)):
            if probability and rng.random() < probability:
                sample["image"] = {m: x.flip(axis) for m, x in sample["image"].items()}
                sample["target"] = sample["target"].flip(axis)
        return sample


class Resize:
    """Resize image (bilinear) and target (nearest) to ``size`` x ``size``."""

    deterministic = True

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        size = (self.size, self.size)
        resized = {}
        for modality, x in sample["image"].items():
            c, t, h, w = x.shape
            y = F.interpolate(x.reshape(c * t, 1, h, w), size=size, mode="bilinear", align_corners=False)
            resized[modality] = y.reshape(c, t, *size)
        sample["image"] = resized
        target = sample["target"][None, None].float()
        sample["target"] = F.interpolate(target, size=size, mode="nearest")[0, 0].long()
        return sample


def pad_to(sample: Sample, size: int, ignore_index: int) -> Sample:
    """Pad image (with 0) and target (with ``ignore_index``) at the bottom/right so that both sides are at
    least ``size``; the sample is updated in place only when it needs padding."""
    if min(sample["target"].shape) < size:
        sample["image"] = {m: pad_to_window(x, size) for m, x in sample["image"].items()}
        sample["target"] = pad_to_window(sample["target"], size, ignore_index)
    return sample


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of the random steps for sample ``index`` in ``epoch``."""
    return np.random.default_rng([seed, epoch, index])


class PreprocessedDataset(Dataset):
    """Applies a list of steps to a dataset's samples.

    Indices may be plain ints (evaluation) or ``(index, epoch)`` pairs from an epoch-aware sampler
    (training), which seed the random steps so that crops and flips are reproducible.
    """

    def __init__(self, dataset: Dataset, steps: Sequence[Any], seed: int = 0) -> None:
        self.dataset = dataset
        self.steps = list(steps)
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        rng = sample_rng(self.seed, epoch, index)
        sample = dict(self.dataset[index])  # steps replace entries; never alter the source's dict
        for step in self.steps:
            sample = step(sample, rng)
        return sample
