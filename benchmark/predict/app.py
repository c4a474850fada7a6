"""``--config-name=predict`` and ``--config-name=embed``: a trained run mapped over scenes of any size.

Everything is checked before the model is built: the run folder and checkpoint, every input and its bands,
the settings. Blocks of each scene are shared out over the ranks (``torchrun``) and written by rank 0;
the output is the same whatever the number of processes.
"""

from __future__ import annotations

import hashlib
import logging
import time

import rasterio
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from benchmark import failures
from benchmark.atomic import write_json
from benchmark.distributed import DistContext, all_gather_object, init_distributed, shutdown
from benchmark.engine.precision import resolve_precision
from benchmark.predict.model_inputs import ModelInputs
from benchmark.predict.products import ClassMap, Embedding
from benchmark.predict.scenes import Scene, SceneReader, find_scenes
from benchmark.predict.stream import blend_block, plan_blocks
from benchmark.rundir import package_versions, setup_logging
from benchmark.saved_run import checkpoint_file, load_run_config, load_trained_model

log = logging.getLogger(__name__)

# GDAL's raster block cache (MB). Its default, 5 % of RAM, would hold a whole smaller-than-RAM scene; each
# block reads its pixels at once, so a small cache costs no speed and keeps memory flat with scene size.
GDAL_CACHE_MB = 64

# The keys of configs/predict.yaml and configs/embed.yaml: settings of the command, not of the run.
MAP_KEYS = (
    "ckpt_dir", "ckpt", "inputs", "output_dir", "bands", "scale", "stride", "block_size", "windows_per_batch",
    "probabilities", "embed_layer", "pool_to_patch_grid",
)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_settings(cfg: DictConfig, window: int, pixel_factor: int) -> int:
    """The window stride (default: half the window); raises for settings that cannot work."""
    stride = int(cfg.stride) if cfg.stride is not None else max(1, window // 2)
    if not 1 <= stride <= window:
        raise ValueError(f"stride={cfg.stride} must be between 1 and the encoder window ({window} px)")
    if cfg.block_size < window or cfg.block_size % pixel_factor:
        raise ValueError(f"block_size={cfg.block_size} must be at least the window ({window} px) and a multiple of {pixel_factor}")
    if cfg.scale <= 0 or cfg.windows_per_batch < 1:
        raise ValueError(f"scale ({cfg.scale}) must be positive and windows_per_batch ({cfg.windows_per_batch}) at least 1")
    return stride


def stream_scene(scene: Scene, reader: SceneReader, inputs: ModelInputs, product: Any, stride: int, cfg: DictConfig, ctx: DistContext, rasters: list) -> int:
    """Compute every block of ``scene`` (shared out over ranks) and write it (rank 0); returns the window count."""
    blocks = plan_blocks(scene.height, scene.width, inputs.window, stride, int(cfg.block_size))
    total = sum(len(b.windows) for b in blocks)
    factor = product.pixel_factor
    with tqdm(total=total, unit="win", desc=scene.name, disable=not ctx.is_main, dynamic_ncols=True) as bar:
        for first in range(0, len(blocks), ctx.world_size):
            group = blocks[first : first + ctx.world_size]
            result = None
            if ctx.rank < len(group):
                block = group[ctx.rank]
                region = reader.region(*block.extent(inputs.window))
                values = blend_block(
                    block, lambda positions: product.run_windows(inputs.batch(region, positions), ctx.device),
                    inputs.window, int(cfg.windows_per_batch), ctx.device,
                )
                result = product.finish_block(values, region.nodata_of(block.top, block.left, block.height, block.width))
            results = all_gather_object(result) if ctx.distributed else [result]
            if ctx.is_main:
                for block, arrays in zip(group, results):
                    for raster, array in zip(rasters, arrays):
                        raster.write(block.top // factor, block.left // factor, array)
                bar.update(sum(len(b.windows) for b in group))
    return total


def map_scene(scene: Scene, reader: SceneReader, inputs: ModelInputs, product: Any, stride: int, cfg: DictConfig, ctx: DistContext, about: dict) -> None:
    """Write ``scene``'s rasters and its JSON sidecar."""
    started = time.time()
    if not scene.georeferenced:
        log.warning("%s has no georeferencing (CRS and transform): its output will not have any either", scene.name)
    output_dir = Path(cfg.output_dir)
    tags = {"run": str(cfg.ckpt_dir), "checkpoint_sha256": about["checkpoint_sha256"]}
    rasters = product.open_rasters(output_dir, scene, tags) if ctx.is_main else []
    try:
        streaming = time.time()
        windows = stream_scene(scene, reader, inputs, product, stride, cfg, ctx, rasters)
        streaming = time.time() - streaming
        for raster in rasters:
            raster.finish(product.resampling)
    except BaseException:
        for raster in rasters:
            raster.abandon()
        raise
    seconds = time.time() - started
    log.info("%s: %d windows in %.1f s (%.1f windows/s), %.1f s in all -> %s", scene.name, windows, streaming,
             windows / streaming, seconds, [r.path.name for r in rasters])
    if ctx.is_main:
        write_json(output_dir / f"{scene.name}.json", {
            **about, "input": [str(p) for p in sorted({s.path for s in scene.sources})], "size": [scene.height, scene.width],
            "georeferenced": scene.georeferenced, "bands_used": reader.bands_used(), "scale": float(cfg.scale),
            "window": inputs.window, "stride": stride, "block_size": int(cfg.block_size), "windows": windows,
            "seconds": round(seconds, 3), "inference_seconds": round(streaming, 3),
            "windows_per_second": round(windows / streaming, 2),
            "outputs": [r.path.name for r in rasters], "world_size": ctx.world_size, "device": str(ctx.device),
        })


def run(cfg: DictConfig, make_product: Any) -> list[Path]:
    """Check everything, build the run's model, map every scene; returns the sidecars' paths."""
    ctx = init_distributed(str(cfg.device))
    try:
        setup_logging(ctx, None)
        scenes = find_scenes(plain(cfg.inputs), plain(cfg.bands))
        run_cfg = load_run_config(cfg, MAP_KEYS)
        checkpoint_path = checkpoint_file(cfg.ckpt_dir, cfg.ckpt)
        inputs = ModelInputs(run_cfg, run_cfg.encoder.input_size)
        pooled = bool(cfg.get("pool_to_patch_grid", False))
        stride = check_settings(cfg, inputs.window, int(run_cfg.encoder.patch_size) if pooled else 1)
        readers = [inputs.reader(scene, cfg.scale) for scene in scenes]
        for reader in readers:
            with reader:
                inputs.check_units(reader)
        model, _ = load_trained_model(run_cfg, checkpoint_path, ctx)
        precision = resolve_precision(run_cfg.task.trainer.precision, ctx.device)
        product = make_product(model, run_cfg, precision)
        about = {
            "run": str(cfg.ckpt_dir), "checkpoint": str(checkpoint_path), "checkpoint_sha256": sha256(checkpoint_path),
            "mode": run_cfg.mode, "choices": OmegaConf.to_container(run_cfg.get("choices", {})), "precision": precision,
            "versions": package_versions(),
        }
        # Under torchrun, when one rank fails, torchrun stops the others with SIGTERM: raised as an error, it
        # lets them drop their unfinished outputs (nothing half-written is left behind).
        with failures.sigterm_raises():
            for scene, reader in zip(scenes, readers):
                with reader, rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
                    map_scene(scene, reader, inputs, product, stride, cfg, ctx, about)
    finally:
        shutdown()
    return [Path(cfg.output_dir) / f"{scene.name}.json" for scene in scenes]


def plain(value: Any) -> Any:
    """A config list as a Python list; anything else as it is."""
    return OmegaConf.to_container(value) if OmegaConf.is_list(value) else value


def predict(cfg: DictConfig) -> list[Path]:
    """Class maps (and optionally probabilities) of every input scene."""
    return run(cfg, lambda model, run_cfg, precision: ClassMap(model, list(run_cfg.dataset.classes), precision, bool(cfg.probabilities)))


def embed(cfg: DictConfig) -> list[Path]:
    """The frozen encoder's features of every input scene."""
    return run(cfg, lambda model, run_cfg, precision: Embedding(model, int(cfg.embed_layer), precision, bool(cfg.pool_to_patch_grid)))
