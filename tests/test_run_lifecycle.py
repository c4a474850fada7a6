"""A run folder's life: bad settings stopped before work, best.pt from the first validation, restarts that
leave the folder as an uninterrupted run would, per-rank random states, resume on another world size."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from hydra.utils import instantiate
from omegaconf import OmegaConf

from benchmark import builders, failures, pipeline
from benchmark.distributed import DistContext, all_gather_object, process_seed
from benchmark.engine.checkpoint import load_checkpoint, seed_everything
from benchmark.engine.trainer import Trainer
from benchmark.rundir import save_config
from conftest import only_run_dir, run_benchmark, tiny_overrides
from test_protocol import CPU, compose_run

pytestmark = pytest.mark.slow


class ScriptedEvaluator:
    """Stands in for the validation evaluator: returns the given mIoU values in turn."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def evaluate(self, model: torch.nn.Module, desc: str = "") -> dict:
        value = self.values.pop(0)
        return {"mIoU": value, "IoU": {"a": value}}


@pytest.mark.parametrize("values,best_epoch", [
    ([math.nan, math.nan, math.nan], 1),  # no number at all: best.pt still comes from the first validation
    ([math.nan, 0.4, math.nan], 2),  # a number beats NaN, a later NaN beats nothing
])
def test_first_validation_writes_best_pt_even_when_its_metric_is_nan(
    synthetic_root: Path, tmp_path: Path, values: list[float], best_epoch: int
) -> None:
    cfg = compose_run(synthetic_root, tmp_path / "wd", "task.trainer.n_epochs=3")
    torch.manual_seed(0)
    model = builders.build_segmentor(cfg, "random", CPU)
    loader = builders.train_loader(cfg, CPU, builders.build_dataset(cfg, "train", CPU))
    optimizer = builders.build_optimizer(cfg, model)
    scheduler = instantiate(cfg.lr_scheduler)(optimizer, total_iters=3 * len(loader))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trainer = Trainer(
        model, torch.nn.CrossEntropyLoss(ignore_index=-1), optimizer, scheduler, loader,
        ScriptedEvaluator(values), CPU, run_dir, n_epochs=3,
    )
    trainer.fit()
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["epoch"] + 1 == trainer.best_epoch == best_epoch
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_restart_after_a_kill_before_last_pt_leaves_the_folder_as_an_uninterrupted_run(synthetic_root: Path, tmp_path: Path) -> None:
    args = tiny_overrides(synthetic_root, tmp_path / "wd") + ["task.trainer.n_epochs=2"]
    run_benchmark(args + [f"run_dir={tmp_path / 'straight'}"])
    interrupted = tmp_path / "interrupted"
    shutil.copytree(tmp_path / "straight", interrupted)
    # as if killed after the first validation but before the first last.pt, one write cut short
    (interrupted / "checkpoints" / "last.pt").unlink()
    (interrupted / "results.json").unlink()
    lines = (interrupted / "metrics.jsonl").read_text().splitlines()
    (interrupted / "metrics.jsonl").write_text(lines[0] + "\n")
    (interrupted / "checkpoints" / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    (interrupted / "checkpoints" / "best.pt").write_bytes(b"stale")  # must be replaced, not kept

    restarted_run = run_benchmark(args + [f"run_dir={interrupted}", "resume=true"])
    assert "resume=true: no earlier checkpoint of this job, starting" in restarted_run.stdout
    epochs = [json.loads(line)["epoch"] for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2], "no epoch is logged twice"
    assert not list(interrupted.rglob(".*.tmp")), "remains of interrupted writes are removed"
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())
    restarted = json.loads((interrupted / "results.json").read_text())
    assert restarted["status"] == "completed" and restarted["best_epoch"] == straight["best_epoch"]
    # same machine, same process count, same computations: the metrics agree exactly, best.pt is the new one
    assert restarted["val"] == straight["val"]
    assert restarted["test"]["confusion_matrix"] == straight["test"]["confusion_matrix"]
    assert load_checkpoint(interrupted / "checkpoints" / "best.pt")["epoch"] + 1 == straight["best_epoch"]


def test_resume_with_another_number_of_processes_is_refused(synthetic_root: Path, tmp_path: Path) -> None:
    args = tiny_overrides(synthetic_root, tmp_path / "wd") + ["task.trainer.n_epochs=1", f"run_dir={tmp_path / 'run'}"]
    run_benchmark(args)
    (tmp_path / "run" / "results.json").unlink()  # interrupted before the test
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["world_size"] == 1 and len(state["rng"]) == 1
    result = run_benchmark(args + ["resume=true", "task.trainer.n_epochs=2"], nproc=2, check=False)
    assert result.returncode != 0
    assert "written by a run of 1 process(es); this one has 2" in result.stdout + result.stderr


def test_bad_settings_stop_the_run_before_a_run_folder_exists(synthetic_root: Path, tmp_path: Path) -> None:
    args = tiny_overrides(synthetic_root, tmp_path / "wd") + ["task.trainer.n_epochs=0", "batch_size=-1"]
    result = run_benchmark(args, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "task.trainer.n_epochs=0" in output and "batch_size=-1" in output
    assert not (tmp_path / "wd").exists() or not any((tmp_path / "wd").iterdir())


def _draw_dropout_mask(rank: int, world_size: int, init_file: str, out: dict) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    seed_everything(process_seed(0, rank))
    mask = torch.nn.functional.dropout(torch.ones(256), p=0.5)
    masks = all_gather_object(mask)
    if rank == 0:
        out["masks"] = masks
    torch.distributed.destroy_process_group()


def test_dropout_masks_differ_between_ranks_and_repeat_per_seed(tmp_path: Path) -> None:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_draw_dropout_mask, args=(2, str(tmp_path / "init"), out), nprocs=2)
        first, second = out["masks"]
    assert not torch.equal(first, second), "each rank draws its own dropout mask"
    seed_everything(process_seed(0, 0))
    assert torch.equal(torch.nn.functional.dropout(torch.ones(256), p=0.5), first), "reproducible per (seed, rank)"
    assert process_seed(0, 1) != process_seed(1, 0)


FAIL_ON_RANK_1 = '''
import os
if os.environ.get("RANK") == "1":
    from benchmark.engine import trainer

    def fail(self, epoch):
        raise RuntimeError("disk quota exceeded while reading a tile on rank 1")

    trainer.Trainer.train_epoch = fail
'''


def test_under_torchrun_the_failing_rank_s_error_is_reported_not_its_echo(synthetic_root: Path, tmp_path: Path, monkeypatch) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(FAIL_ON_RANK_1)  # only rank 1 fails, in its first epoch
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]))
    result = run_benchmark(tiny_overrides(synthetic_root, tmp_path / "wd"), nproc=2, check=False)
    assert result.returncode != 0
    run_dir = only_run_dir(tmp_path / "wd")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed"
    assert results["error"] == (
        "PeerFailedError: rank 1 failed first: RuntimeError: disk quota exceeded while reading a tile on rank 1"
    )
    assert "sitecustomize.py" in results["traceback"], "the traceback is the failing rank's"
    assert "rank 1 failed first: RuntimeError: disk quota exceeded" in result.stdout + result.stderr
    assert not (run_dir / ".failures").exists()


def test_a_sigterm_while_rank_0_reports_a_failure_does_not_cut_the_report_short(tmp_path: Path, monkeypatch) -> None:
    # The race CI met: rank 0 gets the echo of rank 1's failure first, then torchrun's SIGTERM arrives while
    # it waits for rank 1's record; results.json must still be written.
    failures.record(tmp_path, 1, RuntimeError("disk quota exceeded on rank 1"))
    wait_for_records = failures.first_failure

    def sigterm_then_wait(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return wait_for_records(*args, **kwargs)

    monkeypatch.setattr(failures, "first_failure", sigterm_then_wait)
    rank0 = DistContext(rank=0, world_size=2, local_rank=0, device=CPU)
    with failures.sigterm_raises(), pytest.raises(failures.PeerFailedError, match="rank 1 failed first"):
        pipeline.report_failure(rank0, tmp_path, ConnectionError("Connection closed by peer"), since=0.0)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed"
    assert results["error"] == "PeerFailedError: rank 1 failed first: RuntimeError: disk quota exceeded on rank 1"


def test_saved_config_names_data_and_weights_by_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run started with relative paths can be tested, mapped or tuned again from another folder."""
    monkeypatch.chdir(tmp_path)
    cfg = OmegaConf.create({"dataset": {"root_path": "data/hls"}, "encoder": {"encoder_weights": "weights/dofa.pth"}})
    save_config(cfg, {"dataset": "hlsburnscars"}, "frozen", tmp_path)
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert saved.dataset.root_path == str(tmp_path / "data" / "hls")
    assert saved.encoder.encoder_weights == str(tmp_path / "weights" / "dofa.pth")
    assert cfg.dataset.root_path == "data/hls", "the run itself keeps what it was given"
