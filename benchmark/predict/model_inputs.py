"""What a trained run's model reads, rebuilt from its config: the dataset bands it was trained on, their
statistics, and the run's own evaluation preprocessing, applied to windows of a scene."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from benchmark.builders import instantiate_plain
from benchmark.compat import dataset_frames
from benchmark.data.bands import canonical_band_dict
from benchmark.data.preprocessing import BandAdapter, NormalizeMeanStd
from benchmark.data.validation import FAR_RATIO
from benchmark.data.windows import pad_to_window
from benchmark.predict.scenes import Region, Scene, SceneError, SceneReader

log = logging.getLogger(__name__)

PIXELWISE_STEPS = (NormalizeMeanStd, BandAdapter)


class ModelInputs:
    """Turns windows of a scene into the model's input batch, exactly as the run's evaluation did.

    Args:
        run_cfg: the saved run config.
        window: the encoder's input side in pixels.
    """

    def __init__(self, run_cfg: DictConfig, window: int) -> None:
        self.window = int(window)
        self.steps = [instantiate_plain(step) for step in run_cfg.preprocessing.test]
        others = [type(s).__name__ for s in self.steps if not isinstance(s, PIXELWISE_STEPS)]
        if others:
            raise SceneError(
                f"this run's test preprocessing has {', '.join(others)}: mapping a scene supports runs whose "
                "evaluation preprocessing works pixel by pixel (normalisation and band mapping, as "
                "preprocessing=seg_default), so that windows of any scene see what the evaluation saw"
            )
        dataset_bands = canonical_band_dict(OmegaConf.to_container(run_cfg.dataset.bands, resolve=True))
        encoder_bands = canonical_band_dict(OmegaConf.to_container(run_cfg.encoder.input_bands, resolve=True))
        self.bands = dataset_bands
        self.means = OmegaConf.to_container(run_cfg.dataset.data_mean, resolve=True)
        self.optional = {
            band for modality, bands in dataset_bands.items() for band in bands if band not in encoder_bands.get(modality, [])
        }
        frames = dataset_frames(run_cfg.dataset)
        if frames != 1:
            raise SceneError(f"this run was trained on {frames} dates per sample ({run_cfg.dataset._target_}); mapping "
                             "takes single-date scenes")

    def reader(self, scene: Scene, scale: float) -> SceneReader:
        """A reader of ``scene``'s bands in the run's dataset band order (missing ones are an error here)."""
        return SceneReader(scene, self.bands, self.means, self.optional, scale)

    def check_units(self, reader: SceneReader, side: int = 256) -> None:
        """Warn when a central patch of the scene is far from the training statistics (e.g. digital numbers
        read without ``scale=0.0001``): the model would see values it never saw."""
        scene = reader.scene
        height, width = min(side, scene.height), min(side, scene.width)
        images, nodata = reader.read((scene.height - height) // 2, (scene.width - width) // 2, height, width)
        if nodata.all():
            return
        for modality, image in images.items():
            medians = np.median(image[:, ~nodata], axis=1)
            means = np.asarray(self.means[modality])
            read = np.array([source is not None for source in reader.plan[modality]])  # filled bands read as the mean
            ratios = medians[read & (means > 0)] / means[read & (means > 0)]
            ratio = float(np.median(np.abs(ratios))) if ratios.size else 1.0
            if not 1 / FAR_RATIO < ratio < FAR_RATIO:
                log.warning(
                    "%s: %s band medians %s are %.3g times the run's training means %s: if the scene is in other "
                    "units, set scale=%g", scene.name, modality,
                    np.round(medians, 4).tolist(), ratio, np.round(means, 4).tolist(),
                    float(self.scale_to_match(ratio)) * reader.scale,
                )

    @staticmethod
    def scale_to_match(ratio: float) -> float:
        """The power of ten that brings values ``ratio`` times the training means back to them."""
        return 10.0 ** -round(np.log10(ratio))

    def batch(self, region: Region, positions: Sequence[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """``{modality: (n, C, 1, window, window)}`` for the windows at ``positions`` (scene pixels) cut from
        ``region``; a window that runs past the scene's edge is padded with 0 (the normalised mean), as the
        evaluator pads."""
        crops = []
        for top, left in positions:
            rows = slice(top - region.top, top - region.top + self.window)
            columns = slice(left - region.left, left - region.left + self.window)
            sample = {"image": {m: torch.from_numpy(x[:, rows, columns])[:, None] for m, x in region.images.items()}}
            for step in self.steps:
                sample = step(sample, None)
            crops.append({m: pad_to_window(x, self.window) for m, x in sample["image"].items()})
        return {m: torch.stack([crop[m] for crop in crops]) for m in crops[0]}
