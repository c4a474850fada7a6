"""Synthetic HLS Burn Scars: the real file layout, dtypes and georeferencing, generated from a seed.

Scenes mix vegetation, bare soil, water and urban surfaces with realistic HLS reflectances; burn scars
are irregular blobs with low NIR and high SWIR2 (negative NBR), blended into their surroundings at
the edges. Some scenes carry clouds (masked -1) or nodata strips (-9999 in the image, -1 in the mask),
and every pixel has sensor noise. Files are written as 6-band float32 images and int16 masks in UTM
zone 10N at 30 m, so predictions can be written back as GeoTIFF.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine
from tqdm import tqdm

from benchmark.data.hlsburnscars import IMAGE_NODATA, DatasetFilesError, HLSBurnScars

log = logging.getLogger(__name__)

# Surface reflectance in HLS band order B2, B3, B4, B8A, B11, B12.
SURFACES = {
    "vegetation": (0.030, 0.060, 0.040, 0.320, 0.180, 0.090),
    "soil": (0.080, 0.110, 0.140, 0.230, 0.310, 0.250),
    "water": (0.040, 0.050, 0.030, 0.020, 0.012, 0.006),
    "urban": (0.100, 0.110, 0.120, 0.180, 0.220, 0.190),
}
BURN = (0.040, 0.050, 0.060, 0.100, 0.190, 0.230)
CLOUD = (0.450, 0.460, 0.480, 0.520, 0.400, 0.300)
MARKER = "synthetic.json"
CRS = "EPSG:32610"
PIXEL_M = 30.0


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field in about [-1, 1]: ``cells`` x ``cells`` noise upsampled bicubically."""
    coarse = torch.from_numpy(rng.standard_normal((1, 1, cells, cells)).astype(np.float32))
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0].numpy()
    return field / (np.abs(field).max() + 1e-6)


def blob(rng: np.random.Generator, size: int) -> np.ndarray:
    """Soft membership in [0, 1] of one irregular blob (a noisy ellipse)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cy, cx = rng.uniform(0.15, 0.85, 2)
    ry, rx = rng.uniform(0.08, 0.22, 2)
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
    distance = np.sqrt(u**2 + v**2) + 0.45 * smooth_noise(rng, size, 6)
    return np.clip((1.15 - distance) / 0.3, 0.0, 1.0)


def generate_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image float32 (6, size, size), mask int16 (size, size))``."""
    names = list(SURFACES)
    fields = np.stack([smooth_noise(rng, size, int(rng.integers(3, 8))) for _ in names])
    fields += np.array([0.4, 0.0, -0.3, -0.2])[:, None, None]  # vegetation most common, water rarest
    cover = fields.argmax(axis=0)
    spectra = np.array([SURFACES[n] for n in names], dtype=np.float32)  # (4, 6)
    image = spectra[cover].transpose(2, 0, 1)
    image = image * rng.uniform(0.85, 1.15) * (1 + 0.08 * smooth_noise(rng, size, 10))[None]

    burn = np.zeros((size, size), dtype=np.float32)
    for _ in range(int(rng.choice([0, 1, 1, 2, 3]))):
        burn = np.maximum(burn, blob(rng, size))
    burn[cover == 2] = 0.0  # water does not burn
    severity = rng.uniform(0.75, 1.0)
    alpha = (burn * severity)[None]
    burned = np.asarray(BURN, dtype=np.float32)[:, None, None] * rng.uniform(0.9, 1.1)
    image = (1 - alpha) * image + alpha * burned
    mask = (burn * severity > 0.5).astype(np.int16)

    if rng.random() < 0.2:
        cloud = blob(rng, size)
        image = (1 - cloud[None]) * image + cloud[None] * np.asarray(CLOUD, dtype=np.float32)[:, None, None]
        mask[cloud > 0.5] = -1
    image = image + rng.normal(0.0, 0.006, image.shape)
    image = image.astype(np.float32)
    if rng.random() < 0.15:
        width = int(rng.integers(size // 16, size // 5))
        image[:, :, :width] = IMAGE_NODATA
        mask[:, :width] = -1
    return image, mask


def write_raster(path: Path, array: np.ndarray, transform: Affine, crs: str, nodata: float | None = None) -> None:
    """A GeoTIFF of ``array`` (C, H, W) or (H, W) in its own dtype on the grid ``transform`` in ``crs``."""
    data = array if array.ndim == 3 else array[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype.name, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)


def write_scene(folder: Path, stem: str, image: np.ndarray, mask: np.ndarray, origin_x: float) -> None:
    size = image.shape[-1]
    transform = Affine(PIXEL_M, 0.0, origin_x, 0.0, -PIXEL_M, 5_200_000.0)  # north-up, 30 m
    profile = dict(driver="GTiff", width=size, height=size, crs=CRS, transform=transform)
    with rasterio.open(folder / f"{stem}_merged.tif", "w", count=6, dtype="float32", nodata=IMAGE_NODATA, **profile) as dst:
        dst.write(image)
    with rasterio.open(folder / f"{stem}.mask.tif", "w", count=1, dtype="int16", nodata=-1, **profile) as dst:
        dst.write(mask, 1)


def write_atomically(root: str | Path, settings: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """Fill a temporary folder beside ``root`` with ``write(folder)`` and the settings marker, then put it in
    place of ``root``: a reader sees the old data or the new, never a half-written folder."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}-"))
    try:
        write(tmp)
        (tmp / MARKER).write_text(json.dumps(settings, indent=1))
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_generated(root: Path, settings: dict[str, Any], generate: Callable[..., Path], what: str) -> None:
    """Generate ``what`` under ``root`` unless its marker records these ``settings``; never over foreign files."""
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return
    if root.exists() and any(root.iterdir()) and not marker.is_file():
        raise DatasetFilesError(
            f"{root} holds files that were not generated by the synthetic dataset; point dataset.root_path at an "
            "empty or synthetic folder"
        )
    log.info("Generating synthetic %s in %s (%s)", what, root, settings)
    generate(root, **settings)


def generate_burn_scars(root: str | Path, num_train: int, num_test: int, img_size: int, seed: int) -> Path:
    """Write ``training/`` (num_train scenes) and ``validation/`` (num_test) under ``root``, atomically."""
    params = {"num_train": num_train, "num_test": num_test, "img_size": img_size, "seed": seed}

    def write(tmp: Path) -> None:
        jobs = [("training", i) for i in range(num_train)] + [("validation", i) for i in range(num_test)]
        for folder in ("training", "validation"):
            (tmp / folder).mkdir()
        for number, (folder, i) in enumerate(tqdm(jobs, desc="generating synthetic burn scars", unit="scene")):
            rng = np.random.default_rng([seed, 0 if folder == "training" else 1, i])
            image, mask = generate_scene(rng, img_size)
            stem = f"subsetted_{img_size}x{img_size}_HLS.S30.T10SYN.{2018 + number // 365}{number % 365 + 1:03d}.v1.4"
            write_scene(tmp / folder, stem, image, mask, origin_x=500_000.0 + number * img_size * PIXEL_M)

    return write_atomically(root, params, write)


class SyntheticBurnScars(HLSBurnScars):
    """HLS Burn Scars look-alike generated under ``root_path`` on first use (or when its settings change).

    Args:
        num_train: scenes in ``training/`` (split 90/10 into train/val like the real data).
        num_test: scenes in ``validation/`` (the test split).
        img_size: scene side in pixels.
        generator_seed: seed of the scenes (the data are a pure function of the settings).
        Other arguments as :class:`HLSBurnScars`.
    """

    def __init__(
        self, *args: Any, num_train: int = 120, num_test: int = 40, img_size: int = 512, generator_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        self.generator_settings = {
            "num_train": int(num_train),
            "num_test": int(num_test),
            "img_size": int(img_size),
            "seed": int(generator_seed),
        }
        super().__init__(*args, **kwargs)

    def ensure_files(self, auto_download: bool) -> None:
        ensure_generated(self.root_path, self.generator_settings, generate_burn_scars, "burn scars")
