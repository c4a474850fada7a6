"""HLS Burn Intensity (IBM / NASA, MIT licence; hub ``ibm-nasa-geospatial/burn_intensity``): three HLS
frames per fire (pre-, during- and post-fire) and a burn-severity map.

Layout under ``root_path`` (the hub's ``pre.zip``, ``during.zip`` and ``post.zip`` extracted into the
folders of their names; ``.tiff`` files are read as well as ``.tif``)::

    pre/HLS_<case>.tif      6 bands B2, B3, B4, B8A, B11, B12 (reflectance x 10000), 224 x 224
    pre/BS_<case>.tif       burn severity: 0 no burn, 1 unburned to very low, 2 low, 3 moderate, 4 high;
                            NaN (or -1): no label
    during/HLS_<case>.tif
    post/HLS_<case>.tif
    BS_files_raw.csv        the hub's list of cases (column ``Case_Name``)
    {train,val,test}.txt    one ``HLS_<case>.tif`` per line (TerraTorch's split-list format)

The label is the severity map in ``pre/``, as TerraTorch reads it. The hub publishes no split. Split lists
found in the folder are used as they are; when there are none they are derived once from the case list
and written there: a third of the cases for test, then a tenth of the rest for validation, by the same
seeded draw (seed 23) as HLS Burn Scars' validation split (:func:`~benchmark.data.hlsburnscars.split_train_val`).

Samples are ``{"image": {"optical": float32 (6, 3, H, W)}, "target": int64 (H, W), "meta": ...}`` with
frames oldest first: pre, during, post.
"""

from __future__ import annotations

import csv
import logging
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from benchmark.data.hlsburnscars import read_image, read_mask, replace_nodata, split_train_val
from benchmark.data.masks import target_from_mask
from benchmark.data.scenes import SceneDataset
from benchmark.data.validation import DatasetFilesError, SplitSpec, check_split
from benchmark.download import DownloadError, download_file, file_lock

log = logging.getLogger(__name__)

DOWNLOAD_URL = "https://huggingface.co/datasets/ibm-nasa-geospatial/burn_intensity/resolve/main"
FRAMES = ("pre", "during", "post")  # oldest first
SPLITS = ("train", "val", "test")
CASE_LIST = "BS_files_raw.csv"
EXTENSIONS = (".tif", ".tiff")
SPLIT_SEED, TEST_FRACTION, VAL_FRACTION = 23, 1 / 3, 0.1


def frame_file(root: Path, folder: str, prefix: str, case: str) -> Path:
    """``root/folder/<prefix>_<case>.tif``, or its ``.tiff`` twin when only that exists."""
    paths = [root / folder / f"{prefix}_{case}{ext}" for ext in EXTENSIONS]
    return next((p for p in paths if p.is_file()), paths[0])


def case_files(root: Path, case: str) -> tuple[list[Path], Path]:
    """The frames (oldest first) and the label of ``case``."""
    return [frame_file(root, frame, "HLS", case) for frame in FRAMES], frame_file(root, "pre", "BS", case)


def read_case_list(path: Path) -> list[str]:
    """The ``Case_Name`` column of the hub's case list."""
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        if "Case_Name" not in (reader.fieldnames or []):
            raise DatasetFilesError(f"{path} has no Case_Name column (columns: {reader.fieldnames}): download it again "
                                    f"from {DOWNLOAD_URL}/{CASE_LIST}")
        return [row["Case_Name"].strip() for row in reader if row["Case_Name"].strip()]


def read_split(path: Path) -> list[str]:
    """The cases of a split list (one ``HLS_<case>.tif`` per line)."""
    cases = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        case = next((name[4:-len(ext)] for ext in EXTENSIONS if name.startswith("HLS_") and name.endswith(ext)), None)
        if not case:
            raise DatasetFilesError(f"{path} line {number} is {line!r}: each line must be HLS_<case>.tif")
        cases.append(case)
    return cases


def derive_splits(root: Path) -> None:
    """Write ``{train,val,test}.txt`` from the cases of the case list whose four files are present."""
    listed = read_case_list(root / CASE_LIST)
    complete = [c for c in listed if all(p.is_file() for p in (*case_files(root, c)[0], case_files(root, c)[1]))]
    if len(complete) < len(listed):
        log.warning("HLS Burn Intensity: %d of the %d cases of %s lack a file (e.g. %s) and are left out of the "
                    "split", len(listed) - len(complete), len(listed), CASE_LIST, sorted(set(listed) - set(complete))[0])
    rest, test = split_train_val(complete, TEST_FRACTION, SPLIT_SEED)
    train, val = split_train_val(rest, VAL_FRACTION, SPLIT_SEED)
    for split, cases in zip(SPLITS, (train, val, test)):
        name = {c: case_files(root, c)[0][0].name for c in cases}
        (root / f".{split}.txt").write_text("".join(name[c] + "\n" for c in cases))
    for split in SPLITS:  # written whole first: a stopped process leaves no partial split
        (root / f".{split}.txt").rename(root / f"{split}.txt")
    log.info("HLS Burn Intensity: split lists written to %s (train %d, val %d, test %d cases)", root, len(train),
             len(val), len(test))


def extract_frame(archive: Path, root: Path, frame: str) -> None:
    """Move every GeoTIFF of ``archive`` (wherever it lies inside) into ``root/frame``."""
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{frame}-") as tmp:
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(tmp)  # zipfile drops absolute paths and ".." from member names
        files = [p for p in Path(tmp).rglob("*") if p.suffix in EXTENSIONS and not p.name.startswith(".")]
        if not files:
            raise DatasetFilesError(f"{archive} holds no .tif file: download it again")
        staged = Path(tmp) / f".{frame}"
        staged.mkdir()
        for path in files:
            path.rename(staged / path.name)
        staged.rename(root / frame)


def download(url: str, root: Path) -> None:
    """Fetch the case list and every frame folder that is missing from ``url`` (the hub's file layout)."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / CASE_LIST).is_file():  # fetched under a hidden name, like the zips, with its lock file
        download_file(f"{url}/{CASE_LIST}", root / f".{CASE_LIST}").rename(root / CASE_LIST)
    for frame in FRAMES:
        if (root / frame).is_dir():
            continue
        archive = root / f".{frame}.zip"
        download_file(f"{url}/{frame}.zip", archive)
        extract_frame(archive, root, frame)
        archive.unlink()


class HLSBurnIntensity(SceneDataset):
    """Burn severity from three HLS frames (the module docstring describes the layout and the splits).

    Args:
        root_path: folder holding ``pre/``, ``during/``, ``post/`` and the lists.
        split: ``train``, ``val`` or ``test``.
        bands: ``{"optical": [six band names]}`` in file order.
        data_mean / data_std: per-band statistics over all frames, in the files' units.
        ignore_index, num_classes, classes: label description (NaN in a severity map becomes ``ignore_index``).
        download_url: the hub's file root; the missing parts are fetched from it when ``auto_download``.
        cache_dir: decoded-raster cache and start-up check memo (as :class:`~benchmark.data.hlsburnscars.HLSBurnScars`).
    """

    frames = len(FRAMES)

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
        download_url: str | None = DOWNLOAD_URL,
        auto_download: bool = True,
        cache_dir: str | None = None,
    ) -> None:
        self.describe(root_path, split, SPLITS, bands, data_mean, data_std, ignore_index, num_classes, classes, cache_dir)
        self.download_url = download_url
        self.ensure_files(auto_download)
        self.scenes = self.split_scenes()
        for index, frame in enumerate(FRAMES):
            spec = SplitSpec(f"{split} ({frame} frame)", self.root_path / frame, len(self.bands["optical"]),
                             self.ignore_index, self.num_classes, self.data_mean["optical"], self.data_std["optical"],
                             image_units="reflectance x 10000")
            check_split([(case, frames[index], label) for case, frames, label in self.scenes], spec, cache_dir,
                        self.raster_cache)

    def split_scenes(self) -> list[tuple[str, list[Path], Path]]:
        """``(case, frame files oldest first, label file)`` of every case of this split's list."""
        path = self.root_path / f"{self.split}.txt"
        cases = read_split(path)
        if not cases:
            raise DatasetFilesError(f"{path} lists no case: delete the three split lists to have them derived again")
        scenes = [(case, *case_files(self.root_path, case)) for case in cases]
        missing = [str(p) for _, frames, label in scenes for p in (*frames, label) if not p.is_file()]
        if missing:
            raise DatasetFilesError(f"HLS Burn Intensity: {path.name} lists cases whose files are missing ({len(missing)}, "
                                    f"e.g. {missing[0]}): extract pre.zip, during.zip and post.zip again, or fix the list")
        return scenes

    def files_present(self) -> bool:
        lists = [(self.root_path / f"{split}.txt").is_file() for split in SPLITS]
        if any(lists) and not all(lists):
            raise DatasetFilesError(f"{self.root_path} has only some of train.txt, val.txt, test.txt: add the others, or "
                                    "delete them all to have the split derived from the case list")
        return all((self.root_path / frame).is_dir() for frame in FRAMES) and (all(lists) or (self.root_path / CASE_LIST).is_file())

    def ensure_files(self, auto_download: bool) -> None:
        """Frame folders and split lists present: downloading, extracting and deriving what is missing."""
        where = (f"Download {CASE_LIST}, pre.zip, during.zip and post.zip from {self.download_url or DOWNLOAD_URL} and "
                 f"extract each zip into the folder of its name under {self.root_path}, or set dataset.root_path=<folder "
                 "holding pre/, during/ and post/>")
        if self.files_present() and (self.root_path / "train.txt").is_file():
            return
        with file_lock(self.root_path):  # one process fetches and derives; the others find the files there
            if not self.files_present():
                if not auto_download or not self.download_url:
                    raise DatasetFilesError(f"HLS Burn Intensity not found under {self.root_path}. {where}")
                log.info("HLS Burn Intensity incomplete under %s: downloading from %s", self.root_path, self.download_url)
                try:
                    download(self.download_url, self.root_path)
                except DownloadError as error:
                    raise DatasetFilesError(f"HLS Burn Intensity under {self.root_path} is incomplete and the download "
                                            f"failed ({error}). {where}") from error
            if not (self.root_path / "train.txt").is_file():
                derive_splits(self.root_path)

    def source_files(self) -> list[Path]:
        return [p for _, frames, label in self.scenes for p in (*frames, label)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        case, frame_paths, label_path = self.scenes[index]
        target = target_from_mask(self.load(label_path, read_mask), self.ignore_index)
        frames = [replace_nodata(self.load(path, read_image), self.data_mean["optical"], target, self.ignore_index)
                  for path in frame_paths]
        image = torch.from_numpy(np.ascontiguousarray(np.stack(frames, axis=1)))  # (C, T, H, W), oldest first
        return {"image": {"optical": image}, "target": torch.from_numpy(target), "meta": {"stem": case, "index": index}}
