"""What every dataset here shares: its split, bands per modality, statistics and label description as the
config gives them, and the decoded-raster cache. Each dataset class adds its file layout and its scenes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from torch.utils.data import Dataset

from benchmark.data.bands import canonical_band_dict
from benchmark.data.raster_cache import RasterCache
from benchmark.data.validation import check_label_config


class SceneDataset(Dataset):
    """Base of the datasets: ``describe`` sets and checks the config's part; ``load`` reads a raster.

    Samples are ``{"image": {modality: float32 (C, T, H, W)}, "target": int64 (H, W), "meta": {"stem",
    "index"}}`` with ``frames`` T frames oldest first (``dataset.multi_temporal`` must say the same).
    """

    frames = 1

    def describe(
        self, root_path: str, split: str, splits: Sequence[str], bands: Mapping[str, Sequence[str]],
        data_mean: Mapping[str, Sequence[float]], data_std: Mapping[str, Sequence[float]], ignore_index: int,
        num_classes: int, classes: Sequence[str], cache_dir: str | None, modalities: Sequence[str] = ("optical",),
    ) -> None:
        """Keep the config's description of the data; refuse a split or modality the dataset lacks and
        statistics or class names that disagree with the bands and classes."""
        if split not in splits:
            raise ValueError(f"split must be one of {', '.join(splits)}, got {split!r}")
        self.root_path, self.split = Path(root_path), split
        self.bands = canonical_band_dict(bands)
        unknown = sorted(set(self.bands) - set(modalities))
        if unknown or not self.bands:
            raise ValueError(f"dataset.bands has modalities {sorted(self.bands)}; {type(self).__name__} has "
                             f"{', '.join(modalities)}")
        self.data_mean = {k: [float(v) for v in vs] for k, vs in data_mean.items()}
        self.data_std = {k: [float(v) for v in vs] for k, vs in data_std.items()}
        self.ignore_index, self.num_classes, self.classes = int(ignore_index), int(num_classes), list(classes)
        self.raster_cache = RasterCache(cache_dir) if cache_dir else None
        check_label_config(self.bands, self.data_mean, self.data_std, self.classes, self.num_classes)

    def load(self, path: Path, read: Callable[[Path], np.ndarray]) -> np.ndarray:
        """``read(path)``, through the decoded-raster cache when there is one."""
        return read(path) if self.raster_cache is None else self.raster_cache.load(path, read)

    def __len__(self) -> int:
        return len(self.scenes)
