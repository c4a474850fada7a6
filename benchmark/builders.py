"""Build datasets, loaders, model, optimizer and evaluator from the composed Hydra config."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from benchmark.data.loaders import EpochShuffleSampler, ShardSampler, make_loader
from benchmark.data.preprocessing import PreprocessedDataset
from benchmark.distributed import DistContext, barrier
from benchmark.engine.evaluator import Evaluator
from benchmark.engine.feature_cache import (
    CachedEvalTiles, CachedTrainWindows, FeatureCache, main_then_share, weights_sha256,
)
from benchmark.engine.trainer import resolve_precision
from benchmark.models.segmentor import Segmentor

log = logging.getLogger(__name__)


def build_dataset(cfg: DictConfig, split: str, ctx: DistContext) -> PreprocessedDataset:
    """The ``split`` of ``cfg.dataset`` with ``cfg.preprocessing[split]`` applied.

    Rank 0 builds first so that a download or synthetic generation happens once per machine.
    """
    if not ctx.is_main:
        barrier()
    raster_cache = str(Path(cfg.cache_dir) / "rasters") if cfg.cache else None
    dataset = instantiate(cfg.dataset, split=split, cache_dir=raster_cache, _convert_="all")
    if ctx.is_main:
        barrier()
    steps = [instantiate(step, _convert_="all") for step in cfg.preprocessing[split]]
    return PreprocessedDataset(dataset, steps, seed=cfg.seed)


def resolve_train_crop_stride(cfg: DictConfig, mode: str) -> int:
    """``train_crop_stride``; null means half the encoder window in frozen mode (a fixed grid of windows
    whose encoder features can be cached) and 1 (crops anywhere, PANGAEA) when the encoder trains."""
    if cfg.train_crop_stride is not None:
        return int(cfg.train_crop_stride)
    return max(1, int(cfg.encoder.input_size) // 2) if mode == "frozen" else 1


def cache_key(cfg: DictConfig, split: str) -> dict[str, Any]:
    """The dataset and preprocessing settings that the encoder features of ``split`` depend on."""
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    for where in ("root_path", "download_url", "auto_download"):  # the data files are fingerprinted instead
        dataset.pop(where, None)
    return {"dataset": dataset, "preprocessing": OmegaConf.to_container(cfg.preprocessing[split], resolve=True)}


def build_feature_cache(cfg: DictConfig, mode: str, model: Segmentor, ctx: DistContext) -> FeatureCache | None:
    """The frozen-encoder feature cache (``cache=true`` in frozen mode), else None."""
    if not cfg.cache:
        return None
    if mode != "frozen":
        log.info("cache=true: decoded rasters are cached; encoder features are not (mode=%s trains the encoder)", mode)
        return None
    root = Path(cfg.cache_dir)
    encoder = OmegaConf.to_container(cfg.encoder, resolve=True)
    weights = Path(encoder.pop("encoder_weights"))
    encoder.pop("download_url", None)
    return FeatureCache(
        root / "features",
        model.encoder,
        {"config": encoder, "weights_sha256": main_then_share(ctx, lambda: weights_sha256(weights, root))},
        ctx,
        precision=resolve_precision(cfg.task.trainer.precision, ctx.device),
        dtype=cfg.cache_dtype,
        batch_size=cfg.task.evaluator.sliding_inference_batch,
        num_workers=cfg.test_num_workers,
    )


def check_train_batch(cfg: DictConfig, model: Segmentor, ctx: DistContext) -> None:
    """Stop before any work when the decoder cannot train on ``batch_size`` samples per process.

    SyncBatchNorm (DDP on CUDA) pools its statistics over all processes, so there the samples of every
    process count.
    """
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


def loader_workers(num_workers: int, dataset: Dataset, ctx: DistContext) -> int:
    """DataLoader workers for ``dataset``: none for cached features on CPU, where reading memory-mapped
    rows costs less than shipping them from worker processes that compete for the same cores."""
    cached = isinstance(dataset, (CachedTrainWindows, CachedEvalTiles))
    return 0 if cached and ctx.device.type == "cpu" else num_workers


def train_loader(cfg: DictConfig, ctx: DistContext, features: FeatureCache | None = None) -> DataLoader:
    """Training batches: preprocessed crops, or their cached encoder features when ``features`` covers them."""
    dataset: Dataset = build_dataset(cfg, "train", ctx)
    if features is not None:
        cached = features.train_windows(dataset, cache_key(cfg, "train"))
        dataset = dataset if cached is None else cached
    if len(dataset) < cfg.batch_size * ctx.world_size:
        raise ValueError(
            f"{len(dataset)} training samples are fewer than one batch ({cfg.batch_size} x "
            f"{ctx.world_size} processes); lower batch_size"
        )
    sampler = EpochShuffleSampler(len(dataset), ctx.rank, ctx.world_size, seed=cfg.seed)
    workers = loader_workers(cfg.num_workers, dataset, ctx)
    return make_loader(dataset, sampler, cfg.batch_size, workers, ctx.device.type == "cuda", drop_last=True)


def eval_stride(cfg: DictConfig, window: int) -> int:
    return cfg.task.evaluator.stride or max(1, window // 2)


def eval_loader(cfg: DictConfig, split: str, ctx: DistContext, features: FeatureCache | None = None) -> DataLoader:
    """Full tiles of ``split``, or the cached encoder features of their sliding windows."""
    dataset: Dataset = build_dataset(cfg, split, ctx)
    if features is not None:
        window = features.encoder.input_size
        dataset = features.eval_tiles(dataset, split, window, eval_stride(cfg, window), cache_key(cfg, split))
    sampler = ShardSampler(len(dataset), ctx.rank, ctx.world_size)
    workers = loader_workers(cfg.test_num_workers, dataset, ctx)
    return make_loader(dataset, sampler, cfg.test_batch_size, workers, ctx.device.type == "cuda")


def build_segmentor(cfg: DictConfig, mode: str, ctx: DistContext) -> Segmentor:
    """Encoder (release weights unless ``mode=random``) + decoder, on ``ctx.device``.

    On CUDA the decoder's convolutions use channels_last; ``task.trainer.compile`` compiles encoder and
    decoder (in place: checkpoints keep their keys).
    """
    encoder = instantiate(cfg.encoder, pretrained=mode != "random", _convert_="all")
    decoder = instantiate(cfg.decoder, in_dims=encoder.output_dims, _convert_="all")
    model = Segmentor(encoder, decoder, mode)
    if ctx.distributed and ctx.device.type == "cuda":
        # BatchNorm statistics are shared across GPUs under DDP; on CPU (gloo) plain BatchNorm stays.
        model.decoder = nn.SyncBatchNorm.convert_sync_batchnorm(model.decoder)
    model = model.to(ctx.device)
    if ctx.device.type == "cuda":
        model.decoder.to(memory_format=torch.channels_last)
    if cfg.task.trainer.compile:
        model.encoder.compile()
        model.decoder.compile()
    return model


def build_optimizer(cfg: DictConfig, model: Segmentor) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over the trainable parameters; the encoder's LR scaled by ``encoder_lr_scale``.

    Adam and AdamW use their fused kernel (CPU and CUDA).
    """
    groups: list[dict[str, Any]] = [{"params": [p for p in model.decoder.parameters() if p.requires_grad]}]
    if model.encoder_trains:
        params = [p for p in model.encoder.parameters() if p.requires_grad]
        groups.append({"params": params, "lr": cfg.optimizer.lr * cfg.encoder_lr_scale})
    factory = instantiate(cfg.optimizer)
    fused = factory.func in (torch.optim.Adam, torch.optim.AdamW)
    return factory(groups, fused=True) if fused else factory(groups)


def build_evaluator(cfg: DictConfig, loader: DataLoader, window: int, ctx: DistContext) -> Evaluator:
    evaluator_cfg = cfg.task.evaluator
    if evaluator_cfg.inference_mode != "sliding":
        raise ValueError(f"task.evaluator.inference_mode must be 'sliding', got {evaluator_cfg.inference_mode!r}")
    return Evaluator(
        loader,
        num_classes=cfg.dataset.num_classes,
        ignore_index=cfg.dataset.ignore_index,
        class_names=list(cfg.dataset.classes),
        window=window,
        stride=eval_stride(cfg, window),
        ctx=ctx,
        inference_batch=evaluator_cfg.sliding_inference_batch,
        precision=resolve_precision(cfg.task.trainer.precision, ctx.device),
    )
