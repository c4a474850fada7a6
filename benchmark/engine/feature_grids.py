"""The windows whose encoder features the cache stores, cut from a tile exactly as the run would cut them.

* train: every window of the training crop grid (:class:`~benchmark.data.preprocessing.RandomCrop`
  with ``stride`` > 1), after the split's deterministic steps;
* val/test: every window of the sliding-window grid over the full tile (``task.evaluator.stride``).

:func:`split_steps` finds the crop in a split's preprocessing and refuses random steps the cache
cannot follow.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from benchmark.data.preprocessing import RandomCrop, Sample
from benchmark.data.windows import crop_window, pad_to_window, window_grid
from benchmark.engine.feature_store import FeatureCacheError


class TrainGrid:
    """Training windows: every window of the crop grid of a tile, each with its target."""

    def __init__(self, crop: RandomCrop, after: Sequence[Any]) -> None:
        self.crop = crop
        self.after = list(after)

    def steps(self) -> list[Any]:
        """The preprocessing steps this grid applies to each window."""
        return [self.crop, *self.after]

    def key(self) -> dict[str, Any]:
        crop = self.crop
        return {"kind": "train crop grid", "size": crop.size, "stride": crop.stride, "ignore_index": crop.ignore_index}

    def windows(self, sample: Sample) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
        """The windows' images, in grid order, and their targets (windows, S, S)."""
        rng = np.random.default_rng(0)  # the steps after the crop are deterministic: they draw nothing
        windows = []
        for window in self.crop.windows(sample):
            for step in self.after:
                window = step(window, rng)
            windows.append(window)
        return [w["image"] for w in windows], torch.stack([w["target"] for w in windows])


class EvalGrid:
    """Evaluation windows: the sliding-window grid over a full tile, padded like the evaluator pads it;
    one target per tile."""

    def __init__(self, window: int, stride: int | None) -> None:
        self.window = window
        self.stride = stride

    def steps(self) -> list[Any]:
        return []

    def key(self) -> dict[str, Any]:
        return {"kind": "sliding window", "window": self.window, "stride": self.stride}

    def windows(self, sample: Sample) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
        """The windows' images, in grid order, and the tile's target (1, H, W), unpadded."""
        h, w = sample["target"].shape
        size = self.window
        image = {m: pad_to_window(x, size) for m, x in sample["image"].items()}
        crops = [crop_window(image, t, l, size) for t, l in window_grid(h, w, size, self.stride)]
        return crops, sample["target"][None]


Grid = TrainGrid | EvalGrid


def split_steps(steps: Sequence[Any], split: str) -> tuple[list[Any], RandomCrop | None, list[Any]]:
    """``(before, crop, after)`` around the split's RandomCrop (None if it has none).

    Raises :class:`FeatureCacheError` when any other step is random: it would change each window in a
    way cached features cannot follow (a flipped input does not give flipped ViT features).
    """
    crops = [i for i, step in enumerate(steps) if isinstance(step, RandomCrop)]
    if len(crops) > 1:
        raise FeatureCacheError(f"the {split} preprocessing crops {len(crops)} times; the feature cache handles one")
    at = crops[0] if crops else len(steps)
    random_steps = [type(s).__name__ for i, s in enumerate(steps) if i != at and not getattr(s, "deterministic", False)]
    if random_steps:
        raise FeatureCacheError(
            f"cache=true stores frozen-encoder features of fixed windows, but the {split} preprocessing step(s) "
            f"{', '.join(random_steps)} change each window at random, which cached features cannot follow "
            "(a flipped input does not give flipped ViT features). Disable them (e.g. RandomFlip probabilities 0) "
            "or set cache=false."
        )
    return list(steps[:at]), (steps[at] if crops else None), list(steps[at + 1 :])
