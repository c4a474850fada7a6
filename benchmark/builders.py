"""Build datasets, loaders, model, optimizer and evaluator from the composed Hydra config."""

from __future__ import annotations

import logging
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from benchmark.data.loaders import EpochShuffleSampler, ShardSampler, make_loader
from benchmark.data.preprocessing import PreprocessedDataset
from benchmark.distributed import DistContext, barrier
from benchmark.engine.evaluator import Evaluator
from benchmark.engine.trainer import resolve_precision
from benchmark.models.segmentor import Segmentor

log = logging.getLogger(__name__)


def build_dataset(cfg: DictConfig, split: str, ctx: DistContext) -> PreprocessedDataset:
    """The ``split`` of ``cfg.dataset`` with ``cfg.preprocessing[split]`` applied.

    Rank 0 builds first so that a download or synthetic generation happens once per machine.
    """
    if not ctx.is_main:
        barrier()
    dataset = instantiate(cfg.dataset, split=split, _convert_="all")
    if ctx.is_main:
        barrier()
    steps = [instantiate(step, _convert_="all") for step in cfg.preprocessing[split]]
    return PreprocessedDataset(dataset, steps, seed=cfg.seed)


def train_loader(cfg: DictConfig, ctx: DistContext) -> DataLoader:
    dataset = build_dataset(cfg, "train", ctx)
    if len(dataset) < cfg.batch_size * ctx.world_size:
        raise ValueError(
            f"{len(dataset)} training samples are fewer than one batch ({cfg.batch_size} x "
            f"{ctx.world_size} processes); lower batch_size"
        )
    sampler = EpochShuffleSampler(len(dataset), ctx.rank, ctx.world_size, seed=cfg.seed)
    return make_loader(
        dataset, sampler, cfg.batch_size, cfg.num_workers, ctx.device.type == "cuda", drop_last=True
    )


def eval_loader(cfg: DictConfig, split: str, ctx: DistContext) -> DataLoader:
    dataset = build_dataset(cfg, split, ctx)
    sampler = ShardSampler(len(dataset), ctx.rank, ctx.world_size)
    return make_loader(dataset, sampler, cfg.test_batch_size, cfg.test_num_workers, ctx.device.type == "cuda")


def build_segmentor(cfg: DictConfig, mode: str, ctx: DistContext) -> Segmentor:
    """Encoder (release weights unless ``mode=random``) + decoder, on ``ctx.device``."""
    encoder = instantiate(cfg.encoder, pretrained=mode != "random", _convert_="all")
    decoder = instantiate(cfg.decoder, in_dims=encoder.output_dims, _convert_="all")
    model = Segmentor(encoder, decoder, mode)
    if ctx.distributed and ctx.device.type == "cuda":
        # BatchNorm statistics are shared across GPUs under DDP; on CPU (gloo) plain BatchNorm stays.
        model.decoder = nn.SyncBatchNorm.convert_sync_batchnorm(model.decoder)
    return model.to(ctx.device)


def build_optimizer(cfg: DictConfig, model: Segmentor) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over the trainable parameters; the encoder's LR scaled by ``encoder_lr_scale``."""
    groups: list[dict[str, Any]] = [{"params": [p for p in model.decoder.parameters() if p.requires_grad]}]
    if model.encoder_trains:
        params = [p for p in model.encoder.parameters() if p.requires_grad]
        groups.append({"params": params, "lr": cfg.optimizer.lr * cfg.encoder_lr_scale})
    return instantiate(cfg.optimizer)(groups)


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
        stride=evaluator_cfg.stride or max(1, window // 2),
        ctx=ctx,
        inference_batch=evaluator_cfg.sliding_inference_batch,
        precision=resolve_precision(cfg.task.trainer.precision, ctx.device),
    )
