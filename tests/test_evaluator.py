"""Sliding-window inference, evaluation sharding, and the evaluator's metrics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmark.data.loaders import EpochShuffleSampler, ShardSampler, make_loader
from benchmark.distributed import DistContext
from benchmark.data.windows import window_starts
from benchmark.engine.evaluator import Evaluator, sliding_window_logits

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class PixelwiseModel(nn.Module):
    """A 1x1-conv 'segmentor': its logits do not depend on the window, so windows must agree."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, image: dict, output_size: tuple[int, int]) -> torch.Tensor:
        x = image["optical"][:, :, 0]
        self.calls.append(tuple(x.shape))
        return self.conv(x)


@pytest.mark.parametrize("length,window", [(512, 224), (512, 120), (512, 96), (64, 32), (500, 224), (100, 99), (7, 3)])
def test_default_evaluation_grid_places_windows_as_pangaea(length: int, window: int) -> None:
    """stride=None: ceil(length / window) windows at round(linspace(0, length - window)), PANGAEA's
    sliding inference (pangaea/engine/evaluator.py, ``Evaluator.sliding_inference`` with stride None)."""
    count = math.ceil(length / window)
    expected = torch.linspace(0, length - window, count).round().long().tolist()
    assert window_starts(length, window, None) == expected
    assert window_starts(512, 224, None) == [0, 144, 288]


def test_window_starts_cover_the_tile_and_end_at_the_edge() -> None:
    assert window_starts(10, 4, 4) == [0, 4, 6]
    assert window_starts(8, 4, 2) == [0, 2, 4]
    assert window_starts(3, 4, 2) == [0]
    with pytest.raises(ValueError):
        window_starts(10, 4, 5)


@pytest.mark.parametrize("size,window,stride", [(20, 8, 4), (20, 8, 8), (5, 8, 4), (17, 16, 5)])
def test_sliding_window_equals_whole_tile_for_a_pixelwise_model(size: int, window: int, stride: int) -> None:
    torch.manual_seed(0)
    model = PixelwiseModel().eval()
    image = {"optical": torch.randn(2, 3, 1, size, size + 3)}
    with torch.no_grad():
        expected = model.conv(image["optical"][:, :, 0])
        got = sliding_window_logits(model, image, window, stride, num_classes=2, batch_size=4)
    assert got.shape == (2, 2, size, size + 3)
    assert torch.allclose(got, expected, atol=1e-5)
    assert all(call[-2:] == (window, window) for call in model.calls), "every forward sees a full window"


def test_overlapping_windows_are_averaged() -> None:
    class WindowIndex(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        def forward(self, image: dict, output_size: tuple[int, int]) -> torch.Tensor:
            n = image["optical"].shape[0]
            values = torch.arange(self.count, self.count + n, dtype=torch.float32)
            self.count += n
            return values.view(n, 1, 1, 1).expand(n, 1, *output_size)

    logits = sliding_window_logits(WindowIndex(), {"optical": torch.zeros(1, 1, 1, 4, 6)}, 4, 2, 1, batch_size=1)
    # windows start at columns 0 and 2 with values 0 and 1: columns 2-3 are covered by both
    assert logits[0, 0, 0].tolist() == [0, 0, 0.5, 0.5, 1, 1]


def test_shards_cover_every_sample_once_and_training_shards_are_even() -> None:
    shards = [list(ShardSampler(11, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))
    train = [list(EpochShuffleSampler(11, r, 3, seed=0)) for r in range(3)]
    assert len({len(s) for s in train}) == 1
    flat = [i for s in train for i, _ in s]
    assert len(flat) == len(set(flat)) == 9
    sampler = EpochShuffleSampler(11, 0, 1, seed=0)
    sampler.set_epoch(1)
    assert list(sampler) != list(EpochShuffleSampler(11, 0, 1, seed=0)) and all(e == 1 for _, e in sampler)


def test_evaluator_restores_train_mode_and_counts_pixels() -> None:
    model = PixelwiseModel().train()
    samples = [
        {"image": {"optical": torch.randn(3, 1, 6, 6)}, "target": torch.randint(-1, 2, (6, 6))} for _ in range(3)
    ]
    evaluator = Evaluator(DataLoader(samples, batch_size=2), 2, -1, ["a", "b"], window=4, stride=2, ctx=CPU)
    metrics = evaluator.evaluate(model)
    assert model.training
    assert metrics["pixels"] == sum(int((s["target"] != -1).sum()) for s in samples)
    assert 0.0 <= metrics["mIoU"] <= 1.0


def test_starting_an_epoch_or_an_evaluation_draws_nothing_from_the_global_generator() -> None:
    """Otherwise how often a run is evaluated would shift the dropout masks of its training."""
    data = torch.utils.data.TensorDataset(torch.arange(6.0))
    loader = make_loader(data, ShardSampler(6, 0, 1), batch_size=2, num_workers=0, pin_memory=False)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for _ in range(3):
        assert len(list(loader)) == 3
    assert torch.equal(torch.get_rng_state(), before)
    plain = DataLoader(data, batch_size=2)  # what the loaders did before: each epoch drew a worker seed
    list(plain)
    assert not torch.equal(torch.get_rng_state(), before)
