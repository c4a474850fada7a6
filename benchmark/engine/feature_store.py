"""The on-disk format of the feature cache: one sealed folder per split, and the datasets that read it.

One folder per split, ``<root>/<Encoder>-<split>-<key hash>/``::

    features_<i>.npy   encoder output i, (windows, C_i, h, w), float32 or float16 (``cache_dtype``), memory-mapped
    targets.npy        int16 targets: one per window (train) or per tile (val/test)
    manifest.json      key, layout, size and digest of each file; written last: the completion marker

A folder is built in a temporary folder beside it (:func:`allocate_folder`, :func:`open_rows`) and renamed
into place once its manifest is written (:func:`seal_folder`), so a half-built cache is never seen. A
folder without manifest, with another key, or whose files differ from their recorded size and digest is
rebuilt (:func:`check_folder`). Old folders are never read again; delete them to reclaim the space.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch.utils.data import Dataset

from benchmark.atomic import write_json
from benchmark.data.preprocessing import RandomCrop, sample_rng
from benchmark.engine.feature_key import file_digest

DTYPES = {"float16": np.float16, "float32": np.float32}


class FeatureCacheError(RuntimeError):
    """The feature cache cannot serve this configuration, or building it failed."""


class FeatureStore:
    """A sealed split folder. Its arrays are memory-mapped read-only on first use in each process."""

    def __init__(self, directory: Path, layout: dict[str, Any]) -> None:
        self.directory = directory
        self.layout = layout
        self._arrays: tuple[list[np.ndarray], np.ndarray] | None = None

    def arrays(self) -> tuple[list[np.ndarray], np.ndarray]:
        if self._arrays is None:
            outputs = range(len(self.layout["feature_shapes"]))
            features = [np.load(self.directory / f"features_{i}.npy", mmap_mode="r") for i in outputs]
            self._arrays = features, np.load(self.directory / "targets.npy", mmap_mode="r")
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}  # workers map the files themselves

    def rows(self, first: int, stop: int) -> list[torch.Tensor]:
        """Rows ``[first, stop)`` of every encoder output, (stop - first, C_i, h, w), as stored."""
        return [torch.from_numpy(np.array(f[first:stop])) for f in self.arrays()[0]]

    def targets(self, row: int) -> torch.Tensor:
        return torch.from_numpy(self.arrays()[1][row].astype(np.int64))


class CachedTrainWindows(Dataset):
    """Training samples from the cache: for ``(index, epoch)``, the grid window the crop draws from the
    (seed, epoch, index) generator, as ``{"features": [C_i, h, w per output], "target": (S, S)}``."""

    def __init__(self, store: FeatureStore, crop: RandomCrop, seed: int) -> None:
        self.store = store
        self.crop = crop
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.store.layout["tiles"]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, epoch = key
        layout = self.store.layout
        window = self.crop.draw(*layout["tile_size"], sample_rng(self.seed, epoch, index))
        row = index * layout["windows_per_tile"] + window
        features = [f[0] for f in self.store.rows(row, row + 1)]
        return {"features": features, "target": self.store.targets(row), "meta": {"index": index}}


class CachedEvalTiles(Dataset):
    """Evaluation samples from the cache: ``{"features": [(P, C_i, h, w) per output], "target": (H, W)}``
    with the P windows of the tile's sliding-window grid, in grid order."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return self.store.layout["tiles"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        per_tile = self.store.layout["windows_per_tile"]
        features = self.store.rows(index * per_tile, (index + 1) * per_tile)
        return {"features": features, "target": self.store.targets(index), "meta": {"index": index}}


def check_folder(directory: Path, key: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """``(layout, "valid")`` for a sealed folder that matches ``key``, else ``(None, what is wrong)``."""
    if not directory.exists():
        return None, "does not exist yet"
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None, "is incomplete or damaged (no readable manifest.json): rebuilding it"
    if manifest.get("key") != key:
        return None, "is stale (its manifest holds another key): rebuilding it"
    for name, record in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            return None, f"is missing {name}: rebuilding it"
        if path.stat().st_size != record["bytes"]:
            return None, f"has a truncated or resized {name}: rebuilding it"
        if file_digest(path) != record["digest"]:
            return None, f"has an altered {name} (digest mismatch): rebuilding it"
    return manifest["layout"], "valid"


def allocate_folder(directory: Path, layout: dict[str, Any]) -> Path:
    """Remove a stale ``directory`` and create its arrays, sized by ``layout``, in a temporary folder
    beside it (returned)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    dtype = DTYPES[layout["dtype"]]
    windows = layout["tiles"] * layout["windows_per_tile"]
    for i, shape in enumerate(layout["feature_shapes"]):
        open_memmap(tmp / f"features_{i}.npy", mode="w+", dtype=dtype, shape=(windows, *shape))
    targets_shape = (layout["tiles"] * layout["targets_per_tile"], *layout["target_shape"])
    open_memmap(tmp / "targets.npy", mode="w+", dtype=np.int16, shape=targets_shape)
    return tmp


def open_rows(tmp: Path, layout: dict[str, Any]) -> tuple[list[np.ndarray], np.ndarray]:
    """The arrays of an allocated folder, writable: ``(features per output, targets)``."""
    if not tmp.is_dir():
        raise FeatureCacheError(f"{tmp} (made by rank 0) is not visible here: cache_dir must be seen by all ranks")
    features = [open_memmap(tmp / f"features_{i}.npy", mode="r+") for i in range(len(layout["feature_shapes"]))]
    return features, open_memmap(tmp / "targets.npy", mode="r+")


def seal_folder(tmp: Path, directory: Path, key: dict[str, Any], layout: dict[str, Any], world_size: int) -> None:
    """Write the manifest (the completion marker), then rename the folder into place."""
    files = {p.name: {"bytes": p.stat().st_size, "digest": file_digest(p)} for p in sorted(tmp.glob("*.npy"))}
    created = time.strftime("%Y-%m-%d %H:%M:%S")
    manifest = {"key": key, "layout": layout, "files": files, "world_size": world_size, "created": created}
    write_json(tmp / "manifest.json", manifest)
    try:
        os.rename(tmp, directory)
    except OSError:  # another process sealed the same cache meanwhile
        if check_folder(directory, key)[0] is None:
            shutil.rmtree(directory)
            os.rename(tmp, directory)
        else:
            shutil.rmtree(tmp)
