"""Frozen-encoder feature cache: the encoder output of every window a run can ask for, computed once.

In frozen mode the encoder's output is a pure function of its input window, so it is computed once per
window and reused across epochs, decoders, seeds and processes:

* val/test: every window of the sliding-window grid over each tile (``task.evaluator.stride``), the
  windows evaluation would encode;
* train: every window of the training crop grid (:class:`~benchmark.data.preprocessing.RandomCrop`
  with ``stride`` > 1, see ``train_crop_stride``). Each epoch still draws one window per tile from the
  (seed, epoch, index) generator, so a run trains on the same windows with and without the cache.

The parts: which windows (:mod:`~benchmark.engine.feature_grids`), what identifies a split's folder
(:mod:`~benchmark.engine.feature_key`), the folder format (:mod:`~benchmark.engine.feature_store`).
This module opens a split's folder and builds it when it is missing, stale or corrupt.

Building under DDP: rank 0 allocates the arrays in a temporary folder, every rank encodes the windows
of its own shard of tiles and writes its rows, then rank 0 writes the manifest and renames the folder
into place (atomic: a half-built cache is never seen). The root must be visible to every rank (one
machine or a shared file system).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from benchmark.data.loaders import ShardSampler
from benchmark.data.preprocessing import PreprocessedDataset
from benchmark.distributed import DistContext, main_then_share, on_every_rank
from benchmark.engine.feature_grids import EvalGrid, Grid, TrainGrid, split_steps
from benchmark.engine.feature_key import CACHE_VERSION, code_fingerprint, files_fingerprint, key_digest
from benchmark.engine.feature_store import (
    DTYPES, CachedEvalTiles, CachedTrainWindows, FeatureCacheError, FeatureStore, allocate_folder, check_folder,
    open_rows, seal_folder,
)
from benchmark.engine.precision import autocast_context

log = logging.getLogger(__name__)

PREPARING, FILLING = "preparing the feature cache", "filling the feature cache"


class FeatureCache:
    """Encoder features of the windows of each split, on disk under ``root`` (see the module docstring).

    Args:
        root: folder of the split folders (``<cache_dir>/features``).
        encoder: the frozen encoder (eval mode, on ``ctx.device``).
        encoder_key: what identifies it: its config and the sha256 of its weights file.
        ctx: process placement; under DDP every rank encodes its shard.
        precision: ``fp32`` or ``bf16`` (autocast on CUDA), as the run would encode.
        dtype: storage dtype, ``float16`` or ``float32``.
        batch_size: windows per encoder forward pass while filling.
        num_workers: DataLoader workers reading tiles while filling.
    """

    def __init__(
        self,
        root: str | Path,
        encoder: nn.Module,
        encoder_key: dict[str, Any],
        ctx: DistContext,
        precision: str,
        dtype: str = "float32",
        batch_size: int = 8,
        num_workers: int = 0,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"cache_dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.root = Path(root)
        self.encoder = encoder
        self.encoder_key = encoder_key
        self.ctx = ctx
        self.precision = precision
        self.dtype = dtype
        self.batch_size = max(1, int(batch_size))
        self.num_workers = int(num_workers)
        self.seconds = 0.0

    def train_windows(self, dataset: PreprocessedDataset, config_key: dict[str, Any]) -> CachedTrainWindows | None:
        """The cached training windows of ``dataset``; None when its crops are drawn anywhere (stride 1)."""
        before, crop, after = split_steps(dataset.steps, "train")
        if crop is None or crop.stride == 1:
            why = "its crops are drawn anywhere (train_crop_stride=1)" if crop else "its preprocessing has no crop"
            log.info("Training features are encoded every epoch: %s. Val/test features are cached.", why)
            return None
        tiles = PreprocessedDataset(dataset.dataset, before, dataset.seed)
        store = self.store("train", tiles, TrainGrid(crop, after), config_key)
        return CachedTrainWindows(store, crop, dataset.seed)

    def eval_tiles(
        self, dataset: PreprocessedDataset, split: str, window: int, stride: int, config_key: dict[str, Any]
    ) -> CachedEvalTiles:
        """The cached sliding-window features of every tile of ``dataset``."""
        if split_steps(dataset.steps, split)[1] is not None:
            raise FeatureCacheError(f"the {split} preprocessing crops; evaluation runs on full tiles")
        return CachedEvalTiles(self.store(split, dataset, EvalGrid(window, stride), config_key))

    def key(self, split: str, tiles: PreprocessedDataset, grid: Grid, config_key: dict[str, Any]) -> dict[str, Any]:
        """Everything the features of ``split`` depend on (see :mod:`~benchmark.engine.feature_key`)."""
        if not hasattr(tiles.dataset, "source_files"):
            raise FeatureCacheError(f"{type(tiles.dataset).__name__} does not list its source_files(); set cache=false")
        return {
            "version": CACHE_VERSION,
            "code": code_fingerprint(self, self.encoder, tiles.dataset, *tiles.steps, grid, *grid.steps()),
            "encoder": self.encoder_key,
            "split": split,
            "data_files": files_fingerprint(tiles.dataset.source_files()),
            "config": config_key,
            "windows": grid.key(),
            "device": self.ctx.device.type,
            "precision": self.precision,
            "dtype": self.dtype,
        }

    def store(self, split: str, tiles: PreprocessedDataset, grid: Grid, config_key: dict[str, Any]) -> FeatureStore:
        """Open the split's folder, building it first when it is missing, stale or corrupt."""
        started = time.perf_counter()
        key, digest = key_digest(self.key(split, tiles, grid, config_key))
        directory = self.root / f"{type(self.encoder).__name__}-{split}-{digest[:16]}"
        layout, state = main_then_share(self.ctx, lambda: check_folder(directory, key), PREPARING)
        if layout is None:
            processes = self.ctx.world_size
            log.info("Feature cache %s %s: encoding %s windows (%d process(es))", directory, state, split, processes)
            layout = self.build(directory, key, tiles, grid, split)
            log.info("Feature cache %s built in %.1f s", directory.name, time.perf_counter() - started)
        else:
            windows = layout["tiles"] * layout["windows_per_tile"]
            log.info("Feature cache %s: reusing its %d %s windows", directory, windows, split)
        self.seconds += time.perf_counter() - started
        return FeatureStore(directory, layout)

    def build(self, directory: Path, key: dict[str, Any], tiles: Dataset, grid: Grid, split: str) -> dict[str, Any]:
        """Rank 0 allocates, every rank fills its shard, rank 0 seals; returns the layout."""
        tmp, layout = main_then_share(self.ctx, lambda: self.allocate(directory, tiles, grid), PREPARING)
        tmp = Path(tmp)
        try:
            on_every_rank(self.ctx, lambda: self.fill(tmp, layout, tiles, grid, split), FILLING)
            main_then_share(self.ctx, lambda: seal_folder(tmp, directory, key, layout, self.ctx.world_size), PREPARING)
        except BaseException:
            if self.ctx.is_main:  # nothing half-written stays behind (the ranks fail together)
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        return layout

    def encode(self, images: Sequence[dict[str, torch.Tensor]]) -> list[np.ndarray]:
        """Encoder outputs (windows, C_i, h, w) of ``images``, in the storage dtype."""
        device = self.ctx.device
        batch = {m: torch.stack([image[m] for image in images]).to(device, non_blocking=True) for m in images[0]}
        with torch.inference_mode(), autocast_context(device, self.precision):
            outputs = self.encoder(batch)
        arrays = [out.float().cpu().numpy().astype(DTYPES[self.dtype]) for out in outputs]
        if not all(np.isfinite(a).all() for a in arrays):
            raise FeatureCacheError(f"encoder features overflow {self.dtype} or are not finite; use cache_dtype=float32")
        return arrays

    def allocate(self, directory: Path, tiles: Dataset, grid: Grid) -> tuple[str, dict[str, Any]]:
        """Rank 0: size the arrays from tile 0 and create them in a temporary folder (its path, the layout)."""
        sample = tiles[0]
        tile_size = list(sample["target"].shape)  # before windows(), which pads a tile smaller than the window
        images, targets = grid.windows(sample)
        layout = {
            "tiles": len(tiles),
            "tile_size": tile_size,
            "windows_per_tile": len(images),
            "targets_per_tile": len(targets),
            "feature_shapes": [list(a.shape[1:]) for a in self.encode(images[:1])],
            "target_shape": list(targets.shape[1:]),
            "dtype": self.dtype,
        }
        return str(allocate_folder(directory, layout)), layout

    def fill(self, tmp: Path, layout: dict[str, Any], tiles: Dataset, grid: Grid, split: str) -> None:
        """Every rank: encode the windows of this rank's shard of tiles into their rows."""
        features, targets = open_rows(tmp, layout)
        per_tile, targets_per_tile = layout["windows_per_tile"], layout["targets_per_tile"]
        indices = list(ShardSampler(len(tiles), self.ctx.rank, self.ctx.world_size))
        # its own generator: filling the cache must not move the run's global RNG (dropout masks)
        loader = DataLoader(
            tiles, sampler=indices, batch_size=None, num_workers=self.num_workers, generator=torch.Generator()
        )
        progress = tqdm(
            zip(indices, loader), total=len(indices), desc=f"caching {split} features", leave=False,
            disable=not self.ctx.is_main,
        )
        for index, sample in progress:
            if list(sample["target"].shape) != layout["tile_size"]:
                raise FeatureCacheError(
                    f"{split} tile {index} is {tuple(sample['target'].shape)} but tile 0 is "
                    f"{tuple(layout['tile_size'])}: the feature cache needs tiles of one size per split; "
                    "set cache=false"
                )
            images, target = grid.windows(sample)
            for first in range(0, per_tile, self.batch_size):
                row = index * per_tile + first
                for array, out in zip(features, self.encode(images[first : first + self.batch_size])):
                    array[row : row + len(out)] = out
            targets[index * targets_per_tile : (index + 1) * targets_per_tile] = target.numpy()
        for array in (*features, targets):
            array.flush()
