"""Mapping scenes end to end: real rasters through trained tiny runs, 1 vs 2 processes, quadrants vs whole,
and embeddings (``--config-name=predict`` / ``embed``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from rasterio.windows import Window

from benchmark.download import file_lock
from conftest import REPO, SHARED_REAL, only_run_dir, run_benchmark, tiny_overrides

pytestmark = pytest.mark.slow

HLS_CHIP = SHARED_REAL / "terratorch" / "regression_10band" / "regression_test_0_input.tif"
RGB_BYTE = SHARED_REAL / "rasterio" / "RGB.byte.tif"
OSCD_BERCY = SHARED_REAL / "torchgeo-oscd" / "bercy" / "imgs_1_rect"
HLS_CHIP_BANDS = "bands=[B1,B2,B3,B4,B8A,B11,B12,-,-,-]"  # HLS L30 B01-B07 (B05 = NIR narrow), then cirrus, thermal
SIDE, QUARTER, WINDOW = 256, 128, 32  # the tiny runs' encoder window is 32 px; default stride 16

needs_real = pytest.mark.skipif(not HLS_CHIP.is_file(), reason="real rasters of ../shared/data/real are absent")


def read(path: Path) -> tuple[np.ndarray, dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read(), {
                "crs": src.crs, "transform": src.transform, "shape": (src.height, src.width), "nodata": src.nodata,
                "tags": src.tags(), "layout": src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"),
                "colormap": src.colormap(1) if src.count == 1 else None, "block": src.block_shapes[0],
            }


def write_scene_with_nodata(path: Path) -> None:
    """The real HLS chip with -9999 and NaN holes in bands the model reads (and one in a band it skips)."""
    with rasterio.open(HLS_CHIP) as src:
        profile, data = src.profile, src.read()
    data[2, 10:30, 40:90] = -9999  # band 3 = green
    data[4, 150:160, 5:25] = np.nan  # band 5 = NIR narrow
    data[8, 100:120, 100:120] = -9999  # band 9 (thermal) is left out with '-': no nodata from it
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def write_described_scene(path: Path) -> None:
    """A 256 x 256, 6-band int16 scene (reflectance x 1e4) whose band descriptions name its bands."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    base = np.stack([np.sin(6 * rows + k) * np.cos(5 * cols - k) for k in range(6)])
    burnt = ((rows - 0.4) ** 2 + (cols - 0.6) ** 2) < 0.05
    data = 0.1 + 0.05 * base + 0.01 * rng.standard_normal(base.shape)
    data[3:, burnt] *= 0.5  # darker NIR/SWIR over a scar-like disc
    profile = dict(driver="GTiff", width=SIDE, height=SIDE, count=6, dtype="int16", crs="EPSG:32610",
                   transform=from_origin(500000, 4200000, 30, 30))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.round(data * 1e4).astype(np.int16))
        for index, name in enumerate(["B2", "B3", "B4", "B8A", "B11", "B12"], start=1):
            dst.set_band_description(index, name)


def cut_quadrants(whole: Path, folder: Path) -> None:
    """Four georeferenced quadrants of ``whole``, cut on a multiple of the window stride."""
    with rasterio.open(whole) as src:
        for top in (0, QUARTER):
            for left in (0, QUARTER):
                window = Window(left, top, QUARTER, QUARTER)
                profile = {**src.profile, "width": QUARTER, "height": QUARTER, "transform": src.window_transform(window)}
                with rasterio.open(folder / f"quadrant_{top}_{left}.tif", "w", **profile) as dst:
                    dst.write(src.read(window=window))
                    dst.descriptions = src.descriptions


@contextmanager
def made_once(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[Path, bool]]:
    """``(folder, needed)``: a folder every xdist worker shares, and whether this one must fill it (the
    first to get there, under a file lock; the others wait and reuse it)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "predict_shared" / name
    with file_lock(folder):
        needed = not (folder / "done").exists()
        if needed:  # start clean: an earlier worker may have failed half-way
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        yield folder, needed
        if needed:
            (folder / "done").touch()


@pytest.fixture(scope="session")
def hls_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained on synthetic burn scars (once for all workers)."""
    with made_once(tmp_path_factory, "run") as (folder, needed):
        if needed:
            run_benchmark(tiny_overrides(folder / "data", folder / "work"))
    return only_run_dir(folder / "work")


def hls_nodata(folder: Path) -> np.ndarray:
    """Where a band the model reads (bands 2-7) of the holed HLS chip is nodata."""
    used = read(folder / "hls_chip.tif")[0][1:7]
    return (~np.isfinite(used) | (used == -9999)).any(0)


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    with made_once(tmp_path_factory, "scenes") as (folder, needed):
        if needed:
            write_described_scene(folder / "whole.tif")
            cut_quadrants(folder / "whole.tif", folder)
            if HLS_CHIP.is_file():
                write_scene_with_nodata(folder / "hls_chip.tif")
                shutil.copytree(OSCD_BERCY, folder / "bercy")
    if not HLS_CHIP.is_file():
        return {"folder": folder, "scenes": f"{folder}/*.tif"}
    return {"folder": folder, "hls_nodata": hls_nodata(folder), "scenes": f"[{folder}/*.tif,{folder}/bercy]"}


def predict(run_dir: Path, inputs: str, output: Path, *extra: str, nproc: int | None = None) -> None:
    run_benchmark(["--config-name=predict", f"ckpt_dir={run_dir}", f"inputs={inputs}", f"output_dir={output}", *extra], nproc=nproc)


@pytest.fixture(scope="session")
def predicted(hls_run: Path, inputs: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every scene of ``inputs`` mapped in one process and, again, by two processes under torchrun."""
    with made_once(tmp_path_factory, "maps") as (folder, needed):
        for nproc, name in ((None, "one"), (2, "two")):
            if needed:
                predict(hls_run, inputs["scenes"], folder / name, HLS_CHIP_BANDS, "scale=0.0001", "probabilities=true",
                        "block_size=64", nproc=nproc)
    return {"one": folder / "one", "two": folder / "two"}


@needs_real
def test_real_hls_chip_keeps_grid_and_nodata_and_is_a_cog(predicted: dict, inputs: dict) -> None:
    classes, meta = read(predicted["one"] / "hls_chip_classes.tif")
    _, source = read(inputs["folder"] / "hls_chip.tif")
    assert meta["crs"] == source["crs"] and meta["transform"] == source["transform"] and meta["shape"] == source["shape"]
    assert meta["layout"] == "COG" and meta["nodata"] == 255 and meta["block"] == (512, 512)
    np.testing.assert_array_equal(classes[0] == 255, inputs["hls_nodata"])
    assert set(np.unique(classes[0][~inputs["hls_nodata"]])) <= {0, 1}
    assert json.loads(meta["tags"]["class_names"]) == {"0": "Not burned", "1": "Burn scar"}
    assert meta["colormap"][1][:3] != meta["colormap"][0][:3] and meta["colormap"][255][3] == 0
    probabilities, _ = read(predicted["one"] / "hls_chip_probabilities.tif")
    valid = ~inputs["hls_nodata"]
    assert np.isnan(probabilities[:, ~valid]).all()
    np.testing.assert_allclose(probabilities[:, valid].sum(0), 1.0, atol=2e-3)  # stored as 16-bit floats
    np.testing.assert_array_equal(probabilities.argmax(0)[valid & (np.abs(probabilities[1] - 0.5) > 2e-3)],
                                  classes[0][valid & (np.abs(probabilities[1] - 0.5) > 2e-3)])
    sidecar = json.loads((predicted["one"] / "hls_chip.json").read_text())
    assert sidecar["bands_used"]["optical"][3] == "hls_chip.tif:5 as B8A" and sidecar["scale"] == 0.0001
    assert sidecar["checkpoint"].endswith("best.pt") and len(sidecar["checkpoint_sha256"]) == 64
    assert sidecar["windows"] > 0 and sidecar["windows_per_second"] > 0


@needs_real
def test_a_folder_of_single_band_files_is_one_scene_and_no_georeferencing_passes_through(predicted: dict) -> None:
    classes, meta = read(predicted["one"] / "bercy_classes.tif")
    assert meta["shape"] == (395, 360) and meta["crs"] is None and meta["layout"] == "COG"
    assert (classes != 255).all()  # OSCD has no nodata
    sidecar = json.loads((predicted["one"] / "bercy.json").read_text())
    assert sidecar["georeferenced"] is False and len(sidecar["input"]) == 13
    files = {"B2": "B02", "B3": "B03", "B4": "B04", "B8A": "B8A", "B11": "B11", "B12": "B12"}
    assert sidecar["bands_used"]["optical"] == [f"{file}.tif:1 as {band}" for band, file in files.items()]


def test_quadrants_predicted_apart_match_the_whole_away_from_their_borders(predicted: dict) -> None:
    whole, meta = read(predicted["one"] / "whole_probabilities.tif")
    assert meta["shape"] == (SIDE, SIDE)
    margin = WINDOW  # a pixel farther than one window from a cut sees only windows that lie inside its quadrant
    for top in (0, QUARTER):
        for left in (0, QUARTER):
            part, part_meta = read(predicted["one"] / f"quadrant_{top}_{left}_probabilities.tif")
            assert part_meta["transform"].c == meta["transform"].c + left * 30
            inner = (slice(None), slice(margin, QUARTER - margin), slice(margin, QUARTER - margin))
            expected = whole[:, top : top + QUARTER, left : left + QUARTER][inner]
            np.testing.assert_allclose(part[inner], expected, atol=1e-3)  # 16-bit storage of equal logits


def test_two_processes_write_the_same_maps_as_one(predicted: dict) -> None:
    names = sorted(p.name for p in predicted["one"].glob("*.tif"))
    assert names == sorted(p.name for p in predicted["two"].glob("*.tif")) and len(names) >= 2 * 5
    for name in names:
        np.testing.assert_array_equal(read(predicted["one"] / name)[0], read(predicted["two"] / name)[0])
    assert not list(predicted["one"].glob(".*"))  # no temporary file left behind
    assert json.loads((predicted["two"] / "whole.json").read_text())["world_size"] == 2


@needs_real
def test_non_square_rgb_scene_through_a_dofa_run(synthetic_root: Path, tmp_path: Path) -> None:
    run_benchmark([*tiny_overrides(synthetic_root, tmp_path / "work", encoder="dofa"), "encoder.input_bands={optical:[B4,B3,B2]}"])
    run_dir = only_run_dir(tmp_path / "work")
    predict(run_dir, str(RGB_BYTE), tmp_path / "out", "bands=[RED,GREEN,BLUE]", "scale=0.00392")
    classes, meta = read(tmp_path / "out" / "RGB.byte_classes.tif")
    source, source_meta = read(RGB_BYTE)
    assert meta["shape"] == (718, 791) and meta["crs"] == source_meta["crs"] and meta["transform"] == source_meta["transform"]
    np.testing.assert_array_equal(classes[0] == 255, (source == 0).any(0))
    sidecar = json.loads((tmp_path / "out" / "RGB.byte.json").read_text())
    assert sidecar["bands_used"]["optical"] == ["RGB.byte.tif:3 as B2", "RGB.byte.tif:2 as B3", "RGB.byte.tif:1 as B4", "filled", "filled", "filled"]


@needs_real
def test_embed_writes_the_encoder_features_on_the_patch_grid(hls_run: Path, tmp_path: Path) -> None:
    run_benchmark(["--config-name=embed", f"ckpt_dir={hls_run}", f"inputs={HLS_CHIP}", f"output_dir={tmp_path}", HLS_CHIP_BANDS, "scale=0.0001"])
    features, meta = read(tmp_path / "regression_test_0_input_embedding.tif")
    _, source = read(HLS_CHIP)
    assert features.shape == (32, 224 // 16, 224 // 16) and meta["crs"] == source["crs"]
    assert meta["transform"].a == 16 * source["transform"].a and meta["transform"].c == source["transform"].c
    assert np.isfinite(features).all() and features.std(axis=(1, 2)).mean() > 0


STOPPED_BY_SIGTERM = """
import os, runpy, signal, sys
from benchmark.predict import products
compute = products.ClassMap.run_windows
def stopped(self, *args, **kwargs):  # torchrun stopping this rank while it maps (another rank failed)
    os.kill(os.getpid(), signal.SIGTERM)
    return compute(self, *args, **kwargs)
products.ClassMap.run_windows = stopped
sys.argv = ["benchmark/run.py", *sys.argv[1:]]
runpy.run_path("benchmark/run.py", run_name="__main__")
"""


def test_a_map_stopped_by_sigterm_leaves_no_half_written_file(hls_run: Path, inputs: dict, tmp_path: Path) -> None:
    stopped = subprocess.run(
        [sys.executable, "-c", STOPPED_BY_SIGTERM, "--config-name=predict", f"ckpt_dir={hls_run}",
         f"inputs={inputs['folder'] / 'whole.tif'}", f"output_dir={tmp_path / 'maps'}", "probabilities=true"],
        cwd=REPO, env={**os.environ, "HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True, timeout=300)
    assert stopped.returncode != 0 and "TerminatedError" in stopped.stderr, stopped.stderr[-3000:]
    assert [p.name for p in (tmp_path / "maps").iterdir()] == [], "no map, no staging file, no sidecar"
