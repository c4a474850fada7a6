"""Streaming inference pieces on small generated data: blocks, blending, scenes and their bands, outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from omegaconf import OmegaConf
from rasterio.transform import from_origin

from benchmark.engine.evaluator import sliding_window_logits
from benchmark.predict.geotiff import BlockRaster
from benchmark.predict.model_inputs import ModelInputs
from benchmark.predict.scenes import SceneError, find_scenes
from benchmark.predict.stream import blend_block, plan_blocks, window_weights


def conv_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3, padding=1))


def coverage(height: int, width: int, window: int, stride: int) -> np.ndarray:
    blocks = plan_blocks(height, width, window, stride, max(height, width))
    counts = np.zeros((height, width), dtype=int)
    for top, left in blocks[0].windows:
        counts[top : top + window, left : left + window] += 1
    return counts


def test_blocks_tile_the_scene_once_and_list_exactly_the_windows_that_overlap_them() -> None:
    blocks = plan_blocks(100, 70, 16, 12, 40)
    seen = np.zeros((100, 70), dtype=int)
    for block in blocks:
        seen[block.top : block.top + block.height, block.left : block.left + block.width] += 1
        for top, left in block.windows:
            assert top < block.top + block.height and top + 16 > block.top
            assert left < block.left + block.width and left + 16 > block.left
    assert (seen == 1).all() and len(blocks) == 3 * 2
    whole = plan_blocks(100, 70, 16, 12, 100)[0].windows
    assert {w for b in blocks for w in b.windows} == set(whole)


def test_window_weights_are_positive_everywhere_and_largest_in_the_middle() -> None:
    weights = window_weights(16)
    assert weights.min() > 0 and weights[7:9, 7:9].min() == weights.max()


def test_streamed_blocks_equal_the_evaluator_where_one_window_covers_a_pixel() -> None:
    model = conv_model().eval()
    image = torch.randn(1, 3, 1, 50, 45)
    window, stride = 16, 12

    def run(positions):
        return torch.cat([model(image[0, :, 0, t : t + window, l : l + window][None]) for t, l in positions])

    streamed = torch.zeros(2, 50, 45)
    for block in plan_blocks(50, 45, window, stride, 20):
        values = blend_block(block, run, window, 3, torch.device("cpu"))
        streamed[:, block.top : block.top + block.height, block.left : block.left + block.width] = values
    with torch.no_grad():
        evaluated = sliding_window_logits(lambda x, size: model(x["optical"][:, :, 0]), {"optical": image}, window, stride, 2)[0]
    single = torch.from_numpy(coverage(50, 45, window, stride) == 1)
    assert single.sum() > 100
    torch.testing.assert_close(streamed[:, single], evaluated[:, single], atol=1e-5, rtol=0)
    assert (streamed.argmax(0) == evaluated.argmax(0)).float().mean() > 0.9  # blended elsewhere, not averaged


def write(path: Path, count: int, descriptions: list[str] | None = None, size: tuple[int, int] = (40, 30), nodata=None) -> None:
    profile = dict(driver="GTiff", height=size[0], width=size[1], count=count, dtype="float32", nodata=nodata,
                   crs="EPSG:32610", transform=from_origin(0, 0, 10, 10))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((count, *size), 0.1, dtype=np.float32))
        for index, name in enumerate(descriptions or [], start=1):
            dst.set_band_description(index, name)


def test_band_names_come_from_descriptions_else_from_the_bands_list(tmp_path: Path) -> None:
    write(tmp_path / "described.tif", 3, ["RED", "GREEN", "BLUE"])
    write(tmp_path / "plain.tif", 3)
    scenes = {s.name: s for s in find_scenes(str(tmp_path / "*.tif"), bands=["B4", "-", "B2"])}
    assert [s.name for s in scenes["described"].sources] == ["B4", "B3", "B2"]
    assert [s.name for s in scenes["plain"].sources] == ["B4", None, "B2"]
    with pytest.raises(SceneError, match=r"plain.tif has 3 band\(s\) without descriptions: say what they are with bands"):
        find_scenes(str(tmp_path / "plain.tif"))
    with pytest.raises(SceneError, match="has 3 bands but bands=.* names 2"):
        find_scenes(str(tmp_path / "plain.tif"), bands=["B4", "B3"])
    with pytest.raises(SceneError, match="Unknown band name 'X7'"):
        find_scenes(str(tmp_path / "plain.tif"), bands=["B4", "X7", "B2"])
    with pytest.raises(SceneError, match="no such file or folder"):
        find_scenes(str(tmp_path / "absent.tif"))


def test_a_folder_of_band_files_is_one_scene_and_must_share_one_grid(tmp_path: Path) -> None:
    for name in ("B02", "B03", "B8A"):
        write(tmp_path / f"{name}.tif", 1)
    (scene,) = find_scenes(str(tmp_path))
    assert scene.name == tmp_path.name and [s.name for s in scene.sources] == ["B2", "B3", "B8A"]
    write(tmp_path / "B04.tif", 1, size=(20, 30))
    with pytest.raises(SceneError, match="differ in size.*B04.tif 20x30"):
        find_scenes(str(tmp_path))


def run_config(preprocessing: str = "seg_default", bands: str = "B4,B3,B2") -> OmegaConf:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        return compose("train", overrides=["dataset=synthetic_burnscars", "encoder=dofa", f"preprocessing={preprocessing}",
                                           f"encoder.input_bands={{optical:[{bands}]}}"])


def test_missing_bands_the_model_reads_are_refused_and_unused_ones_filled(tmp_path: Path) -> None:
    write(tmp_path / "rgb.tif", 3, ["B4", "B3", "B2"], nodata=-1.0)
    write(tmp_path / "rg.tif", 2, ["B4", "B3"])
    scenes = {s.name: s for s in find_scenes(str(tmp_path / "*.tif"))}
    inputs = ModelInputs(run_config(), window=16)
    with pytest.raises(SceneError, match="scene rg lacks band.* B2 that the run's model reads"):
        inputs.reader(scenes["rg"], scale=1.0)
    reader = inputs.reader(scenes["rgb"], scale=1.0)
    assert not reader.handles  # files are opened by the context manager only
    with reader:
        images, nodata = reader.read(0, 0, 40, 30)
        assert images["optical"].shape == (6, 40, 30) and not nodata.any()
        means = run_config().dataset.data_mean.optical
        assert np.allclose(images["optical"][3:], np.asarray(means[3:])[:, None, None])  # B8A, B11, B12 unused: their mean
        region = reader.region(0, 0, 46, 36)
        assert region.images["optical"].shape == (6, 40, 30)  # clipped to the scene
        batch = inputs.batch(region, [(0, 0), (30, 20)])
        assert batch["optical"].shape == (2, 3, 1, 16, 16) and (batch["optical"][1, :, :, 10:, 10:] == 0).all()  # padded
        assert (batch["optical"][1, :, :, :10, :10] != 0).all()
    assert not reader.handles


def test_nodata_pixels_are_reported_and_read_as_the_training_mean(tmp_path: Path) -> None:
    write(tmp_path / "rgb.tif", 3, ["B4", "B3", "B2"], nodata=-1.0)
    with rasterio.open(tmp_path / "rgb.tif", "r+") as dst:
        dst.write(np.array([[-1.0, np.nan], [-9999.0, 0.2]], dtype=np.float32), 2, window=rasterio.windows.Window(0, 0, 2, 2))
    with ModelInputs(run_config(), window=16).reader(find_scenes(str(tmp_path / "rgb.tif"))[0], scale=1.0) as reader:
        images, nodata = reader.read(0, 0, 2, 2)
    assert nodata.tolist() == [[True, True], [True, False]]
    mean_b3 = run_config().dataset.data_mean.optical[1]
    assert np.allclose(images["optical"][1][nodata], mean_b3) and images["optical"][1][1, 1] == np.float32(0.2)


def test_runs_whose_evaluation_resizes_tiles_are_refused() -> None:
    with pytest.raises(SceneError, match="test preprocessing has Resize"):
        ModelInputs(run_config("seg_resize"), window=16)


def test_an_abandoned_output_leaves_nothing_and_a_finished_one_is_a_cog(tmp_path: Path) -> None:
    write(tmp_path / "in.tif", 1, ["B4"])
    scene = find_scenes(str(tmp_path / "in.tif"))[0]
    out = tmp_path / "out"
    raster = BlockRaster(out / "a.tif", scene, 1, "uint8", 255)
    raster.write(0, 0, np.zeros((1, 40, 30), dtype=np.uint8))
    raster.abandon()
    assert list(out.iterdir()) == []
    raster = BlockRaster(out / "b.tif", scene, 1, "uint8", 255)
    raster.write(0, 0, np.ones((1, 40, 30), dtype=np.uint8))
    raster.finish("nearest")
    assert [p.name for p in out.iterdir()] == ["b.tif"]
    with rasterio.open(out / "b.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and (src.read() == 1).all()


def test_a_scene_smaller_than_the_window_is_one_padded_window() -> None:
    (block,) = plan_blocks(10, 12, 16, 8, 1024)
    assert block.windows == ((0, 0),) and (block.height, block.width) == (10, 12)
    values = blend_block(block, lambda positions: torch.ones(len(positions), 2, 16, 16), 16, 4, torch.device("cpu"))
    assert values.shape == (2, 10, 12) and torch.allclose(values, torch.ones(2, 10, 12))


def test_console_scripts_find_the_configs_from_any_folder(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = Path(sys.executable).with_name("geofm-predict")
    if not script.is_file():
        pytest.skip("the package is not installed in this environment (pip install -e .)")
    result = subprocess.run([str(script), f"ckpt_dir={tmp_path}", f"inputs={tmp_path / 'absent.tif'}", f"output_dir={tmp_path}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "no such file or folder" in result.stdout + result.stderr  # dispatched to predict
    assert "Primary config" not in result.stdout + result.stderr


def test_a_window_cut_from_a_block_region_equals_the_window_read_alone(tmp_path: Path) -> None:
    profile = dict(driver="GTiff", height=40, width=30, count=3, dtype="float32", crs="EPSG:32610",
                   transform=from_origin(0, 0, 10, 10))
    with rasterio.open(tmp_path / "rgb.tif", "w", **profile) as dst:
        dst.write(np.random.default_rng(0).random((3, 40, 30), dtype=np.float32))
        for index, name in enumerate(["B4", "B3", "B2"], start=1):
            dst.set_band_description(index, name)
    inputs = ModelInputs(run_config(), window=16)
    with inputs.reader(find_scenes(str(tmp_path / "rgb.tif"))[0], scale=1.0) as reader:
        from_block = inputs.batch(reader.region(3, 5, 40, 30), [(10, 12)])["optical"]
        alone = inputs.batch(reader.region(10, 12, 26, 28), [(10, 12)])["optical"]
    assert torch.equal(from_block, alone) and from_block.abs().sum() > 0


def test_a_scene_in_other_units_than_the_training_data_gets_a_warning_naming_the_scale(tmp_path: Path, caplog) -> None:
    import logging

    profile = dict(driver="GTiff", height=20, width=20, count=2, dtype="uint16")
    with rasterio.open(tmp_path / "dn.tif", "w", **profile) as dst:
        dst.write(np.full((2, 20, 20), 900, dtype=np.uint16))  # reflectance x 10000
        for index, name in enumerate(["B4", "B3"], start=1):
            dst.set_band_description(index, name)
    inputs = ModelInputs(run_config(bands="B4,B3"), window=16)  # 4 of the 6 training bands are filled: not counted
    scene = find_scenes(str(tmp_path / "dn.tif"))[0]
    with caplog.at_level(logging.WARNING, logger="benchmark.predict.model_inputs"):
        with inputs.reader(scene, scale=1.0) as reader:
            inputs.check_units(reader)
        assert "if the scene is in other units, set scale=0.0001" in caplog.text
        caplog.clear()
        with inputs.reader(scene, scale=0.0001) as reader:
            inputs.check_units(reader)
        assert caplog.text == ""


def test_map_settings_that_cannot_work_are_refused() -> None:
    from benchmark.predict.app import check_settings

    settings = OmegaConf.create({"stride": None, "block_size": 1024, "scale": 1.0, "windows_per_batch": 8})
    assert check_settings(settings, window=224, pixel_factor=1) == 112
    for bad, match in (({"stride": 300}, "stride=300"), ({"block_size": 100}, "block_size=100"),
                       ({"block_size": 1000}, "multiple of 16"), ({"scale": 0}, "scale")):
        with pytest.raises(ValueError, match=match):
            check_settings(OmegaConf.merge(settings, bad), window=224, pixel_factor=16)
