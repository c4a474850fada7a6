"""Start-up checks of a dataset split: every file is opened and checked before the first epoch.

Per scene (image ``<stem>_merged.tif`` + mask ``<stem>.mask.tif``) :func:`check_split` checks that both
files open with rasterio, that the image has the configured number of bands and a float dtype, that
the mask is a one-band raster of whole-number class ids (integers, or floats with NaN for no label;
:mod:`benchmark.data.masks`) of the image's size, and that mask values lie in
``{ignore_index} ∪ [0, num_classes)``. Per split it refuses a split without a labelled pixel, warns
about NaN/inf image pixels (the dataset treats them as nodata, like -9999) and about image values far
from ``data_mean``/``data_std`` (e.g. digital numbers where reflectance is expected). All problems of a
split are reported together, in one :class:`DatasetFilesError`.

What is learnt from the files (headers, mask value counts, nodata counts, a per-band median of a
subsample of pixels) depends on the files only, so it is memoised in
``<cache_dir>/checks/<folder>-<hash>.json``, keyed by each file's identity (path|size|mtime): a second
job on the machine opens no file, and a replaced or touched file is checked again. Problems also
depend on the config (bands, classes), so they are derived from those facts at every construction.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from tqdm import tqdm

from benchmark.data.masks import class_ids, mask_facts, read_mask_array, value_counts
from benchmark.data.raster_cache import FactsMemo, RasterCache, file_identity

log = logging.getLogger(__name__)

CHECK_VERSION = 2     # bump when the facts below change meaning: older memos are then ignored
IMAGE_NODATA = -9999.0
LISTED = 10           # problems spelled out in the error; the others are counted
SAMPLE_SIDE = 64      # band medians from a strided subsample of about SAMPLE_SIDE x SAMPLE_SIDE pixels per image
FAR_STD = 10.0        # a band median this many data_std away from data_mean ...
FAR_RATIO = 30.0      # ... or this many times larger or smaller than it means other units
PROGRESS_FROM = 16    # a progress bar when at least this many scenes are checked for the first time

Facts = dict[str, Any]


class DatasetFilesError(FileNotFoundError):
    """The dataset folder is missing, incomplete or inconsistent."""


@dataclass(frozen=True)
class SplitSpec:
    """What the config expects of the files of one split."""

    split: str
    folder: Path
    bands: int
    ignore_index: int
    num_classes: int
    data_mean: Sequence[float]
    data_std: Sequence[float]
    image_units: str = "float reflectance (about 0-1)"  # what the files store; "float" ones must be float


def check_label_config(
    bands: Mapping[str, Sequence[str]], data_mean: Mapping[str, Sequence[float]], data_std: Mapping[str, Sequence[float]],
    classes: Sequence[str], num_classes: int,
) -> None:
    """The dataset config agrees with itself: a class name per class, one statistic per band of each modality."""
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for num_classes={num_classes}")
    for modality, names in bands.items():
        for key, stats in (("data_mean", data_mean), ("data_std", data_std)):
            if len(stats.get(modality, [])) != len(names):
                raise ValueError(f"dataset.{key}.{modality} has {len(stats.get(modality, []))} values for the "
                                 f"{len(names)} bands of dataset.bands.{modality}: give one per band, in the same order")


def header(src: Any) -> dict[str, Any]:
    return {"count": src.count, "height": src.height, "width": src.width, "dtype": src.dtypes[0]}


def read_raster(
    path: Path, read: Callable[[Any], np.ndarray], cache: RasterCache | None
) -> tuple[dict[str, Any], np.ndarray]:
    """``(header, read(src))`` with one open; through ``cache`` when given, so that training reuses the decode."""
    seen: dict[str, Any] = {}

    def decode(p: Path) -> np.ndarray:
        with rasterio.open(p) as src:
            seen.update(header(src))
            return read(src)

    array = decode(path) if cache is None else cache.load(path, decode)
    if not seen:  # decoded by an earlier job: only the header is read
        with rasterio.open(path) as src:
            seen.update(header(src))
    return seen, array


def read_image_array(src: Any) -> np.ndarray:
    """All bands as float32 ``(C, H, W)``."""
    return src.read().astype(np.float32, copy=False)


def band_medians(image: np.ndarray, missing: np.ndarray) -> list[float] | None:
    """Per-band median of a strided subsample of the valid pixels (None when none is valid)."""
    step = max(1, max(image.shape[1:]) // SAMPLE_SIDE)
    sample = image[:, ::step, ::step].reshape(image.shape[0], -1)
    keep = ~missing[::step, ::step].reshape(-1)
    if not keep.any():
        return None
    return [float(v) for v in np.median(sample[:, keep], axis=1)]


def scene_facts(image: np.ndarray, mask: np.ndarray) -> Facts:
    """What the checks need to know of one scene: ``image`` float32 (C, H, W), ``mask`` (H, W)."""
    nodata = (image == IMAGE_NODATA).any(axis=0)
    nonfinite = (~np.isfinite(image)).any(axis=0)
    missing = nodata | nonfinite
    labels = mask_facts(mask)
    same_grid = labels["mask_values"] is not None and mask.shape == missing.shape
    ids, has_id = class_ids(mask) if same_grid else (None, None)
    return {
        "nodata": int(nodata.sum()),
        "nonfinite": int(nonfinite.sum()),
        **labels,
        "labelled_values": value_counts(ids[has_id & ~missing]) if same_grid else None,  # under valid image pixels
        "band_medians": band_medians(image, missing),
    }


def inspect_scene(image_path: Path, mask_path: Path, cache: RasterCache | None) -> tuple[Facts | None, list[str]]:
    """Open and read both files of a scene: ``(facts, [])``, or ``(None, problems)`` when one is unreadable."""
    read: dict[str, tuple[dict[str, Any], np.ndarray]] = {}
    problems = []
    for role, path, reader in (("image", image_path, read_image_array), ("mask", mask_path, read_mask_array)):
        try:
            read[role] = read_raster(path, reader, cache)
        except (RasterioError, OSError) as error:
            problems.append(
                f"{path} cannot be read as a GeoTIFF ({error}): the file is damaged or incomplete; re-download "
                f"the dataset, or remove this scene (both {image_path.name} and {mask_path.name})"
            )
    if problems:
        return None, problems
    facts = scene_facts(read["image"][1], read["mask"][1])
    return {"image": read["image"][0], "mask": read["mask"][0], **facts}, []


def dtype_is(dtype: str, kind: type) -> bool:
    try:
        return bool(np.issubdtype(np.dtype(dtype), kind))
    except TypeError:
        return False


def scene_problems(facts: Facts, spec: SplitSpec, image_path: Path, mask_path: Path) -> list[str]:
    """What is wrong with one scene for this config, each naming the file and what to do."""
    image, mask, problems = facts["image"], facts["mask"], []
    if image["count"] != spec.bands:
        problems.append(f"{image_path} has {image['count']} bands; dataset.bands lists {spec.bands}: "
                        "list the file's bands in dataset.bands, in file order, or replace the file")
    needs_float = spec.image_units.startswith("float")
    if not dtype_is(image["dtype"], np.floating if needs_float else np.number):
        problems.append(f"{image_path} is {image['dtype']}; images must be {spec.image_units}"
                        + (": convert it (e.g. digital numbers / 10000 as float32)" if needs_float else ""))
    if mask["count"] != 1 or not dtype_is(mask["dtype"], np.number):
        problems.append(f"{mask_path} is {mask['count']} band(s) of {mask['dtype']}; a mask is one band of integer "
                        "class ids (e.g. int16): convert it")
    if facts["mask_fractional"]:
        problems.append(f"{mask_path} has {facts['mask_fractional']} px that are not whole numbers; class ids are "
                        "integers (NaN marks no label): fix the mask")
    if (image["height"], image["width"]) != (mask["height"], mask["width"]):
        problems.append(f"{image_path} is {image['height']}x{image['width']} px but its mask {mask_path.name} is "
                        f"{mask['height']}x{mask['width']}: the two files of a scene must share one grid")
    allowed = {spec.ignore_index, *range(spec.num_classes)}
    bad = {v: n for v, n in (facts["mask_values"] or {}).items() if int(v) not in allowed}
    if bad:
        listed = ", ".join(f"{v} ({n} px)" for v, n in sorted(bad.items(), key=lambda item: int(item[0])))
        problems.append(
            f"{mask_path} has values {listed} outside the classes 0..{spec.num_classes - 1} and "
            f"ignore_index={spec.ignore_index}: fix the mask, or set dataset.num_classes / dataset.ignore_index "
            "to its encoding (e.g. ignore_index=255 when 255 marks no data)"
        )
    return problems


def problem_report(spec: SplitSpec, problems: Sequence[str], n_scenes: int) -> str:
    listed = "\n".join(f"  - {p}" for p in problems[:LISTED])
    more = f"\n  (and {len(problems) - LISTED} more)" if len(problems) > LISTED else ""
    return (f"{len(problems)} problem(s) in the {spec.split} split ({spec.folder}, {n_scenes} scenes), found "
            f"before training:\n{listed}{more}")


def scene_key(image_path: Path, mask_path: Path) -> str:
    return f"{file_identity(image_path)}#{file_identity(mask_path)}"


def gather_facts(
    scenes: Sequence[tuple[str, Path, Path]], spec: SplitSpec, cache_dir: str | Path | None, cache: RasterCache | None
) -> tuple[list[Facts | None], list[str]]:
    """Facts of every scene (memoised or read now) and the problems of the unreadable ones."""
    memo = FactsMemo(cache_dir, spec.folder, CHECK_VERSION)
    keys = [scene_key(image, mask) for _, image, mask in scenes]
    todo = [i for i, key in enumerate(keys) if key not in memo.entries]
    quiet = len(todo) < PROGRESS_FROM or os.environ.get("RANK", "0") != "0"
    new: dict[str, Facts] = {}
    problems: list[str] = []
    for i in tqdm(todo, desc=f"checking {spec.split} files (once per file)", unit="scene", disable=quiet):
        facts, unreadable = inspect_scene(scenes[i][1], scenes[i][2], cache)
        problems += unreadable
        if facts is not None:
            new[keys[i]] = facts
    memo.save(new, keys)
    return [memo.entries.get(key) for key in keys], problems


def check_split(
    scenes: Sequence[tuple[str, Path, Path]], spec: SplitSpec, cache_dir: str | Path | None = None,
    cache: RasterCache | None = None,
) -> None:
    """Check every scene ``(stem, image, mask)`` of a split; one :class:`DatasetFilesError` lists all problems."""
    facts, problems = gather_facts(scenes, spec, cache_dir, cache)
    for (_, image, mask), scene in zip(scenes, facts):
        if scene is not None:
            problems += scene_problems(scene, spec, image, mask)
    if problems:
        raise DatasetFilesError(problem_report(spec, problems, len(scenes)))
    check_labelled(facts, spec)
    report_missing(scenes, facts, spec)
    check_scale(facts, spec)


def check_labelled(facts: Sequence[Facts], spec: SplitSpec) -> None:
    labelled = sum(n for f in facts for v, n in (f["labelled_values"] or {}).items() if 0 <= int(v) < spec.num_classes)
    if labelled == 0:
        raise DatasetFilesError(
            f"The {spec.split} split ({spec.folder}, {len(facts)} scenes) has no labelled pixel: every mask pixel is "
            f"ignore_index={spec.ignore_index} or lies under image nodata, so nothing can be trained or scored. "
            f"Check the masks (class ids 0..{spec.num_classes - 1}) and dataset.ignore_index."
        )


def report_missing(scenes: Sequence[tuple[str, Path, Path]], facts: Sequence[Facts], spec: SplitSpec) -> None:
    """One warning for NaN/inf image pixels (they become nodata), one info line for -9999 nodata."""
    nonfinite = [(scene[1].name, f["nonfinite"]) for scene, f in zip(scenes, facts) if f["nonfinite"]]
    if nonfinite:
        examples = ", ".join(f"{name} ({n} px)" for name, n in nonfinite[:3])
        log.warning(
            "%s split: %d image pixels in %d of %d files are NaN or inf (e.g. %s); they are treated as nodata like "
            "-9999: set to the band mean, their target pixels ignored", spec.split,
            sum(n for _, n in nonfinite), len(nonfinite), len(scenes), examples,
        )
    nodata = sum(f["nodata"] for f in facts)
    if nodata:
        log.info("%s split: %d image pixels are nodata (-9999) and ignored", spec.split, nodata)


def scale_hint(ratio: float) -> str:
    """What a typical ratio of band medians to ``data_mean`` says about the images' units, and what to do."""
    power = round(math.log10(ratio)) if ratio > 0 else 0
    if power >= 2:
        unit = "percent" if power == 2 else f"digital numbers (reflectance x {10**power:g}, as HLS and S2 L2A store it)"
        return (f"the images look like {unit} where reflectance 0-1 is expected: divide them by {10**power:g} "
                "(or, if these units are meant, set dataset.data_mean/data_std to their statistics)")
    if power <= -2:
        return (f"the images look {10**-power:g} times smaller than the statistics (reflectance 0-1 with statistics "
                "of digital numbers?): set dataset.data_mean/data_std in the images' units")
    return ("check that dataset.bands lists the files' bands in file order and that dataset.data_mean/data_std "
            "describe these images")


def check_scale(facts: Sequence[Facts], spec: SplitSpec) -> None:
    """Warn when the median image is far from ``data_mean`` (in ``data_std``, or as a ratio)."""
    medians = [f["band_medians"] for f in facts if f["band_medians"] is not None]
    if not medians or len(spec.data_mean) != len(medians[0]):
        return
    median = np.median(np.asarray(medians), axis=0)
    mean, std = np.asarray(spec.data_mean), np.asarray(spec.data_std)
    ratio = np.where((mean > 0) & (median > 0), median / np.where(mean > 0, mean, 1), 1.0)
    far = (np.abs(median - mean) > FAR_STD * std) | (ratio > FAR_RATIO) | (ratio < 1 / FAR_RATIO)
    if far.any():
        log.warning(
            "%s split: image values are far from the dataset statistics: per-band median %s vs data_mean %s "
            "(data_std %s); %s", spec.split,
            np.round(median, 4).tolist(), np.round(mean, 4).tolist(), np.round(std, 4).tolist(),
            scale_hint(float(np.median(ratio[far]))),
        )
