"""HLS Burn Intensity (IBM / NASA, MIT licence; hub ``ibm-nasa-geospatial/burn_intensity``): three HLS frames
per fire (pre-, during- and post-fire) and a burn-severity map. WIP: layout as the dataset card and
TerraTorch's loader describe it; the split lists are not published on the hub (decide their source).

Layout under ``root_path``::

    pre/HLS_<case>.tif      6 bands B2, B3, B4, B8A, B11, B12 (reflectance x 10000), 224 x 224
    pre/BS_<case>.tif       burn severity: 0 no burn, 1 unburned to very low, 2 low, 3 moderate, 4 high
    during/HLS_<case>.tif
    post/HLS_<case>.tif
    {train,val,test}.txt    one ``HLS_<case>.tif`` per line

Samples are ``{"image": {"optical": (6, 3, H, W)}, ...}`` with frames oldest first: pre, during, post.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from benchmark.data.bands import canonical_band_dict
from benchmark.data.hlsburnscars import read_image, read_mask, replace_nodata
from benchmark.data.raster_cache import RasterCache
from benchmark.data.validation import DatasetFilesError, SplitSpec, check_label_config, check_split

FRAMES = ("pre", "during", "post")  # oldest first
SPLITS = ("train", "val", "test")


def case_files(root: Path, case: str) -> tuple[list[Path], Path]:
    """The frames (oldest first) and the label of ``case``."""
    return [root / frame / f"HLS_{case}.tif" for frame in FRAMES], root / "pre" / f"BS_{case}.tif"


def read_split(root: Path, split: str) -> list[str]:
    path = root / f"{split}.txt"
    if not path.is_file():
        raise DatasetFilesError(f"HLS Burn Intensity: {path} is missing (one HLS_<case>.tif per line); put the split "
                                "lists beside pre/, during/ and post/")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    bad = [n for n in names if not (n.startswith("HLS_") and n.endswith(".tif"))]
    if bad:
        raise DatasetFilesError(f"{path} lists {bad[0]!r}: each line must be HLS_<case>.tif")
    return [n[len("HLS_"):-len(".tif")] for n in names]


class HLSBurnIntensity(Dataset):
    """Burn severity from three HLS frames (see the module docstring for the layout)."""

    def __init__(
        self,
        root_path: str,
        split: str,
        bands: Mapping[str, Sequence[str]],
        data_mean: Mapping[str, Sequence[float]],
        data_std: Mapping[str, Sequence[float]],
        ignore_index: int = -1,
        num_classes: int = 5,
        classes: Sequence[str] = ("No burn", "Unburned to very low", "Low", "Moderate", "High"),
        cache_dir: str | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.root_path, self.split = Path(root_path), split
        self.bands = canonical_band_dict(bands)
        self.data_mean = {k: [float(v) for v in vs] for k, vs in data_mean.items()}
        self.data_std = {k: [float(v) for v in vs] for k, vs in data_std.items()}
        self.ignore_index, self.num_classes, self.classes = int(ignore_index), int(num_classes), list(classes)
        self.raster_cache = RasterCache(cache_dir) if cache_dir else None
        check_label_config(self.bands, self.data_mean, self.data_std, self.classes, self.num_classes)
        self.ensure_files()
        cases = read_split(self.root_path, split)
        missing = [str(p) for case in cases for p in (*case_files(self.root_path, case)[0], case_files(self.root_path, case)[1]) if not p.is_file()]
        if missing:
            raise DatasetFilesError(f"HLS Burn Intensity ({split}) lacks {len(missing)} file(s), e.g. {missing[0]}")
        self.scenes = [(case, case_files(self.root_path, case)[0][0], case_files(self.root_path, case)[1]) for case in cases]
        for index, frame in enumerate(FRAMES):
            spec = SplitSpec(split, self.root_path / frame, len(self.bands["optical"]), self.ignore_index, self.num_classes,
                             self.data_mean["optical"], self.data_std["optical"], image_units="reflectance x 10000")
            check_split([(case, case_files(self.root_path, case)[0][index], label) for case, _, label in self.scenes],
                        spec, cache_dir, self.raster_cache)

    def ensure_files(self) -> None:
        if not all((self.root_path / frame).is_dir() for frame in FRAMES):
            raise DatasetFilesError(f"HLS Burn Intensity not found under {self.root_path}: extract pre.zip, during.zip and "
                                    "post.zip of huggingface.co/datasets/ibm-nasa-geospatial/burn_intensity there")

    def __len__(self) -> int:
        return len(self.scenes)

    def source_files(self) -> list[Path]:
        return [p for case, _, label in self.scenes for p in (*case_files(self.root_path, case)[0], label)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        case, _, label_path = self.scenes[index]
        load = (lambda path, read: read(path)) if self.raster_cache is None else self.raster_cache.load
        frames = [load(path, read_image) for path in case_files(self.root_path, case)[0]]
        target = load(label_path, read_mask).astype(np.int64)
        frames = [replace_nodata(frame, self.data_mean["optical"], target, self.ignore_index) for frame in frames]
        image = torch.from_numpy(np.ascontiguousarray(np.stack(frames, axis=1)))  # (C, T, H, W), oldest first
        return {"image": {"optical": image}, "target": torch.from_numpy(target), "meta": {"stem": case, "index": index}}
