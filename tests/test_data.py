"""Band catalogue, HLS Burn Scars files, the synthetic generator and the dataset download path."""

from __future__ import annotations

import hashlib
import shutil
import socket
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from benchmark.data.bands import UnknownBandError, canonical_band_dict, resolve_band, wavelengths_um
from benchmark.data.hlsburnscars import DatasetFilesError, HLSBurnScars, pair_scenes, split_train_val
from benchmark.data.synthetic import SyntheticBurnScars, generate_burn_scars
from conftest import SHARED_REAL

HLS = {
    "bands": {"optical": ["B2", "B3", "B4", "B8A", "B11", "B12"]},
    "data_mean": {"optical": [0.033, 0.057, 0.059, 0.232, 0.197, 0.119]},
    "data_std": {"optical": [0.023, 0.027, 0.040, 0.078, 0.087, 0.072]},
}
REAL_MASK = SHARED_REAL / "terratorch" / "hls_burn_scars" / "subsetted_512x512_HLS.S30.T10TGS.2018285.v1.4.mask.tif"


def test_band_catalogue_resolves_aliases_and_rejects_unknown_names() -> None:
    assert resolve_band("nir_narrow").name == "B8A"
    assert resolve_band("B02").name == "B2"
    assert wavelengths_um(["B4", "VV"]) == [0.665, 3.75]
    with pytest.raises(UnknownBandError, match="Unknown band name 'B13'.*Known bands"):
        resolve_band("B13")
    with pytest.raises(UnknownBandError, match="sar band but is listed under 'optical'"):
        canonical_band_dict({"optical": ["B2", "VV"]})


def test_dataset_config_with_unknown_band_fails_clearly(tmp_path: Path) -> None:
    generate_burn_scars(tmp_path / "d", 4, 2, 32, seed=0)
    with pytest.raises(UnknownBandError, match="BLUEISH"):
        HLSBurnScars(str(tmp_path / "d"), "test", {"optical": ["BLUEISH", "B3", "B4", "B8A", "B11", "B12"]}, HLS["data_mean"], HLS["data_std"])


def test_synthetic_generator_is_deterministic_and_georeferenced(tmp_path: Path) -> None:
    def digest(root: Path) -> str:
        h = hashlib.sha256()
        for path in sorted(root.rglob("*.tif")):
            with rasterio.open(path) as src:
                h.update(path.name.encode() + src.read().tobytes())
        return h.hexdigest()

    a = generate_burn_scars(tmp_path / "a", 6, 2, 64, seed=3)
    b = generate_burn_scars(tmp_path / "b", 6, 2, 64, seed=3)
    c = generate_burn_scars(tmp_path / "c", 6, 2, 64, seed=4)
    assert digest(a) == digest(b) != digest(c)
    image_path = next((a / "training").glob("*_merged.tif"))
    with rasterio.open(image_path) as src:
        assert src.count == 6 and src.dtypes[0] == "float32"
        assert src.crs.to_epsg() == 32610 and src.res == (30.0, 30.0)
    with rasterio.open(str(image_path).replace("_merged.tif", ".mask.tif")) as src:
        assert src.dtypes[0] == "int16"


def test_synthetic_burn_scars_have_negative_nbr(tmp_path: Path) -> None:
    root = generate_burn_scars(tmp_path / "s", 16, 0, 96, seed=0)
    images, masks = [], []
    for stem, image_path, mask_path in pair_scenes(root / "training"):
        with rasterio.open(image_path) as src:
            images.append(src.read())
        with rasterio.open(mask_path) as src:
            masks.append(src.read(1))
    image, mask = np.stack(images), np.stack(masks)
    valid = (image != -9999).all(axis=1)
    nir, swir2 = image[:, 3], image[:, 5]
    nbr = (nir - swir2) / (nir + swir2 + 1e-6)
    burned, unburned = (mask == 1) & valid, (mask == 0) & valid
    assert 0.03 < burned.mean() < 0.3, "burn scars should cover a minority of pixels"
    assert np.median(nbr[burned]) < 0 < np.median(nbr[unburned])
    assert (mask == -1).any(), "clouds or nodata strips are masked -1"
    assert (image == -9999).any(), "some scenes carry -9999 nodata strips"


def test_scenes_pair_by_stem_and_split_is_deterministic(tmp_path: Path) -> None:
    root = generate_burn_scars(tmp_path / "d", 20, 3, 32, seed=0)
    scenes = pair_scenes(root / "training")
    for stem, image, mask in scenes:
        assert image.name == f"{stem}_merged.tif" and mask.name == f"{stem}.mask.tif"
    stems = [s for s, _, _ in scenes]
    train, val = split_train_val(stems, 0.1, seed=0)
    assert len(val) == 2 and not set(train) & set(val) and set(train) | set(val) == set(stems)
    assert split_train_val(list(reversed(stems)), 0.1, seed=0) == (train, val)
    datasets = {s: HLSBurnScars(str(root), s, **HLS) for s in ("train", "val", "test")}
    assert (len(datasets["train"]), len(datasets["val"]), len(datasets["test"])) == (18, 2, 3)


@pytest.mark.parametrize("n,seed", [(540, 23), (108, 23), (20, 0), (7, 5)])
def test_train_val_split_is_pangaeas(n: int, seed: int) -> None:
    """PANGAEA: train_test_split(arange(n), test_size=0.1, random_state=23) over image files sorted by name."""
    from sklearn.model_selection import train_test_split

    stems = [f"subsetted_512x512_HLS.S30.T{i:02d}SEH.2018{i:03d}.v1.4" for i in range(n)]
    files = sorted(f"{stem}_merged.tif" for stem in stems)
    train_idx, val_idx = train_test_split(list(range(n)), test_size=0.1, random_state=seed)
    expected = tuple(sorted(files[i].removesuffix("_merged.tif") for i in idx) for idx in (train_idx, val_idx))
    assert split_train_val(list(reversed(stems)), 0.1, seed) == expected
    assert split_train_val(stems, 0.1, seed) == expected


def test_image_without_mask_is_named(tmp_path: Path) -> None:
    root = generate_burn_scars(tmp_path / "d", 4, 2, 32, seed=0)
    mask = sorted((root / "validation").glob("*.mask.tif"))[0]
    mask.unlink()
    with pytest.raises(DatasetFilesError, match=f"image {mask.name.replace('.mask.tif', '_merged.tif')} has no mask"):
        HLSBurnScars(str(root), "test", **HLS)


def test_nodata_pixels_are_filled_with_the_mean_and_ignored(tmp_path: Path) -> None:
    root = generate_burn_scars(tmp_path / "d", 4, 1, 32, seed=0)
    image_path = next((root / "validation").glob("*_merged.tif"))
    with rasterio.open(image_path, "r+") as dst:
        data = dst.read()
        data[2, 5, 7] = -9999.0  # one band of one pixel missing; its mask still says 0/1
        dst.write(data)
    sample = HLSBurnScars(str(root), "test", **HLS)[0]
    assert sample["image"]["optical"].shape == (6, 1, 32, 32)
    assert sample["image"]["optical"][2, 0, 5, 7] == pytest.approx(HLS["data_mean"]["optical"][2])
    assert sample["target"][5, 7] == -1
    assert sample["target"].dtype == torch.int64


@pytest.mark.skipif(not REAL_MASK.is_file(), reason="shared real data not present")
def test_real_hls_mask_is_read_with_nodata_ignored(tmp_path: Path) -> None:
    """The real T10TGS label with a synthetic 6-band image under the same stem."""
    root = tmp_path / "hls"
    for folder in ("training", "validation"):
        (root / folder).mkdir(parents=True)
    shutil.copy(REAL_MASK, root / "validation" / REAL_MASK.name)
    with rasterio.open(REAL_MASK) as src:
        profile = src.profile | {"count": 6, "dtype": "float32", "nodata": -9999.0}
        mask = src.read(1)
    stem = REAL_MASK.name[: -len(".mask.tif")]
    with rasterio.open(root / "validation" / f"{stem}_merged.tif", "w", **profile) as dst:
        dst.write(np.full((6, 512, 512), 0.1, dtype=np.float32))
    sample = HLSBurnScars(str(root), "test", **HLS)[0]
    assert sample["meta"]["stem"] == stem
    assert torch.equal(sample["target"], torch.from_numpy(mask.astype(np.int64)))
    assert set(torch.unique(sample["target"]).tolist()) <= {-1, 0, 1}
    assert 0.1 < (sample["target"] == 1).float().mean() < 0.3  # 19 % burned per SOURCE.md


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hls_burn_scars.tar.gz"


def test_missing_root_offline_names_url_and_folder(tmp_path: Path) -> None:
    url = closed_port_url()
    with pytest.raises(DatasetFilesError) as info:
        HLSBurnScars(str(tmp_path / "absent"), "train", download_url=url, **HLS)
    message = str(info.value)
    assert url in message and str(tmp_path / "absent") in message and "training" in message
    with pytest.raises(DatasetFilesError, match="not found under"):
        HLSBurnScars(str(tmp_path / "absent"), "train", download_url=url, auto_download=False, **HLS)


def test_missing_root_is_downloaded_and_extracted(tmp_path: Path) -> None:
    source = generate_burn_scars(tmp_path / "src" / "hls_burn_scars", 5, 2, 32, seed=1)
    serve = tmp_path / "serve"
    serve.mkdir()
    with tarfile.open(serve / "hls_burn_scars.tar.gz", "w:gz") as tar:
        tar.add(source / "training", arcname="hls_burn_scars/training")
        tar.add(source / "validation", arcname="hls_burn_scars/validation")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(serve)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hls_burn_scars.tar.gz?download=true"
        dataset = HLSBurnScars(str(tmp_path / "data" / "HLSBurnScars"), "test", download_url=url, **HLS)
    finally:
        server.shutdown()
    assert len(dataset) == 2
    assert not (tmp_path / "data" / "hls_burn_scars.tar.gz").exists(), "the archive is removed after extraction"
    assert sorted(p.name for p in (tmp_path / "data" / "HLSBurnScars").iterdir()) == ["training", "validation"]


def test_synthetic_dataset_regenerates_when_settings_change_and_refuses_foreign_folders(tmp_path: Path) -> None:
    kwargs = dict(split="test", num_train=4, num_test=2, img_size=32, **HLS)
    first = SyntheticBurnScars(str(tmp_path / "syn"), **kwargs)
    assert len(first) == 2
    kwargs["num_test"] = 3
    assert len(SyntheticBurnScars(str(tmp_path / "syn"), **kwargs)) == 3
    foreign = tmp_path / "foreign"
    (foreign / "training").mkdir(parents=True)
    with pytest.raises(DatasetFilesError, match="not generated by the synthetic dataset"):
        SyntheticBurnScars(str(foreign), **kwargs)
