"""Evaluation: sliding-window inference over full tiles and dataset-level metrics across ranks."""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from benchmark.data.windows import crop_window, pad_to_window, padded_size, window_grid
from benchmark.distributed import DistContext, all_reduce_sum
from benchmark.engine.metrics import ConfusionMatrix, segmentation_metrics
from benchmark.engine.precision import autocast_context, to_device

log = logging.getLogger(__name__)

Model = Callable[[dict[str, torch.Tensor], tuple[int, int]], torch.Tensor]


def blend_windows(
    predict: Callable[[range], torch.Tensor],
    positions: Sequence[tuple[int, int]],
    tiles: int,
    height: int,
    width: int,
    window: int,
    num_classes: int,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Logits (B, K, H, W) of ``tiles`` tiles, averaged over their overlapping windows.

    ``predict(ks)`` returns the logits of the windows ``positions[k]`` for ``k`` in ``ks``, window-major
    (all B tiles of the first window, then the next): ``(len(ks) * B, K, window, window)``. Windows go
    in chunks of ``batch_size // B``. Tiles smaller than the window are padded, the logits cropped.
    """
    ph, pw = padded_size(height, width, window)
    logits = torch.zeros((tiles, num_classes, ph, pw), device=device)
    counts = torch.zeros((1, 1, ph, pw), device=device)
    per_call = max(1, batch_size // tiles)
    for first in range(0, len(positions), per_call):
        ks = range(first, min(first + per_call, len(positions)))
        for k, part in zip(ks, predict(ks).float().split(tiles)):
            top, left = positions[k]
            logits[..., top : top + window, left : left + window] += part
            counts[..., top : top + window, left : left + window] += 1
    return (logits / counts)[..., :height, :width]


def sliding_window_logits(
    model: Model,
    image: dict[str, torch.Tensor],
    window: int,
    stride: int | None,
    num_classes: int,
    batch_size: int = 8,
) -> torch.Tensor:
    """Logits (B, K, H, W) for full tiles ``image[m]`` (B, C, T, H, W), averaging overlapping windows.

    Tiles smaller than the window are zero-padded (0 is the normalised mean) and the logits cropped.
    """
    reference = next(iter(image.values()))
    b, h, w = reference.shape[0], reference.shape[-2], reference.shape[-1]
    image = {m: pad_to_window(x, window) for m, x in image.items()}
    positions = window_grid(h, w, window, stride)

    def predict(ks: range) -> torch.Tensor:
        crops = [crop_window(image, *positions[k], window) for k in ks]
        return model({m: torch.cat([crop[m] for crop in crops]) for m in image}, (window, window))

    return blend_windows(predict, positions, b, h, w, window, num_classes, batch_size, reference.device)


def cached_window_logits(
    decoder: torch.nn.Module,
    features: Sequence[torch.Tensor],
    tile_size: tuple[int, int],
    window: int,
    stride: int | None,
    num_classes: int,
    batch_size: int = 8,
) -> torch.Tensor:
    """:func:`sliding_window_logits` from cached encoder features of every window of the grid.

    ``features[i]`` is (B, P, C_i, h, w): output ``i`` of the frozen encoder for the P windows of
    :func:`~benchmark.data.windows.window_grid` over ``tile_size``, in grid order.
    """
    positions = window_grid(*tile_size, window, stride)
    if features[0].shape[1] != len(positions):
        raise ValueError(f"{features[0].shape[1]} cached windows per tile, the evaluation grid has {len(positions)}")

    def predict(ks: range) -> torch.Tensor:
        # (B, n, C, h, w) -> window-major (n * B, C, h, w), the order sliding_window_logits crops in
        return decoder([f[:, ks.start : ks.stop].transpose(0, 1).flatten(0, 1) for f in features], (window, window))

    b = features[0].shape[0]
    return blend_windows(predict, positions, b, *tile_size, window, num_classes, batch_size, features[0].device)


class Evaluator:
    """Runs a model over one split and returns :func:`segmentation_metrics` for the whole split.

    Each rank evaluates its own shard (no duplicates); the confusion matrices are summed over ranks,
    so every pixel counts once and the result equals a one-process evaluation.

    Args:
        loader: full tiles of the split, sharded with :class:`~benchmark.data.loaders.ShardSampler`.
        num_classes, ignore_index, class_names: label description.
        window: side of the inference window (the encoder input size).
        stride: step between windows (``<= window``; overlaps are averaged); None: PANGAEA's evenly spread grid.
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
        stride: int | None,
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
        confusion = ConfusionMatrix(self.num_classes, self.ignore_index, self.ctx.device)
        device = self.ctx.device
        for batch in tqdm(self.loader, desc=desc, disable=not self.ctx.is_main, leave=False):
            target = batch["target"].to(device, non_blocking=True)
            with autocast_context(device, self.precision):
                logits = self.tile_logits(model, batch, tuple(target.shape[-2:]))
            confusion.update(logits.argmax(dim=1), target)
        model.train(was_training)
        matrix = all_reduce_sum(confusion.compute().clone())
        return segmentation_metrics(matrix, self.class_names)

    def tile_logits(self, model: torch.nn.Module, batch: dict, tile_size: tuple[int, int]) -> torch.Tensor:
        """Sliding-window logits of a batch of full tiles, or of their cached encoder features
        (``batch["features"]``, frozen mode: only ``model.decoder`` runs)."""
        inputs = to_device(batch, self.ctx.device)
        grid = (self.window, self.stride, self.num_classes, self.inference_batch)
        if "features" in inputs:
            return cached_window_logits(model.decoder, inputs["features"], tile_size, *grid)
        return sliding_window_logits(model, inputs["image"], *grid)
