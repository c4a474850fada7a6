"""Bad input is caught when a split is built, before the first epoch, with a message that says what to do.

Each test writes a tiny HLS-like folder (32x32 px, ``training/`` and ``validation/``) and spoils it in
one way: unreadable files, wrong headers, mask values outside the classes, empty splits, no labelled
pixel, NaN/inf pixels, values in other units than the statistics; then the memo of the checks and a
NaN scene through the float16 feature cache.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from hydra import compose, initialize_config_dir

from benchmark import builders
from benchmark.data.hlsburnscars import DatasetFilesError, HLSBurnScars
from benchmark.data.synthetic import generate_burn_scars
from benchmark.distributed import DistContext
from benchmark.engine.feature_cache import FeatureCache
from conftest import REPO, SHARED_REAL, tiny_overrides

HLS = {
    "bands": {"optical": ["B2", "B3", "B4", "B8A", "B11", "B12"]},
    "data_mean": {"optical": [0.033, 0.057, 0.059, 0.232, 0.197, 0.119]},
    "data_std": {"optical": [0.023, 0.027, 0.040, 0.078, 0.087, 0.072]},
}
MEAN = np.asarray(HLS["data_mean"]["optical"], dtype=np.float32)
REAL = SHARED_REAL / "terratorch"
REAL_NAN_IMAGE = REAL / "sen1floods11_like" / "segmentation_test_input.tif"  # 1 band reflectance, ~174k NaN px
REAL_NAN_LABEL = REAL / "sen1floods11_like" / "segmentation_test_label.tif"  # int16 -1/0/1
REAL_DN_IMAGE = REAL / "regression_10band" / "regression_test_0_input.tif"   # HLS L30 bands x 10000
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def write_tif(path: Path, array: np.ndarray, dtype: str | None = None) -> None:
    """A north-up UTM GeoTIFF of ``array`` (C, H, W) or (H, W)."""
    array = array[None] if array.ndim == 2 else array
    dtype = dtype or str(array.dtype)
    transform = Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 5_200_000.0)
    with rasterio.open(path, "w", driver="GTiff", count=array.shape[0], height=array.shape[1], width=array.shape[2],
                       dtype=dtype, crs="EPSG:32610", transform=transform) as dst:
        dst.write(array.astype(dtype))


def scene_paths(root: Path, folder: str, i: int) -> tuple[Path, Path]:
    stem = f"subsetted_32x32_HLS.S30.T10BAD.2020{i + 1:03d}.v1.4"
    return root / folder / f"{stem}_merged.tif", root / folder / f"{stem}.mask.tif"


def write_scene(
    root: Path, folder: str, i: int, image: np.ndarray | None = None, mask: np.ndarray | None = None
) -> None:
    """Scene ``i`` of ``folder``: reflectance around the HLS means and a 0/1 mask with a -1 row, unless given."""
    rng = np.random.default_rng(i)
    image_path, mask_path = scene_paths(root, folder, i)
    if image is None:
        image = MEAN[:, None, None] * rng.uniform(0.7, 1.3, (6, 32, 32)).astype(np.float32)
    if mask is None:
        mask = rng.integers(0, 2, (32, 32)).astype(np.int16)
        mask[0] = -1
    write_tif(image_path, image)
    write_tif(mask_path, mask)


def make_root(root: Path, n_train: int = 4, n_test: int = 2) -> Path:
    for folder, n in (("training", n_train), ("validation", n_test)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            write_scene(root, folder, i)
    return root


def errors_of(root: Path, split: str = "test", **kwargs) -> str:
    with pytest.raises(DatasetFilesError) as info:
        HLSBurnScars(str(root), split, **HLS, **kwargs)
    return str(info.value)


def test_unreadable_files_are_all_named_in_one_error(tmp_path: Path) -> None:
    root = make_root(tmp_path / "d", n_test=3)
    broken_image = scene_paths(root, "validation", 0)[0]
    broken_image.write_bytes(b"this is not a GeoTIFF")
    truncated_mask = scene_paths(root, "validation", 2)[1]
    truncated_mask.write_bytes(truncated_mask.read_bytes()[:300])
    message = errors_of(root)
    assert "2 problem(s) in the test split" in message and str(root / "validation") in message
    assert f"{broken_image} cannot be read" in message and f"{truncated_mask} cannot be read" in message
    assert "re-download the dataset, or remove this scene" in message


def test_header_problems_are_collected_into_one_error(tmp_path: Path) -> None:
    root = make_root(tmp_path / "d", n_test=0)
    reflectance = np.full((6, 32, 32), 0.1, dtype=np.float32)
    labels = np.zeros((32, 32), dtype=np.int16)
    write_scene(root, "validation", 0, image=reflectance[:4])             # 4 bands for 6 configured
    write_scene(root, "validation", 1, mask=labels[:16, :16])             # mask of another size
    write_scene(root, "validation", 2, image=(reflectance * 10000).astype(np.int16))  # integer DN image
    write_scene(root, "validation", 3, mask=labels.astype(np.float32) + 0.5)  # float mask, not class ids
    write_scene(root, "validation", 4, mask=np.where(np.arange(32)[:, None] < 16, np.nan, labels + 1).astype(np.float32))  # ids, NaN
    write_scene(root, "validation", 5)                                    # a good one
    message = errors_of(root)
    assert message.startswith("4 problem(s) in the test split")
    paths = [scene_paths(root, "validation", i) for i in range(4)]
    assert f"{paths[0][0]} has 4 bands; dataset.bands lists 6" in message
    assert f"{paths[1][0]} is 32x32 px but its mask {paths[1][1].name} is 16x16" in message
    assert f"{paths[2][0]} is int16; images must be float reflectance" in message and "/ 10000" in message
    assert f"{paths[3][1]} has 1024 px that are not whole numbers; class ids are integers (NaN marks no label)" in message
    assert str(scene_paths(root, "validation", 4)[1]) not in message, "a float mask of class ids and NaN is accepted"
    with pytest.raises(ValueError, match="data_std.optical has 5 values for the 6 bands"):
        HLSBurnScars(str(root), "test", HLS["bands"], HLS["data_mean"], {"optical": [0.1] * 5})


def test_mask_values_outside_the_classes_name_file_values_and_fix(tmp_path: Path) -> None:
    root = make_root(tmp_path / "d", n_test=12)
    mask = np.zeros((32, 32), dtype=np.int16)
    mask[:5, 0], mask[9, 9] = 255, 2
    write_scene(root, "validation", 3, mask=mask)
    message = errors_of(root)
    assert message.startswith("1 problem(s)")
    bad_mask = scene_paths(root, "validation", 3)[1]
    assert f"{bad_mask} has values 2 (1 px), 255 (5 px) outside the classes 0..1" in message
    assert "ignore_index=255 when 255 marks no data" in message

    for i in range(12):  # many bad files: the first ones are listed, the others counted
        write_scene(root, "validation", i, mask=mask)
    message = errors_of(root)
    assert message.startswith("12 problem(s)") and "(and 2 more)" in message
    assert message.count("outside the classes") == 10


def test_an_empty_split_names_the_split_and_the_folder(tmp_path: Path) -> None:
    root = make_root(tmp_path / "d", n_train=1, n_test=0)
    message = errors_of(root, "test")
    assert f"The test split is empty: {root / 'validation'} holds no scene" in message
    assert "dataset.root_path" in message
    (root / "validation" / "chip_001.tif").write_bytes(b"")
    assert "it holds 1 other file(s), e.g. chip_001.tif" in errors_of(root, "test")
    message = errors_of(root, "train")
    assert f"The train split is empty: {root / 'training'} holds 1 scene(s)" in message
    assert "val_fraction=0.1" in message


def test_a_split_without_labelled_pixels_is_refused(tmp_path: Path) -> None:
    root = make_root(tmp_path / "d", n_test=0)
    write_scene(root, "validation", 0, mask=np.full((32, 32), -1, dtype=np.int16))
    nodata = np.full((6, 32, 32), -9999.0, dtype=np.float32)
    write_scene(root, "validation", 1, image=nodata)  # labels under image nodata only
    message = errors_of(root)
    assert f"The test split ({root / 'validation'}, 2 scenes) has no labelled pixel" in message
    assert "ignore_index=-1" in message


def test_nan_and_inf_pixels_are_nodata_and_reported_once_per_split(tmp_path: Path, caplog) -> None:
    root = make_root(tmp_path / "d", n_train=4, n_test=2)
    image_path = scene_paths(root, "validation", 0)[0]
    with rasterio.open(image_path, "r+") as dst:
        data = dst.read()
        data[2, 5, 7] = np.nan
        data[:, 20, :] = np.nan  # a whole row in every band: 32 pixels
        dst.write(data)
    for i in range(4):  # +inf in every training scene
        with rasterio.open(scene_paths(root, "training", i)[0], "r+") as dst:
            data = dst.read()
            data[4, 3, 3] = np.inf
            dst.write(data)
    with caplog.at_level(logging.WARNING):
        test = HLSBurnScars(str(root), "test", **HLS)
        train = HLSBurnScars(str(root), "train", **HLS)
    warnings = [r.getMessage() for r in caplog.records if "NaN or inf" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("test split: 33 image pixels in 1 of 2 files are NaN or inf")
    assert image_path.name in warnings[0]
    assert warnings[1].startswith("train split: 3 image pixels in 3 of 3 files")
    sample = test[[s for s, _, _ in test.scenes].index(image_path.name[: -len("_merged.tif")])]
    image = sample["image"]["optical"]
    assert torch.isfinite(image).all() and image[2, 0, 5, 7] == pytest.approx(MEAN[2])
    assert sample["target"][5, 7] == -1 and (sample["target"][20] == -1).all()
    assert torch.isfinite(train[0]["image"]["optical"]).all() and train[0]["target"][3, 3] == -1


@pytest.mark.skipif(not REAL_NAN_IMAGE.is_file(), reason="shared real data not present")
def test_real_chip_with_nan_nodata(tmp_path: Path, caplog) -> None:
    """A real reflectance chip whose left part is NaN (Sen1Floods11-like), its band as all six."""
    root = make_root(tmp_path / "d", n_test=0)
    with rasterio.open(REAL_NAN_IMAGE) as src:
        band = src.read(1)
    with rasterio.open(REAL_NAN_LABEL) as src:
        label = src.read(1)
    write_scene(root, "validation", 0, image=np.repeat(band[None], 6, axis=0), mask=label)
    with caplog.at_level(logging.WARNING):
        dataset = HLSBurnScars(str(root), "test", **HLS)
    n_nan = int(np.isnan(band).sum())
    assert n_nan > 100_000 and f"test split: {n_nan} image pixels in 1 of 1 files are NaN or inf" in caplog.text
    assert "far from the dataset statistics" not in caplog.text, "real reflectance is not taken for other units"
    sample = dataset[0]
    assert torch.isfinite(sample["image"]["optical"]).all()
    assert (sample["target"][torch.from_numpy(np.isnan(band))] == -1).all()


def test_digital_numbers_warn_with_the_scale_to_use(tmp_path: Path, caplog) -> None:
    root = make_root(tmp_path / "dn", n_test=3)
    for i in range(3):
        image_path = scene_paths(root, "validation", i)[0]
        with rasterio.open(image_path, "r+") as dst:
            dst.write(dst.read() * 10000)
    with caplog.at_level(logging.WARNING):
        HLSBurnScars(str(root), "test", **HLS)
    assert "test split: image values are far from the dataset statistics" in caplog.text
    assert "digital numbers" in caplog.text and "divide them by 10000" in caplog.text
    caplog.clear()
    dn_statistics = {k: {"optical": [v * 10000 for v in HLS[k]["optical"]]} for k in ("data_mean", "data_std")}
    with caplog.at_level(logging.WARNING):
        HLSBurnScars(str(make_root(tmp_path / "reflectance")), "test", HLS["bands"], **dn_statistics)
    assert "the images look 10000 times smaller than the statistics" in caplog.text
    caplog.clear()
    synthetic = generate_burn_scars(tmp_path / "syn", 6, 3, 64, seed=0)
    with caplog.at_level(logging.WARNING):
        HLSBurnScars(str(synthetic), "test", **HLS)
    assert "far from the dataset statistics" not in caplog.text


@pytest.mark.skipif(not REAL_DN_IMAGE.is_file(), reason="shared real data not present")
def test_real_hls_digital_numbers_warn(tmp_path: Path, caplog) -> None:
    """A real HLS L30 chip stored as reflectance x 10000 (bands 2-7 = blue..SWIR2) where reflectance is expected."""
    root = make_root(tmp_path / "d", n_test=0)
    with rasterio.open(REAL_DN_IMAGE) as src:
        image = src.read([2, 3, 4, 5, 6, 7])
    write_scene(root, "validation", 0, image=image, mask=(image[3] > 3000).astype(np.int16))
    with caplog.at_level(logging.WARNING):
        HLSBurnScars(str(root), "test", **HLS)
    assert "divide them by 10000" in caplog.text


def test_checks_are_memoised_per_file_identity(tmp_path: Path, caplog, capsys, monkeypatch) -> None:
    root = make_root(tmp_path / "d", n_test=16)
    image_path, mask_path = scene_paths(root, "validation", 1)
    with rasterio.open(image_path, "r+") as dst:
        data = dst.read()
        data[0, 0, 0] = np.nan
        dst.write(data)
    cache = tmp_path / "cache"
    HLSBurnScars(str(root), "test", cache_dir=str(cache), **HLS)
    assert "checking test files (once per file): 100%" in capsys.readouterr().err, "a progress bar the first time"
    memo = json.loads(next((cache / "checks").glob("validation-*.json")).read_text())
    assert len(memo["entries"]) == 16 and any(f["nonfinite"] == 1 for f in memo["entries"].values())

    opened: list[str] = []
    real_open = rasterio.open

    def counting_open(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", counting_open)
    with caplog.at_level(logging.WARNING):
        again = HLSBurnScars(str(root), "test", cache_dir=str(cache), **HLS)
    assert opened == [] and "1 image pixels in 1 of 16 files are NaN" in caplog.text, "a second job opens no file"
    assert "checking" not in capsys.readouterr().err
    assert torch.isfinite(again[1]["image"]["optical"]).all() and opened == [], "the check's decode is reused"

    bad = np.zeros((32, 32), dtype=np.int16)
    bad[3, 3] = 9
    write_tif(mask_path, bad)  # a replaced file is checked again, and only its scene
    opened.clear()
    with pytest.raises(DatasetFilesError, match=f"{mask_path} has values 9"):
        HLSBurnScars(str(root), "test", cache_dir=str(cache), **HLS)
    assert sorted(opened) == sorted([image_path.name, mask_path.name])


def test_nan_input_goes_through_the_float16_feature_cache(tmp_path: Path, caplog) -> None:
    """Frozen runs cache encoder features in float16: NaN input is reported as NaN input, the cache sees none."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=tiny_overrides(tmp_path / "syn", tmp_path / "wd"))
    builders.build_dataset(cfg, "test", CPU)  # generates the data
    for image_path in sorted((tmp_path / "syn" / "validation").glob("*_merged.tif"))[:2]:
        with rasterio.open(image_path, "r+") as dst:
            data = dst.read()
            data[:, 10:20, :] = np.nan
            dst.write(data)
    with caplog.at_level(logging.WARNING):
        test = builders.build_dataset(cfg, "test", CPU)
    assert "test split: 1280 image pixels in 2 of 6 files are NaN or inf" in caplog.text
    torch.manual_seed(0)
    model = builders.build_segmentor(cfg, "random", CPU).eval()
    cache = FeatureCache(tmp_path / "features", model.encoder, {"test": "nan input"}, CPU, precision="fp32",
                         dtype="float16", batch_size=3)
    tiles = cache.eval_tiles(test, "test", 32, 16, builders.cache_key(cfg, "test"))
    for i in range(len(tiles)):
        assert all(torch.isfinite(f.float()).all() for f in tiles[i]["features"])
