"""Scenes to map: GeoTIFF/COG files of any size, or a folder of single-band files, read window by window.

A scene's bands are named (from the file's band descriptions, the file names of a single-band folder, or
a ``bands=[...]`` list) and matched by name to the bands the run was trained on. Reads are windowed: no
call ever reads a whole raster.
"""

from __future__ import annotations

import glob
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from benchmark.data.bands import UnknownBandError, resolve_band

log = logging.getLogger(__name__)

RASTER_SUFFIXES = (".tif", ".tiff")
SKIP = ("-", "none", "skip")  # names in ``bands=[...]`` for a band of the file the model does not use
NODATA_MARK = -9999.0         # missing pixels in HLS and many other products, tagged or not


class SceneError(ValueError):
    """An input cannot be mapped as given: the message names the file and the fix."""


@dataclass(frozen=True)
class BandSource:
    """Band ``index`` (1-based) of ``path``, named ``name`` (canonical) or None when unused."""

    path: Path
    index: int
    name: str | None


@dataclass(frozen=True)
class Scene:
    """One area to map: its bands (each from a file), its grid and its georeferencing (None when absent)."""

    name: str
    sources: tuple[BandSource, ...]
    height: int
    width: int
    crs: object | None
    transform: object | None

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None


def open_quietly(path: Path) -> rasterio.io.DatasetReader:
    """``rasterio.open`` without the not-georeferenced warning (this module reports it once per scene)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def band_name(name: object, where: str) -> str | None:
    """Canonical name of ``name``; None for a skipped band (``-``, ``none``, ``skip`` or null)."""
    if name is None or str(name).strip().lower() in SKIP:
        return None
    try:
        return resolve_band(str(name).strip()).name
    except UnknownBandError as error:
        raise SceneError(f"{where}: {error}. Name it '-' to leave it out.") from None


def known_band(name: str) -> bool:
    try:
        band_name(name, "")
    except SceneError:
        return False
    return True


def file_band_names(path: Path, count: int, descriptions: Sequence[str | None], bands: Sequence[object] | None) -> list[str | None]:
    """Names of the ``count`` bands of ``path``: the file's band descriptions when they name bands, else ``bands``."""
    if all(descriptions) and (bands is None or all(known_band(d) for d in descriptions)):
        return [band_name(d, f"{path} band {i + 1} (its description)") for i, d in enumerate(descriptions)]
    if bands is None:
        raise SceneError(
            f"{path} has {count} band(s) without descriptions: say what they are with bands=[...] (one name per "
            "band in file order, e.g. bands=[B2,B3,B4,B8A,B11,B12]; '-' for a band to leave out)"
        )
    if len(bands) != count:
        raise SceneError(f"{path} has {count} bands but bands=[...] names {len(bands)}; give one name per band ('-' to skip)")
    return [band_name(b, f"{path} band {i + 1}") for i, b in enumerate(bands)]


def file_scene(path: Path, bands: Sequence[object] | None) -> Scene:
    with open_quietly(path) as src:
        names = file_band_names(path, src.count, src.descriptions, bands)
        sources = tuple(BandSource(path, i + 1, n) for i, n in enumerate(names))
        return Scene(path.stem, sources, src.height, src.width, src.crs, src.transform if src.crs else None)


def is_band_folder(folder: Path) -> bool:
    """True when every raster of ``folder`` is single-band and named after a band (``B02.tif``...)."""
    files = rasters_in(folder)
    if not files:
        return False
    for path in files:
        try:
            resolve_band(path.stem)
        except UnknownBandError:
            return False
        with open_quietly(path) as src:
            if src.count != 1:
                return False
    return True


def folder_scene(folder: Path) -> Scene:
    """One scene from a folder of single-band files named after their band (as OSCD and SAFE ship them)."""
    files = rasters_in(folder)
    shapes = {}
    for path in files:
        with open_quietly(path) as src:
            shapes[path] = (src.height, src.width, src.crs, src.transform)
    sizes = {s[:2] for s in shapes.values()}
    if len(sizes) != 1:
        listing = ", ".join(f"{p.name} {h}x{w}" for p, (h, w, *_) in shapes.items())
        raise SceneError(f"{folder}: the band files differ in size ({listing}); resample them to one grid first")
    height, width, crs, transform = shapes[files[0]]
    sources = tuple(BandSource(p, 1, resolve_band(p.stem).name) for p in files)
    return Scene(folder.name, sources, height, width, crs, transform if crs else None)


def rasters_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in RASTER_SUFFIXES and p.is_file())


def find_scenes(inputs: str | Sequence[str], bands: Sequence[object] | None = None) -> list[Scene]:
    """The scenes named by ``inputs``: files, folders (of scenes, or of one scene's band files) or globs."""
    patterns = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    scenes = []
    for pattern in map(str, patterns):
        matches = sorted(Path(p) for p in glob.glob(pattern)) if glob.has_magic(pattern) else [Path(pattern)]
        if not matches or not all(m.exists() for m in matches):
            raise SceneError(f"inputs={pattern!r}: no such file or folder")
        for path in matches:
            if path.is_dir() and is_band_folder(path):
                scenes.append(folder_scene(path))
            elif path.is_dir():
                found = rasters_in(path)
                if not found:
                    raise SceneError(f"{path} holds no .tif/.tiff file")
                scenes.extend(file_scene(p, bands) for p in found)
            else:
                scenes.append(file_scene(path, bands))
    names = [s.name for s in scenes]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SceneError(f"several inputs are named {repeated}: their outputs would overwrite each other")
    return scenes


@dataclass(frozen=True)
class Region:
    """Scene rows ``top:`` and columns ``left:`` read at once: ``images[modality]`` (C, h, w) and ``nodata`` (h, w)."""

    top: int
    left: int
    images: dict[str, np.ndarray]
    nodata: np.ndarray

    def nodata_of(self, top: int, left: int, height: int, width: int) -> np.ndarray:
        """The nodata mask of scene rows ``top:top+height``, columns ``left:left+width`` (inside the region)."""
        return self.nodata[top - self.top : top - self.top + height, left - self.left : left - self.left + width]


class SceneReader:
    """Reads windows of a scene's bands in the order of ``wanted`` (``{modality: [canonical bands]}``).

    Use it as a context manager (``with reader:``), which opens the files. Values are multiplied by ``scale``. A pixel is nodata where any band read from a file holds its file's
    nodata value, -9999, NaN or infinity; there every band reads as its ``means`` value (the training mean,
    which normalises to 0), as does a band in ``optional`` that the scene lacks.
    """

    def __init__(
        self,
        scene: Scene,
        wanted: Mapping[str, Sequence[str]],
        means: Mapping[str, Sequence[float]],
        optional: set[str],
        scale: float = 1.0,
    ) -> None:
        self.scene = scene
        self.scale = float(scale)
        by_name = {s.name: s for s in scene.sources if s.name is not None}
        missing = [b for bands in wanted.values() for b in bands if b not in by_name and b not in optional]
        if missing:
            have = list(by_name) or ["none"]
            raise SceneError(
                f"scene {scene.name} lacks band(s) {', '.join(missing)} that the run's model reads (it has "
                f"{', '.join(have)}); name the file's bands with bands=[...] if they are there under other names"
            )
        self.plan = {m: [by_name.get(b) for b in bands] for m, bands in wanted.items()}
        self.means = {m: [np.float32(v) for v in means[m]] for m in wanted}
        self.paths = sorted({s.path for s in by_name.values()})
        self.handles: dict[Path, rasterio.io.DatasetReader] = {}

    def __enter__(self) -> "SceneReader":
        """Open the scene's files (closed on exit: a folder of many scenes never holds them all open)."""
        self.handles = {p: open_quietly(p) for p in self.paths}
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles.values():
            handle.close()
        self.handles = {}

    def bands_used(self) -> dict[str, list[str]]:
        """``{modality: ["<file>:<band index> as <name>" or "filled"]}``, in the model's band order."""
        return {
            m: [f"{s.path.name}:{s.index} as {s.name}" if s else "filled" for s in sources]
            for m, sources in self.plan.items()
        }

    def region(self, top: int, left: int, bottom: int, right: int) -> Region:
        """Rows ``top:bottom`` and columns ``left:right``, clipped to the scene."""
        bottom, right = min(bottom, self.scene.height), min(right, self.scene.width)
        images, nodata = self.read(top, left, bottom - top, right - left)
        return Region(top, left, images, nodata)

    def read(self, top: int, left: int, height: int, width: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``({modality: (C, height, width) float32}, nodata (height, width) bool)`` of a window inside the scene."""
        window = Window(left, top, width, height)
        nodata = np.zeros((height, width), dtype=bool)
        values = {}
        for modality, sources in self.plan.items():
            values[modality] = [self.read_band(s, window, nodata) if s else None for s in sources]
        images = {}
        for modality, bands in values.items():
            means = self.means[modality]
            images[modality] = np.stack([
                np.full((height, width), mean) if band is None else np.where(nodata, mean, band)
                for band, mean in zip(bands, means)
            ])
        return images, nodata

    def read_band(self, source: BandSource, window: Window, nodata: np.ndarray) -> np.ndarray:
        """One band of a window, scaled; its missing pixels are added to ``nodata``."""
        handle = self.handles[source.path]
        values = handle.read(source.index, window=window).astype(np.float32)
        missing = ~np.isfinite(values) | (values == NODATA_MARK)
        file_nodata = handle.nodatavals[source.index - 1]
        if file_nodata is not None and np.isfinite(file_nodata):
            missing |= values == np.float32(file_nodata)
        nodata |= missing
        return values * np.float32(self.scale)
