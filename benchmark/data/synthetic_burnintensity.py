"""Synthetic HLS Burn Intensity: the layout and dtypes of :mod:`benchmark.data.burnintensity`, generated from a seed.

Each case is a vegetated scene seen three times. Before the fire (``pre``) it is intact; during it, the
burning patches are half burnt and under smoke (bright in the visible bands); after it (``post``) each patch shows low
NIR and high SWIR2, stronger with its severity class (1-4; 0 outside the patches). A strip of the
severity map is NaN (no label), as masks read with NaN for no data. The files are float32 reflectance
x 10000, the case list and the split lists are written as the hub's and TerraTorch's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from benchmark.data.burnintensity import CASE_LIST, FRAMES, HLSBurnIntensity, case_files
from benchmark.data.synthetic import BURN, SURFACES, blob, ensure_generated, smooth_noise, write_atomically, write_raster

SMOKE = np.asarray((0.20, 0.21, 0.22, 0.24, 0.20, 0.15), dtype=np.float32)
SEVERITY = (0.0, 0.25, 0.5, 0.75, 1.0)  # share of the burn signature reached in post, per class


def generate_case(rng: np.random.Generator, size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Three frames (6, size, size) float32 reflectance x 10000, oldest first, and the severity map (size, size)
    float32 (class ids, NaN: no label)."""
    base = np.asarray(SURFACES["vegetation"], dtype=np.float32)[:, None, None] * (1 + 0.05 * smooth_noise(rng, size, 6))[None]
    label = np.zeros((size, size), dtype=np.float32)
    for severity_class in rng.choice(np.arange(1, 5), size=int(rng.integers(2, 4)), replace=False):
        label[blob(rng, size) > 0.5] = severity_class
    severity = np.asarray(SEVERITY, dtype=np.float32)[label.astype(np.int64)][None]
    burned = np.asarray(BURN, dtype=np.float32)[:, None, None]
    post = (1 - severity) * base + severity * burned
    during = 0.5 * (post + np.where(severity > 0, SMOKE[:, None, None], base))  # half burnt, under smoke
    label[: max(1, size // 16)] = np.nan
    return [((f + rng.normal(0, 0.004, f.shape)) * 10_000).astype(np.float32) for f in (base, during, post)], label


def write_case(root: Path, case: str, frames: list[np.ndarray], label: np.ndarray, number: int) -> None:
    size = label.shape[0]
    where = Affine(30.0, 0, 400_000.0 + number * size * 30.0, 0, -30.0, 4_500_000.0)  # cases side by side, 30 m
    paths, label_path = case_files(root, case)
    for path, frame in zip(paths, frames):
        write_raster(path, frame, where, "EPSG:32612")
    write_raster(label_path, label, where, "EPSG:32612", nodata=np.nan)


def generate_burnintensity(root: str | Path, num_train: int, num_test: int, img_size: int, seed: int) -> Path:
    """Write ``num_train`` train and ``num_test`` val and test cases under ``root``, atomically."""
    params = {"num_train": num_train, "num_test": num_test, "img_size": img_size, "seed": seed}
    counts = {"train": num_train, "val": num_test, "test": num_test}

    def write(tmp: Path) -> None:
        for frame in FRAMES:
            (tmp / frame).mkdir()
        cases: dict[str, list[str]] = {split: [] for split in counts}
        for split_number, (split, n) in enumerate(counts.items()):
            for i in range(n):
                case = f"synthetic_fire_{sum(map(len, cases.values())):04d}"
                frames, label = generate_case(np.random.default_rng([seed, split_number, i]), img_size)
                write_case(tmp, case, frames, label, sum(map(len, cases.values())))
                cases[split].append(case)
        for split, names in cases.items():
            (tmp / f"{split}.txt").write_text("".join(f"HLS_{c}.tif\n" for c in names))
        (tmp / CASE_LIST).write_text("Case_Name\n" + "".join(c + "\n" for names in cases.values() for c in names))

    return write_atomically(root, params, write)


class SyntheticHLSBurnIntensity(HLSBurnIntensity):
    """HLS Burn Intensity look-alike generated under ``root_path`` on first use (``num_train`` train cases,
    ``num_test`` val and test cases each, ``img_size`` px)."""

    def __init__(self, *args: Any, num_train: int = 40, num_test: int = 12, img_size: int = 224, generator_seed: int = 0,
                 **kwargs: Any) -> None:
        self.generator_settings = {"num_train": int(num_train), "num_test": int(num_test), "img_size": int(img_size),
                                   "seed": int(generator_seed)}
        super().__init__(*args, **kwargs)

    def ensure_files(self, auto_download: bool) -> None:
        ensure_generated(self.root_path, self.generator_settings, generate_burnintensity, "HLS Burn Intensity")
