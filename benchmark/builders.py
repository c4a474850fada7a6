"""Build datasets, loaders, model, optimizer and evaluator from the composed Hydra config."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmark.compat import dataset_arguments, dataset_frames, runs_per_frame
from benchmark.data.loaders import EpochShuffleSampler, ShardSampler, make_loader
from benchmark.data.preprocessing import PreprocessedDataset
from benchmark.data.resident import ResidentTiles
from benchmark.data.subsets import SUBSET_KEYS, requested_subset, restrict, train_subset
from benchmark.distributed import DistContext, main_then_share
from benchmark.engine.evaluator import Evaluator
from benchmark.engine.feature_cache import FeatureCache
from benchmark.engine.feature_key import weights_sha256
from benchmark.engine.feature_store import CachedEvalTiles, CachedTrainWindows
from benchmark.engine.precision import resolve_precision
from benchmark.engine.safe_load import trusted_pickle_files
from benchmark.models.encoders.base import architecture_config
from benchmark.models.encoders.weights import load_pretrained
from benchmark.models.encoder_layers import ProgressiveSchedule, decayed_groups
from benchmark.models.lora import LoraSettings, add_lora
from benchmark.models.segmentor import Segmentor
from benchmark.models.temporal import TemporalDecoder

log = logging.getLogger(__name__)


def instantiate_plain(config: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that raises the constructor's own error (e.g. a dataset's list of bad
    files), not Hydra's wrapper around its repr."""
    try:
        return instantiate(config, **kwargs)
    except InstantiationException as error:
        if error.__cause__ is None:
            raise
        raise error.__cause__ from None


def build_datasets(cfg: DictConfig, ctx: DistContext, splits: Sequence[str] = ("train", "val", "test")) -> dict[str, PreprocessedDataset]:
    """Every split a run reads, built (so every file checked) before any model or training work."""
    return {split: build_dataset(cfg, split, ctx) for split in splits}


def build_dataset(cfg: DictConfig, split: str, ctx: DistContext) -> PreprocessedDataset:
    """The ``split`` of ``cfg.dataset`` with ``cfg.preprocessing[split]`` applied.

    Rank 0 builds first so that a download or synthetic generation happens once per machine. PANGAEA keys
    that the dataset class does not take stay out of it (:func:`benchmark.compat.dataset_arguments`). On the
    train split, ``dataset.train_fraction`` < 1 keeps a stratified subset of the checked split's tiles, read
    (or first drawn and written) by rank 0 and shared (:mod:`benchmark.data.subsets`).
    """
    raster_cache = str(Path(cfg.cache_dir) / "rasters") if cfg.cache else None
    fraction, draw = requested_subset(cfg.dataset)  # a bad value stops the run before any file is read
    subset = split == "train" and fraction < 1.0

    def build() -> Dataset:
        return instantiate_plain(class_arguments(cfg.dataset), split=split, cache_dir=raster_cache, _convert_="all")

    built: dict[str, Dataset] = {}

    def build_on_rank_0() -> list[str] | None:
        built["dataset"] = build()
        return train_subset(built["dataset"], cfg.dataset, fraction, draw) if subset else None

    # rank 0 first; its error (e.g. the list of bad files) reaches every rank instead of leaving them waiting
    chosen = main_then_share(ctx, build_on_rank_0, f"building the {split} dataset")
    dataset = built["dataset"] if ctx.is_main else build()
    if chosen is not None:  # every rank trains on rank 0's reading of the subset file
        restrict(dataset, chosen)
    steps = [instantiate_plain(step, _convert_="all") for step in preprocessing_steps(cfg, split)]
    return PreprocessedDataset(dataset, steps, seed=cfg.seed)


def preprocessing_steps(cfg: DictConfig, split: str) -> Any:
    """``cfg.preprocessing[split]``; a dataset's extra evaluation split (Sen1Floods11's ``bolivia``) is
    preprocessed as ``test``."""
    return cfg.preprocessing[split if split in cfg.preprocessing else "test"]


def class_arguments(dataset: DictConfig) -> dict[str, Any]:
    """What the dataset class is built from: :func:`benchmark.compat.dataset_arguments` without the keys that
    choose a subset of the built train split (:mod:`benchmark.data.subsets`)."""
    arguments = dataset_arguments(dataset)
    for key in SUBSET_KEYS:
        arguments.pop(key, None)
    return arguments


def cache_key(cfg: DictConfig, split: str) -> dict[str, Any]:
    """The dataset and preprocessing settings that the encoder features of ``split`` depend on: what the dataset
    class is built from, so that PANGAEA keys it ignores (``dataset.distribution=...``) reuse the cache. A train
    subset is told apart by its files' fingerprint; val and test features serve every label fraction."""
    dataset = class_arguments(cfg.dataset)
    for where in ("root_path", "download_url", "auto_download"):  # the data files are fingerprinted instead
        dataset.pop(where, None)
    return {"dataset": dataset, "preprocessing": OmegaConf.to_container(preprocessing_steps(cfg, split), resolve=True)}


def build_feature_cache(cfg: DictConfig, mode: str, model: Segmentor, ctx: DistContext) -> FeatureCache | None:
    """The frozen-encoder feature cache (``cache=true`` in frozen mode), else None."""
    if not cfg.cache:
        return None
    if mode != "frozen":
        log.info("cache=true: decoded rasters are cached; encoder features are not (mode=%s trains the encoder)", mode)
        return None
    if dataset_frames(cfg.dataset) > 1:
        log.info("cache=true: decoded rasters are cached; encoder features are not (multi-temporal input)")
        return None
    root = Path(cfg.cache_dir)
    weights = Path(cfg.encoder.encoder_weights)
    weights_digest = main_then_share(ctx, lambda: weights_sha256(weights, root), "hashing the encoder weights")
    return FeatureCache(
        root / "features",
        model.encoder,
        {"config": architecture_config(cfg.encoder), "weights_sha256": weights_digest},
        ctx,
        precision=resolve_precision(cfg.task.trainer.precision, ctx.device),
        dtype=cfg.cache_dtype,
        batch_size=cfg.task.evaluator.sliding_inference_batch,
        num_workers=cfg.test_num_workers,
    )


def check_train_batch(cfg: DictConfig, model: Segmentor, ctx: DistContext) -> None:
    """Stop before any work when the decoder cannot train on ``batch_size`` samples per process (under
    SyncBatchNorm, DDP on CUDA, the samples of every process count)."""
    needed = getattr(model.decoder, "min_train_batch", 1)
    synced = any(isinstance(m, nn.SyncBatchNorm) for m in model.decoder.modules())
    samples = cfg.batch_size * (ctx.world_size if synced else 1)
    if samples < needed:
        raise ValueError(
            f"{type(model.decoder).__name__} needs at least {needed} samples per BatchNorm step to train (its "
            f"BatchNorm after 1x1 pyramid pooling has a single value per sample), got batch_size={cfg.batch_size} "
            f"per process{f' over {ctx.world_size} process(es)' if synced else ''}: raise batch_size or use "
            "decoder.norm=group"
        )


def check_train_size(cfg: DictConfig, ctx: DistContext, samples: int) -> None:
    """Stop before any work when the train split (after ``dataset.train_fraction``) holds fewer samples than
    one batch over all processes: batches are full (drop_last), so every epoch would train on nothing."""
    if samples >= cfg.batch_size * ctx.world_size:
        return
    fraction = requested_subset(cfg.dataset)[0]
    source = f"dataset.train_fraction={fraction:g} leaves" if fraction < 1 else "the train split holds"
    raise ValueError(
        f"{source} {samples} training samples, fewer than one batch (batch_size={cfg.batch_size} x "
        f"{ctx.world_size} process(es)): every epoch would train on nothing. Set batch_size={max(1, samples // ctx.world_size)} "
        "or lower, or train on more labels"
    )


def loader_workers(num_workers: int, dataset: Dataset, ctx: DistContext) -> int:
    """DataLoader workers for ``dataset``: none for a split held on the device, nor for cached features on CPU
    (reading memory-mapped rows costs less than shipping them from workers competing for the same cores)."""
    cached = isinstance(dataset, (CachedTrainWindows, CachedEvalTiles))
    return 0 if isinstance(dataset, ResidentTiles) or (cached and ctx.device.type == "cpu") else num_workers


def train_loader(
    cfg: DictConfig, ctx: DistContext, tiles: PreprocessedDataset, features: FeatureCache | None = None
) -> DataLoader:
    """Training batches of the train split ``tiles``: preprocessed crops, or their cached encoder features
    when ``features`` covers them."""
    dataset: Dataset = tiles
    if features is not None:
        cached = features.train_windows(tiles, cache_key(cfg, "train"))
        dataset = dataset if cached is None else cached
    check_train_size(cfg, ctx, len(dataset))
    sampler = EpochShuffleSampler(len(dataset), ctx.rank, ctx.world_size, seed=cfg.seed)
    if cfg.get("data_on_device", False) and dataset is tiles:  # (cached features replace the tiles)
        dataset = ResidentTiles(tiles, ctx.device, show_progress=ctx.is_main)
    pin = ctx.device.type == "cuda" and not isinstance(dataset, ResidentTiles)
    return make_loader(dataset, sampler, cfg.batch_size, loader_workers(cfg.num_workers, dataset, ctx), pin, drop_last=True)


def eval_loader(
    cfg: DictConfig, split: str, ctx: DistContext, tiles: PreprocessedDataset, features: FeatureCache | None = None
) -> DataLoader:
    """The full tiles of ``split`` (``tiles``), or the cached encoder features of their sliding windows."""
    dataset: Dataset = tiles
    if features is not None:
        window = features.encoder.input_size
        dataset = features.eval_tiles(tiles, split, window, cfg.task.evaluator.stride, cache_key(cfg, split))
    sampler = ShardSampler(len(dataset), ctx.rank, ctx.world_size)
    workers = loader_workers(cfg.test_num_workers, dataset, ctx)
    return make_loader(dataset, sampler, cfg.test_batch_size, workers, ctx.device.type == "cuda")


def build_segmentor(cfg: DictConfig, mode: str, ctx: DistContext) -> Segmentor:
    """Encoder (release weights unless ``mode=random``) + decoder, on ``ctx.device``."""
    return assemble_segmentor(cfg, mode, ctx, build_encoder(cfg, mode))


def build_encoder(cfg: DictConfig, mode: str) -> nn.Module:
    """The encoder with its release weights read (unless ``mode=random``) and, under LoRA, its adapters."""
    # The constructor only builds the architecture; the file named by encoder.encoder_weights is read after.
    encoder = instantiate_plain(architecture_config(cfg.encoder), _convert_="all")
    if mode == "random":
        log.info("%s: random initialisation (mode=random), no weights file read", type(encoder).__name__)
    else:
        with trusted_pickle_files(cfg.get("trusted_pickle_files")):  # the user's opt-in for pickled objects
            load_pretrained(encoder, cfg.encoder.get("encoder_weights"), cfg.encoder.get("download_url"))
    if mode == "lora":
        settings = LoraSettings(**cfg.lora)
        adapted = add_lora(encoder, encoder.lora_targets, settings)
        log.info("LoRA: rank %d, alpha %g on %d layers of %s; its other weights stay frozen", settings.rank, settings.alpha, adapted, type(encoder).__name__)
    return encoder


def assemble_segmentor(cfg: DictConfig, mode: str, ctx: DistContext, encoder: nn.Module) -> Segmentor:
    """A new decoder (and temporal head) on ``encoder``; several segmentors may share one frozen encoder
    (lockstep heads). On CUDA the decoder's convolutions use channels_last; ``task.trainer.compile``
    compiles encoder and decoder (in place: checkpoints keep their keys)."""
    decoder = instantiate_plain(cfg.decoder, in_dims=encoder.output_dims, _convert_="all")
    frames = dataset_frames(cfg.dataset)  # an encoder reading another number of frames stops at start-up (config_checks)
    if frames > 1:
        decoder = TemporalDecoder(decoder, instantiate(cfg.temporal), encoder.output_dims, frames)
        how = "reads one date: it runs on each" if runs_per_frame(cfg) else "reads all"
        log.info("%s %s of the %d frames, merged by %s before the decoder", type(encoder).__name__, how, frames,
                 cfg.temporal._target_.rpartition(".")[2])
    progressive = ProgressiveSchedule(**cfg.progressive) if mode == "progressive" else None
    model = Segmentor(
        encoder, decoder, mode, unfreeze_last=cfg.get("unfreeze_last"), progressive=progressive,
        freeze_norm=bool(cfg.get("freeze_encoder_norm", False)), per_frame=runs_per_frame(cfg),
    )
    if ctx.distributed and ctx.device.type == "cuda":
        # BatchNorm statistics are shared across GPUs under DDP; on CPU (gloo) plain BatchNorm stays.
        model.decoder = nn.SyncBatchNorm.convert_sync_batchnorm(model.decoder)
        if model.encoder_trains:  # an encoder with BatchNorm (the scratch U-Net) shares its statistics too
            model.encoder = nn.SyncBatchNorm.convert_sync_batchnorm(model.encoder)
    model = model.to(ctx.device)
    if ctx.device.type == "cuda":
        model.decoder.to(memory_format=torch.channels_last)
    if cfg.task.trainer.compile:
        model.encoder.compile()
        model.decoder.compile()
    return model


def build_optimizer(cfg: DictConfig, model: Segmentor) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over the trainable parameters; the encoder's LR scaled by ``encoder_lr_scale`` and,
    with ``encoder_lr_decay``, decayed block by block downwards (one parameter group per depth).

    Adam and AdamW use their fused kernel where this torch build has one for the device (CUDA; CPU since
    torch 2.4); the result is the same update either way.
    """
    groups: list[dict[str, Any]] = [{"params": [p for p in model.decoder.parameters() if p.requires_grad]}]
    if model.encoder_trains:
        encoder_lr = cfg.optimizer.lr * cfg.encoder_lr_scale
        if cfg.get("encoder_lr_decay") is not None:
            groups.extend(decayed_groups(model.encoder, encoder_lr, float(cfg.encoder_lr_decay)))
        else:
            groups.append({"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": encoder_lr})
    factory = instantiate(cfg.optimizer)
    device = groups[0]["params"][0].device if groups[0]["params"] else torch.device("cpu")
    if factory.func in (torch.optim.Adam, torch.optim.AdamW) and fused_kernel_available(factory.func, device.type):
        return factory(groups, fused=True)
    return factory(groups)


@functools.cache
def fused_kernel_available(optimizer: type, device_type: str) -> bool:
    """Whether ``optimizer(fused=True)`` can step on ``device_type`` with this torch build (tried once)."""
    param = torch.zeros(1, device=device_type, requires_grad=True)
    param.grad = torch.zeros_like(param)
    try:
        optimizer([param], fused=True).step()
    except RuntimeError:
        log.info("%s has no fused kernel on %s in torch %s: using the default one", optimizer.__name__, device_type, torch.__version__)
        return False
    return True


def build_evaluator(cfg: DictConfig, loader: DataLoader, window: int, ctx: DistContext) -> Evaluator:
    """Sliding-window evaluation of full tiles (the only inference mode: ``task.evaluator.inference_mode`` is a
    PANGAEA key checked at start-up by :mod:`benchmark.compat`)."""
    evaluator_cfg = cfg.task.evaluator
    return Evaluator(
        loader,
        num_classes=cfg.dataset.num_classes,
        ignore_index=cfg.dataset.ignore_index,
        class_names=list(cfg.dataset.classes),
        window=window,
        stride=cfg.task.evaluator.stride,
        ctx=ctx,
        inference_batch=evaluator_cfg.sliding_inference_batch,
        precision=resolve_precision(cfg.task.trainer.precision, ctx.device),
    )
