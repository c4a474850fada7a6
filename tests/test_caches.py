"""Speed caches: the crop grid, decoded rasters, frozen-encoder features (exactness, reuse, invalidation,
DDP fill) and the CUDA-only memory layout of the decoders, checked on CPU."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import default_collate

from benchmark import builders
from benchmark.data import hlsburnscars
from benchmark.data.preprocessing import RandomCrop
from benchmark.data.synthetic import SyntheticBurnScars
from benchmark.data.windows import window_grid
from benchmark.distributed import DistContext
from benchmark.engine import feature_key as feature_key_module
from benchmark.engine.evaluator import cached_window_logits, sliding_window_logits
from benchmark.engine.feature_cache import FeatureCache
from benchmark.engine.feature_store import FeatureCacheError
from benchmark.engine.precision import autocast_context, resolve_precision
from conftest import REPO, run_benchmark, tiny_overrides
from test_pipeline import tiny_weights_file

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_crop_grid_positions_and_draws() -> None:
    crop = RandomCrop(4, stride=3)
    assert crop.grid(10, 8) == window_grid(10, 8, 4, 3) == [(t, l) for t in (0, 3, 6) for l in (0, 3, 4)]
    target = torch.arange(80).reshape(10, 8)
    sample = {"image": {"optical": target.float().reshape(1, 1, 10, 8)}, "target": target}
    top, left = crop.grid(10, 8)[crop.draw(10, 8, np.random.default_rng(5))]
    cropped = crop(dict(sample), np.random.default_rng(5))
    assert torch.equal(cropped["target"], target[top : top + 4, left : left + 4])
    assert [w["target"][0, 0].item() for w in crop.windows(sample)] == [8 * t + l for t, l in crop.grid(10, 8)]
    # stride 1 draws exactly what a crop "anywhere" drew: a row, then a column, uniformly
    for seed in range(20):
        rng = np.random.default_rng(seed)
        expected = (int(rng.integers(0, 10 - 4 + 1)), int(rng.integers(0, 8 - 4 + 1)))
        assert RandomCrop(4).grid(10, 8)[RandomCrop(4).draw(10, 8, np.random.default_rng(seed))] == expected
    with pytest.raises(ValueError, match="stride"):
        RandomCrop(4, stride=5)


def test_raster_cache_decodes_each_tile_once(synthetic_root: Path, tmp_path: Path, monkeypatch) -> None:
    opened: list[str] = []
    real_open = rasterio.open

    def counting_open(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(hlsburnscars.rasterio, "open", counting_open)
    settings = dict(OmegaConf.load(REPO / "configs/dataset/hlsburnscars.yaml"))
    kwargs = {k: settings[k] for k in ("bands", "data_mean", "data_std")}
    kwargs.update(num_train=20, num_test=6, img_size=64)
    plain = SyntheticBurnScars(str(synthetic_root), "test", **kwargs)
    reference = [plain[i] for i in range(len(plain))]
    opened.clear()
    cache = tmp_path / "rasters"
    for _ in range(3):  # three epochs, two of them in a "new process" (a new dataset object)
        dataset = SyntheticBurnScars(str(synthetic_root), "test", cache_dir=str(cache), **kwargs)
        for i, expected in enumerate(reference):
            assert torch.equal(dataset[i]["image"]["optical"], expected["image"]["optical"])
            assert torch.equal(dataset[i]["target"], expected["target"])
    assert sorted(opened) == sorted(p.name for p in plain.source_files()), "each file decoded exactly once"
    entry = next(cache.glob("*_merged.*.npy"))
    entry.write_bytes(entry.read_bytes()[:100])  # a damaged entry is decoded again
    opened.clear()
    for i in range(len(dataset)):
        dataset[i]
    assert len(opened) == 1 and entry.stat().st_size > 100


def compose_tiny(data_root: Path, work_dir: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        # the crop-grid opt-in (half the 32 px window), so that training windows can be cached too
        cfg = compose("train", overrides=[*tiny_overrides(data_root, work_dir), "train_crop_stride=16", *overrides])
    return cfg


@pytest.fixture
def tiny(synthetic_root: Path, tmp_path: Path) -> tuple[DictConfig, torch.nn.Module]:
    """The tiny config and its segmentor (random weights, eval mode), data generated if needed."""
    cfg = compose_tiny(synthetic_root, tmp_path / "wd")
    torch.manual_seed(0)
    model = builders.build_segmentor(cfg, "random", CPU).eval()
    return cfg, model


def feature_cache(model: torch.nn.Module, root: Path, dtype: str = "float32") -> FeatureCache:
    return FeatureCache(root, model.encoder, {"test": "tiny encoder"}, CPU, precision="fp32", dtype=dtype, batch_size=3)


@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-5), ("float16", 2e-2)])
def test_cached_windows_equal_what_the_encoder_computes(tiny, tmp_path: Path, dtype: str, tolerance: float) -> None:
    cfg, model = tiny
    cache = feature_cache(model, tmp_path / "features", dtype)
    train = builders.build_dataset(cfg, "train", CPU)
    cached_train = cache.train_windows(train, builders.cache_key(cfg, "train"))
    assert cached_train.store.layout["windows_per_tile"] == len(window_grid(64, 64, 32, 16)) == 9
    for key in [(0, 0), (3, 1), (len(train) - 1, 7)]:
        sample, got = train[key], cached_train[key]
        with torch.no_grad():
            expected = model.encoder({m: x[None] for m, x in sample["image"].items()})
        assert torch.equal(got["target"], sample["target"])
        for e, g in zip(expected, got["features"]):
            assert torch.allclose(g.float(), e[0], atol=tolerance, rtol=tolerance)

    val = builders.build_dataset(cfg, "val", CPU)
    window, stride = 32, 16
    cached_val = cache.eval_tiles(val, "val", window, stride, builders.cache_key(cfg, "val"))
    tiles, cached = default_collate([val[0], val[1]]), default_collate([cached_val[0], cached_val[1]])
    assert torch.equal(tiles["target"], cached["target"])
    with torch.no_grad():
        expected = sliding_window_logits(model, tiles["image"], window, stride, 2, batch_size=4)
        features = [f.float() for f in cached["features"]]
        got = cached_window_logits(model.decoder, features, (64, 64), window, stride, 2, batch_size=4)
    assert torch.allclose(got, expected, atol=10 * tolerance, rtol=10 * tolerance)

    # on CPU the cached splits are read in the main process; GPU runs keep their workers
    cuda = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cuda"))
    assert builders.loader_workers(2, cached_val, CPU) == builders.loader_workers(2, cached_train, CPU) == 0
    assert builders.loader_workers(2, val, CPU) == builders.loader_workers(2, cached_train, cuda) == 2


def test_feature_cache_is_reused_and_rebuilt_when_stale_or_corrupt(tiny, tmp_path: Path, monkeypatch, caplog) -> None:
    cfg, model = tiny
    val = builders.build_dataset(cfg, "val", CPU)
    encoded = []
    real_encode = FeatureCache.encode

    def counting_encode(cache: FeatureCache, images: list) -> list:
        encoded.append(len(images))
        return real_encode(cache, images)

    monkeypatch.setattr(FeatureCache, "encode", counting_encode)

    def open_val(expect_build: bool, reason: str = "") -> Path:
        encoded.clear()
        caplog.clear()
        cache = feature_cache(model, tmp_path / "features")
        with caplog.at_level(logging.INFO, logger="benchmark.engine.feature_cache"):
            tiles = cache.eval_tiles(val, "val", 32, 16, builders.cache_key(cfg, "val"))
        assert bool(encoded) == expect_build, caplog.text
        assert reason in caplog.text
        return tiles.store.directory

    directory = open_val(True, "does not exist yet")
    reference = np.load(directory / "features_3.npy")
    manifest = directory / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    assert open_val(False, "reusing") == directory and manifest.stat().st_mtime_ns == stamp

    features = directory / "features_0.npy"
    features.write_bytes(features.read_bytes()[:-64])
    open_val(True, "truncated or resized features_0.npy")
    targets = directory / "targets.npy"
    data = bytearray(targets.read_bytes())
    data[-1] ^= 0xFF
    targets.write_bytes(bytes(data))
    open_val(True, "altered targets.npy")
    record = json.loads(manifest.read_text())
    record["key"]["precision"] = "bf16"
    manifest.write_text(json.dumps(record))
    open_val(True, "stale")
    manifest.unlink()
    open_val(True, "incomplete")
    assert np.array_equal(np.load(directory / "features_3.npy"), reference)
    assert not list((tmp_path / "features").glob(".*")), "no temporary folder left behind"


def test_a_feature_cache_build_that_fails_leaves_no_folder_behind(tiny, tmp_path: Path, monkeypatch) -> None:
    cfg, model = tiny
    val = builders.build_dataset(cfg, "val", CPU)

    real_encode, calls = FeatureCache.encode, []

    def disk_full_on_the_second_batch(cache: FeatureCache, images: list) -> list:
        calls.append(len(images))
        if len(calls) == 2:  # the first sizes the arrays and fills one batch; the folder exists by now
            raise OSError(28, "No space left on device")
        return real_encode(cache, images)

    monkeypatch.setattr(FeatureCache, "encode", disk_full_on_the_second_batch)
    with pytest.raises(OSError, match="No space left"):
        feature_cache(model, tmp_path / "features").eval_tiles(val, "val", 32, 16, builders.cache_key(cfg, "val"))
    assert (tmp_path / "features").is_dir() and not list((tmp_path / "features").iterdir())


def test_training_crop_settings_the_cache_cannot_follow(synthetic_root: Path, tmp_path: Path, caplog) -> None:
    flips = compose_tiny(synthetic_root, tmp_path / "wd", "preprocessing.train.3.horizontal=0.5")
    model = builders.build_segmentor(flips, "random", CPU).eval()
    cache = feature_cache(model, tmp_path / "features")
    with pytest.raises(FeatureCacheError, match="RandomFlip.*cache=false"):
        cache.train_windows(builders.build_dataset(flips, "train", CPU), {})
    anywhere = compose_tiny(synthetic_root, tmp_path / "wd", "train_crop_stride=1")
    with caplog.at_level(logging.INFO):
        assert cache.train_windows(builders.build_dataset(anywhere, "train", CPU), {}) is None
    assert "train_crop_stride=1" in caplog.text


@pytest.mark.parametrize("name,tiny_widths", [
    ("seg_linear", {}),
    ("seg_fcn", {"channels": 16}),
    ("seg_upernet", {"channels": 16}),
    ("seg_segformer", {"channels": 16}),
    ("seg_muster", {"channels": 16, "embed_dim": 32, "num_heads": [4, 4, 2, 2]}),
])
def test_decoders_run_channels_last(name: str, tiny_widths: dict) -> None:
    """On CUDA decoders run with channels_last weights; the layout must not change their results."""
    decoder_cfg = OmegaConf.merge(OmegaConf.load(REPO / "configs/decoder" / f"{name}.yaml"), tiny_widths)
    cfg = OmegaConf.create({"dataset": {"num_classes": 2}, "encoder": {"patch_size": 16}, "decoder": decoder_cfg})
    torch.manual_seed(0)
    decoder = instantiate(cfg.decoder, in_dims=[32] * 4, _convert_="all").eval()
    features = [torch.randn(2, 32, 6, 6) for _ in range(4)]
    expected = decoder(features, (96, 96))
    decoder.to(memory_format=torch.channels_last)
    got = decoder([f.contiguous(memory_format=torch.channels_last) for f in features], (96, 96))
    assert torch.allclose(got, expected, atol=1e-5)
    got.sum().backward()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_weights_file(tmp_path_factory.mktemp("weights") / "mae.pth")


def frozen_run(data: Path, work_dir: Path, weights: Path, *extra: str, nproc: int | None = None) -> tuple[dict, str]:
    args = tiny_overrides(data, work_dir) + ["mode=frozen", f"encoder.encoder_weights={weights}", *extra]
    run_benchmark(args, nproc=nproc)
    return latest_run(work_dir)


def latest_run(work_dir: Path) -> tuple[dict, str]:
    """results.json and train.log of the newest run folder of ``work_dir``."""
    run_dir = sorted(p for p in work_dir.iterdir() if (p / "results.json").is_file())[-1]
    return json.loads((run_dir / "results.json").read_text()), (run_dir / "train.log").read_text()


def differing_pixels(a: dict, b: dict) -> int:
    return int(np.abs(np.array(a["confusion_matrix"]) - np.array(b["confusion_matrix"])).sum()) // 2


@pytest.mark.slow
def test_frozen_run_with_the_cache_matches_the_run_without_and_reuses_it(synthetic_root, tmp_path, weights, capsys) -> None:
    # the pair through scripts/benchmark_speed.py, as the README measures it
    script = importlib.util.spec_from_file_location("benchmark_speed", REPO / "scripts" / "benchmark_speed.py")
    benchmark_speed = importlib.util.module_from_spec(script)
    script.loader.exec_module(benchmark_speed)
    common = [o for o in tiny_overrides(synthetic_root, tmp_path) if not o.startswith("work_dir=")]
    common += ["mode=frozen", f"encoder.encoder_weights={weights}", "train_crop_stride=16"]
    variants = ["cache=false", "cache_dtype=float32"]
    rows = benchmark_speed.main(["--variants", *variants, "--output", str(tmp_path / "speed"), "--", *common])
    assert [r["variant"] for r in rows] == variants and rows[0]["cache_s"] == 0 < rows[1]["cache_s"]
    assert "| cache_dtype=float32 | 1 |" in capsys.readouterr().out
    assert not (tmp_path / "speed" / "repeat0_variant0" / "cache").exists(), "cache=false writes no cache"
    plain, _ = latest_run(tmp_path / "speed" / "repeat0_variant0")
    cached, log = latest_run(tmp_path / "speed" / "repeat0_variant1")
    assert log.count(" encoding ") == 3  # train, val and test built once
    assert plain["config"]["mode"] == cached["config"]["mode"] == "frozen"
    # Same windows, same draws: only float rounding differs (the encoder sees other batch sizes), so at
    # most a few near-tie pixels may flip.
    for split in ("val", "test"):
        assert differing_pixels(plain[split], cached[split]) <= plain[split]["pixels"] // 1000, split
        assert plain[split]["pixels"] == cached[split]["pixels"]
    assert abs(plain["val"]["mIoU"] - cached["val"]["mIoU"]) < 2e-3

    work_dir = tmp_path / "speed" / "repeat0_variant1"
    features = work_dir / "cache" / "features"
    manifests = {p: p.stat().st_mtime_ns for p in features.glob("*/manifest.json")}
    assert len(manifests) == 3
    # another decoder and another seed reuse the three splits without encoding anything
    other, log = frozen_run(
        synthetic_root, work_dir, weights, "cache_dtype=float32", "train_crop_stride=16", "decoder=seg_fcn", "seed=1"
    )
    assert other["status"] == "completed" and other["config"]["decoder"] == "seg_fcn"
    assert log.count("reusing") == 3 and " encoding " not in log
    assert {p: p.stat().st_mtime_ns for p in manifests} == manifests
    assert other["cost"]["feature_cache_time_s"] < cached["cost"]["feature_cache_time_s"]

    # two processes (gloo) fill the same cache, each its shard of tiles: the same windows and targets, and
    # features equal up to float rounding (the encoder may see other batch compositions on another CPU)
    ddp, log = frozen_run(synthetic_root, tmp_path / "ddp", weights, "cache_dtype=float32", "train_crop_stride=16", nproc=2)
    assert ddp["config"]["world_size"] == 2 and log.count(" encoding ") == 3
    one = sorted(features.iterdir())
    two = sorted((tmp_path / "ddp" / "cache" / "features").iterdir())
    assert [d.name for d in one] == [d.name for d in two]
    for a, b in zip(one, two):
        assert json.loads((b / "manifest.json").read_text())["world_size"] == 2
        assert json.loads((a / "manifest.json").read_text())["layout"] == json.loads((b / "manifest.json").read_text())["layout"]
        assert np.array_equal(np.load(a / "targets.npy"), np.load(b / "targets.npy"))
        for array in a.glob("features_*.npy"):
            np.testing.assert_allclose(np.load(array), np.load(b / array.name), rtol=1e-4, atol=1e-5, err_msg=str(array))


def test_adamw_steps_with_its_fused_kernel_on_cpu(tiny) -> None:
    cfg, model = tiny
    optimizer = builders.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    before = [p.detach().clone() for p in model.decoder.parameters()]
    model.decoder(model.encoder({"optical": torch.randn(2, 13, 1, 32, 32)}), (32, 32)).mean().backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.decoder.parameters()))


def test_adamw_without_a_fused_kernel_for_the_device_falls_back_to_the_default(tiny, monkeypatch) -> None:
    """Older torch builds (< 2.4) have fused Adam/AdamW on CUDA only: the optimizer must still step on CPU."""
    cfg, model = tiny
    optimizer_module = importlib.import_module("torch.optim.optimizer")
    monkeypatch.setattr(optimizer_module, "_get_fused_kernels_supported_devices", lambda: ["cuda"])
    builders.fused_kernel_available.cache_clear()
    try:
        optimizer = builders.build_optimizer(cfg, model)
        assert not optimizer.defaults.get("fused")
        model.decoder(model.encoder({"optical": torch.randn(2, 13, 1, 32, 32)}), (32, 32)).mean().backward()
        optimizer.step()
    finally:
        builders.fused_kernel_available.cache_clear()


def test_bf16_precision_autocasts_on_cpu_and_auto_stays_fp32() -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast_context(CPU.device, "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast_context(CPU.device, resolve_precision("auto", CPU.device)):
        assert (a @ b).dtype == torch.float32


@pytest.mark.parametrize("edited", ["benchmark.models.encoders.vit", "benchmark.data.preprocessing", "benchmark.data.hlsburnscars"])
def test_feature_cache_is_not_reused_after_the_code_that_computes_features_changes(tiny, tmp_path: Path, monkeypatch, edited: str) -> None:
    cfg, model = tiny
    val = builders.build_dataset(cfg, "val", CPU)
    key = builders.cache_key(cfg, "val")
    first = feature_cache(model, tmp_path / "features").eval_tiles(val, "val", 32, 16, key).store.directory
    assert feature_cache(model, tmp_path / "features").eval_tiles(val, "val", 32, 16, key).store.directory == first
    real_source = feature_key_module.module_source
    monkeypatch.setattr(
        feature_key_module, "module_source",
        lambda name: real_source(name) + (b"\n# edited\n" if name == edited else b""),
    )
    again = feature_cache(model, tmp_path / "features").eval_tiles(val, "val", 32, 16, key).store.directory
    assert again != first, f"an edit of {edited} must not reuse features computed by the old code"
