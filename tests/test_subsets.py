"""benchmark/data/subsets.py: ``dataset.train_fraction`` trains on a subset of the train split that is
stratified by burn share, nested across fractions of one draw, different across draws, written once per
(dataset, fraction, draw) and read back by every later build; results.json records fraction, draw and hash."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from benchmark import builders
from benchmark.data.subsets import SubsetError, choose, recorded_sha256, subset_path
from benchmark.distributed import DistContext
from benchmark.engine.checkpoint import load_checkpoint
from benchmark.results import read_results, settings_hash
from benchmark.rundir import EXECUTION_KEYS, run_stem
from conftest import REPO, only_run_dir, run_benchmark, tiny_overrides

CPU = DistContext(0, 1, 0, torch.device("cpu"))
TRAIN_TILES = 18  # tiny_overrides: 20 scenes in training/, 2 of them validation


def config(data_root: Path, work_dir: Path, *extra: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=[*tiny_overrides(data_root, work_dir), *extra])


def train_stems(cfg: DictConfig) -> list[str]:
    """The stems of the train split a run of ``cfg`` trains on."""
    return [stem for stem, _, _ in builders.build_dataset(cfg, "train", CPU).dataset.scenes]


def subset_tiles(root: Path, fraction: float, draw: int = 0) -> list[dict[str, Any]]:
    return json.loads(subset_path(root, fraction, draw).read_text())["tiles"]


def mask_share(mask_path: Path) -> float:
    """Burn share computed here from the GeoTIFF: class-1 pixels among pixels labelled 0 or 1."""
    with rasterio.open(mask_path) as src:
        mask = src.read(1)
    labelled = int(np.isin(mask, (0, 1)).sum())
    return int((mask == 1).sum()) / labelled if labelled else 0.0


def test_fraction_one_trains_on_every_tile_and_writes_no_file(tmp_path: Path) -> None:
    cfg = config(tmp_path / "syn", tmp_path / "wd")
    assert (cfg.dataset.train_fraction, cfg.dataset.subset_draw) == (1.0, 0)
    assert len(train_stems(cfg)) == TRAIN_TILES
    assert not (tmp_path / "syn" / "subsets").exists() and recorded_sha256(cfg.dataset) is None


def test_independent_builds_train_on_the_same_tiles_from_one_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(tmp_path / "syn", tmp_path / "wd", "dataset.train_fraction=0.5")
    first = train_stems(cfg)
    path = subset_path(tmp_path / "syn", 0.5, 0)
    content, written = path.read_bytes(), path.stat().st_mtime_ns
    assert len(first) == 9 and sorted(t["stem"] for t in subset_tiles(tmp_path / "syn", 0.5)) == first
    with caplog.at_level(logging.INFO):
        again = train_stems(cfg)
    assert again == first and path.stat().st_mtime_ns == written, "the file is read, not written again"
    assert "Drew" not in caplog.text and f"training on 9 of {TRAIN_TILES} tiles" in caplog.text
    assert recorded_sha256(cfg.dataset) == hashlib.sha256(content).hexdigest()
    # another machine: its own copy of the data, no raster cache: the same bytes, so the same hash
    shutil.copytree(tmp_path / "syn", tmp_path / "copy", ignore=shutil.ignore_patterns("subsets"))
    other = config(tmp_path / "copy", tmp_path / "wd2", "dataset.train_fraction=0.5", "cache=false")
    assert train_stems(other) == first and subset_path(tmp_path / "copy", 0.5, 0).read_bytes() == content


def ks_distance(subset: np.ndarray, full: np.ndarray) -> float:
    """Largest gap between the two empirical distributions of burn share (Kolmogorov-Smirnov distance)."""
    at = np.unique(full)
    below = np.searchsorted(np.sort(subset), at, "right") / len(subset)
    return float(np.abs(below - np.searchsorted(np.sort(full), at, "right") / len(full)).max())


def test_the_subset_is_stratified_by_burn_share(tmp_path: Path) -> None:
    """Half of 54 tiles: the subset's burn-share distribution lies within 0.1 (2.7 of its 27 tiles) of the split's
    at every share, and its mean share within 0.015 of the split's (shares here lie in 0-0.33, mean 0.09), in
    every one of 100 draws. Plain random halves of these tiles are further off than 0.1 in half of the draws
    (median distance 0.11, 90th percentile 0.17) and their mean is off by more than 0.015 in one draw in seven."""
    root, sizes = tmp_path / "syn", ("dataset.num_train=60", "dataset.img_size=32")
    split = builders.build_dataset(config(root, tmp_path / "wd", *sizes), "train", CPU)
    shares = {stem: mask_share(mask) for stem, _, mask in split.dataset.scenes}
    full = np.array(list(shares.values()))
    cfg = config(root, tmp_path / "wd", *sizes, "dataset.train_fraction=0.5")
    for draw in (0, 1, 2):  # through the files
        cfg.dataset.subset_draw = draw
        chosen = train_stems(cfg)
        assert len(chosen) == 27
        for tile in subset_tiles(root, 0.5, draw):  # the file records each tile's share, as computed here
            assert tile["burn_share"] == pytest.approx(shares[tile["stem"]], abs=1e-6)
        subset = np.array([shares[stem] for stem in chosen])
        assert ks_distance(subset, full) <= 0.1 and abs(subset.mean() - full.mean()) <= 0.015
    for draw in range(100):  # the same choice, without files
        subset = np.array([shares[stem] for stem in choose(shares, 0.5, draw)])
        assert ks_distance(subset, full) <= 0.1 and abs(subset.mean() - full.mean()) <= 0.015, draw


def test_the_subsets_of_one_draw_are_nested_and_draws_differ(tmp_path: Path) -> None:
    root = tmp_path / "syn"
    chosen = {}
    for fraction, draw in ((0.1, 0), (0.25, 0), (0.5, 0), (0.5, 1), (0.5, 2), (0.01, 1)):
        chosen[fraction, draw] = set(train_stems(config(root, tmp_path / "wd", f"dataset.train_fraction={fraction}",
                                                        f"dataset.subset_draw={draw}")))
    assert [len(chosen[f, 0]) for f in (0.1, 0.25, 0.5)] == [2, 5, 9]  # round(f x 18), halves up
    assert chosen[0.1, 0] < chosen[0.25, 0] < chosen[0.5, 0]
    assert len(chosen[0.01, 1]) == 1 and chosen[0.01, 1] < chosen[0.5, 1], "at least one tile"
    assert len({frozenset(chosen[0.5, draw]) for draw in (0, 1, 2)}) == 3
    first = [tile["stem"] for tile in subset_tiles(root, 0.5, 0)]  # listed in draw order: smaller ones are prefixes
    assert [tile["stem"] for tile in subset_tiles(root, 0.25, 0)] == first[:5]


@pytest.mark.parametrize("override, message", [
    ("dataset.train_fraction=0", "dataset.train_fraction=0: must be a number in (0, 1]"),
    ("dataset.train_fraction=1.5", "dataset.train_fraction=1.5: must be a number in (0, 1]"),
    ("dataset.train_fraction=-0.1", "dataset.train_fraction=-0.1: must be"),
    ("dataset.train_fraction=half", "dataset.train_fraction=half: must be"),
    ("dataset.train_fraction=true", "dataset.train_fraction=True: must be"),
    ("dataset.subset_draw=-1", "dataset.subset_draw=-1: must be a whole number >= 0"),
    ("dataset.subset_draw=0.5", "dataset.subset_draw=0.5: must be a whole number >= 0"),
])
def test_bad_values_are_refused_before_any_file_is_read(tmp_path: Path, override: str, message: str) -> None:
    cfg = config(tmp_path / "syn", tmp_path / "wd", override)
    for split in ("train", "test"):
        with pytest.raises(ValueError) as raised:
            builders.build_dataset(cfg, split, CPU)
        assert message in str(raised.value)
    assert not (tmp_path / "syn").exists(), "no data generated"


def test_a_subset_file_that_does_not_fit_the_split_is_an_error_naming_it_and_the_fix(tmp_path: Path) -> None:
    cfg = config(tmp_path / "syn", tmp_path / "wd", "dataset.train_fraction=0.5")
    train_stems(cfg)
    path = subset_path(tmp_path / "syn", 0.5, 0)
    record = json.loads(path.read_text())
    record["tiles"][0]["stem"] = "subsetted_64x64_HLS.S30.T10SYN.1999001.v1.4"
    path.write_text(json.dumps(record))
    with pytest.raises(SubsetError) as raised:
        train_stems(cfg)
    message = str(raised.value)
    assert f"{path} lists 1 tile(s) that the current train split does not hold" in message
    assert "1999001" in message and f"rm {path}" in message
    path.write_text(path.read_text()[:40])  # a torn or edited file
    with pytest.raises(SubsetError, match="is not a readable subset file.*delete it"):
        train_stems(cfg)
    path.unlink()
    assert len(train_stems(cfg)) == 9, "deleting it draws the subset again"


@pytest.mark.slow
def test_a_run_trains_on_its_subset_and_records_it(synthetic_root: Path, tmp_path: Path) -> None:
    run_benchmark(tiny_overrides(synthetic_root, tmp_path / "wd") + ["dataset.train_fraction=0.5"])
    run_dir = only_run_dir(tmp_path / "wd")
    config = read_results(run_dir).config
    digest = hashlib.sha256(subset_path(synthetic_root, 0.5, 0).read_bytes()).hexdigest()
    assert (config.train_fraction, config.subset_draw, config.subset_sha256) == (0.5, 0, digest)
    assert "dataset.train_fraction=0.5" in config.settings and run_dir.name.endswith(settings_hash(config.settings))
    assert f"training on 9 of {TRAIN_TILES} tiles" in (run_dir / "train.log").read_text()
    # 9 tiles, batches of 4 (the last incomplete one dropped), 2 epochs: 16 training samples, not 32
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["train_images"] == 2 * 2 * 4


@pytest.mark.slow
def test_a_fraction_smaller_than_one_batch_stops_before_training_naming_the_fix(synthetic_root: Path, tmp_path: Path) -> None:
    # 10 % of the 19 tiles: 2 tiles, below batch_size=4; full batches only, so no epoch would train at all
    result = run_benchmark(tiny_overrides(synthetic_root, tmp_path / "wd") + ["dataset.train_fraction=0.1"], check=False)
    assert result.returncode != 0
    assert "dataset.train_fraction=0.1 leaves 2 training samples, fewer than one batch (batch_size=4 x 1 process(es))" in result.stdout + result.stderr
    assert "Set batch_size=2 or lower" in result.stdout + result.stderr
    assert not (only_run_dir(tmp_path / "wd") / "checkpoints").exists(), "stopped before the first epoch"


def test_the_label_fraction_experiment_sweeps_fractions_that_make_distinct_jobs() -> None:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        sweep = compose("train", overrides=["experiment=label_fractions"], return_hydra_config=True)
    fractions = str(sweep.hydra.sweeper.params["dataset.train_fraction"]).split(",")
    assert fractions == ["0.01", "0.1", "0.5", "1.0"] and sweep.resume
    assert not {"dataset.train_fraction", "dataset.subset_draw"} & EXECUTION_KEYS, "they change what a run computes"
    stems = {run_stem({"dataset": "d", "encoder": "e", "decoder": "x"}, "frozen", 0, [f"dataset.train_fraction={f}"])
             for f in fractions}
    assert len(stems) == len(fractions), "each fraction is a job of its own (run folder, resume=true)"


def test_bad_values_stop_a_run_at_start_up_before_its_folder_exists(tmp_path: Path) -> None:
    from benchmark.config_checks import ConfigError, check_config

    cfg = config(tmp_path / "syn", tmp_path / "wd", "dataset.train_fraction=1.5")
    with pytest.raises(ConfigError, match=r"dataset.train_fraction=1.5: must be a number in \(0, 1\]"):
        check_config(cfg)
    assert not (tmp_path / "wd").exists() or not any((tmp_path / "wd").iterdir())


def test_pangaea_limited_label_train_sets_the_train_fraction(tmp_path: Path) -> None:
    from benchmark.compat import apply_aliases, pangaea_problems

    cfg = config(tmp_path / "syn", tmp_path / "wd", "limited_label_train=0.25")
    assert pangaea_problems(cfg) == []
    apply_aliases(cfg)
    assert cfg.dataset.train_fraction == 0.25
    both = config(tmp_path / "syn", tmp_path / "wd", "limited_label_train=0.25", "dataset.train_fraction=0.5")
    assert any("limited_label_train=0.25 contradicts dataset.train_fraction=0.5" in p for p in pangaea_problems(both))
    assert pangaea_problems(config(tmp_path / "syn", tmp_path / "wd", "limited_label_strategy=random"))
