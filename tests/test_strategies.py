"""Fine-tuning strategies: learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.engine.schedules import cosine_warmup, multi_step_lr


def lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[list[float]]:
    """The LR of every parameter group at iterations 0..steps-1 (the schedule steps once per iteration)."""
    seen = []
    for _ in range(steps):
        seen.append([group["lr"] for group in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return seen


def optimizer(lrs_per_group: tuple[float, ...] = (1.0,)) -> torch.optim.Optimizer:
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs_per_group]
    return torch.optim.SGD(groups, lr=lrs_per_group[0])


def test_cosine_warmup_values_at_chosen_steps() -> None:
    # 100 iterations, 10 of warm-up from 0.001 x LR; cosine over the remaining 90 down to 0.
    seen = lrs(cosine_warmup(optimizer((1.0, 0.5)), total_iters=100, warmup_fraction=0.1), 100)
    assert seen[0] == pytest.approx([0.001, 0.0005])
    assert seen[5][0] == pytest.approx(0.001 + 0.999 * 5 / 10)
    assert seen[10] == pytest.approx([1.0, 0.5])  # the peak, where warm-up ends
    assert seen[55][0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))  # half-way down: 0.5
    assert seen[99][0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert all(a[0] >= b[0] for a, b in zip(seen[10:], seen[11:]))  # never rises after the peak


def test_cosine_warmup_resumes_where_it_stopped() -> None:
    first = cosine_warmup(optimizer(), total_iters=50)
    lrs(first, 20)
    resumed = cosine_warmup(optimizer(), total_iters=50)
    resumed.optimizer.load_state_dict(first.optimizer.state_dict())  # as a resumed run loads both
    resumed.load_state_dict(first.state_dict())
    assert lrs(resumed, 30) == lrs(first, 30)


def test_schedules_refuse_fractions_outside_the_run() -> None:
    with pytest.raises(ValueError, match="warmup_fraction"):
        cosine_warmup(optimizer(), total_iters=10, warmup_fraction=1.0)
    with pytest.raises(ValueError, match="milestones"):
        multi_step_lr(optimizer(), total_iters=10, milestones=(0.5, 1.2))


def tiny_model(tmp_path, mode: str, *extra: str):
    from hydra import compose, initialize_config_dir

    from benchmark import builders
    from benchmark.distributed import DistContext
    from conftest import REPO, tiny_overrides
    from test_pipeline import tiny_weights_file

    weights = tiny_weights_file(tmp_path / "mae.pth")
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=tiny_overrides(tmp_path / "d", tmp_path / "w") + [f"mode={mode}", f"encoder.encoder_weights={weights}", *extra])
    cpu = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    return cfg, builders.build_segmentor(cfg, mode, cpu)


def gradients_after_a_step(model) -> set[str]:
    """Names of the encoder parameters that receive a gradient from one training step."""
    model.train()
    image = {"optical": torch.randn(2, len(model.encoder.input_bands["optical"]), 1, 32, 32)}
    model(image, (32, 32)).sum().backward()
    return {n for n, p in model.encoder.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_partial_trains_only_the_last_blocks_and_what_follows(tmp_path) -> None:
    _, model = tiny_model(tmp_path, "partial", "unfreeze_last=2")  # 4 blocks: 2 and 3 train
    trained = gradients_after_a_step(model)
    assert trained and all(n.startswith(("blocks.2.", "blocks.3.")) for n in trained)
    assert {n.split(".")[1] for n in trained} == {"2", "3"}
    assert all(p.grad is not None for p in model.decoder.parameters() if p.requires_grad)
    assert set(model.trainable_state_dict()) == {"decoder", "encoder"}


def test_partial_refuses_more_blocks_than_the_encoder_has(tmp_path) -> None:
    with pytest.raises(ValueError, match="unfreeze_last=5: SSL4EOMAE has 4 blocks; use 1..4"):
        tiny_model(tmp_path, "partial", "unfreeze_last=5")


def test_layer_wise_decay_gives_each_depth_its_learning_rate(tmp_path) -> None:
    from benchmark import builders

    cfg, model = tiny_model(tmp_path, "unfrozen", "optimizer.lr=1e-3", "encoder_lr_scale=0.5", "encoder_lr_decay=0.75")
    optimizer = builders.build_optimizer(cfg, model)
    decoder, *encoder = optimizer.param_groups
    assert decoder["lr"] == pytest.approx(1e-3)
    by_depth = {g["depth"]: g["lr"] for g in encoder}
    # 4 blocks: embeddings (depth 0) 0.5e-3 x 0.75^5, block i (depth i+1) x 0.75^(4-i); no final norm in MAE features
    assert by_depth == pytest.approx({d: 0.5e-3 * 0.75 ** (5 - d) for d in range(5)})
    covered = {id(p) for g in encoder for p in g["params"]}
    assert covered == {id(p) for p in model.encoder.parameters() if p.requires_grad}
    names = {id(p): n for n, p in model.encoder.named_parameters()}
    assert all(names[id(p)].startswith("blocks.3.") for g in encoder if g["depth"] == 4 for p in g["params"])
    assert any(names[id(p)] == "patch_embed.proj.weight" for g in encoder if g["depth"] == 0 for p in g["params"])


@pytest.mark.slow
def test_a_partial_run_completes_and_records_its_mode(synthetic_root, tmp_path) -> None:
    import json

    from conftest import only_run_dir, run_benchmark, tiny_overrides
    from test_pipeline import tiny_weights_file

    weights = tiny_weights_file(tmp_path / "mae.pth")
    run_benchmark(tiny_overrides(synthetic_root, tmp_path / "wd") + ["mode=partial", "unfreeze_last=1", f"encoder.encoder_weights={weights}", "task.trainer.n_epochs=1"])
    results = json.loads((only_run_dir(tmp_path / "wd") / "results.json").read_text())
    assert results["status"] == "completed" and results["config"]["mode"] == "partial"
    assert results["cost"]["trainable_params"] < results["cost"]["total_params"]
    assert results["config"]["strategy"] == {"unfreeze_last": 1, "encoder_lr_scale": 1.0}


def test_progressive_unfreezes_one_depth_per_epoch_from_the_top(tmp_path) -> None:
    from benchmark import builders

    cfg, model = tiny_model(tmp_path, "progressive", "progressive.head_epochs=1", "progressive.epochs_per_block=1")
    optimizer = builders.build_optimizer(cfg, model)
    learnable = [p for p in model.parameters() if p.requires_grad]  # all but the fixed sin-cos pos_embed
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(learnable) == len(list(model.parameters())) - 1
    expected = [set(), {"3"}, {"2", "3"}, {"1", "2", "3"}, {"0", "1", "2", "3"}]
    for epoch, blocks in enumerate(expected):
        model.zero_grad(set_to_none=True)
        assert model.set_epoch(epoch) is not None  # every epoch here changes what trains
        trained = gradients_after_a_step(model)
        assert {n.split(".")[1] for n in trained if n.startswith("blocks.")} == blocks, epoch
        assert ("patch_embed.proj.weight" in trained) == (epoch >= 5)
    model.zero_grad(set_to_none=True)
    model.set_epoch(5)
    assert "patch_embed.proj.weight" in gradients_after_a_step(model)
    assert not model.encoder.pos_embed.requires_grad  # a fixed table stays fixed
    assert model.set_epoch(6) is None  # nothing left to unfreeze


def test_freeze_encoder_norm_keeps_layer_norms_as_released_while_the_rest_trains(tmp_path) -> None:
    from benchmark.models.encoder_layers import norm_layers

    _, model = tiny_model(tmp_path, "unfrozen", "freeze_encoder_norm=true")
    norm_params = {f"{name}.{p}" for name, m in model.encoder.named_modules() if m in norm_layers(model.encoder) for p, _ in m.named_parameters()}
    assert norm_params, "the tiny MAE has LayerNorms"
    trained = gradients_after_a_step(model)
    assert trained and not trained & norm_params
    assert "blocks.0.attn.qkv.weight" in trained
    assert all(not m.training for m in norm_layers(model.encoder)) and model.encoder.training


def test_freeze_encoder_norm_keeps_batchnorm_statistics() -> None:
    from benchmark.models.decoders.unet import UNetDecoder
    from benchmark.models.encoders.unet import UNetEncoder
    from benchmark.models.segmentor import Segmentor

    encoder = UNetEncoder(input_bands={"optical": ["B2", "B3"]}, input_size=32, topology=[4, 8], patch_size=4)
    model = Segmentor(encoder, UNetDecoder(encoder.output_dims, num_classes=2), "unfrozen", freeze_norm=True)
    before = {name: b.clone() for name, b in model.encoder.named_buffers()}
    model.train()
    model({"optical": torch.randn(2, 2, 1, 32, 32) * 5 + 3}, (32, 32)).sum().backward()
    assert all(torch.equal(before[name], b) for name, b in model.encoder.named_buffers() if "running" in name)
    batch_norms = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batch_norms and all(m.weight.grad is None for m in batch_norms)
    assert any(p.grad is not None for p in model.encoder.parameters())


@pytest.mark.parametrize("mode", ["frozen", "lora", "random"])
def test_freeze_encoder_norm_is_refused_where_it_would_do_nothing(mode: str) -> None:
    from test_baselines import composed

    from benchmark.config_checks import config_problems

    problems = config_problems(composed([f"mode={mode}", "freeze_encoder_norm=true", "encoder=prithvi"]), check_work_dir=False)
    assert [p for p in problems if p.startswith(f"freeze_encoder_norm=true: mode={mode}")], problems


def test_each_mode_records_the_fine_tuning_settings_it_used(tmp_path) -> None:
    from benchmark.rundir import strategy

    cfg, _ = tiny_model(tmp_path, "frozen")
    assert strategy(cfg, "frozen") == {}
    assert strategy(cfg, "partial") == {"unfreeze_last": 2, "encoder_lr_scale": 1.0}
    assert strategy(cfg, "progressive") == {"progressive.head_epochs": 2, "progressive.epochs_per_block": 1, "encoder_lr_scale": 1.0}
    assert strategy(cfg, "lora") == {"lora.rank": 8, "lora.alpha": 16, "lora.dropout": 0.0, "lora.mlp": False, "encoder_lr_scale": 1.0}
    cfg.encoder_lr_decay, cfg.freeze_encoder_norm = 0.75, True
    assert strategy(cfg, "unfrozen") == {"encoder_lr_scale": 1.0, "encoder_lr_decay": 0.75, "freeze_encoder_norm": True}


def test_the_report_shows_each_mode_s_settings_and_a_dash_where_a_mode_uses_none() -> None:
    from pathlib import Path

    from benchmark.report.runs import NOT_USED, Group, Run, mark_differences
    from benchmark.results import RunConfig

    def group(mode: str, strategy: dict) -> Group:
        config = RunConfig(dataset="d", encoder="e", decoder="x", mode=mode, seed=0, strategy=strategy)
        return Group(config, [Run(Path(mode), "completed", {})])

    groups = [group("frozen", {}), group("partial", {"unfreeze_last": 2, "encoder_lr_scale": 1.0}), group("unfrozen", {"encoder_lr_scale": 0.1})]
    mark_differences(groups)
    assert [g.settings for g in groups] == [
        {"unfreeze_last": NOT_USED, "encoder_lr_scale": NOT_USED},
        {"unfreeze_last": "2", "encoder_lr_scale": "1"},
        {"unfreeze_last": NOT_USED, "encoder_lr_scale": "0.1"},
    ]


@pytest.mark.slow
def test_a_progressive_run_under_torchrun_trains_the_top_blocks_first(synthetic_root, tmp_path) -> None:
    from conftest import only_run_dir, run_benchmark, tiny_overrides

    from benchmark.engine.checkpoint import load_checkpoint

    _, released = tiny_model(tmp_path, "frozen")  # the same tiny weights file, as released
    weights = tmp_path / "mae.pth"
    run_benchmark(tiny_overrides(synthetic_root, tmp_path / "wd") + [
        "mode=progressive", "progressive.head_epochs=1", "progressive.epochs_per_block=1", f"encoder.encoder_weights={weights}",
        "task.trainer.n_epochs=3",
    ], nproc=2)
    run_dir = only_run_dir(tmp_path / "wd")
    log = (run_dir / "train.log").read_text()
    assert "the decoder trains; the encoder is frozen" in log
    assert "the decoder and the encoder from block 3 up train" in log and "from block 2 up train" in log
    trained = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]["encoder"]
    changed = {name.split(".")[1] for name, value in released.encoder.state_dict().items()
               if name.startswith("blocks.") and not torch.equal(value, trained[name])}
    assert changed == {"2", "3"}, "epoch 2 trains block 3, epoch 3 blocks 2 and 3; blocks 0 and 1 wait"
    assert torch.equal(released.encoder.state_dict()["patch_embed.proj.weight"], trained["patch_embed.proj.weight"])
