"""Output rasters: written block by block into a tiled GeoTIFF, then copied once into a Cloud-Optimized
GeoTIFF and renamed into place, so that a reader never sees a half-written map."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from benchmark.atomic import TEMPORARY_SUFFIX, make_readable
from benchmark.predict.scenes import Scene

CLASS_NODATA = 255
TILE = 512  # COG tile side in pixels
# Class colours (RGB): not burned / background grey, then colours that stay apart for the next classes.
PALETTE = ((160, 160, 160), (220, 40, 30), (40, 110, 220), (250, 190, 30), (60, 170, 80), (150, 80, 190), (30, 200, 200))


def colour_table(num_classes: int) -> dict[int, tuple[int, int, int, int]]:
    """Class index -> RGBA; nodata is transparent."""
    table = {k: (*PALETTE[k % len(PALETTE)], 255) for k in range(num_classes)}
    table[CLASS_NODATA] = (0, 0, 0, 0)
    return table


class BlockRaster:
    """A raster over ``scene``'s grid (or that grid coarsened by ``pixel_factor``), filled block by block.

    Args:
        path: final path of the COG.
        scene: the input whose size and georeferencing the output takes.
        count, dtype, nodata: bands, type and nodata of the output.
        half_float: store float32 values as 16-bit floats (TIFF ``NBITS=16``).
        pixel_factor: output pixels per side of ``pixel_factor`` input pixels (1 = the input's grid).
    """

    def __init__(
        self,
        path: Path,
        scene: Scene,
        count: int,
        dtype: str,
        nodata: float,
        half_float: bool = False,
        pixel_factor: int = 1,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.options = {"NBITS": 16} if half_float else {}
        height, width = -(-scene.height // pixel_factor), -(-scene.width // pixel_factor)
        profile = dict(
            driver="GTiff", width=width, height=height, count=count, dtype=dtype, nodata=nodata, tiled=True,
            blockxsize=TILE, blockysize=TILE, compress="deflate", bigtiff="if_safer", **self.options,
        )
        if scene.georeferenced:
            profile.update(crs=scene.crs, transform=scene.transform @ Affine.scale(pixel_factor))
        self.staging = self.temporary()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self.raster = rasterio.open(self.staging, "w", **profile)

    def temporary(self) -> Path:
        """A fresh temporary file beside the output (named as :mod:`benchmark.atomic` names them)."""
        fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=TEMPORARY_SUFFIX)
        os.close(fd)
        return Path(name)

    def describe(self, names: Sequence[str], tags: dict[str, object], colours: dict | None = None) -> None:
        """Band descriptions, dataset tags (JSON for non-strings) and a colour table for band 1."""
        for index, name in enumerate(names, start=1):
            self.raster.set_band_description(index, str(name))
        self.raster.update_tags(**{k: v if isinstance(v, str) else json.dumps(v) for k, v in tags.items()})
        if colours:
            self.raster.write_colormap(1, colours)

    def write(self, top: int, left: int, values: np.ndarray) -> None:
        """``values`` (count, h, w) at output row ``top``, column ``left``."""
        self.raster.write(values, window=Window(left, top, values.shape[2], values.shape[1]))

    def finish(self, overview_resampling: str) -> None:
        """Copy into a COG (with overviews made by ``overview_resampling``) and rename it into place."""
        self.raster.close()
        final = self.temporary()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                rasterio.shutil.copy(
                    self.staging, final, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=TILE,
                    OVERVIEW_RESAMPLING=overview_resampling, BIGTIFF="IF_SAFER", **self.options,
                )
            make_readable(final)
            os.replace(final, self.path)
        finally:
            final.unlink(missing_ok=True)
            self.staging.unlink(missing_ok=True)

    def abandon(self) -> None:
        """Drop the unfinished output (nothing is left behind)."""
        self.raster.close()
        self.staging.unlink(missing_ok=True)
