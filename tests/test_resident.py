"""data_on_device=true: the training split held on the device gives the batches of the plain path (crops and
flips included), refuses a random step it could not follow, and a run with it gives the same results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from benchmark import builders
from benchmark.data.preprocessing import PreprocessedDataset, RandomFlip
from benchmark.data.resident import ResidentDataError, ResidentTiles, split_at_crop
from conftest import only_run_dir, run_benchmark, tiny_overrides
from test_protocol import CPU, compose_run

FLIPS = ["preprocessing.train.3.horizontal=0.5", "preprocessing.train.3.vertical=0.5"]


def batches(cfg: DictConfig, epochs: int = 2) -> list[dict]:
    loader = builders.train_loader(cfg, CPU, builders.build_dataset(cfg, "train", CPU))
    found = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        found += list(loader)
    return found


def test_the_split_on_the_device_gives_the_batches_of_the_plain_path(synthetic_root: Path, tmp_path: Path) -> None:
    plain = batches(compose_run(synthetic_root, tmp_path / "wd", *FLIPS))
    resident_cfg = compose_run(synthetic_root, tmp_path / "wd", *FLIPS, "data_on_device=true")
    loader = builders.train_loader(resident_cfg, CPU, builders.build_dataset(resident_cfg, "train", CPU))
    assert isinstance(loader.dataset, ResidentTiles) and loader.num_workers == 0
    resident = batches(resident_cfg)
    assert len(resident) == len(plain) == 2 * (18 // 4)
    for ours, theirs in zip(resident, plain):
        assert torch.equal(ours["target"], theirs["target"])
        assert torch.equal(ours["image"]["optical"], theirs["image"]["optical"])
        assert ours["meta"]["stem"] == theirs["meta"]["stem"]
        assert torch.equal(ours["meta"]["index"], theirs["meta"]["index"])
    unflipped = batches(compose_run(synthetic_root, tmp_path / "wd"))  # the same windows, none flipped
    assert not all(torch.equal(a["target"], b["target"]) for a, b in zip(plain, unflipped)), "the flips were on"


def test_a_random_step_before_the_crop_is_refused(synthetic_root: Path, tmp_path: Path) -> None:
    cfg = compose_run(synthetic_root, tmp_path / "wd")
    steps = [instantiate(step, _convert_="all") for step in cfg.preprocessing.train]
    before, rest = split_at_crop(steps)
    assert [type(s).__name__ for s in before] == ["NormalizeMeanStd", "BandAdapter"]
    assert [type(s).__name__ for s in rest] == ["RandomCrop", "RandomFlip"]
    tiles = builders.build_dataset(cfg, "train", CPU)
    flipped_first = PreprocessedDataset(tiles.dataset, [RandomFlip(0.5, 0.5), *steps], seed=0)
    with pytest.raises(ResidentDataError, match="RandomFlip is random and comes before any crop"):
        ResidentTiles(flipped_first, torch.device("cpu"))


@pytest.mark.slow
def test_a_run_with_the_split_on_the_device_gives_the_same_results(synthetic_root: Path, tmp_path: Path) -> None:
    results = {}
    for on_device in ("false", "true"):
        work_dir = tmp_path / on_device
        run_benchmark([*tiny_overrides(synthetic_root, work_dir), *FLIPS, f"data_on_device={on_device}"])
        results[on_device] = json.loads((only_run_dir(work_dir) / "results.json").read_text())
        assert results[on_device]["status"] == "completed"
    assert results["true"]["test"] == results["false"]["test"] and results["true"]["val"] == results["false"]["val"]
    assert results["true"]["config"]["settings_hash"] == results["false"]["config"]["settings_hash"]  # one job
