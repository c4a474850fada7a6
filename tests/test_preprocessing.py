"""Preprocessing steps: band mapping by name, normalisation, crops, flips, resizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.data.preprocessing import (
    BandAdapter,
    BandConfigError,
    NormalizeMeanStd,
    PreprocessedDataset,
    RandomCrop,
    RandomFlip,
    Resize,
)


def make_sample(channels: int = 3, size: int = 8) -> dict:
    image = torch.arange(channels * size * size, dtype=torch.float32).reshape(channels, 1, size, size)
    target = torch.arange(size * size).reshape(size, size) % 2
    return {"image": {"optical": image}, "target": target, "meta": {}}


def test_band_adapter_orders_by_name_and_fills_missing_with_zero(caplog: pytest.LogCaptureFixture) -> None:
    adapter = BandAdapter({"optical": ["B2", "B3", "B4"]}, {"optical": ["B4", "B1", "BLUE"]})
    sample = make_sample()
    original = sample["image"]["optical"].clone()
    out = adapter(sample, np.random.default_rng(0))["image"]["optical"]
    assert torch.equal(out[0], original[2])  # B4
    assert torch.equal(out[1], torch.zeros_like(original[0]))  # B1 missing -> normalised mean
    assert torch.equal(out[2], original[0])  # BLUE is B2


def test_band_adapter_reports_missing_bands_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        BandAdapter({"optical": ["B2"]}, {"optical": ["B2", "B9"]})
        BandAdapter({"optical": ["B2"]}, {"optical": ["B2", "B9"]})
    assert sum("B9" in r.message for r in caplog.records) == 1


def test_missing_modality_is_a_config_error() -> None:
    with pytest.raises(BandConfigError, match="needs modality sar"):
        BandAdapter({"optical": ["B2"]}, {"sar": ["VV", "VH"]})


def test_normalize_uses_per_band_statistics() -> None:
    sample = make_sample(channels=2, size=2)
    step = NormalizeMeanStd({"optical": [1.0, 2.0]}, {"optical": [2.0, 4.0]})
    out = step(sample, np.random.default_rng(0))["image"]["optical"]
    assert out[0, 0, 0, 0] == pytest.approx((0 - 1) / 2)
    assert out[1, 0, 0, 0] == pytest.approx((4 - 2) / 4)


def test_random_crop_is_reproducible_from_its_generator_and_pads_small_tiles() -> None:
    crop = RandomCrop(4, ignore_index=-1)
    a = crop(make_sample(), np.random.default_rng(7))
    b = crop(make_sample(), np.random.default_rng(7))
    assert a["image"]["optical"].shape == (3, 1, 4, 4) and a["target"].shape == (4, 4)
    assert torch.equal(a["image"]["optical"], b["image"]["optical"])
    padded = RandomCrop(10, ignore_index=-1)(make_sample(size=8), np.random.default_rng(0))
    assert padded["target"].shape == (10, 10)
    assert (padded["target"][8:] == -1).all() and (padded["image"]["optical"][:, :, 8:] == 0).all()


def test_flip_moves_image_and_target_together() -> None:
    sample = make_sample()
    image, target = sample["image"]["optical"].clone(), sample["target"].clone()
    out = RandomFlip(horizontal=1.0, vertical=0.0)(sample, np.random.default_rng(0))
    assert torch.equal(out["image"]["optical"], image.flip(-1)) and torch.equal(out["target"], target.flip(-1))


def test_resize_keeps_labels_discrete() -> None:
    out = Resize(4)(make_sample(size=8), np.random.default_rng(0))
    assert out["image"]["optical"].shape == (3, 1, 4, 4)
    assert set(out["target"].unique().tolist()) <= {0, 1} and out["target"].dtype == torch.int64


def test_preprocessed_dataset_seeds_random_steps_from_epoch_and_index() -> None:
    data = [make_sample(size=16) for _ in range(3)]
    dataset = PreprocessedDataset(data, [RandomCrop(4)], seed=1)
    first = dataset[(2, 0)]["image"]["optical"]
    assert torch.equal(first, dataset[(2, 0)]["image"]["optical"])
    assert any(not torch.equal(first, dataset[(2, e)]["image"]["optical"]) for e in range(1, 5))
