"""DOFA and Prithvi encoders through their configs, and scripts/download_weights.py.

Checkpoints are written in the families' release layouts from a model's own (random) weights and
loaded back as the builders do (build, then ``load_pretrained``); nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from benchmark.models.encoders.vit import resize_pos_embed, sincos_pos_embed_3d, tokens_to_map
from benchmark.models.encoders.weights import CheckpointLayoutError
from release_layouts import build_encoder, release_checkpoint, write_release_file

REPO = Path(__file__).resolve().parents[1]
HLS_BANDS = ["B2", "B3", "B4", "B8A", "B11", "B12"]
DATASET_BANDS = {"optical": HLS_BANDS, "sar": ["VV", "VH"]}
TINY = {"embed_dim": 64, "depth": 2, "num_heads": 4, "output_layers": [0, 1]}


def build(name: str, pretrained: bool, dataset_bands: dict = DATASET_BANDS, **overrides):
    """Instantiate configs/encoder/NAME.yaml in eval mode, under a dataset with ``dataset_bands``."""
    encoder = OmegaConf.merge(OmegaConf.load(REPO / "configs" / "encoder" / f"{name}.yaml"), overrides)
    root = OmegaConf.create({"dataset": {"bands": dataset_bands}, "encoder": encoder})
    return build_encoder(root.encoder, pretrained)


def load_error(name: str, path: Path, **overrides) -> str:
    """The message of the CheckpointLayoutError raised by loading ``path``."""
    with pytest.raises(CheckpointLayoutError) as info:
        build(name, pretrained=True, encoder_weights=str(path), **overrides)
    return str(info.value)


def sample(encoder, batch: int = 1) -> dict[str, torch.Tensor]:
    """Random (B, C, T, H, W) input of the encoder's bands, frames and size."""
    frames, size = getattr(encoder, "num_frames", 1), encoder.input_size
    return {m: torch.randn(batch, len(b), frames, size, size) for m, b in encoder.input_bands.items()}


def assert_same(reference, loaded, inputs) -> None:
    expected, actual = reference.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    with torch.no_grad():
        for a, b in zip(reference(inputs), loaded(inputs), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    "name, layout",
    [
        ("dofa", None),
        ("prithvi", "flat"),
        ("prithvi", "prefixed"),
        ("prithvi_eo_v2_300", "prefixed"),
        ("prithvi_eo_v2_600", "prefixed"),
    ],
)
def test_release_checkpoint_round_trip(name: str, layout: str | None, tmp_path: Path) -> None:
    reference = build(name, pretrained=False, **TINY)
    path = write_release_file(name, reference, tmp_path / "release.pt", layout)
    loaded = build(name, pretrained=True, encoder_weights=str(path), **TINY)
    assert_same(reference, loaded, sample(reference, batch=2))


@pytest.mark.parametrize("name", ["dofa", "prithvi"])
def test_only_blocks_up_to_the_last_output_are_loaded(name: str, tmp_path: Path) -> None:
    reference = build(name, pretrained=False, **TINY)
    path = write_release_file(name, reference, tmp_path / "release.pt")
    shallow = build(name, pretrained=True, encoder_weights=str(path), **{**TINY, "output_layers": [0]})
    assert len(shallow.blocks) == 1
    assert getattr(shallow, "norm", None) is None  # DOFA's final norm belongs to the unbuilt last block
    inputs = sample(reference)
    with torch.no_grad():
        assert torch.equal(shallow(inputs)[0], reference(inputs)[0])


def test_prithvi_multi_temporal_input(tmp_path: Path) -> None:
    overrides = {**TINY, "num_frames": 3}
    reference = build("prithvi", pretrained=False, **overrides)
    path = write_release_file("prithvi", reference, tmp_path / "release.pt", layout="flat")
    loaded = build("prithvi", pretrained=True, encoder_weights=str(path), **overrides)
    # The 3-frame release table is used as is: no adaptation.
    assert torch.equal(loaded.pos_embed, torch.load(path)["pos_embed"])
    inputs = sample(loaded, batch=2)
    with torch.no_grad():
        outputs = loaded(inputs)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 64, 14, 14)] * 2  # one map per frame
    assert loaded.output_dims == [64] * 2
    assert_same(reference, loaded, inputs)
    with pytest.raises(ValueError, match="num_frames"):
        loaded({"optical": torch.randn(1, 6, 1, 224, 224)})


@pytest.mark.parametrize(
    "name, eps",
    [
        # Prithvi-EO-1.0: plain nn.LayerNorm in the release code (NASA-IMPACT/hls-foundation-os
        # hls-gfm/models_mae.py) and in PANGAEA's prithvi_encoder.py.
        ("prithvi", 1e-5),
        # Prithvi-EO-2.0: IBM's prithvi_mae.py released with the weights builds PrithviViT with
        # partial(torch.nn.LayerNorm, eps=1e-6) (TerraTorch PR #275 and the Hugging Face model repos).
        ("prithvi_eo_v2_300", 1e-6),
        ("prithvi_eo_v2_600", 1e-6),
    ],
)
def test_prithvi_layer_norm_eps_follows_the_release_code(name: str, eps: float) -> None:
    encoder = build(name, pretrained=False, **TINY)
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * TINY["depth"]  # norm1 and norm2 of every block; no final norm is built
    assert {m.eps for m in norms} == {eps}


def test_frame_major_tokens_become_one_map_per_frame() -> None:
    batch, frames, (h, w), dim = 2, 3, (2, 4), 5
    tokens = torch.randn(batch, frames * h * w, dim)
    maps = tokens_to_map(tokens, (h, w), num_frames=frames)
    assert maps.shape == (batch, frames, dim, h, w)
    for f, i, j, c in [(0, 0, 0, 0), (1, 1, 2, 3), (2, 1, 3, 4)]:
        assert maps[1, f, c, i, j] == tokens[1, f * h * w + i * w + j, c]
    assert tokens_to_map(tokens[:, : h * w], (h, w)).shape == (batch, dim, h, w)


def test_sincos_pos_embed_3d_matches_the_formula() -> None:
    dim, grid = 32, (2, 3, 4)
    table = sincos_pos_embed_3d(dim, grid)
    assert table.shape == (1, 1 + 2 * 3 * 4, dim)
    assert not table[0, 0].any()  # zero cls slot

    def sincos(width: int, position: int) -> list[float]:
        freqs = [1 / 10000 ** (k / (width / 2)) for k in range(width // 2)]
        return [math.sin(position * f) for f in freqs] + [math.cos(position * f) for f in freqs]

    t, r, c = 1, 2, 3  # token 1 + t*12 + r*4 + c: channels are 6/16 column, 6/16 row, 4/16 frame
    expected = sincos(12, c) + sincos(12, r) + sincos(8, t)
    torch.testing.assert_close(table[0, 1 + t * 12 + r * 4 + c], torch.tensor(expected))


def test_dofa_pos_embed_interpolated_from_the_file(tmp_path: Path) -> None:
    reference = build("dofa", pretrained=False, **TINY)
    checkpoint = release_checkpoint("dofa", reference)
    checkpoint["pos_embed"] = torch.randn_like(checkpoint["pos_embed"])  # tell the file's table apart
    torch.save(checkpoint, tmp_path / "release.pth")
    weights = str(tmp_path / "release.pth")

    same_size = build("dofa", pretrained=True, encoder_weights=weights, **TINY)
    assert torch.equal(same_size.pos_embed, checkpoint["pos_embed"])

    larger = build("dofa", pretrained=True, encoder_weights=weights, input_size=512, **TINY)
    assert larger.pos_embed.shape == (1, 1 + 32 * 32, 64)
    assert torch.equal(larger.pos_embed, resize_pos_embed(checkpoint["pos_embed"], (14, 14), (32, 32)))
    assert larger.pos_embed[0, 1:].abs().sum(dim=1).min() > 0  # no zeroed rows
    with torch.no_grad():
        assert [tuple(o.shape) for o in larger(sample(larger))] == [(1, 64, 32, 32)] * 2


def test_dofa_takes_any_band_list_with_the_same_file(tmp_path: Path) -> None:
    weights = str(write_release_file("dofa", build("dofa", pretrained=False, **TINY), tmp_path / "release.pth"))

    def dofa(bands: dict):
        return build("dofa", pretrained=True, dataset_bands=bands, encoder_weights=weights, **TINY)

    rgb = dofa({"optical": ["B4", "B3", "B2"]})
    assert rgb.input_bands == {"optical": ["B4", "B3", "B2"]}
    with torch.no_grad():
        assert [tuple(o.shape) for o in rgb(sample(rgb))] == [(1, 64, 14, 14)] * 2
    # SAR is stacked after optical whatever the order of the dataset's modalities.
    sar_first, optical_first = dofa({"sar": ["VV"], "optical": ["B2"]}), dofa({"optical": ["B2"], "sar": ["VV"]})
    inputs = sample(optical_first)
    with torch.no_grad():
        for a, b in zip(sar_first(inputs), optical_first(inputs), strict=True):
            assert torch.equal(a, b)


def test_prithvi_pos_embed_recomputed_for_frames_and_grid(tmp_path: Path, caplog) -> None:
    reference = build("prithvi", pretrained=False, **TINY)
    path = write_release_file("prithvi", reference, tmp_path / "release.pt", layout="flat")
    file_table = torch.load(path)["pos_embed"]  # 3 frames of 14x14
    with caplog.at_level(logging.INFO, logger="benchmark.models.encoders.prithvi"):
        one_frame = build("prithvi", pretrained=True, encoder_weights=str(path), **TINY)
    assert sum("recomputing" in r.getMessage() for r in caplog.records) == 1
    # One frame of the 3-frame table is the first frame's rows: the recomputed table agrees with the file.
    assert torch.equal(one_frame.pos_embed, file_table[:, : 1 + 14 * 14])

    larger = build("prithvi", pretrained=True, encoder_weights=str(path), input_size=512, **TINY)
    assert torch.equal(larger.pos_embed, sincos_pos_embed_3d(64, (1, 32, 32)))
    assert larger.pos_embed[0, 1:].abs().sum(dim=1).min() > 0
    with torch.no_grad():
        assert [tuple(o.shape) for o in larger(sample(larger))] == [(1, 64, 32, 32)] * 2


@pytest.mark.parametrize(
    "name, shape",
    [
        ("dofa", (1, 768, 14, 14)),
        ("prithvi", (1, 768, 14, 14)),
        ("prithvi_eo_v2_300", (1, 1024, 14, 14)),
        ("prithvi_eo_v2_600", (1, 1280, 16, 16)),  # ViT-H/14: 224 px -> 16x16 tokens
    ],
)
def test_full_size_random_init_needs_no_file(name: str, shape: tuple[int, ...], tmp_path: Path) -> None:
    absent = tmp_path / "absent.pt"
    encoder = build(name, pretrained=False, encoder_weights=str(absent))
    assert not absent.exists()
    with torch.no_grad():
        outputs = encoder(sample(encoder))
    assert [tuple(o.shape) for o in outputs] == [shape] * 4
    assert encoder.output_dims == [shape[1]] * 4


# ------------------------------------------------------------------------------- wrong files


def test_dofa_file_given_to_prithvi(tmp_path: Path) -> None:
    path = write_release_file("dofa", build("dofa", pretrained=False, **TINY), tmp_path / "dofa.pth")
    assert re.search(r"expected a Prithvi MAE checkpoint.*DOFA", load_error("prithvi", path, **TINY))


def test_prithvi_file_given_to_dofa(tmp_path: Path) -> None:
    path = write_release_file("prithvi", build("prithvi", pretrained=False, **TINY), tmp_path / "p.pt", "flat")
    assert re.search(r"expected a DOFA checkpoint.*Prithvi", load_error("dofa", path, **TINY))


def test_truncated_file(tmp_path: Path) -> None:
    path = write_release_file("prithvi", build("prithvi", pretrained=False, **TINY), tmp_path / "p.pt")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "truncated" in load_error("prithvi", path, **TINY)


def test_file_with_a_missing_key(tmp_path: Path) -> None:
    checkpoint = release_checkpoint("dofa", build("dofa", pretrained=False, **TINY))
    del checkpoint["blocks.0.attn.qkv.bias"]
    torch.save(checkpoint, tmp_path / "dofa.pth")
    assert "missing keys (1): blocks.0.attn.qkv.bias" in load_error("dofa", tmp_path / "dofa.pth", **TINY)


def test_prithvi_file_for_another_band_count(tmp_path: Path) -> None:
    four_bands = build("prithvi", pretrained=False, input_bands={"optical": ["B2", "B3", "B4", "B8A"]}, **TINY)
    path = write_release_file("prithvi", four_bands, tmp_path / "p.pt")
    assert re.search(r"takes 4 bands.*configured with 6", load_error("prithvi", path, **TINY))


# ------------------------------------------------------------------------- download_weights.py


@pytest.fixture
def download_weights():
    spec = importlib.util.spec_from_file_location("download_weights", REPO / "scripts" / "download_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server(tmp_path: Path, monkeypatch):
    """A local HTTP server over ``tmp_path / "served"``; yields (folder, base URL)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    served = tmp_path / "served"
    served.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_url_over_http(download_weights, http_server, tmp_path: Path, capsys) -> None:
    served, base = http_server
    (served / "weights.pt").write_bytes(b"0123456789" * 1000)
    output = tmp_path / "out" / "copy.pt"
    assert download_weights.main(["--url", f"{base}/weights.pt", "--output", str(output)]) == 0
    assert output.read_bytes() == (served / "weights.pt").read_bytes()
    assert str(output) in capsys.readouterr().out

    assert download_weights.main(["--url", f"{base}/absent.pt", "--output", str(tmp_path / "x.pt")]) == 1
    assert "404" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_download_by_config_name(download_weights, http_server, tmp_path: Path, capsys) -> None:
    served, base = http_server
    (served / "local.pth").write_bytes(b"weights")
    configs = tmp_path / "configs"
    configs.mkdir()
    # Interpolations (resolved only in a full run) must not get in the way.
    (configs / "local.yaml").write_text(
        f"encoder_weights: ./pretrained_models/local.pth\ndownload_url: {base}/local.pth\n"
        "input_bands: ${dataset.bands}\n"
    )
    (configs / "drive.yaml").write_text(
        "encoder_weights: ./pretrained_models/drive.pth\n"
        "download_url: https://drive.google.com/file/d/abc/view\n"
    )
    dest = tmp_path / "pretrained"
    code = download_weights.main(["local", "drive", "--config-dir", str(configs), "--dest", str(dest)])
    assert code == 1  # drive failed, local was still fetched
    assert (dest / "local.pth").read_bytes() == b"weights"
    err = capsys.readouterr().err
    assert "Google Drive" in err and str(dest / "drive.pth") in err
    assert not (dest / "drive.pth").exists()

    assert download_weights.main(["nosuch", "--config-dir", str(configs)]) == 1
    assert "Known encoders: drive, local" in capsys.readouterr().err


def test_download_from_hugging_face(download_weights, tmp_path: Path, monkeypatch, capsys) -> None:
    calls = []

    def fake_hf_hub_download(repo_id, filename, revision, repo_type):
        calls.append((repo_id, revision, filename, repo_type))
        cached = tmp_path / "hub" / filename
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(filename.encode())
        return str(cached)

    monkeypatch.setattr(download_weights, "hf_hub_download", fake_hf_hub_download)
    dest = tmp_path / "pretrained"
    assert download_weights.main(["dofa", "prithvi", "prithvi_eo_v2_600", "--dest", str(dest)]) == 0
    assert calls == [
        ("XShadow/DOFA", "main", "DOFA_ViT_base_e100.pth", None),
        ("ibm-nasa-geospatial/Prithvi-EO-1.0-100M", "main", "Prithvi_EO_V1_100M.pt", None),
        ("ibm-nasa-geospatial/Prithvi-EO-2.0-600M", "main", "Prithvi_EO_V2_600M.pt", None),
    ]
    assert (dest / "Prithvi_EO_V1_100M.pt").read_bytes() == b"Prithvi_EO_V1_100M.pt"
    out = capsys.readouterr().out
    assert all(str(dest / f) in out for f in ["DOFA_ViT_base_e100.pth", "Prithvi_EO_V2_600M.pt"])

    # A second run finds the files in place and does not download again.
    assert download_weights.main(["dofa", "--dest", str(dest)]) == 0
    assert len(calls) == 3
