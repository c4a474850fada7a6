"""HLS Burn Scars (NASA IMPACT / IBM, CC-BY-4.0): 512x512 HLS chips with MTBS burn-scar masks.

Layout under ``root_path``::

    training/subsetted_512x512_HLS.S30.T10SEH.2018190.v1.4_merged.tif   6 bands, float reflectance
    training/subsetted_512x512_HLS.S30.T10SEH.2018190.v1.4.mask.tif     int16: 1 burn, 0 not, -1 nodata
    validation/...

Splits follow PANGAEA: train/val = ``training/`` split 90/10 with a fixed seed, test = ``validation/``.
Every file of a split is checked when the dataset is built (:mod:`benchmark.data.validation`).
"""

from __future__ import annotations

import logging
import math
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import rasterio
import torch
from rasterio.errors import RasterioError

from benchmark.data.masks import read_mask_array, target_from_mask
from benchmark.data.scenes import SceneDataset
from benchmark.data.validation import (
    IMAGE_NODATA, DatasetFilesError, SplitSpec, check_split, read_image_array,
)
from benchmark.download import DownloadError, download_file, file_lock

log = logging.getLogger(__name__)

IMAGE_SUFFIX = "_merged.tif"
MASK_SUFFIX = ".mask.tif"
SPLIT_FOLDERS = {"train": "training", "val": "training", "test": "validation"}


def pair_scenes(folder: Path) -> list[tuple[str, Path, Path]]:
    """``(stem, image, mask)`` for every scene in ``folder``, paired by scene stem (empty when there is none).

    Raises :class:`DatasetFilesError` naming any image without its mask or mask without its image.
    """
    images = {p.name[: -len(IMAGE_SUFFIX)]: p for p in folder.glob(f"*{IMAGE_SUFFIX}")}
    masks = {p.name[: -len(MASK_SUFFIX)]: p for p in folder.glob(f"*{MASK_SUFFIX}")}
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    if lonely_images or lonely_masks:
        problems = [f"image {images[s].name} has no mask {s}{MASK_SUFFIX}" for s in lonely_images]
        problems += [f"mask {masks[s].name} has no image {s}{IMAGE_SUFFIX}" for s in lonely_masks]
        raise DatasetFilesError(
            f"Unpaired files in {folder}: " + "; ".join(problems[:5])
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
            + ". Every scene needs both <stem>_merged.tif and <stem>.mask.tif: restore the missing "
            "files or remove the unpaired ones."
        )
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]


def split_train_val(stems: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """PANGAEA's train/val split of the scenes of ``training/``, independent of file-system order.

    PANGAEA lists the images sorted by file name and calls scikit-learn's
    ``train_test_split(arange(n), test_size=val_fraction, random_state=seed)`` (seed 23): the first
    ``ceil(val_fraction * n)`` entries of ``RandomState(seed).permutation(n)`` are validation, the rest
    training. Computed here without scikit-learn; the tests compare the two.
    """
    ordered = sorted(stems, key=lambda stem: stem + IMAGE_SUFFIX)
    order = np.random.RandomState(seed).permutation(len(ordered))
    n_val = math.ceil(val_fraction * len(ordered))
    val = sorted(ordered[i] for i in order[:n_val])
    train = sorted(ordered[i] for i in order[n_val:])
    return train, val


def read_image(path: Path) -> np.ndarray:
    """All bands as float32 ``(C, H, W)`` (the same decode as the start-up check, so they share cache entries)."""
    with rasterio.open(path) as src:
        return read_image_array(src)


def read_mask(path: Path) -> np.ndarray:
    """Band 1 ``(H, W)``, int16 for HLS."""
    with rasterio.open(path) as src:
        return read_mask_array(src)


def replace_nodata(image: np.ndarray, means: Sequence[float], target: np.ndarray, ignore_index: int) -> np.ndarray:
    """``image`` (C, H, W) with nodata pixels (-9999, NaN, inf: never passed on to an encoder) set to the band
    means; their ``target`` pixels are set to ``ignore_index`` in place."""
    nodata = (image == IMAGE_NODATA) | ~np.isfinite(image)
    if not nodata.any():
        return image
    target[nodata.any(axis=0)] = ignore_index
    return np.where(nodata, np.asarray(means, dtype=np.float32)[:, None, None], image)


def extract_archive(archive: Path, root: Path) -> None:
    """Extract a .tar.gz so that ``root/training`` and ``root/validation`` exist.

    The archive may hold the two folders at its top or inside one wrapping folder.
    """
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}-") as tmp:
        with tarfile.open(archive) as tar:
            # the "data" filter refuses absolute paths and links out of the folder (where available)
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, **safe)
        found = next((p.parent for p in Path(tmp).rglob("training") if p.is_dir()), None)
        if found is None or not (found / "validation").is_dir():
            raise DatasetFilesError(f"{archive} holds no training/ and validation/ folders")
        root.mkdir(parents=True, exist_ok=True)
        for name in ("training", "validation"):
            (found / name).rename(root / name)


class HLSBurnScars(SceneDataset):
    """HLS Burn Scars segmentation dataset.

    Each sample is ``{"image": {"optical": float32 (6, 1, H, W)}, "target": int64 (H, W),
    "meta": {"stem": str, "index": int}}``. Image nodata (-9999, and NaN/inf) is replaced by the band mean
    and the pixel is marked ignored in the target.

    Building the dataset checks every file of the split (readable, bands, dtypes, sizes, mask values,
    at least one labelled pixel; warnings for NaN/inf pixels and for values in other units than
    ``data_mean``) and raises one :class:`DatasetFilesError` listing every problem; see
    :mod:`benchmark.data.validation`.

    Args:
        root_path: folder holding ``training/`` and ``validation/``.
        split: ``train``, ``val`` or ``test``.
        bands: ``{"optical": [six band names]}`` in file order.
        data_mean / data_std: per-band statistics ``{"optical": [...]}`` (reflectance units).
        ignore_index: target value of ignored pixels.
        num_classes, classes: label description.
        download_url: archive fetched when ``root_path`` is missing and ``auto_download`` is set.
        val_fraction, split_seed: the train/val split of ``training/``.
        cache_dir: folder where decoded scenes are kept (:class:`~benchmark.data.raster_cache.RasterCache`),
            so that each GeoTIFF is decoded once, and where the start-up check remembers what it learnt of
            each file (``checks/``); None decodes them on every read and checks every file at every build.

    The other keys of PANGAEA's dataset config never reach this class (see :mod:`benchmark.compat`).
    """

    def __init__(
        self,
        root_path: str,
        split: str,
        bands: Mapping[str, Sequence[str]],
        data_mean: Mapping[str, Sequence[float]],
        data_std: Mapping[str, Sequence[float]],
        ignore_index: int = -1,
        num_classes: int = 2,
        classes: Sequence[str] = ("Not burned", "Burn scar"),
        download_url: str | None = None,
        auto_download: bool = True,
        val_fraction: float = 0.1,
        split_seed: int = 23,
        cache_dir: str | None = None,
    ) -> None:
        self.describe(root_path, split, list(SPLIT_FOLDERS), bands, data_mean, data_std, ignore_index, num_classes,
                      classes, cache_dir)
        self.download_url = download_url
        self.ensure_files(auto_download)
        folder = self.root_path / SPLIT_FOLDERS[split]
        scenes = pair_scenes(folder)
        in_folder = len(scenes)
        if split != "test":
            train, val = split_train_val([s for s, _, _ in scenes], val_fraction, split_seed)
            keep = set(train if split == "train" else val)
            scenes = [scene for scene in scenes if scene[0] in keep]
        self.scenes = scenes
        if not scenes:
            raise DatasetFilesError(self.empty_split_message(folder, in_folder, val_fraction))
        spec = SplitSpec(split, folder, len(self.bands["optical"]), self.ignore_index, self.num_classes,
                         self.data_mean["optical"], self.data_std["optical"])
        check_split(scenes, spec, cache_dir, self.raster_cache)

    def empty_split_message(self, folder: Path, in_folder: int, val_fraction: float) -> str:
        """Why the split has no scene, and what to do."""
        if in_folder:  # training/ has scenes, but too few to leave one for training
            return (f"The {self.split} split is empty: {folder} holds {in_folder} scene(s) and "
                    f"dataset.val_fraction={val_fraction} leaves none for {self.split}: add scenes to {folder}")
        others = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        seen = f" (it holds {len(others)} other file(s), e.g. {others[0]})" if others else ""
        return (f"The {self.split} split is empty: {folder} holds no scene{seen}. A scene is a pair "
                f"<stem>{IMAGE_SUFFIX} + <stem>{MASK_SUFFIX}: put the {folder.name}/ scenes there, or point "
                "dataset.root_path at the folder that holds training/ and validation/ with their files")

    def folders_present(self) -> bool:
        return all((self.root_path / name).is_dir() for name in ("training", "validation"))

    def ensure_files(self, auto_download: bool) -> None:
        """Make sure ``root_path`` holds the data, downloading the archive if allowed."""
        if self.folders_present():
            return
        where = (
            f"Put the extracted archive there (folders {self.root_path}/training and "
            f"{self.root_path}/validation), or set dataset.root_path=<folder that has them>."
        )
        if not auto_download or not self.download_url:
            raise DatasetFilesError(f"HLS Burn Scars not found under {self.root_path}. {where}")
        with file_lock(self.root_path):  # one process (of every job sharing the folder) fetches and extracts
            if self.folders_present():
                return
            archive = self.root_path.parent / Path(self.download_url.split("?")[0]).name
            log.info("HLS Burn Scars not found in %s: downloading %s", self.root_path, self.download_url)
            try:
                download_file(self.download_url, archive)
            except DownloadError as error:
                raise DatasetFilesError(
                    f"HLS Burn Scars not found under {self.root_path} and the download failed ({error}). "
                    f"Download {self.download_url} on a machine with internet access and extract it. {where}"
                ) from error
            extract_archive(archive, self.root_path)
            archive.unlink()

    def source_files(self) -> list[Path]:
        """The files this split reads (images and masks)."""
        return [path for _, image_path, mask_path in self.scenes for path in (image_path, mask_path)]

    def read_scene(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw ``(image float32 (C, H, W), mask int16 (H, W))`` of one scene from its GeoTIFFs."""
        stem, image_path, mask_path = self.scenes[index]
        try:
            image, mask = self.load(image_path, read_image), self.load(mask_path, read_mask)
        except RasterioError as error:  # the file changed after the start-up check
            raise DatasetFilesError(f"scene {stem} of {self.root_path} cannot be read ({error}): re-download it "
                                    "or remove both of its files") from error
        n_bands = len(self.bands["optical"])
        if image.shape[0] != n_bands:
            raise DatasetFilesError(f"{image_path} has {image.shape[0]} bands; the config lists {n_bands}")
        if image.shape[1:] != mask.shape:
            raise DatasetFilesError(f"{image_path} is {image.shape[1:]} but its mask is {mask.shape}")
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.read_scene(index)
        target = target_from_mask(mask, self.ignore_index)
        image = replace_nodata(image, self.data_mean["optical"], target, self.ignore_index)
        return {
            "image": {"optical": torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(1)},
            "target": torch.from_numpy(target),
            "meta": {"stem": self.scenes[index][0], "index": index},
        }
