"""Evaluation: sliding-window inference over full tiles and dataset-level metrics across ranks."""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from benchmark.distributed import DistContext, all_reduce_sum
from benchmark.engine.metrics import confusion_matrix_metric, segmentation_metrics

log = logging.getLogger(__name__)

Model = Callable[[dict[str, torch.Tensor], tuple[int, int]], torch.Tensor]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of size ``window`` covering ``[0, length)``; the last one ends at the edge."""
    if stride < 1 or stride > window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision == "bf16"`` on CUDA; full precision otherwise."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sliding_window_logits(
    model: Model,
    image: dict[str, torch.Tensor],
    window: int,
    stride: int,
    num_classes: int,
    batch_size: int = 8,
) -> torch.Tensor:
    """Logits (B, K, H, W) for full tiles ``image[m]`` (B, C, T, H, W), averaging overlapping windows.

    Tiles smaller than the window are zero-padded (0 is the normalised mean) and the logits cropped.
    """
    reference = next(iter(image.values()))
    b, h, w = reference.shape[0], reference.shape[-2], reference.shape[-1]
    pad_h, pad_w = max(0, window - h), max(0, window - w)
    if pad_h or pad_w:
        image = {m: F.pad(x, (0, pad_w, 0, pad_h)) for m, x in image.items()}
    ph, pw = h + pad_h, w + pad_w
    positions = [(top, left) for top in window_starts(ph, window, stride) for left in window_starts(pw, window, stride)]
    logits = reference.new_zeros((b, num_classes, ph, pw), dtype=torch.float32)
    counts = reference.new_zeros((1, 1, ph, pw), dtype=torch.float32)
    per_call = max(1, batch_size // b)
    for first in range(0, len(positions), per_call):
        chunk = positions[first : first + per_call]
        crops = {
            m: torch.cat([x[..., t : t + window, l : l + window] for t, l in chunk]) for m, x in image.items()
        }
        out = model(crops, (window, window)).float().split(b)
        for (t, l), part in zip(chunk, out):
            logits[..., t : t + window, l : l + window] += part
            counts[..., t : t + window, l : l + window] += 1
    return (logits / counts)[..., :h, :w]


class Evaluator:
    """Runs a model over one split and returns :func:`segmentation_metrics` for the whole split.

    Each rank evaluates its own shard (no duplicates); the confusion matrices are summed over ranks,
    so every pixel counts once and the result equals a one-process evaluation.

    Args:
        loader: full tiles of the split, sharded with :class:`~benchmark.data.loaders.ShardSampler`.
        num_classes, ignore_index, class_names: label description.
        window: side of the inference window (the encoder input size).
        stride: step between windows (``<= window``; overlaps are averaged).
        inference_batch: windows per forward pass.
        precision: ``fp32`` or ``bf16`` (CUDA only).
    """

    def __init__(
        self,
        loader: DataLoader,
        num_classes: int,
        ignore_index: int,
        class_names: Sequence[str],
        window: int,
        stride: int,
        ctx: DistContext,
        inference_batch: int = 8,
        precision: str = "fp32",
    ) -> None:
        self.loader = loader
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names)
        self.window = window
        self.stride = stride
        self.ctx = ctx
        self.inference_batch = inference_batch
        self.precision = precision

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, desc: str = "eval") -> dict[str, object]:
        """Metrics of ``model`` (switched to eval mode, then restored) on the whole split."""
        was_training = model.training
        model.eval()
        confusion = confusion_matrix_metric(self.num_classes, self.ignore_index, self.ctx.device)
        device = self.ctx.device
        for batch in tqdm(self.loader, desc=desc, disable=not self.ctx.is_main, leave=False):
            image = {m: x.to(device, non_blocking=True) for m, x in batch["image"].items()}
            target = batch["target"].to(device, non_blocking=True)
            with autocast_context(device, self.precision):
                logits = sliding_window_logits(
                    model, image, self.window, self.stride, self.num_classes, self.inference_batch
                )
            confusion.update(logits.argmax(dim=1), target)
        model.train(was_training)
        matrix = all_reduce_sum(confusion.compute().clone())
        return segmentation_metrics(matrix, self.class_names)
