"""Synthetic MTBS burn severity: the layout of :mod:`benchmark.data.mtbs`, generated from a seed.

Each fire is vegetation of varying density over bare soil, seen on 4 dates: before the fire, during it (half
of the final burn), after it (the final burn: low NIR, high SWIR2, stronger with severity) and a year later
(partial regrowth: the newest date, which the loader leaves out). The label is the MTBS class: 0 outside the
burn, 1-4 by severity, 5 (increased greenness) where an older scar grows back over the three kept frames, and
6 (non-mapping area, ignored) on a border strip under cloud in the third frame. A scar growing back takes a
burn's path through the frames backwards, so only their order tells class 5 from a burn (the order-blind
``temporal=mean`` cannot).

Images are float32 reflectance, labels uint8, in CONUS Albers (EPSG:5070, MTBS's projection) at 30 m, placed
in the 4 regions; each region's geojson is a FeatureCollection of one WGS84 polygon around its fires.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.warp import transform, transform_bounds

from benchmark.data.mtbs import CROP, FOLDER, SPLITS, MTBSBurnSeverity, list_samples, region_folders, split_file
from benchmark.data.synthetic import BURN, CLOUD, SURFACES, ensure_generated, smooth_noise, write_atomically, write_raster

REGIONS = {  # south-west corner of the region's fires (lon, lat) and the state in the fires' names
    "Northern_Cascades": ((-121.2, 48.3), "WA"),
    "Sierra_Nevada_Mountain_Range": ((-119.6, 37.4), "CA"),
    "Snake_River_Plain": ((-114.8, 43.1), "ID"),
    "Southern_Appalachia": ((-83.6, 35.4), "TN"),
}
CRS = "EPSG:5070"
PIXEL_M = 30.0
PER_ROW = 8                            # fires side by side in a region
DATES = ("0610", "0805", "0920")       # pre-, during- and post-fire (month, day); the 4th: post-fire a year later
SEVERITY_EDGES = (0.05, 0.3, 0.5, 0.7)  # severity -> 0 background, 1 unburned to low, 2 low, 3 moderate, 4 high
GREENER, NON_MAPPING = 5, 6           # increased greenness; non-mapping area (ignored)


def fire_prefix(number: int) -> str:
    """The name of fire ``number`` (in region ``number % 4``): ``<state>_fire_<number>``."""
    return f"{REGIONS[list(REGIONS)[number % len(REGIONS)]][1]}_fire_{number:04d}"


def column(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)[:, None, None]


def border_strip(rng: np.random.Generator, size: int) -> np.ndarray:
    """A strip along one random side, 1/16 to 1/8 of the scene wide."""
    strip = np.zeros((size, size), dtype=bool)
    strip[:, : int(rng.integers(max(1, size // 16), max(2, size // 8) + 1))] = True
    return np.rot90(strip, k=int(rng.integers(4)))


def generate_fire(rng: np.random.Generator, size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Four frames (6, size, size) float32 reflectance, oldest first, and the label (size, size) uint8.

    A burn of severity s takes a pixel of cover c to c + s (BURN - c) in two steps; an older scar regrowing
    (increased greenness) takes the same path backwards, so only the frames' order tells the two apart.
    """
    density = np.clip(0.6 + 0.4 * smooth_noise(rng, size, int(rng.integers(3, 7))), 0.2, 1.0)[None]
    cover = density * column(SURFACES["vegetation"]) + (1 - density) * column(SURFACES["soil"])
    inside = smooth_noise(rng, size, 3) + rng.uniform(-0.2, 0.3)  # > 0 within the fire's perimeter
    patchy = np.clip(0.55 + 0.6 * smooth_noise(rng, size, 3), 0.1, 1.0)
    severity = np.clip(4 * inside, 0.0, 1.0) * patchy  # patches of severity, weakest at the perimeter
    label = np.digitize(severity, SEVERITY_EDGES).astype(np.uint8)
    scar = np.clip(4 * (smooth_noise(rng, size, 3) - 0.3), 0.0, 1.0) * (label == 0) * rng.uniform(0.6, 1.0)
    label[scar > SEVERITY_EDGES[1]] = GREENER
    towards_burn = column(BURN) - cover
    start, end = cover + scar[None] * towards_burn, cover + severity[None] * towards_burn
    border = border_strip(rng, size)
    label[border] = NON_MAPPING
    post = np.where(border[None], column(CLOUD), end)
    frames = (start, (start + end) / 2, post, cover + 0.4 * severity[None] * towards_burn)  # a year on: regrowth
    return [(frame + rng.normal(0.0, 0.004, frame.shape)).astype(np.float32) for frame in frames], label


def region_geojson(path: Path, region: str, bounds: tuple[float, float, float, float]) -> None:
    """A FeatureCollection of one polygon: ``bounds`` (in :data:`CRS`) in WGS84."""
    west, south, east, north = transform_bounds(CRS, "EPSG:4326", *bounds)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    feature = {"type": "Feature", "properties": {"region": region}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))


def write_region(data_root: Path, region: str, fires: list[int], size: int, seed: int) -> None:
    """The files of ``fires`` (their numbers) in ``region``, side by side, and the region's geojson."""
    lon, lat = REGIONS[region][0]
    xs, ys = transform("EPSG:4326", CRS, [lon], [lat])
    side = size * PIXEL_M
    images, labels = region_folders(data_root, region)
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for k, number in enumerate(fires):
        frames, label = generate_fire(np.random.default_rng([seed, number]), size)
        where = Affine(PIXEL_M, 0.0, xs[0] + (k % PER_ROW) * side, 0.0, -PIXEL_M, ys[0] + (k // PER_ROW + 1) * side)
        prefix, year = fire_prefix(number), 2016 + number % 5
        dates = [f"{year}{day}" for day in DATES] + [f"{year + 1}{DATES[-1]}"]
        for frame, day in zip(frames, dates):
            write_raster(images / f"{prefix}_{day}.tif", frame, where, CRS)
        write_raster(labels / f"{prefix}_severity.tif", label, where, CRS)
    rows = max(1, -(-len(fires) // PER_ROW))
    bounds = (xs[0], ys[0], xs[0] + min(max(1, len(fires)), PER_ROW) * side, ys[0] + rows * side)
    region_geojson(data_root / f"{region}.geojson", region, bounds)


def generate_mtbs(root: str | Path, num_train: int, num_test: int, img_size: int, seed: int) -> Path:
    """``num_train`` train fires and ``num_test`` each for val and test, spread over the 4 regions, under
    ``root/mtbs_fires``, with the split index files, atomically."""
    params = {"num_train": num_train, "num_test": num_test, "img_size": img_size, "seed": seed}
    counts = {"train": num_train, "val": num_test, "test": num_test}

    def write(tmp: Path) -> None:
        data_root, total = tmp / FOLDER, sum(counts.values())
        for index, region in enumerate(REGIONS):
            write_region(data_root, region, list(range(index, total, len(REGIONS))), img_size, seed)  # see fire_prefix
        row = {prefix: i for i, (prefix, _, _) in enumerate(list_samples(data_root))}  # the loader's sample order
        fires = np.random.default_rng([seed, total]).permutation(total)
        split_file(data_root, "train").parent.mkdir()
        start = 0
        for split in SPLITS:
            chosen = fires[start:start + counts[split]]
            start += counts[split]
            rows = sorted(row[fire_prefix(n)] for n in chosen)
            np.save(split_file(data_root, split), np.asarray(rows, dtype=np.int64))

    return write_atomically(root, params, write)


class SyntheticMTBSBurnSeverity(MTBSBurnSeverity):
    """MTBS burn severity look-alike generated under ``root_path`` (as ``mtbs_fires/``) on first use.

    Args:
        num_train: train fires; num_test: fires in each of val and test.
        img_size: scene side in pixels, at most 512 (the loader reads the top-left 512 x 512 px).
        generator_seed: seed of the fires (the data are a pure function of the settings).
        Other arguments as :class:`~benchmark.data.mtbs.MTBSBurnSeverity`.
    """

    def __init__(self, *args: Any, num_train: int = 40, num_test: int = 12, img_size: int = 128, generator_seed: int = 0,
                 **kwargs: Any) -> None:
        if not 0 < int(img_size) <= CROP:
            raise ValueError(f"dataset.img_size={img_size}: the scenes must be 1 to {CROP} px (the loader crops to {CROP})")
        self.generator_settings = {"num_train": int(num_train), "num_test": int(num_test), "img_size": int(img_size),
                                   "seed": int(generator_seed)}
        super().__init__(*args, **kwargs)

    def ensure_files(self) -> None:
        ensure_generated(self.root_path, self.generator_settings, generate_mtbs, "MTBS burn severity")
