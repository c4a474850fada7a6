"""Sen1Floods11 (Bonafilia et al., CVPR Workshops 2020): hand-labelled flood chips, Sentinel-1 + Sentinel-2.

Layout under ``root_path`` (folder ``v1.1`` of the bucket ``gs://sen1floods11``)::

    v1.1/data/flood_events/HandLabeled/S1Hand/<chip>_S1Hand.tif       2 bands float32, dB: VV, VH (NaN: no data)
    v1.1/data/flood_events/HandLabeled/S2Hand/<chip>_S2Hand.tif       13 bands uint16, L1C TOA reflectance x 10000:
                                                                      B1..B8, B8A, B9, B10, B11, B12
    v1.1/data/flood_events/HandLabeled/LabelHand/<chip>_LabelHand.tif int16: 1 water, 0 not water, -1 no data
    v1.1/splits/flood_handlabeled/flood_{train,valid,test,bolivia}_data.csv
                                                                      no header: <chip>_S1Hand.tif,<chip>_LabelHand.tif

A chip is ``<event>_<id>`` (e.g. ``Bolivia_103757``), 512 x 512 px at 10 m in EPSG:4326. Splits are the
published lists: train 252, val (``flood_valid_data.csv``) 89, test 90 chips, and the Bolivia hold-out
(15 chips of an event absent from the others) as the optional split ``bolivia``. Every file a split needs
is checked when the dataset is built (:mod:`benchmark.data.validation`, once per modality).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from rasterio.errors import RasterioError
from tqdm import tqdm

from benchmark.data.hlsburnscars import read_image, read_mask, replace_nodata
from benchmark.data.masks import target_from_mask
from benchmark.data.scenes import SceneDataset
from benchmark.data.validation import DatasetFilesError, SplitSpec, check_split
from benchmark.download import DownloadError, download_file, file_lock

log = logging.getLogger(__name__)

DOWNLOAD_URL = "https://storage.googleapis.com/sen1floods11"  # the bucket gs://sen1floods11 over HTTPS
HAND_LABELED = Path("v1.1/data/flood_events/HandLabeled")
SPLIT_FOLDER = Path("v1.1/splits/flood_handlabeled")
SPLIT_LISTS = {"train": "flood_train_data.csv", "val": "flood_valid_data.csv", "test": "flood_test_data.csv",
               "bolivia": "flood_bolivia_data.csv"}
LAYERS = {"sar": "S1Hand", "optical": "S2Hand", "label": "LabelHand"}  # folder = file suffix
UNITS = {"sar": "float backscatter in dB", "optical": "digital numbers (L1C TOA reflectance x 10000)"}
FETCH = ("https://storage.googleapis.com/sen1floods11/v1.1 (gsutil -m rsync -r gs://sen1floods11/v1.1 "
         "<root_path>/v1.1)")


def chip_file(root: Path, layer: str, chip: str) -> Path:
    """The file of ``chip`` in ``layer`` (``sar``, ``optical`` or ``label``)."""
    return root / HAND_LABELED / LAYERS[layer] / f"{chip}_{LAYERS[layer]}.tif"


def read_split_list(path: Path) -> list[str]:
    """The chips of a split list (rows ``<chip>_S1Hand.tif,<chip>_LabelHand.tif``, no header)."""
    chips = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.split(",")]
        s1, label = (cells + ["", ""])[:2]
        chip = s1.removesuffix("_S1Hand.tif")
        if len(cells) != 2 or chip == s1 or label != f"{chip}_LabelHand.tif":
            raise DatasetFilesError(
                f"{path} line {number} is {line!r}, not '<chip>_S1Hand.tif,<chip>_LabelHand.tif': restore the "
                f"published split list from {FETCH}"
            )
        chips.append(chip)
    return chips


def missing_files(root: Path, layers: Sequence[str]) -> list[str]:
    """Paths (relative to ``root``) of every split list, and of every listed chip's ``layers``, not present."""
    missing = [str(SPLIT_FOLDER / name) for name in SPLIT_LISTS.values() if not (root / SPLIT_FOLDER / name).is_file()]
    if missing:
        return missing
    chips = [chip for name in SPLIT_LISTS.values() for chip in read_split_list(root / SPLIT_FOLDER / name)]
    return [str(chip_file(Path(), layer, chip)) for chip in chips for layer in layers
            if not chip_file(root, layer, chip).is_file()]


def download(url: str, root: Path, layers: Sequence[str]) -> None:
    """Fetch the split lists, then every missing chip file of ``layers``, from ``url`` (the bucket's layout)."""
    for name in SPLIT_LISTS.values():
        download_file(f"{url}/{SPLIT_FOLDER / name}", root / SPLIT_FOLDER / name)
    todo = missing_files(root, layers)
    for relative in tqdm(todo, desc="downloading Sen1Floods11", unit="file", disable=len(todo) < 2):
        download_file(f"{url}/{relative}", root / relative)


class Sen1Floods11(SceneDataset):
    """Sen1Floods11 hand-labelled flood segmentation (water / not water).

    Each sample is ``{"image": {modality: float32 (C, 1, H, W)}, "target": int64 (H, W), "meta": {"stem",
    "index"}}`` with the modalities of ``bands`` (``optical``: Sentinel-2, ``sar``: Sentinel-1; either or
    both). No-data pixels (NaN in S1, -9999, inf) are set to the band mean and ignored in the target.
    ``scenes`` lists ``(chip, S1 file, label file)``, the two files a split list names.

    Args:
        root_path: folder holding ``v1.1/``.
        split: ``train``, ``val``, ``test`` or ``bolivia``.
        bands: ``{"optical": [13 names], "sar": ["VV", "VH"]}`` in file order (one modality may be left out).
        data_mean / data_std: per-band statistics per modality, in the files' units.
        ignore_index, num_classes, classes: label description.
        download_url: the bucket's HTTPS root; missing files are fetched from it when ``auto_download``.
        cache_dir: decoded-raster cache and start-up check memo (as :class:`~benchmark.data.hlsburnscars.HLSBurnScars`).
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
        classes: Sequence[str] = ("Not water", "Water"),
        download_url: str | None = DOWNLOAD_URL,
        auto_download: bool = True,
        cache_dir: str | None = None,
    ) -> None:
        self.describe(root_path, split, list(SPLIT_LISTS), bands, data_mean, data_std, ignore_index, num_classes,
                      classes, cache_dir, modalities=list(UNITS))
        self.download_url = download_url
        self.ensure_files(auto_download)
        chips = read_split_list(self.root_path / SPLIT_FOLDER / SPLIT_LISTS[split])
        if not chips:
            raise DatasetFilesError(f"{self.root_path / SPLIT_FOLDER / SPLIT_LISTS[split]} lists no chip: restore it from {FETCH}")
        self.scenes = [(chip, chip_file(self.root_path, "sar", chip), chip_file(self.root_path, "label", chip)) for chip in chips]
        for modality in self.bands:
            spec = SplitSpec(split, self.root_path / HAND_LABELED / LAYERS[modality], len(self.bands[modality]),
                             self.ignore_index, self.num_classes, self.data_mean[modality], self.data_std[modality],
                             image_units=UNITS[modality])
            scenes = [(chip, chip_file(self.root_path, modality, chip), label) for chip, _, label in self.scenes]
            check_split(scenes, spec, cache_dir, self.raster_cache)

    @property
    def layers(self) -> list[str]:
        return [*self.bands, "label"]

    def ensure_files(self, auto_download: bool) -> None:
        """Every split list and every listed chip's files present, fetching what is missing when allowed."""
        missing = missing_files(self.root_path, self.layers)
        if not missing:
            return
        listed = ", ".join(missing[:3]) + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
        where = (f"Download the hand-labelled chips and split lists from {FETCH}, or set dataset.root_path=<folder "
                 "holding v1.1/>")
        if not auto_download or not self.download_url:
            raise DatasetFilesError(f"Sen1Floods11 under {self.root_path} lacks {len(missing)} file(s): {listed}. {where}")
        with file_lock(self.root_path):  # one process fetches; the others find the files there
            log.info("Sen1Floods11 under %s lacks %d file(s): downloading them from %s", self.root_path,
                     len(missing), self.download_url)
            try:
                download(self.download_url, self.root_path, self.layers)
            except DownloadError as error:
                raise DatasetFilesError(f"Sen1Floods11 under {self.root_path} lacks {len(missing)} file(s) ({listed}) "
                                        f"and the download from {self.download_url} failed ({error}). {where}") from error

    def source_files(self) -> list[Path]:
        """The files this split reads (every modality's and the labels)."""
        return [chip_file(self.root_path, layer, chip) for chip, _, _ in self.scenes for layer in self.layers]

    def read_scene(self, index: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Raw ``({modality: float32 (C, H, W)}, label int16 (H, W))`` of one chip."""
        chip = self.scenes[index][0]
        try:
            images = {m: self.load(chip_file(self.root_path, m, chip), read_image) for m in self.bands}
            mask = self.load(chip_file(self.root_path, "label", chip), read_mask)
        except RasterioError as error:  # the file changed after the start-up check
            raise DatasetFilesError(f"chip {chip} of {self.root_path} cannot be read ({error}): download it again") from error
        for modality, image in images.items():
            if image.shape[0] != len(self.bands[modality]) or image.shape[1:] != mask.shape:
                raise DatasetFilesError(f"{chip_file(self.root_path, modality, chip)} is {image.shape}; expected "
                                        f"{len(self.bands[modality])} bands of the label's {mask.shape}")
        return images, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        images, mask = self.read_scene(index)
        target = target_from_mask(mask, self.ignore_index)
        image = {m: torch.from_numpy(np.ascontiguousarray(replace_nodata(x, self.data_mean[m], target, self.ignore_index))).unsqueeze(1)
                 for m, x in images.items()}
        return {"image": image, "target": torch.from_numpy(target), "meta": {"stem": self.scenes[index][0], "index": index}}

