"""What ``predict`` and ``embed`` make of a block's blended window outputs, and the rasters they fill.

A product runs the model on a batch of windows (:meth:`run_windows`), turns a block of blended outputs into
the arrays of its rasters (:meth:`finish_block`, on the rank that computed it) and owns those rasters
(written by rank 0 only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.engine.precision import autocast_context
from benchmark.models.segmentor import Segmentor
from benchmark.predict.geotiff import CLASS_NODATA, BlockRaster, colour_table
from benchmark.predict.scenes import Scene


class ClassMap:
    """Class map (uint8, nodata 255, colour table) and, optionally, class probabilities (16-bit floats)."""

    resampling = "nearest"
    pixel_factor = 1

    def __init__(self, model: Segmentor, class_names: Sequence[str], precision: str, probabilities: bool) -> None:
        self.model = model
        self.class_names = list(class_names)
        self.precision = precision
        self.probabilities = probabilities

    def run_windows(self, images: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """Logits (n, K, window, window)."""
        window = next(iter(images.values())).shape[-1]
        with torch.inference_mode(), autocast_context(device, self.precision):
            return self.model({m: x.to(device) for m, x in images.items()}, (window, window)).float()

    def finish_block(self, logits: torch.Tensor, nodata: np.ndarray) -> list[np.ndarray]:
        probabilities = logits.softmax(0).cpu().numpy()
        classes = probabilities.argmax(0).astype(np.uint8)
        classes[nodata] = CLASS_NODATA
        arrays = [classes[None]]
        if self.probabilities:
            probabilities[:, nodata] = np.nan
            arrays.append(probabilities.astype(np.float32))
        return arrays

    def open_rasters(self, output_dir: Path, scene: Scene, tags: dict[str, object]) -> list[BlockRaster]:
        classes = BlockRaster(output_dir / f"{scene.name}_classes.tif", scene, 1, "uint8", CLASS_NODATA)
        names = dict(enumerate(self.class_names))
        classes.describe(["class"], {**tags, "class_names": names}, colour_table(len(self.class_names)))
        rasters = [classes]
        if self.probabilities:
            probs = BlockRaster(output_dir / f"{scene.name}_probabilities.tif", scene, len(names), "float32", float("nan"), half_float=True)
            probs.describe([f"probability of {n}" for n in self.class_names], {**tags, "class_names": names})
            rasters.append(probs)
        return rasters


class Embedding:
    """The frozen encoder's features of one output layer, upsampled to the window's pixels (bilinear) and
    blended; with ``pool_to_patch_grid``, averaged back to one value per ``patch_size`` x ``patch_size`` cell."""

    resampling = "average"

    def __init__(self, model: Segmentor, layer: int, precision: str, pool_to_patch_grid: bool) -> None:
        layers = model.encoder.output_layers
        if not -len(layers) <= layer < len(layers):
            raise ValueError(f"embed_layer={layer} does not index encoder.output_layers {layers} (use 0..{len(layers) - 1} or -1)")
        self.encoder = model.encoder
        self.layer = layer
        self.block = layers[layer]
        self.channels = model.encoder.output_dims[layer]
        self.precision = precision
        self.pixel_factor = model.encoder.patch_size if pool_to_patch_grid else 1

    def run_windows(self, images: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """Features (n, D, window, window)."""
        window = next(iter(images.values())).shape[-1]
        with torch.inference_mode(), autocast_context(device, self.precision):
            features = self.encoder({m: x.to(device) for m, x in images.items()})[self.layer].float()
        return F.interpolate(features, size=(window, window), mode="bilinear", align_corners=False)

    def finish_block(self, features: torch.Tensor, nodata: np.ndarray) -> list[np.ndarray]:
        if self.pixel_factor > 1:
            k = self.pixel_factor
            features = F.avg_pool2d(features[None], k, ceil_mode=True)[0]
            valid = F.avg_pool2d(torch.from_numpy(~nodata).float()[None, None], k, ceil_mode=True)[0, 0]
            nodata = (valid == 0).numpy()
        values = features.cpu().numpy()
        values[:, nodata] = np.nan
        return [values]

    def open_rasters(self, output_dir: Path, scene: Scene, tags: dict[str, object]) -> list[BlockRaster]:
        raster = BlockRaster(
            output_dir / f"{scene.name}_embedding.tif", scene, self.channels, "float32", float("nan"),
            pixel_factor=self.pixel_factor,
        )
        raster.describe([f"feature {i}" for i in range(self.channels)], {**tags, "encoder_block": self.block})
        return [raster]
