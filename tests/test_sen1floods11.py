"""Sen1Floods11: the published layout read from generated files, its start-up checks (missing files, a chip
without one of its files, wrong band counts, split lists), no-data handling, the download of what is
missing, and the multi-modal CROMA joint encoder learning on it end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import rasterio
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from benchmark import builders
from benchmark.data.sen1floods11 import SPLIT_FOLDER, Sen1Floods11, chip_file, read_split_list
from benchmark.data.synthetic_sen1floods11 import SyntheticSen1Floods11, generate_sen1floods11
from benchmark.data.validation import DatasetFilesError
from benchmark.distributed import DistContext
from conftest import REPO, TINY_VIT, run_benchmark, serve_folder
from test_model_runs import LEARN, finished

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
CONFIG = OmegaConf.load(REPO / "configs/dataset/sen1floods11.yaml")
STATS = {key: OmegaConf.to_container(CONFIG[key]) for key in ("bands", "data_mean", "data_std")}
SIZES = {"num_train": 6, "num_test": 4, "img_size": 32, "seed": 0}
TINY_CROMA = ["encoder.size=base", "encoder.input_size=32", "+encoder.embed_dim=32", "+encoder.depth=8",
              "+encoder.num_heads=2", "encoder.output_layers=[0,1,2,3]"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic chips in the published layout (train 6, val 4, test 4, Bolivia 2), read as the real dataset."""
    root = tmp_path_factory.mktemp("sen1floods11") / "data"
    generate_sen1floods11(root, **SIZES)
    return root


def real(root: Path, split: str = "train", **kwargs: Any) -> Sen1Floods11:
    return Sen1Floods11(str(root), split, **STATS, download_url=None, auto_download=False, **kwargs)


def copy_of(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    return copy


def test_splits_are_the_lists_and_samples_hold_both_modalities(generated: Path) -> None:
    sizes = {split: len(real(generated, split)) for split in ("train", "val", "test", "bolivia")}
    assert sizes == {"train": 6, "val": 4, "test": 4, "bolivia": 2}
    chips = read_split_list(generated / SPLIT_FOLDER / "flood_bolivia_data.csv")
    assert all(chip.startswith("Bolivia_") for chip in chips)
    assert any("-" in chip for chip in read_split_list(generated / SPLIT_FOLDER / "flood_train_data.csv")), "Sri-Lanka_..."
    sample = real(generated)[0]
    assert sample["image"]["optical"].shape == (13, 1, 32, 32) and sample["image"]["sar"].shape == (2, 1, 32, 32)
    assert sample["target"].dtype == torch.int64 and set(sample["target"].unique().tolist()) <= {-1, 0, 1}
    only_sar = Sen1Floods11(str(generated), "train", bands={"sar": ["VV", "VH"]}, data_mean={"sar": STATS["data_mean"]["sar"]},
                            data_std={"sar": STATS["data_std"]["sar"]}, download_url=None, auto_download=False)
    assert set(only_sar[0]["image"]) == {"sar"}


def test_s2_digital_numbers_and_s1_nan_are_read_as_the_files_hold_them(generated: Path) -> None:
    dataset = real(generated)
    for index, (chip, _, _) in enumerate(dataset.scenes):
        with rasterio.open(chip_file(generated, "optical", chip)) as src:
            optical = src.read()
        with rasterio.open(chip_file(generated, "sar", chip)) as src:
            sar = src.read()
        with rasterio.open(chip_file(generated, "label", chip)) as src:
            label = src.read(1)
        sample = dataset[index]
        assert optical.dtype == np.uint16 and np.array_equal(sample["image"]["optical"][:, 0].numpy(), optical.astype(np.float32))
        holes = np.isnan(sar).any(axis=0)
        if holes.any():
            mean = np.float32(STATS["data_mean"]["sar"][0])
            assert torch.all(sample["image"]["sar"][0, 0][torch.from_numpy(holes)] == mean)
            assert torch.all(sample["target"][torch.from_numpy(holes)] == -1)
            assert torch.equal(sample["target"][torch.from_numpy(~holes)], torch.from_numpy(label[~holes]).long())
            return
    pytest.fail("no generated chip has an S1 hole to check")


def test_missing_data_names_the_files_and_where_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(DatasetFilesError, match=r"lacks 4 file\(s\): v1.1/splits/flood_handlabeled/flood_train_data.csv.*gs://sen1floods11"):
        real(tmp_path / "empty")


def test_a_listed_chip_without_its_s2_file_is_named(generated: Path, tmp_path: Path) -> None:
    root = copy_of(generated, tmp_path)
    chip = real(root).scenes[2][0]
    chip_file(root, "optical", chip).unlink()
    with pytest.raises(DatasetFilesError, match=rf"lacks 1 file\(s\): v1.1/data/flood_events/HandLabeled/S2Hand/{chip}_S2Hand.tif"):
        real(root)


def test_wrong_band_count_and_malformed_split_lists_are_refused(generated: Path, tmp_path: Path) -> None:
    root = copy_of(generated, tmp_path)
    chip = real(root, "val").scenes[0][0]
    path = chip_file(root, "optical", chip)
    with rasterio.open(path) as src:
        data, profile = src.read()[:12], src.profile
    profile.update(count=12)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    with pytest.raises(DatasetFilesError, match=rf"{chip}_S2Hand.tif has 12 bands; dataset.bands lists 13"):
        real(root, "val")
    (root / SPLIT_FOLDER / "flood_test_data.csv").write_text("s1_file,label_file\n")
    with pytest.raises(DatasetFilesError, match="flood_test_data.csv line 1 is 's1_file,label_file'"):
        real(root, "test")


@pytest.fixture
def bucket(generated: Path) -> Iterator[str]:
    """The generated layout served over HTTP, as the bucket serves the real one."""
    with serve_folder(generated) as url:
        yield url


def test_missing_files_are_downloaded_and_a_failed_download_says_what_to_do(generated: Path, bucket: str, tmp_path: Path) -> None:
    root = tmp_path / "downloaded"
    dataset = Sen1Floods11(str(root), "test", **STATS, download_url=bucket)
    expected = real(generated, "test")
    assert [s[0] for s in dataset.scenes] == [s[0] for s in expected.scenes]
    for layer in ("optical", "sar", "label"):
        chip = dataset.scenes[-1][0]
        assert chip_file(root, layer, chip).read_bytes() == chip_file(generated, layer, chip).read_bytes()
    chip_file(root, "sar", dataset.scenes[0][0]).unlink()
    Sen1Floods11(str(root), "test", **STATS, download_url=bucket)  # fetches only what is missing
    assert chip_file(root, "sar", dataset.scenes[0][0]).is_file()
    with pytest.raises(DatasetFilesError, match=r"download from http://127.0.0.1:9 failed .* gs://sen1floods11"):
        Sen1Floods11(str(tmp_path / "offline"), "test", **STATS, download_url="http://127.0.0.1:9")


def test_croma_joint_reads_both_modalities(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[
            "dataset=synthetic_sen1floods11", f"dataset.root_path={tmp_path / 'data'}", "dataset.img_size=32",
            "dataset.num_train=4", "dataset.num_test=2", "encoder=croma_joint", *TINY_CROMA, "mode=random",
            f"work_dir={tmp_path / 'wd'}", "cache=false",
        ])
    sample = builders.build_dataset(cfg, "val", CPU)[0]
    assert set(sample["image"]) == {"optical", "sar"} and sample["image"]["optical"].shape[0] == 12  # B10 dropped
    torch.manual_seed(0)
    encoder = builders.build_segmentor(cfg, "random", CPU).encoder.eval()
    batch = {m: x[None] for m, x in sample["image"].items()}
    with torch.no_grad():
        both = encoder(batch)[-1]
        for modality in batch:
            blanked = encoder({**batch, modality: torch.zeros_like(batch[modality])})[-1]
            assert not torch.allclose(both, blanked), f"the features do not depend on {modality}"


@pytest.mark.parametrize("encoder,tiny,read", [
    ("dofa", TINY_VIT, {"optical": 13, "sar": 2}),  # DOFA takes the dataset's bands: SAR through its wavelength
    ("croma_sar", TINY_CROMA, {"sar": 2}),
    ("ssl4eo_mae_sar", TINY_VIT, {"sar": 2}),
])
def test_sar_encoders_run_on_sen1floods11(encoder: str, tiny: list[str], read: dict[str, int], tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[
            "dataset=synthetic_sen1floods11", f"dataset.root_path={tmp_path / 'data'}", "dataset.img_size=32",
            "dataset.num_train=4", "dataset.num_test=2", f"encoder={encoder}", *tiny, "mode=random",
            f"work_dir={tmp_path / 'wd'}", "cache=false",
        ])
    sample = builders.build_dataset(cfg, "val", CPU)[0]
    assert {m: x.shape[0] for m, x in sample["image"].items()} == read
    model = builders.build_segmentor(cfg, "random", CPU).eval()
    with torch.no_grad():
        logits = model({m: x[None] for m, x in sample["image"].items()}, (32, 32))
    assert logits.shape == (1, 2, 32, 32) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_croma_joint_learns_on_synthetic_sen1floods11(tmp_path: Path) -> None:
    run_benchmark([
        "dataset=synthetic_sen1floods11", f"dataset.root_path={tmp_path / 'data'}", "dataset.img_size=64",
        "dataset.num_train=16", "dataset.num_test=6", "encoder=croma_joint", *TINY_CROMA, "decoder=seg_upernet",
        "decoder.channels=16", "mode=random", "batch_size=4", "test_batch_size=2", "num_workers=0",
        "test_num_workers=0", f"work_dir={tmp_path / 'wd'}", *LEARN,
    ])
    results = finished(tmp_path / "wd")
    assert results["config"]["dataset"] == "synthetic_sen1floods11"
    output = tmp_path / "bolivia.json"
    run_benchmark(["--config-name=test", f"ckpt_dir={results['run_dir']}", "split=bolivia", f"output_path={output}"])
    evaluation = json.loads(output.read_text())
    assert evaluation["split"] == "bolivia" and sum(map(sum, evaluation["metrics"]["confusion_matrix"])) > 0


def test_the_synthetic_dataset_regenerates_only_when_its_settings_change(tmp_path: Path) -> None:
    def build(**sizes: int) -> SyntheticSen1Floods11:
        return SyntheticSen1Floods11(str(tmp_path / "syn"), "train", **STATS, download_url=None, auto_download=False, **sizes)

    first = build(num_train=3, num_test=2, img_size=32)
    stamp = chip_file(tmp_path / "syn", "sar", first.scenes[0][0]).stat().st_mtime_ns
    assert chip_file(tmp_path / "syn", "sar", build(num_train=3, num_test=2, img_size=32).scenes[0][0]).stat().st_mtime_ns == stamp
    assert len(build(num_train=5, num_test=2, img_size=32)) == 5
