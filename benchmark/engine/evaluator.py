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
from benchmark.models.segmentor import Segmentor

log = logging.getLogger(__name__)

Model = Callable[[dict[str, torch.Tensor], tuple[int, int]], torch.Tensor]


def blend_windows(
    predict: Callable[[range], Sequence[torch.Tensor]],
    positions: Sequence[tuple[int, int]],
    tiles: int,
    height: int,
    width: int,
    window: int,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    heads: int = 1,
) -> list[torch.Tensor]:
    """Logits (B, K, H, W) of ``tiles`` tiles for each of ``heads`` models, averaged over overlapping windows.

    ``predict(ks)`` returns, per head, the logits of the windows ``positions[k]`` for ``k`` in ``ks``,
    window-major (all B tiles of the first window, then the next): ``(len(ks) * B, K, window, window)``.
    Windows go in chunks of ``batch_size // B``. Tiles smaller than the window are padded, the logits cropped.
    """
    ph, pw = padded_size(height, width, window)
    logits = [torch.zeros((tiles, num_classes, ph, pw), device=device) for _ in range(heads)]
    counts = torch.zeros((1, 1, ph, pw), device=device)
    per_call = max(1, batch_size // tiles)
    for first in range(0, len(positions), per_call):
        ks = range(first, min(first + per_call, len(positions)))
        for head, outputs in zip(logits, predict(ks)):
            for k, part in zip(ks, outputs.float().split(tiles)):
                top, left = positions[k]
                head[..., top : top + window, left : left + window] += part
        for k in ks:
            top, left = positions[k]
            counts[..., top : top + window, left : left + window] += 1
    return [(head / counts)[..., :height, :width] for head in logits]


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
    def heads(inputs: dict[str, torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
        return [model(inputs, size)]

    return sliding_window_heads(heads, 1, image, window, stride, num_classes, batch_size)[0]


def sliding_window_heads(
    heads: Callable[[dict[str, torch.Tensor], tuple[int, int]], Sequence[torch.Tensor]],
    count: int,
    image: dict[str, torch.Tensor],
    window: int,
    stride: int | None,
    num_classes: int,
    batch_size: int = 8,
) -> list[torch.Tensor]:
    """:func:`sliding_window_logits` of ``count`` models at once: ``heads(windows, size)`` returns the
    logits of each for the same batch of windows (one encoder pass feeding every decoder)."""
    reference = next(iter(image.values()))
    b, h, w = reference.shape[0], reference.shape[-2], reference.shape[-1]
    image = {m: pad_to_window(x, window) for m, x in image.items()}
    positions = window_grid(h, w, window, stride)

    def predict(ks: range) -> Sequence[torch.Tensor]:
        crops = [crop_window(image, *positions[k], window) for k in ks]
        return heads({m: torch.cat([crop[m] for crop in crops]) for m in image}, (window, window))

    return blend_windows(predict, positions, b, h, w, window, num_classes, batch_size, reference.device, count)


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

    def predict(ks: range) -> list[torch.Tensor]:
        # (B, n, C, h, w) -> window-major (n * B, C, h, w), the order sliding_window_logits crops in
        return [decoder([f[:, ks.start : ks.stop].transpose(0, 1).flatten(0, 1) for f in features], (window, window))]

    b = features[0].shape[0]
    return blend_windows(predict, positions, b, *tile_size, window, num_classes, batch_size, features[0].device)[0]


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

    def evaluate(self, model: torch.nn.Module, desc: str = "eval") -> dict[str, object]:
        """Metrics of ``model`` (switched to eval mode, then restored) on the whole split."""
        return self.evaluate_heads([model], desc)[0]

    @torch.inference_mode()
    def evaluate_heads(self, models: Sequence[Segmentor], desc: str = "eval") -> list[dict[str, object]]:
        """:meth:`evaluate` for several segmentors that share one frozen encoder: each window goes
        through the encoder once and through every decoder; the metrics of each, in order."""
        if len(models) > 1 and any(m.encoder is not models[0].encoder or m.encoder_trains for m in models):
            raise ValueError("segmentors evaluated together must share one frozen encoder")
        was_training = [m.training for m in models]
        for model in models:
            model.eval()
        confusions = [ConfusionMatrix(self.num_classes, self.ignore_index, self.ctx.device) for _ in models]
        device = self.ctx.device
        for batch in tqdm(self.loader, desc=desc, disable=not self.ctx.is_main, leave=False):
            target = batch["target"].to(device, non_blocking=True)
            with autocast_context(device, self.precision):
                logits = self.tile_logits(models, batch, tuple(target.shape[-2:]))
            for confusion, head in zip(confusions, logits):
                confusion.update(head.argmax(dim=1), target)
        for model, training in zip(models, was_training):
            model.train(training)
        return [segmentation_metrics(all_reduce_sum(c.compute().clone()), self.class_names) for c in confusions]

    def tile_logits(self, models: Sequence[Segmentor], batch: dict, tile_size: tuple[int, int]) -> list[torch.Tensor]:
        """Sliding-window logits of a batch of full tiles for each model, or from their cached encoder
        features (``batch["features"]``, frozen mode: only the decoders run)."""
        inputs = to_device(batch, self.ctx.device)
        grid = (self.window, self.stride, self.num_classes, self.inference_batch)
        if "features" in inputs:
            return [cached_window_logits(m.decoder, inputs["features"], tile_size, *grid) for m in models]
        if len(models) == 1:
            return [sliding_window_logits(models[0], inputs["image"], *grid)]

        def heads(windows: dict[str, torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
            features = models[0].encode(windows)
            return [m.decoder(list(features), size) for m in models]

        return sliding_window_heads(heads, len(models), inputs["image"], *grid)
