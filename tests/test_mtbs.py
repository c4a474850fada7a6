"""MTBS burn severity in the sig-gis PANGAEA fork's layout, read from generated files: samples of three frames
oldest first (the newest of the four dates left out), the split index files, the start-up checks that replace
the fork's silent pairing (unpaired images, mixed fires, bad names, bands, label values, split indices), and
the synthetic twin built through Hydra."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import rasterio
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from benchmark import builders
from benchmark.config_checks import config_problems
from benchmark.data.mtbs import FOLDER, MTBSBurnSeverity, list_samples, split_file
from benchmark.data.synthetic_mtbs import SyntheticMTBSBurnSeverity, generate_mtbs
from benchmark.data.validation import DatasetFilesError
from benchmark.distributed import DistContext
from conftest import REPO

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
CONFIG = OmegaConf.load(REPO / "configs/dataset/mtbs.yaml")
STATS = {key: OmegaConf.to_container(CONFIG[key]) for key in ("bands", "data_mean", "data_std")}
SIZES = {"num_train": 6, "num_test": 3, "img_size": 32, "seed": 0}  # 12 fires, 3 per region


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic fires in the fork's layout under ``<root>/mtbs_fires``, read as the real dataset."""
    root = tmp_path_factory.mktemp("mtbs") / "data"
    generate_mtbs(root, **SIZES)
    return root


def real(root: Path, split: str = "train") -> MTBSBurnSeverity:
    return MTBSBurnSeverity(str(root), split, **STATS)


def dated_images(root: Path, stem: str) -> list[Path]:
    """The images of fire ``stem``, oldest first by the date in their names (not by the loader's sorting)."""
    paths = (root / FOLDER / "data").glob(f"*/images/{stem}_*.tif")
    return sorted(paths, key=lambda p: datetime.strptime(p.stem.rsplit("_", 1)[1], "%Y%m%d"))


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_samples_are_the_three_oldest_frames_in_order(generated: Path) -> None:
    dataset = real(generated)
    ignored = 0
    for index in range(len(dataset)):
        sample = dataset[index]
        image, target = sample["image"]["optical"], sample["target"]
        assert image.shape == (6, 3, 32, 32) and image.dtype == torch.float32
        assert target.shape == (32, 32) and target.dtype == torch.int64
        assert set(target.unique().tolist()) <= set(range(7))
        ignored += int((target == 6).sum())
        files = dated_images(generated, sample["meta"]["stem"])
        assert len(files) == 4
        for t, path in enumerate(files[:3]):
            assert np.array_equal(image[:, t].numpy(), read(path)), f"frame {t} is not {path.name}"
        assert not np.array_equal(image[:, 2].numpy(), read(files[3])), "the newest date must be left out"
    assert ignored > 0, "the non-mapping area (6, ignored) is in the targets"


def test_splits_are_the_index_files_and_stems_the_fire_prefixes(generated: Path) -> None:
    samples = list_samples(generated / FOLDER)
    assert len(samples) == 12
    for split in ("train", "val", "test"):
        indices = np.load(split_file(generated / FOLDER, split))
        dataset = real(generated, split)
        assert len(dataset) == len(indices) == {"train": 6, "val": 3, "test": 3}[split]
        metas = [dataset[i]["meta"] for i in range(len(dataset))]
        assert [m["stem"] for m in metas] == [samples[i][0] for i in indices]
        assert [m["index"] for m in metas] == list(range(len(dataset)))
    assert {m["stem"][:2] for m in metas} <= {"WA", "CA", "ID", "TN"}


def test_missing_data_say_they_are_not_public_and_give_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetFilesError, match=rf"(?s){tmp_path}/{FOLDER} is missing. The data are not public.*"
                       r"splits/\{train,val,test\}.npy.*dataset.root_path=<folder holding mtbs_fires/>"):
        real(tmp_path)


def first_train_fire(root: Path) -> tuple[str, list[Path], Path]:
    samples = list_samples(root / FOLDER)
    return samples[int(np.load(split_file(root / FOLDER, "train"))[0])]


def remove_an_image(root: Path) -> str:
    _, images, _ = first_train_fire(root)
    images[1].unlink()
    return rf"{images[1].parent} holds 11 images and .*labels 3 labels"


def mix_two_fires(root: Path) -> str:
    prefix, images, _ = first_train_fire(root)
    images[1].rename(images[1].with_name(images[1].name.replace(prefix, prefix + "b")))  # sorts after the fire's files
    return rf"{images[1].parent}: sample \d+ groups .*which are not one fire's 4 dates \(prefixes differ\)"


def misname_a_date(root: Path) -> str:
    prefix, images, _ = first_train_fire(root)
    renamed = images[1].with_name(f"{prefix}_20161310.tif")  # month 13
    images[1].rename(renamed)
    return rf"{renamed}: an image name must end in _YYYYMMDD.tif"


def write_five_bands(root: Path) -> str:
    _, images, _ = first_train_fire(root)
    with rasterio.open(images[0]) as src:
        data, profile = src.read()[:5], src.profile
    profile.update(count=5)
    with rasterio.open(images[0], "w", **profile) as dst:
        dst.write(data)
    return rf"{images[0]} has 5 bands; dataset.bands lists 6"


def index_out_of_range(root: Path) -> str:
    np.save(split_file(root / FOLDER, "train"), np.array([0, 12]))
    return rf"{split_file(root / FOLDER, 'train')} holds 1 indices outside 0..11"


def overlap_train_and_test(root: Path) -> str:
    train = np.load(split_file(root / FOLDER, "train"))
    np.save(split_file(root / FOLDER, "test"), np.concatenate([np.load(split_file(root / FOLDER, "test")), train[:2]]))
    return rf"{split_file(root / FOLDER, 'train')} and {split_file(root / FOLDER, 'test')} share 2 sample indices"


def label_value_9(root: Path) -> str:
    _, _, label = first_train_fire(root)
    with rasterio.open(label) as src:
        data, profile = src.read(), src.profile
    data[0, 0, 0] = 9
    with rasterio.open(label, "w", **profile) as dst:
        dst.write(data)
    return rf"{label} has values 9 \(1 px\) outside the classes 0..6 and ignore_index=6"


@pytest.mark.parametrize("damage", [remove_an_image, mix_two_fires, misname_a_date, write_five_bands,
                                    index_out_of_range, overlap_train_and_test, label_value_9])
def test_damaged_files_are_named_with_the_fix(damage: Callable[[Path], str], generated: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(generated, root)
    expected = damage(root)
    with pytest.raises(DatasetFilesError, match=expected):
        real(root)


def compose_train(tmp_path: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"work_dir={tmp_path / 'wd'}", "cache=false"])


def test_both_configs_compose_and_build_through_hydra(generated: Path, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "dataset=synthetic_mtbs", f"dataset.root_path={tmp_path / 'syn'}", "dataset.img_size=32",
                        "dataset.num_train=4", "dataset.num_test=2")
    assert config_problems(cfg, check_work_dir=False) == []
    dataset = builders.build_dataset(cfg, "val", CPU)
    assert len(dataset) == 2 and dataset[0]["image"]["optical"].shape[1:] == (3, 32, 32)
    assert isinstance(dataset.dataset, SyntheticMTBSBurnSeverity)
    assert (tmp_path / "syn" / FOLDER / "Southern_Appalachia.geojson").is_file()
    real_cfg = compose_train(tmp_path, "dataset=mtbs", f"dataset.root_path={generated}")
    assert config_problems(real_cfg, check_work_dir=False) == []
    assert len(builders.build_dataset(real_cfg, "test", CPU)) == 3


def test_the_synthetic_scenes_fit_the_loader_s_crop(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dataset.img_size=600: the scenes must be 1 to 512 px"):
        SyntheticMTBSBurnSeverity(str(tmp_path), "train", **STATS, img_size=600)
    assert not any(tmp_path.iterdir())
