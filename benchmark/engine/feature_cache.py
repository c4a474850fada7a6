"""Frozen-encoder feature cache: the encoder output of every window a run can ask for, computed once.

In frozen mode the encoder's output is a pure function of its input window, so it is computed once per
window and reused across epochs, decoders, seeds and processes:

* val/test: every window of the sliding-window grid over each tile (``task.evaluator.stride``), the
  windows evaluation would encode;
* train: every window of the training crop grid (:class:`~benchmark.data.preprocessing.RandomCrop`
  with ``stride`` > 1, see ``train_crop_stride``). Each epoch still draws one window per tile from the
  (seed, epoch, index) generator, so a run trains on the same windows with and without the cache.

One folder per split, ``<root>/<Encoder>-<split>-<key hash>/``::

    features_<i>.npy   encoder output i, (windows, C_i, h, w), float16 (``cache_dtype``), memory-mapped
    targets.npy        int16 targets: one per window (train) or per tile (val/test)
    manifest.json      key, layout, size and digest of each file; written last: the completion marker

The key, whose sha256 names the folder, holds a fingerprint of the source code that computes the
features (:func:`code_fingerprint`), the encoder config, the sha256 of the weights file, the dataset
config with a fingerprint (name, size, mtime) of the split's files, the split's preprocessing, the
window grid, the device type and precision, the storage dtype and :data:`CACHE_VERSION`. A folder
without manifest, with another key, or whose files differ from their recorded size and digest is
rebuilt. Old folders are never read again; delete them to reclaim the space.

Building under DDP: rank 0 allocates the arrays in a temporary folder, every rank encodes the windows
of its own shard of tiles and writes its rows, then rank 0 writes the manifest and renames the folder
into place (atomic: a half-built cache is never seen). The root must be visible to every rank (one
machine or a shared file system).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.format import open_memmap
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from benchmark.data.loaders import ShardSampler
from benchmark.data.preprocessing import PreprocessedDataset, RandomCrop, Sample, sample_rng
from benchmark.data.raster_cache import file_identity
from benchmark.data.windows import window_grid
from benchmark.distributed import DistContext, all_reduce_max, broadcast_object
from benchmark.engine.checkpoint import write_json
from benchmark.engine.evaluator import autocast_context

log = logging.getLogger(__name__)

CACHE_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}
DIGEST_BLOCK = 2**20
DIGEST_WHOLE_FILE_BELOW = 64 * DIGEST_BLOCK
DIGEST_SAMPLES = 33


class FeatureCacheError(RuntimeError):
    """The feature cache cannot serve this configuration, or building it failed."""


def file_digest(path: Path) -> str:
    """sha256 of a file's size and content; above 64 MiB, of 33 evenly spaced 1 MiB blocks (the first
    and last included), so that checking a large cache costs little."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        if size < DIGEST_WHOLE_FILE_BELOW:
            digest.update(handle.read())
        else:
            for offset in np.linspace(0, size - DIGEST_BLOCK, DIGEST_SAMPLES, dtype=np.int64):
                handle.seek(int(offset))
                digest.update(handle.read(DIGEST_BLOCK))
    return digest.hexdigest()


def weights_sha256(path: Path, root: Path) -> str:
    """sha256 of a weights file, computed once and remembered under ``root/hashes`` by path, size, mtime."""
    memo = root / "hashes" / f"{hashlib.sha256(file_identity(path).encode()).hexdigest()[:32]}.json"
    if memo.is_file():
        return json.loads(memo.read_text())["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(16 * DIGEST_BLOCK), b""):
            digest.update(block)
    write_json(memo, {"path": str(path.resolve()), "sha256": digest.hexdigest()})
    return digest.hexdigest()


def files_fingerprint(paths: Sequence[Path]) -> str:
    """sha256 over the name, size and modification time of ``paths`` (in order)."""
    entries = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def module_source(name: str) -> bytes:
    """The source file of module ``name``, as bytes."""
    return Path(inspect.getfile(sys.modules[name])).read_bytes()


def code_fingerprint(*parts: Any) -> str:
    """sha256 of the source of every ``benchmark`` module that shapes the cached features: those of the
    classes of ``parts`` and of their sub-modules (encoder blocks) and base classes, this module, the window
    grid, and every ``benchmark`` module these import from.

    Editing the encoder, a preprocessing step or the dataset reader changes the key, so features computed
    by older code are never reused.
    """
    names = {__name__, window_grid.__module__}
    for part in parts:
        objects = list(part.modules()) if isinstance(part, nn.Module) else [part]
        for obj in objects:
            names.update(cls.__module__ for cls in type(obj).__mro__ if cls.__module__.startswith("benchmark."))
    pending = list(names)
    while pending:  # and the benchmark modules they take functions, classes or constants from
        for value in vars(sys.modules[pending.pop()]).values():
            name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
            if isinstance(name, str) and name.startswith("benchmark.") and name not in names:
                names.add(name)
                pending.append(name)
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode() + b"\0" + module_source(name))
    return digest.hexdigest()


def main_then_share(ctx: DistContext, fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0, its result on every rank; an error on rank 0 is raised on every rank."""
    outcome, error = None, None
    if ctx.is_main:
        try:
            outcome = ("ok", fn())
        except Exception as exc:  # re-raised below, after the other ranks have been told
            error, outcome = exc, ("error", f"{type(exc).__name__}: {exc}")
    status, value = broadcast_object(outcome)
    if error is not None:
        raise error
    if status == "error":
        raise FeatureCacheError(f"rank 0 failed while preparing the feature cache: {value}")
    return value


def on_every_rank(ctx: DistContext, fn: Callable[[], None]) -> None:
    """``fn()`` on every rank; if it fails on any rank, every rank raises."""
    error = None
    try:
        fn()
    except Exception as exc:
        error = exc
    if all_reduce_max(float(error is not None), ctx.device) > 0:
        if error is not None:
            raise error
        raise FeatureCacheError("another rank failed while filling the feature cache")


class TrainGrid:
    """Training windows: every window of the crop grid of a tile, each with its target."""

    def __init__(self, crop: RandomCrop, after: Sequence[Any]) -> None:
        self.crop = crop
        self.after = list(after)

    def steps(self) -> list[Any]:
        """The preprocessing steps this grid applies to each window."""
        return [self.crop, *self.after]

    def key(self) -> dict[str, Any]:
        crop = self.crop
        return {"kind": "train crop grid", "size": crop.size, "stride": crop.stride, "ignore_index": crop.ignore_index}

    def windows(self, sample: Sample) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
        rng = np.random.default_rng(0)  # the steps after the crop are deterministic: they draw nothing
        windows = []
        for window in self.crop.windows(sample):
            for step in self.after:
                window = step(window, rng)
            windows.append(window)
        return [w["image"] for w in windows], torch.stack([w["target"] for w in windows])


class EvalGrid:
    """Evaluation windows: the sliding-window grid over a full tile, padded like the evaluator pads it;
    one target per tile."""

    def __init__(self, window: int, stride: int | None) -> None:
        self.window = window
        self.stride = stride

    def steps(self) -> list[Any]:
        return []

    def key(self) -> dict[str, Any]:
        return {"kind": "sliding window", "window": self.window, "stride": self.stride}

    def windows(self, sample: Sample) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
        h, w = sample["target"].shape
        pad = (0, max(0, self.window - w), 0, max(0, self.window - h))
        image = {m: F.pad(x, pad) for m, x in sample["image"].items()}
        size = self.window
        crops = [
            {m: x[..., t : t + size, l : l + size] for m, x in image.items()}
            for t, l in window_grid(h, w, size, self.stride)
        ]
        return crops, sample["target"][None]


Grid = TrainGrid | EvalGrid


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


def split_steps(steps: Sequence[Any], split: str) -> tuple[list[Any], RandomCrop | None, list[Any]]:
    """``(before, crop, after)`` around the split's RandomCrop (None if it has none).

    Raises :class:`FeatureCacheError` when any other step is random: it would change each window in a
    way cached features cannot follow (a flipped input does not give flipped ViT features).
    """
    crops = [i for i, step in enumerate(steps) if isinstance(step, RandomCrop)]
    if len(crops) > 1:
        raise FeatureCacheError(f"the {split} preprocessing crops {len(crops)} times; the feature cache handles one")
    at = crops[0] if crops else len(steps)
    random_steps = [type(s).__name__ for i, s in enumerate(steps) if i != at and not getattr(s, "deterministic", False)]
    if random_steps:
        raise FeatureCacheError(
            f"cache=true stores frozen-encoder features of fixed windows, but the {split} preprocessing step(s) "
            f"{', '.join(random_steps)} change each window at random, which cached features cannot follow "
            "(a flipped input does not give flipped ViT features). Disable them (e.g. RandomFlip probabilities 0) "
            "or set cache=false."
        )
    return list(steps[:at]), (steps[at] if crops else None), list(steps[at + 1 :])


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
        dtype: str = "float16",
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

    def store(self, split: str, tiles: PreprocessedDataset, grid: Grid, config_key: dict[str, Any]) -> FeatureStore:
        """Open the split's folder, building it first when it is missing, stale or corrupt."""
        started = time.perf_counter()
        if not hasattr(tiles.dataset, "source_files"):
            raise FeatureCacheError(f"{type(tiles.dataset).__name__} does not list its source_files(); set cache=false")
        key = json.loads(json.dumps(
            {
                "version": CACHE_VERSION,
                "code": code_fingerprint(self.encoder, tiles.dataset, *tiles.steps, *grid.steps()),
                "encoder": self.encoder_key,
                "split": split,
                "data_files": files_fingerprint(tiles.dataset.source_files()),
                "config": config_key,
                "windows": grid.key(),
                "device": self.ctx.device.type,
                "precision": self.precision,
                "dtype": self.dtype,
            },
            sort_keys=True,
        ))
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        directory = self.root / f"{type(self.encoder).__name__}-{split}-{digest[:16]}"
        layout, state = main_then_share(self.ctx, lambda: self.check(directory, key))
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

    @staticmethod
    def check(directory: Path, key: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """``(layout, "valid")`` for a sealed folder that matches ``key``, else ``(None, what is wrong)``."""
        manifest_path = directory / "manifest.json"
        if not directory.exists():
            return None, "does not exist yet"
        try:
            manifest = json.loads(manifest_path.read_text())
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

    def build(self, directory: Path, key: dict[str, Any], tiles: Dataset, grid: Grid, split: str) -> dict[str, Any]:
        tmp, layout = main_then_share(self.ctx, lambda: self.allocate(directory, tiles, grid))
        tmp = Path(tmp)
        on_every_rank(self.ctx, lambda: self.fill(tmp, layout, tiles, grid, split))
        main_then_share(self.ctx, lambda: self.seal(tmp, directory, key, layout))
        return layout

    def encode(self, images: Sequence[dict[str, torch.Tensor]]) -> list[np.ndarray]:
        device = self.ctx.device
        batch = {m: torch.stack([image[m] for image in images]).to(device, non_blocking=True) for m in images[0]}
        with torch.inference_mode(), autocast_context(device, self.precision):
            outputs = self.encoder(batch)
        arrays = [out.float().cpu().numpy().astype(DTYPES[self.dtype]) for out in outputs]
        if not all(np.isfinite(a).all() for a in arrays):
            raise FeatureCacheError(f"encoder features overflow {self.dtype} or are not finite; use cache_dtype=float32")
        return arrays

    def allocate(self, directory: Path, tiles: Dataset, grid: Grid) -> tuple[str, dict[str, Any]]:
        """Rank 0: remove a stale folder, size the arrays from tile 0 and create them in a temporary folder."""
        if directory.exists():
            shutil.rmtree(directory)
        self.root.mkdir(parents=True, exist_ok=True)
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
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{directory.name}."))
        windows = layout["tiles"] * layout["windows_per_tile"]
        for i, shape in enumerate(layout["feature_shapes"]):
            open_memmap(tmp / f"features_{i}.npy", mode="w+", dtype=DTYPES[self.dtype], shape=(windows, *shape))
        targets_shape = (layout["tiles"] * len(targets), *layout["target_shape"])
        open_memmap(tmp / "targets.npy", mode="w+", dtype=np.int16, shape=targets_shape)
        return str(tmp), layout

    def fill(self, tmp: Path, layout: dict[str, Any], tiles: Dataset, grid: Grid, split: str) -> None:
        """Every rank: encode the windows of this rank's shard of tiles into their rows."""
        if not tmp.is_dir():
            raise FeatureCacheError(f"{tmp} (made by rank 0) is not visible here: cache_dir must be seen by all ranks")
        features = [open_memmap(tmp / f"features_{i}.npy", mode="r+") for i in range(len(layout["feature_shapes"]))]
        targets = open_memmap(tmp / "targets.npy", mode="r+")
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

    def seal(self, tmp: Path, directory: Path, key: dict[str, Any], layout: dict[str, Any]) -> None:
        """Rank 0: write the manifest (the completion marker), then rename the folder into place."""
        files = {p.name: {"bytes": p.stat().st_size, "digest": file_digest(p)} for p in sorted(tmp.glob("*.npy"))}
        created = time.strftime("%Y-%m-%d %H:%M:%S")
        manifest = {"key": key, "layout": layout, "files": files, "world_size": self.ctx.world_size, "created": created}
        write_json(tmp / "manifest.json", manifest)
        try:
            os.rename(tmp, directory)
        except OSError:  # another process sealed the same cache meanwhile
            if self.check(directory, key)[0] is None:
                shutil.rmtree(directory)
                os.rename(tmp, directory)
            else:
                shutil.rmtree(tmp)
