"""Synthetic HLS Burn Intensity (WIP): the layout of :mod:`benchmark.data.burnintensity`, generated from a seed.

Each case is a vegetated scene seen three times. Before the fire (pre) it is intact; during it, part of
the burn is active (smoke brightens the visible bands); after it (post) the burned area shows low NIR and
high SWIR2, stronger with severity. The label (in ``pre/``) is the severity class 0-4 reached in ``post``,
so the label is only readable from the change between frames: a temporal model has to use their order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine

from benchmark.data.burnintensity import FRAMES, HLSBurnIntensity, case_files
from benchmark.data.synthetic import SURFACES, BURN, blob, ensure_generated, smooth_noise, write_atomically

SMOKE = np.asarray((0.20, 0.21, 0.22, 0.24, 0.20, 0.15), dtype=np.float32)


def generate_case(rng: np.random.Generator, size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Three frames (6, size, size) float32 reflectance x 10000, oldest first, and the severity (size, size) int16."""
    base = np.asarray(SURFACES["vegetation"], dtype=np.float32)[:, None, None] * (1 + 0.1 * smooth_noise(rng, size, 6))[None]
    severity = np.zeros((size, size), dtype=np.float32)
    for _ in range(int(rng.integers(1, 3))):
        severity = np.maximum(severity, blob(rng, size) * rng.uniform(0.5, 1.0))
    label = np.digitize(severity, [0.05, 0.3, 0.5, 0.7]).astype(np.int16)  # 0 no burn .. 4 high
    burned = np.asarray(BURN, dtype=np.float32)[:, None, None]
    post = (1 - severity[None]) * base + severity[None] * burned
    during = base + 0.5 * (severity > 0.3)[None] * (SMOKE[:, None, None] - base)
    frames = [base, during, post]
    return [((f + rng.normal(0, 0.004, f.shape)) * 10_000).astype(np.float32) for f in frames], label


def generate_burnintensity(root: str | Path, num_train: int, num_test: int, img_size: int, seed: int) -> Path:
    params = {"num_train": num_train, "num_test": num_test, "img_size": img_size, "seed": seed}
    counts = {"train": num_train, "val": num_test, "test": num_test}

    def write(tmp: Path) -> None:
        for frame in FRAMES:
            (tmp / frame).mkdir()
        number = 0
        for split, n in counts.items():
            cases = []
            for i in range(n):
                frames, label = generate_case(np.random.default_rng([seed, list(counts).index(split), i]), img_size)
                case = f"synthetic_fire_{number:04d}"
                paths, label_path = case_files(tmp, case)
                profile = dict(driver="GTiff", width=img_size, height=img_size, crs="EPSG:32612",
                               transform=Affine(30.0, 0, 400_000.0 + number * img_size * 30.0, 0, -30.0, 4_500_000.0))
                for path, frame in zip(paths, frames):
                    with rasterio.open(path, "w", count=6, dtype="float32", **profile) as dst:
                        dst.write(frame)
                with rasterio.open(label_path, "w", count=1, dtype="int16", **profile) as dst:
                    dst.write(label, 1)
                cases.append(f"HLS_{case}.tif")
                number += 1
            (tmp / f"{split}.txt").write_text("".join(c + "\n" for c in cases))

    return write_atomically(root, params, write)


class SyntheticHLSBurnIntensity(HLSBurnIntensity):
    """HLS Burn Intensity look-alike generated under ``root_path`` on first use."""

    def __init__(self, *args: Any, num_train: int = 40, num_test: int = 12, img_size: int = 224, generator_seed: int = 0,
                 **kwargs: Any) -> None:
        self.generator_settings = {"num_train": int(num_train), "num_test": int(num_test), "img_size": int(img_size),
                                   "seed": int(generator_seed)}
        super().__init__(*args, **kwargs)

    def ensure_files(self) -> None:
        ensure_generated(self.root_path, self.generator_settings, generate_burnintensity, "HLS Burn Intensity")
