"""Segmentation decoders built from their configs, and scripts/model_cost.py.

Widths are tiny so that the whole file runs in well under a minute on a 2-core CPU; the encoder-side
channel counts and token grids are the real ones (ViT-S/B/L/H, 14x14, CROMA's 15x15, non-square).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from benchmark.builders import check_train_batch
from benchmark.distributed import DistContext
from benchmark.engine.metrics import segmentation_metrics
from benchmark.models.decoders.fcn import FCN
from benchmark.models.decoders.muster import MUSTER
from benchmark.models.decoders.skip_attention import SkipAttentionBlock, window_mask
from benchmark.models.decoders.upernet import UPerNet
from benchmark.models.encoders.ssl4eo import SSL4EOMAE
from benchmark.models.segmentor import Segmentor

ROOT = Path(__file__).resolve().parents[1]

# variant id -> (decoder config, overrides that shrink its widths)
VARIANTS = {
    "linear": ("seg_linear", {}),
    "fcn": ("seg_fcn", {"channels": 16}),
    "fcn_pixel_shuffle": ("seg_fcn", {"channels": 16, "upsample": "pixel_shuffle"}),
    "upernet": ("seg_upernet", {"channels": 16}),
    "segformer": ("seg_segformer", {"channels": 16}),
    "muster": ("seg_muster", {"channels": 16, "embed_dim": 32, "num_heads": [4, 4, 2, 2]}),
}
WITH_DROPOUT = [name for name in VARIANTS if name != "linear"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These many small ops run faster on one thread than two threads contending on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_decoder(variant: str, in_dims, num_classes: int = 3, patch_size: int = 16, **overrides):
    """Instantiate configs/decoder/<name>.yaml as run.py does: ``in_dims`` from the encoder."""
    name, tiny = VARIANTS[variant]
    cfg = OmegaConf.create(
        {
            "dataset": {"num_classes": num_classes},
            "encoder": {"patch_size": patch_size},
            "decoder": OmegaConf.load(ROOT / "configs" / "decoder" / f"{name}.yaml"),
        }
    )
    cfg.decoder = OmegaConf.merge(cfg.decoder, {**tiny, **overrides})
    return instantiate(cfg.decoder, in_dims=list(in_dims), _convert_="all")


def assert_all_parameters_learn(module: torch.nn.Module) -> None:
    missing = [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"no gradient reaches {missing}"


# (encoder dim, token grid, output size): every ViT width, the usual grids, a non-square grid, an output
# size that is no multiple of the grid, and a large grid (at a narrow width: only the grid matters there)
CASES = [
    (384, (14, 14), (224, 224)),
    (768, (15, 15), (120, 120)),
    (1024, (8, 12), (128, 192)),
    (1280, (8, 8), (100, 100)),
    (384, (14, 20), (224, 320)),
    (64, (32, 32), (256, 256)),
]


@pytest.mark.parametrize("dim,grid,output_size", CASES, ids=[f"{d}-{g[0]}x{g[1]}" for d, g, _ in CASES])
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_shape_and_gradients(variant, dim, grid, output_size):
    torch.manual_seed(0)
    # stochastic depth may drop a whole branch for the whole batch, leaving it without gradient this step
    overrides = {"drop_path_rate": 0.0} if variant == "muster" else {}
    decoder = build_decoder(variant, [dim] * 4, **overrides).train()
    features = [torch.randn(2, dim, *grid) for _ in range(4)]
    logits = decoder(features, output_size)
    assert logits.shape == (2, 3, *output_size)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.randint(0, 3, (2, *output_size))).backward()
    assert_all_parameters_learn(decoder)


@pytest.mark.parametrize("variant", VARIANTS)
def test_end_to_end_with_a_tiny_ssl4eo_encoder(variant):
    """Image -> real (tiny) SSL4EO MAE ViT -> decoder, non-square input; gradients reach both."""
    torch.manual_seed(0)
    encoder = SSL4EOMAE(
        {"optical": ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]},
        input_size=64, embed_dim=32, depth=4, num_heads=2, output_layers=[0, 1, 2, 3],
    )
    overrides = {"drop_path_rate": 0.0} if variant == "muster" else {}  # see test_logits_shape_and_gradients
    decoder = build_decoder(variant, encoder.output_dims, patch_size=16, **overrides)
    model = Segmentor(encoder, decoder, "random").train()
    logits = model({"optical": torch.randn(2, 13, 1, 64, 96)}, (64, 96))
    assert logits.shape == (2, 3, 64, 96)
    F.cross_entropy(logits, torch.randint(0, 3, (2, 64, 96))).backward()
    assert_all_parameters_learn(model)


def synthetic_batch(num_classes: int = 3, dim: int = 32, grid: int = 8, patch: int = 8):
    """Token features that encode a blob-like class map (4 layers, each its own noisy class embedding)."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, num_classes, (2, 1, grid // 2, grid // 2), generator=g).float()
    tokens = F.interpolate(coarse, scale_factor=2, mode="nearest").long()[:, 0]
    features = []
    for _ in range(4):
        embedding = torch.randn(num_classes, dim, generator=g)
        noise = 0.5 * torch.randn(2, grid, grid, dim, generator=g)
        features.append((embedding[tokens] + noise).permute(0, 3, 1, 2))
    target = tokens.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)
    return features, target


def miou(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    index = target.flatten() * num_classes + logits.argmax(1).flatten()
    confusion = torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)
    return segmentation_metrics(confusion, [str(k) for k in range(num_classes)])["mIoU"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_learns_a_synthetic_class_map(variant):
    """A head that cannot learn, or squashes its logits, does not reach 0.9 mIoU in the step budget."""
    torch.manual_seed(0)
    features, target = synthetic_batch()
    decoder = build_decoder(variant, [32] * 4, patch_size=8)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=3e-3)
    decoder.train()
    for _ in range(60):
        optimizer.zero_grad()
        F.cross_entropy(decoder(features, target.shape[-2:]), target).backward()
        optimizer.step()
    with torch.no_grad():
        score = miou(decoder.eval()(features, target.shape[-2:]), target, 3)
    assert score >= 0.9, f"{variant} reached mIoU {score:.3f} only"


@pytest.mark.parametrize("variant", VARIANTS)
def test_eval_is_deterministic_and_logits_are_raw(variant):
    torch.manual_seed(0)
    decoder = build_decoder(variant, [32] * 4).eval()
    features = [torch.randn(2, 32, 6, 6) for _ in range(4)]
    with torch.no_grad():
        first, second = decoder(features, (96, 96)), decoder(features, (96, 96))
    assert torch.equal(first, second)
    assert (first < 0).any(), "logits are never negative: an activation sits on the logits"
    assert not torch.allclose(first.sum(dim=1), torch.ones(2, 96, 96)), "logits are probabilities (softmax)"


@pytest.mark.parametrize("variant", WITH_DROPOUT)
def test_dropout_is_active_in_training_only(variant):
    torch.manual_seed(0)
    decoder = build_decoder(variant, [32] * 4, dropout=0.5).train()
    features = [torch.randn(2, 32, 6, 6) for _ in range(4)]
    with torch.no_grad():
        assert not torch.equal(decoder(features, (96, 96)), decoder(features, (96, 96)))


# (grid side, perturbed token, rows/columns it may influence) with 4x4 windows shifted by 2: the shift
# wraps rows/columns 0-1 round to the far border, where they must stay apart from what they meet there
# (on the 6x6 grid, padded to 8x8, that is the padding and rows/columns 4-5)
SHIFTED = [(8, 0, slice(0, 2)), (6, 0, slice(0, 2)), (6, 5, slice(2, 6))]


@pytest.mark.parametrize("side,token,region", SHIFTED, ids=["8x8", "6x6-padded-first", "6x6-padded-last"])
def test_shifted_window_attention_stays_inside_its_region(side, token, region):
    torch.manual_seed(0)
    block = SkipAttentionBlock(8, 2, window_size=4, shift=True, mlp_ratio=2, drop_path=0.0).eval()
    x, skip = torch.randn(1, side, side, 8), torch.randn(1, side, side, 8)
    changed = x.clone()
    changed[0, token, token] += torch.randn(8)  # not a constant: LayerNorm would cancel it
    with torch.no_grad():
        moved = (block(changed, skip) - block(x, skip)).abs().sum(-1)[0] > 1e-6
    expected = torch.zeros(side, side, dtype=torch.bool)
    expected[region, region] = True
    assert torch.equal(moved, expected)


def test_window_padding_is_masked():
    """A 6x6 grid with 4x4 windows is padded to 8x8: the partial windows must equal the same tokens
    processed on their own (no attention to the padding)."""
    torch.manual_seed(0)
    block = SkipAttentionBlock(8, 2, window_size=4, shift=False, mlp_ratio=2, drop_path=0.0).eval()
    x, skip = torch.randn(2, 6, 6, 8), torch.randn(2, 6, 6, 8)
    with torch.no_grad():
        whole = block(x, skip)
        torch.testing.assert_close(whole[:, 4:, 4:], block(x[:, 4:, 4:], skip[:, 4:, 4:]))
        torch.testing.assert_close(whole[:, :4, 4:], block(x[:, :4, 4:], skip[:, :4, 4:]))


def test_muster_heads_are_clipped_to_divide_the_stage_widths():
    muster = MUSTER([24] * 4, 2, embed_dim=24)  # stage widths 24, 12, 6, 3
    assert [stage.blocks[0].attn.num_heads for stage in muster.stages] == [24, 12, 6, 3]
    with pytest.raises(ValueError, match="divisible by 8"):
        MUSTER([20] * 4, 2, embed_dim=20)
    with pytest.raises(ValueError, match="divisible by 8"):
        MUSTER([18] * 4, 2)  # the default embed_dim is twice the encoder width: 36


def test_fcn_pixel_shuffle_needs_the_patch_size():
    with pytest.raises(ValueError, match="patch_size"):
        FCN([32] * 4, 2, upsample="pixel_shuffle")


def test_model_cost_prints_a_row_per_decoder(capsys):
    spec = importlib.util.spec_from_file_location("model_cost", ROOT / "scripts" / "model_cost.py")
    model_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model_cost)
    decoders = ["seg_linear", "seg_fcn", "seg_upernet", "seg_segformer", "seg_muster"]
    model_cost.main(
        ["--encoder", "ssl4eo_mae_optical", "--decoders", *decoders, "--input-size", "64", "--override",
         "encoder.embed_dim=32", "encoder.depth=4", "encoder.num_heads=2", "encoder.output_layers=[0,1,2,3]"]
    )
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| seg_")]
    assert [row[0].strip() for row in rows] == decoders
    for row in rows:
        encoder_gflops, decoder_gflops, total_gflops = (float(cell) for cell in row[-3:])
        assert encoder_gflops > 0 and decoder_gflops > 0 and total_gflops > 0


def test_upernet_with_batch_norm_refuses_one_sample_per_process_before_training() -> None:
    one, two = (DistContext(rank=0, world_size=n, local_rank=0, device=torch.device("cpu")) for n in (1, 2))
    features = [torch.randn(1, 32, 4, 4) for _ in range(4)]
    batch_norm = UPerNet([32] * 4, num_classes=2, channels=16)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        batch_norm.train()(features, (64, 64))  # what the check saves the user from, mid-run
    for ctx in (one, two):  # plain BatchNorm sees only its own process's samples
        with pytest.raises(ValueError, match=r"at least 2 samples per BatchNorm step.*decoder.norm=group"):
            check_train_batch(OmegaConf.create({"batch_size": 1}), SimpleNamespace(decoder=batch_norm), ctx)
    check_train_batch(OmegaConf.create({"batch_size": 2}), SimpleNamespace(decoder=batch_norm), one)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(UPerNet([32] * 4, num_classes=2, channels=16))
    check_train_batch(OmegaConf.create({"batch_size": 1}), SimpleNamespace(decoder=synced), two)
    with pytest.raises(ValueError, match=r"over 1 process\(es\)"):
        check_train_batch(OmegaConf.create({"batch_size": 1}), SimpleNamespace(decoder=synced), one)
    group_norm = UPerNet([32] * 4, num_classes=2, channels=16, norm="group")
    check_train_batch(OmegaConf.create({"batch_size": 1}), SimpleNamespace(decoder=group_norm), one)
    assert group_norm.train()(features, (64, 64)).shape == (1, 2, 64, 64)


def test_muster_masked_attention_weights_are_zero_not_subnormal() -> None:
    """Masked logits must give exact zeros: subnormal weights (Swin's -100 gives exp(-100) = 4e-44) make every
    product with them take the CPU's slow path (scripts/denormal_check.py measures it)."""
    grid, window, shifts = (14, 14), (12, 12), (6, 6)  # a ViT-B/16 at 224 px: padded, shifted, masked windows
    mask = window_mask(grid, (24, 24), window, shifts, torch.device("cpu"))
    weights = torch.softmax(torch.randn(mask.shape) + mask, dim=-1)
    assert (weights == 0).any(), "the windows are masked"
    subnormal = (weights != 0) & (weights.abs() < torch.finfo(torch.float32).tiny)
    assert not subnormal.any()
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1]))  # no row is all masked


def test_muster_attention_broadcasts_the_window_mask_over_the_batch() -> None:
    torch.manual_seed(0)
    block = SkipAttentionBlock(dim=16, num_heads=2, window_size=4, shift=True, mlp_ratio=2.0, drop_path=0.0).eval()
    x, skip = torch.randn(3, 6, 6, 16), torch.randn(3, 6, 6, 16)
    with torch.no_grad():
        together = block(x, skip)
        alone = torch.cat([block(x[i:i + 1], skip[i:i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-5)  # each image's windows see their own mask
