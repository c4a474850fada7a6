"""HLS Burn Intensity: the hub's layout read from generated files (frames oldest first, NaN severity ignored),
the split derived from the case list when no split lists exist, the start-up checks, and the download of
the hub's zips. Also: both multi-temporal synthetic twins are deterministic."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from omegaconf import OmegaConf

from benchmark.data.burnintensity import CASE_LIST, FRAMES, SPLITS, HLSBurnIntensity, case_files, read_split
from benchmark.data.synthetic_burnintensity import generate_burnintensity
from benchmark.data.synthetic_mtbs import generate_mtbs
from benchmark.data.validation import DatasetFilesError
from conftest import REPO, serve_folder

CONFIG = OmegaConf.load(REPO / "configs/dataset/hlsburnintensity.yaml")
STATS = {key: OmegaConf.to_container(CONFIG[key]) for key in ("bands", "data_mean", "data_std")}
SIZES = {"num_train": 6, "num_test": 3, "img_size": 32, "seed": 0}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic cases in the hub's layout (train 6, val 3, test 3), with split lists."""
    root = tmp_path_factory.mktemp("burnintensity") / "data"
    generate_burnintensity(root, **SIZES)
    return root


def real(root: Path, split: str = "train", **kwargs: Any) -> HLSBurnIntensity:
    return HLSBurnIntensity(str(root), split, **{"download_url": None, "auto_download": False, **STATS, **kwargs})


def copy_of(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "copy"))


def rewrite(path: Path, change: Any, **profile: Any) -> None:
    """Rewrite a GeoTIFF with ``change(data)`` as its data (and ``profile`` updates)."""
    with rasterio.open(path) as src:
        data, meta = src.read(), {**src.profile, **profile}
    data = change(data)
    meta["count"] = data.shape[0]
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(data)


def test_samples_stack_pre_during_post_oldest_first_and_nan_severity_is_ignored(generated: Path) -> None:
    dataset = real(generated, "val")
    assert len(dataset) == 3 and dataset.frames == len(FRAMES) == 3
    sample = dataset[1]
    case = sample["meta"]["stem"]
    image, target = sample["image"]["optical"].numpy(), sample["target"].numpy()
    assert image.shape == (6, 3, 32, 32) and image.dtype == np.float32 and target.dtype == np.int64
    frames, label = case_files(generated, case)
    for t, path in enumerate(frames):  # frame t is the file of FRAMES[t]: pre, during, post
        with rasterio.open(path) as src:
            np.testing.assert_array_equal(image[:, t], src.read())
    with rasterio.open(label) as src:
        severity = src.read(1)
    assert np.isnan(severity).any() and severity.dtype == np.float32
    np.testing.assert_array_equal(target, np.where(np.isnan(severity), -1, severity).astype(np.int64))
    assert set(np.unique(target)) <= {-1, 0, 1, 2, 3, 4} and len(set(np.unique(target)) - {-1, 0}) >= 1


def test_split_lists_are_read_and_tiff_files_too(generated: Path, tmp_path: Path) -> None:
    assert {split: len(real(generated, split)) for split in SPLITS} == {"train": 6, "val": 3, "test": 3}
    root = copy_of(generated, tmp_path)
    case = read_split(root / "test.txt")[0]
    for path in (*case_files(root, case)[0], case_files(root, case)[1]):
        path.rename(path.with_suffix(".tiff"))
    dataset = real(root, "test")
    assert dataset.scenes[0][1][0].name == f"HLS_{case}.tiff" and dataset[0]["image"]["optical"].shape[1] == 3


def test_without_split_lists_the_split_is_derived_once_from_the_case_list(generated: Path, tmp_path: Path) -> None:
    root = copy_of(generated, tmp_path)
    for split in SPLITS:
        (root / f"{split}.txt").unlink()
    cases = [line for line in (root / CASE_LIST).read_text().splitlines()[1:]]
    missing = cases[-1]  # a listed case without its files is left out
    case_files(root, missing)[0][1].unlink()
    splits = {split: [s[0] for s in real(root, split).scenes] for split in SPLITS}
    # 11 cases: ceil(11 / 3) = 4 for test, ceil(7 / 10) = 1 for val
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "val": 1, "test": 4}
    assert sorted(sum(splits.values(), [])) == sorted(cases[:-1])
    written = (root / "test.txt").read_text()
    assert real(root, "test").scenes[0][0] == splits["test"][0] and (root / "test.txt").read_text() == written


def test_missing_data_and_partial_split_lists_name_the_fix(generated: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetFilesError, match=r"not found under .*empty.*pre.zip, during.zip and post.zip"):
        real(tmp_path / "empty")
    root = copy_of(generated, tmp_path)
    (root / "val.txt").unlink()
    with pytest.raises(DatasetFilesError, match="only some of train.txt, val.txt, test.txt"):
        real(root)
    (root / "val.txt").write_text("HLS_not_a_case.tif\n")
    with pytest.raises(DatasetFilesError, match=r"val.txt lists cases whose files are missing .*HLS_not_a_case.tif"):
        real(root, "val")
    (root / "val.txt").write_text("BS_a.tif\n")
    with pytest.raises(DatasetFilesError, match=r"val.txt line 1 is 'BS_a.tif'"):
        real(root, "val")


def test_wrong_band_count_and_bad_severity_values_are_named(generated: Path, tmp_path: Path) -> None:
    root = copy_of(generated, tmp_path)
    case = read_split(root / "test.txt")[0]
    frames, label = case_files(root, case)
    rewrite(frames[2], lambda data: data[:5])
    with pytest.raises(DatasetFilesError, match=rf"(?s)post frame.*HLS_{case}.tif has 5 bands; dataset.bands lists 6"):
        real(root, "test")
    rewrite(frames[2], lambda data: np.concatenate([data, data[:1]]))
    rewrite(label, lambda data: np.where(np.isnan(data), 2.5, data))
    with pytest.raises(DatasetFilesError, match=rf"BS_{case}.tif has \d+ px that are not whole numbers"):
        real(root, "test")
    rewrite(label, lambda data: np.full_like(data, 7))
    with pytest.raises(DatasetFilesError, match=rf"BS_{case}.tif has values 7 \(1024 px\) outside the classes 0..4"):
        real(root, "test")


def zipped_like_the_hub(generated: Path, folder: Path) -> Path:
    """The hub's files: the case list and one zip per frame (its files inside a folder of the frame's name)."""
    folder.mkdir()
    shutil.copy(generated / CASE_LIST, folder / CASE_LIST)
    for frame in FRAMES:
        with zipfile.ZipFile(folder / f"{frame}.zip", "w") as archive:
            for path in sorted((generated / frame).iterdir()):
                archive.write(path, f"{frame}/{path.name}")
    return folder


def test_the_hub_files_are_downloaded_extracted_and_split(generated: Path, tmp_path: Path) -> None:
    with serve_folder(zipped_like_the_hub(generated, tmp_path / "hub")) as url:
        root = tmp_path / "downloaded"
        dataset = HLSBurnIntensity(str(root), "test", **STATS, download_url=url)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == sorted(
        [CASE_LIST, *FRAMES, *(f"{s}.txt" for s in SPLITS)])
    assert len(dataset) == 4  # 12 cases: a third for test
    case = dataset.scenes[0][0]
    for ours, theirs in zip(case_files(root, case)[0], case_files(generated, case)[0]):
        assert ours.read_bytes() == theirs.read_bytes()
    with pytest.raises(DatasetFilesError, match=r"download failed .*Download BS_files_raw.csv, pre.zip"):
        HLSBurnIntensity(str(tmp_path / "offline"), "test", **STATS, download_url="http://127.0.0.1:9")


@pytest.mark.parametrize("generate", [generate_burnintensity, generate_mtbs])
def test_the_synthetic_twins_are_the_same_for_the_same_seed(generate: Any, tmp_path: Path) -> None:
    first, again, other = (generate(tmp_path / name, **{**SIZES, "seed": seed}) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    files = sorted(p.relative_to(first) for p in first.rglob("*.tif"))
    assert files and files == sorted(p.relative_to(again) for p in again.rglob("*.tif"))

    def pixels(root: Path) -> list[np.ndarray]:
        arrays = []
        for name in files:
            with rasterio.open(root / name) as src:
                arrays.append(src.read())
        return arrays

    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(pixels(first), pixels(again)))
    assert not all(np.array_equal(a, b, equal_nan=True) for a, b in zip(pixels(first), pixels(other)))
