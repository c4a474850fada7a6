"""Synthetic Sen1Floods11: the published layout, dtypes and georeferencing, generated from a seed.

Chips mix vegetation, bare soil and built-up land with flood water (irregular blobs, class 1) and some
permanent water (also class 1, as in the hand labels). Water is dark in Sentinel-2's NIR and SWIR and in
Sentinel-1's VV and VH (about -20 / -27 dB against -9 / -16 dB on land, with speckle), so both modalities
carry the signal. Some chips have clouds (S2 bright, label -1) or an S1 strip without data (NaN, label -1).
S2 is written as 13-band uint16 L1C digital numbers (reflectance x 10000), S1 as 2-band float32 dB, labels
as int16, all in EPSG:4326 at about 10 m; split lists as published (no header, S1 and label file names).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from tqdm import tqdm

from benchmark.data.sen1floods11 import HAND_LABELED, LAYERS, SPLIT_FOLDER, SPLIT_LISTS, Sen1Floods11, chip_file
from benchmark.data.synthetic import blob, ensure_generated, smooth_noise, write_atomically

# L1C top-of-atmosphere reflectance, bands B1..B8, B8A, B9, B10, B11, B12.
LAND = {
    "vegetation": (0.13, 0.11, 0.10, 0.08, 0.12, 0.25, 0.30, 0.32, 0.34, 0.06, 0.005, 0.20, 0.11),
    "soil": (0.14, 0.13, 0.14, 0.16, 0.19, 0.23, 0.25, 0.26, 0.28, 0.06, 0.006, 0.30, 0.24),
    "built": (0.15, 0.14, 0.15, 0.16, 0.18, 0.20, 0.21, 0.22, 0.23, 0.05, 0.006, 0.24, 0.20),
}
WATER = (0.11, 0.09, 0.08, 0.06, 0.05, 0.04, 0.035, 0.03, 0.025, 0.01, 0.003, 0.012, 0.008)
CLOUD = (0.45, 0.44, 0.45, 0.47, 0.48, 0.50, 0.51, 0.52, 0.52, 0.20, 0.02, 0.40, 0.30)
SAR_LAND, SAR_WATER = (-9.0, -16.0), (-20.0, -27.0)  # VV, VH in dB
EVENTS = ("Ghana", "Sri-Lanka", "India", "Mekong", "Nigeria", "Pakistan", "Paraguay", "Somalia", "Spain", "USA")
DEGREES = 10.0 / 111_320.0  # about 10 m


def generate_chip(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(S2 uint16 (13, size, size), S1 float32 (2, size, size) dB, label int16 (size, size))``."""
    fields = np.stack([smooth_noise(rng, size, int(rng.integers(3, 7))) for _ in LAND])
    cover = (fields + np.array([0.3, 0.0, -0.3])[:, None, None]).argmax(axis=0)
    water = np.zeros((size, size), dtype=np.float32)
    for _ in range(int(rng.choice([0, 1, 1, 2, 3]))):
        water = np.maximum(water, blob(rng, size))
    if rng.random() < 0.3:  # a river: permanent water, labelled water too
        water = np.maximum(water, (np.abs(smooth_noise(rng, size, 4)) < 0.06).astype(np.float32))
    label = (water > 0.5).astype(np.int16)
    alpha = np.clip(water * 1.5, 0.0, 1.0)[None]

    land = np.array([LAND[n] for n in LAND], dtype=np.float32)[cover].transpose(2, 0, 1)
    optical = (1 - alpha) * land + alpha * np.asarray(WATER, dtype=np.float32)[:, None, None]
    optical = optical * (1 + 0.06 * smooth_noise(rng, size, 10))[None] + rng.normal(0.0, 0.005, optical.shape)
    sar = (1 - alpha) * np.asarray(SAR_LAND, dtype=np.float32)[:, None, None] + alpha * np.asarray(SAR_WATER, dtype=np.float32)[:, None, None]
    sar = sar + 1.5 * smooth_noise(rng, size, 8)[None] + rng.normal(0.0, 1.2, sar.shape)  # relief and speckle

    if rng.random() < 0.2:
        cloud = blob(rng, size)
        optical = (1 - cloud[None]) * optical + cloud[None] * np.asarray(CLOUD, dtype=np.float32)[:, None, None]
        label[cloud > 0.5] = -1
    sar = sar.astype(np.float32)
    if rng.random() < 0.15:
        width = int(rng.integers(size // 16, size // 5))
        sar[:, :, -width:] = np.nan
        label[:, -width:] = -1
    optical = np.clip(np.round(optical * 10_000), 0, 65_535).astype(np.uint16)
    return optical, sar, label


def write_chip(root: Path, chip: str, layers: dict[str, np.ndarray], number: int) -> None:
    size = layers["label"].shape[-1]
    west, north = -60.0 + (number % 50) * size * DEGREES, -15.0 - (number // 50) * size * DEGREES
    profile = dict(driver="GTiff", width=size, height=size, crs="EPSG:4326",
                   transform=Affine(DEGREES, 0.0, west, 0.0, -DEGREES, north))
    for layer, array in layers.items():
        data = array if array.ndim == 3 else array[None]
        with rasterio.open(chip_file(root, layer, chip), "w", count=data.shape[0], dtype=data.dtype.name, **profile) as dst:
            dst.write(data)


def generate_sen1floods11(root: str | Path, num_train: int, num_test: int, img_size: int, seed: int) -> Path:
    """Write ``num_train`` train chips, ``num_test`` each for val and test and ``max(1, num_test // 2)`` Bolivia
    chips, with their split lists, under ``root``, atomically."""
    params = {"num_train": num_train, "num_test": num_test, "img_size": img_size, "seed": seed}
    counts = {"train": num_train, "val": num_test, "test": num_test, "bolivia": max(1, num_test // 2)}

    def write(tmp: Path) -> None:
        for folder in LAYERS.values():
            (tmp / HAND_LABELED / folder).mkdir(parents=True)
        (tmp / SPLIT_FOLDER).mkdir(parents=True)
        jobs = [(split, i) for split, n in counts.items() for i in range(n)]
        rows: dict[str, list[str]] = {split: [] for split in counts}
        for number, (split, i) in enumerate(tqdm(jobs, desc="generating synthetic Sen1Floods11", unit="chip")):
            event = "Bolivia" if split == "bolivia" else EVENTS[number % len(EVENTS)]
            chip = f"{event}_{100_000 + number}"
            optical, sar, label = generate_chip(np.random.default_rng([seed, list(counts).index(split), i]), img_size)
            write_chip(tmp, chip, {"optical": optical, "sar": sar, "label": label}, number)
            rows[split].append(f"{chip}_S1Hand.tif,{chip}_LabelHand.tif")
        for split, name in SPLIT_LISTS.items():
            (tmp / SPLIT_FOLDER / name).write_text("".join(row + "\n" for row in rows[split]))

    return write_atomically(root, params, write)


class SyntheticSen1Floods11(Sen1Floods11):
    """Sen1Floods11 look-alike generated under ``root_path`` on first use (or when its settings change).

    Args:
        num_train: train chips; num_test: chips in each of val and test (Bolivia: half as many, at least 1).
        img_size: chip side in pixels; generator_seed: seed of the chips (a pure function of the settings).
        Other arguments as :class:`~benchmark.data.sen1floods11.Sen1Floods11`.
    """

    def __init__(
        self, *args: Any, num_train: int = 40, num_test: int = 12, img_size: int = 512, generator_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        self.generator_settings = {"num_train": int(num_train), "num_test": int(num_test), "img_size": int(img_size),
                                   "seed": int(generator_seed)}
        super().__init__(*args, **kwargs)

    def ensure_files(self, auto_download: bool) -> None:
        ensure_generated(self.root_path, self.generator_settings, generate_sen1floods11, "Sen1Floods11")
