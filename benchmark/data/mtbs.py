"""MTBS burn severity (layout of the sig-gis PANGAEA fork, ``pangaea/datasets/mtbs.py``): three dated frames of
6 bands per fire and its Monitoring Trends in Burn Severity map. The data are not public: there is no download.

Layout under ``root_path``::

    mtbs_fires/<Region>.geojson                       one per region (Northern_Cascades, Sierra_Nevada_Mountain_Range,
                                                      Snake_River_Plain, Southern_Appalachia): its name is the folder
    mtbs_fires/data/<Region>/images/<fire>_<YYYYMMDD>.tif
                                                      B2, B3, B4, B8A, B11, B12, float reflectance; 4 dates per fire
    mtbs_fires/data/<Region>/labels/<name>.tif        one per fire, band 1: 0 background, 1 unburned to low, 2 low,
                                                      3 moderate, 4 high, 5 increased greenness, 6 non-mapping area
    mtbs_fires/splits/{train,val,test}.npy            integer indices into the samples

A sample is the fork's: every region's images sorted by path, taken 4 at a time (one fire's 4 dates), and
every region's labels sorted by path, one per sample, paired by position. Frames and label are cropped
to their top-left 512 x 512 px and the newest of the 4 dates is left out, so samples are
``{"image": {"optical": (6, 3, H, W)}, ...}`` with frames oldest first and ``meta.stem`` the ``<fire>`` prefix.
Where the fork would pair files silently, this loader checks them: per region 4 images per label, in each
sample one prefix and increasing dates, split indices in range and the three splits disjoint.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from benchmark.data.hlsburnscars import read_image, read_mask, replace_nodata
from benchmark.data.masks import target_from_mask
from benchmark.data.scenes import SceneDataset
from benchmark.data.validation import DatasetFilesError, SplitSpec, check_split

FOLDER = "mtbs_fires"
FILES_PER_SAMPLE = 4   # dated images per fire; the newest is left out
FRAMES = 3
CROP = 512             # the fork reads the top-left 512 x 512 px of every file
SPLITS = ("train", "val", "test")
CLASSES = ("Background", "Unburned to Low", "Low", "Moderate", "High", "Increased Greenness", "Non-Mapping Area")
DATED = re.compile(r"^(?P<prefix>.+)_(?P<date>\d{8})\.tif$")
LAYOUT = """
    mtbs_fires/
        <Region>.geojson                               one per region, e.g. Northern_Cascades.geojson
        data/<Region>/images/<fire>_<YYYYMMDD>.tif     6 bands, float reflectance; 4 dates per fire
        data/<Region>/labels/<name>.tif                one per fire, classes 0-6
        splits/{train,val,test}.npy                    sample indices
"""

Sample = tuple[str, list[Path], Path]  # (fire prefix, the 4 images oldest first, label)


def region_folders(data_root: Path, region: str) -> tuple[Path, Path]:
    """The images and labels folders of ``region`` under ``mtbs_fires/``."""
    return data_root / "data" / region / "images", data_root / "data" / region / "labels"


def split_file(data_root: Path, split: str) -> Path:
    return data_root / "splits" / f"{split}.npy"


def dated_name(path: Path) -> tuple[str, date]:
    """``(prefix, date)`` of ``<prefix>_<YYYYMMDD>.tif``."""
    match = DATED.match(path.name)
    try:
        return match["prefix"], date(int(match["date"][:4]), int(match["date"][4:6]), int(match["date"][6:]))
    except (TypeError, ValueError):
        raise DatasetFilesError(f"{path}: an image name must end in _YYYYMMDD.tif (a valid date): rename or remove "
                                "the file") from None


def check_group(images: Sequence[Path], row: int) -> str:
    """The fire prefix of one sample's 4 images (sorted by name), which must share it and have increasing dates."""
    named = [dated_name(path) for path in images]
    names = ", ".join(path.name for path in images)
    where = f"{images[0].parent}: sample {row} groups {names}"
    fix = (f"every fire needs exactly {FILES_PER_SAMPLE} images <fire>_<YYYYMMDD>.tif and one label: restore the "
           "missing files or remove the extra ones")
    if len({prefix for prefix, _ in named}) != 1:
        raise DatasetFilesError(f"{where}, which are not one fire's {FILES_PER_SAMPLE} dates (prefixes differ): {fix}")
    if any(later <= earlier for (_, earlier), (_, later) in zip(named, named[1:])):
        raise DatasetFilesError(f"{where}, whose dates do not increase: {fix}")
    return named[0][0]


def region_samples(data_root: Path, region: str) -> tuple[list[list[Path]], list[Path]]:
    """The image groups and labels of ``region``, checked to pair 4 images with each label."""
    images_folder, labels_folder = region_folders(data_root, region)
    for folder in (images_folder, labels_folder):
        if not folder.is_dir():
            raise DatasetFilesError(f"{folder} is missing ({region}.geojson names this region): restore it, or remove "
                                    f"{data_root / (region + '.geojson')} when the region is not part of the data")
    images = sorted(images_folder.glob("*.tif"), key=str)
    labels = sorted(labels_folder.glob("*.tif"), key=str)
    if len(images) != FILES_PER_SAMPLE * len(labels):
        raise DatasetFilesError(
            f"{images_folder} holds {len(images)} images and {labels_folder} {len(labels)} labels: a sample is "
            f"{FILES_PER_SAMPLE} dated images and one label, so there must be {FILES_PER_SAMPLE} x {len(labels)} = "
            f"{FILES_PER_SAMPLE * len(labels)} images: restore the missing files or remove the unpaired ones"
        )
    return [images[i:i + FILES_PER_SAMPLE] for i in range(0, len(images), FILES_PER_SAMPLE)], labels


def list_samples(data_root: Path) -> list[Sample]:
    """Every sample in the fork's order: images and labels of all regions, each sorted by path."""
    regions = sorted(path.stem for path in data_root.glob("*.geojson"))
    if not regions:
        raise DatasetFilesError(f"{data_root} holds no <Region>.geojson, so no region is read; the layout is:{LAYOUT}")
    groups, labels = [], []
    for region in regions:
        region_groups, region_labels = region_samples(data_root, region)
        groups += region_groups
        labels += region_labels
    order = sorted(range(len(groups)), key=lambda i: str(groups[i][0]))  # the fork sorts every region's paths at once
    groups = [groups[i] for i in order]
    labels = sorted(labels, key=str)
    if not groups:
        raise DatasetFilesError(f"{data_root / 'data'} holds no sample (no image in any <Region>/images); the layout "
                                f"is:{LAYOUT}")
    return [(check_group(group, row), group, label) for row, (group, label) in enumerate(zip(groups, labels))]


def read_split_indices(data_root: Path, split: str, n_samples: int) -> np.ndarray:
    """The sample indices of ``split``: a 1-D integer array, each in ``[0, n_samples)``."""
    path = split_file(data_root, split)
    if not path.is_file():
        raise DatasetFilesError(f"{path} is missing: the splits are {data_root / 'splits'}/{{train,val,test}}.npy, "
                                "NumPy arrays of sample indices; put the fork's split files there")
    try:
        indices = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DatasetFilesError(f"{path} cannot be read as a .npy array ({error}): restore the split file") from error
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise DatasetFilesError(f"{path} holds a {indices.dtype} array of shape {indices.shape}; a split is a 1-D "
                                "integer array of sample indices: restore the split file")
    outside = indices[(indices < 0) | (indices >= n_samples)]
    if outside.size:
        raise DatasetFilesError(f"{path} holds {outside.size} indices outside 0..{n_samples - 1} (e.g. {outside[0]}) for "
                                f"the {n_samples} samples under {data_root / 'data'}: the split file belongs to other "
                                "data, or images or labels are missing")
    if indices.size == 0:
        raise DatasetFilesError(f"{path} lists no sample: restore the split file")
    return indices


def read_splits(data_root: Path, n_samples: int) -> dict[str, np.ndarray]:
    """The three splits, checked to be disjoint (an overlap would score the model on samples it trained on)."""
    splits = {split: read_split_indices(data_root, split, n_samples) for split in SPLITS}
    for i, first in enumerate(SPLITS):
        for second in SPLITS[i + 1:]:
            shared = np.intersect1d(splits[first], splits[second])
            if shared.size:
                raise DatasetFilesError(
                    f"{split_file(data_root, first)} and {split_file(data_root, second)} share {shared.size} sample "
                    f"indices (e.g. {shared[:5].tolist()}): the splits must be disjoint; remove them from one of the two"
                )
    return splits


class MTBSBurnSeverity(SceneDataset):
    """MTBS burn severity from three dated frames (see the module docstring for the layout and the sample).

    Args:
        root_path: the folder holding ``mtbs_fires/``.
        split: ``train``, ``val`` or ``test``.
        bands, data_mean, data_std: ``{"optical": [...]}`` in file order and reflectance units.
        ignore_index, num_classes, classes: label description (6, the non-mapping area, is ignored).
        cache_dir: decoded-raster cache and start-up check memo (as :class:`~benchmark.data.hlsburnscars.HLSBurnScars`).
    """

    frames = FRAMES

    def __init__(
        self,
        root_path: str,
        split: str,
        bands: Mapping[str, Sequence[str]],
        data_mean: Mapping[str, Sequence[float]],
        data_std: Mapping[str, Sequence[float]],
        ignore_index: int = 6,
        num_classes: int = 7,
        classes: Sequence[str] = CLASSES,
        cache_dir: str | None = None,
    ) -> None:
        self.describe(root_path, split, SPLITS, bands, data_mean, data_std, ignore_index, num_classes, classes, cache_dir)
        self.ensure_files()
        data_root = self.root_path / FOLDER
        samples = list_samples(data_root)
        chosen = [samples[i] for i in read_splits(data_root, len(samples))[split]]
        self.frame_files = {images[0]: images[:FRAMES] for _, images, _ in chosen}  # the newest date left out
        self.scenes = [(prefix, images[0], label) for prefix, images, label in chosen]
        for t in range(FRAMES):
            spec = SplitSpec(f"{split} (frame {t + 1} of {FRAMES})", data_root / "data", len(self.bands["optical"]),
                             self.ignore_index, self.num_classes, self.data_mean["optical"], self.data_std["optical"])
            check_split([(prefix, self.frame_files[first][t], label) for prefix, first, label in self.scenes], spec,
                        cache_dir, self.raster_cache)

    def ensure_files(self) -> None:
        if not (self.root_path / FOLDER).is_dir():
            raise DatasetFilesError(
                f"MTBS burn severity not found: {self.root_path / FOLDER} is missing. The data are not public (no "
                f"download); with a copy, lay it out as{LAYOUT}and set dataset.root_path=<folder holding mtbs_fires/>"
            )

    def source_files(self) -> list[Path]:
        """The files this split reads: the three kept frames and the label of each sample."""
        return [p for _, first, label in self.scenes for p in (*self.frame_files[first], label)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        prefix, first, label_path = self.scenes[index]
        target = target_from_mask(self.load(label_path, read_mask)[:CROP, :CROP], self.ignore_index)
        frames = [replace_nodata(self.load(path, read_image)[:, :CROP, :CROP], self.data_mean["optical"], target,
                                 self.ignore_index) for path in self.frame_files[first]]
        image = torch.from_numpy(np.ascontiguousarray(np.stack(frames, axis=1)))  # (C, T, H, W), oldest first
        return {"image": {"optical": image}, "target": torch.from_numpy(target), "meta": {"stem": prefix, "index": index}}
