"""scripts/benchmark_speed.py: its table and speed-ups (tests/test_caches.py runs it end to end), and its sweep
comparison (separate processes vs one shared process) end to end."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from benchmark.results import Cost, RunConfig, RunResult, completed_result
from conftest import REPO, tiny_overrides
from test_pipeline import tiny_weights_file

spec = importlib.util.spec_from_file_location("benchmark_speed", REPO / "scripts" / "benchmark_speed.py")
benchmark_speed = importlib.util.module_from_spec(spec)
sys.path.insert(0, str(REPO / "scripts"))  # as when run as a script: sweep_speed.py beside it
spec.loader.exec_module(benchmark_speed)


def fake_results(folder: Path, epoch_s: float, images_per_s: float) -> RunResult:
    """A completed run's result as the schema builds it, with the figures the table reads; its folder's
    metrics.jsonl gives the last epoch twice the mean rate (the first epoch compiled)."""
    lines = [{"epoch": 1, "train_images_per_s": images_per_s / 2}, {"epoch": 2, "train_images_per_s": 2 * images_per_s}]
    folder.mkdir(exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    cost = Cost(
        total_params=10, trainable_params=5, epoch_time_s=epoch_s, train_images_per_s=images_per_s, val_time_s=1.0,
        test_time_s=1.0, feature_cache_time_s=0.5, peak_memory_mb=100.0,
    )
    config = RunConfig(dataset="synthetic_burnscars", encoder="dofa", decoder="seg_linear", mode="frozen", seed=0, train_crop_stride=1)
    return completed_result(folder, config, best_epoch=1, val={"mIoU": 0.5}, test={"mIoU": 0.4}, cost=cost, versions={})


def test_table_reports_medians_and_speedups_against_the_first_variant(tmp_path: Path) -> None:
    slow = benchmark_speed.summarize("cache=false", 30.0, 60.0, [fake_results(tmp_path / "slow", 2.0, 10.0)] * 2)
    fast = benchmark_speed.summarize("cache=true", 10.0, 30.0, [fake_results(tmp_path / "fast", 0.5, 40.0)] * 2)
    noisy = benchmark_speed.summarize("cache=true", 20.0, 30.0, [fake_results(tmp_path / "fast", 0.5, 40.0)] * 2)
    rows = benchmark_speed.median_rows([[slow, fast], [slow, fast], [slow, noisy]])
    assert rows[1]["wall_s"] == 10.0 and rows[1]["runs"] == 2
    table = benchmark_speed.markdown(rows).splitlines()
    assert table[0].startswith("| variant | runs | wall (s) |") and len(table) == 4
    assert rows[0]["last_epoch_images_per_s"] == 20.0 and rows[1]["last_epoch_images_per_s"] == 80.0
    assert table[3].endswith("| 3.00x | 2.00x | 4.00x | 4.00x | 1.00x |")  # wall, CPU, epoch, img/s, val+test


def test_per_decoder_table_averages_seeds_and_takes_the_median_over_repeats() -> None:
    def job(decoder: str, variant: str, repeat: int, wall: float, epoch: float) -> dict:
        return {"decoder": decoder, "variant": variant, "repeat": repeat, "wall_s": wall, "epoch_s": epoch}

    jobs = [
        job("seg_linear", "cache=false", 0, 20.0, 2.0), job("seg_linear", "cache=false", 0, 40.0, 2.0),
        job("seg_linear", "cache=true", 0, 5.0, 0.1), job("seg_linear", "cache=true", 0, 5.0, 0.1),
        job("seg_upernet", "cache=false", 0, 60.0, 3.0), job("seg_upernet", "cache=true", 0, 30.0, 2.0),
        job("seg_upernet", "cache=false", 1, 90.0, 3.0), job("seg_upernet", "cache=true", 1, 60.0, 2.0),
        job("seg_upernet", "cache=false", 2, 60.0, 3.0), job("seg_upernet", "cache=true", 2, 20.0, 1.0),
    ]
    table = benchmark_speed.per_decoder(jobs, ["cache=false", "cache=true"]).splitlines()
    assert table[0] == (
        "| decoder | wall (s) cache=false | wall (s) cache=true | wall speed-up cache=true "
        "| epoch (s) cache=false | epoch (s) cache=true | epoch speed-up cache=true |"
    )
    assert table[2] == "| seg_linear | 30 | 5 | 6.00x | 2 | 0.1 | 20.00x |"
    assert table[3] == "| seg_upernet | 60 | 30 | 2.00x | 3 | 2 | 1.50x |"


@pytest.mark.acceptance  # four whole sweeps (about 50 s); the metric identity it checks is also in test_lockstep.py
def test_the_sweep_comparison_runs_all_variants_and_finds_the_same_metrics(synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    weights = tiny_weights_file(tmp_path / "mae.pth")
    overrides = [o for o in tiny_overrides(synthetic_root, tmp_path / "unused") if not o.startswith(("work_dir=", "decoder", "mode="))]
    overrides += ["mode=frozen", f"encoder.encoder_weights={weights}"]
    benchmark_speed.main(["--sweep", "--decoders", "seg_linear", "seg_fcn decoder.channels=16", "--seeds", "0",
                          "--baseline", "HEAD", "--output", str(tmp_path / "out"), "--", *overrides])
    table = capsys.readouterr().out.split("| variant |", 1)[1].splitlines()
    assert table[0].endswith("| speed-up | speed-up against the baseline |")
    assert table[2].startswith("| separate processes at HEAD | 2 |") and table[3].startswith("| separate processes | 2 |")
    assert table[4].startswith("| one shared process | 2 |") and table[5].startswith("| lockstep heads | 2 |")
    # the baseline ran the committed code (extracted by git), here the same as today's
    assert "same test metrics in every job of today's variants: yes; at HEAD: the same" in table
    assert (tmp_path / "out" / "source_HEAD" / "benchmark" / "run.py").is_file()
    for variant in range(4):
        assert len(list((tmp_path / "out").glob(f"repeat0_variant{variant}/*/results.json"))) == 2
    lockstep_log = next((tmp_path / "out").glob("repeat0_variant3/*seg_fcn*/train.log")).read_text()
    assert "lockstep head 2 of 2" in lockstep_log, "the two frozen jobs shared the encoder pass"


def test_the_loader_script_counts_every_training_batch_of_each_epoch(synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script = importlib.util.spec_from_file_location("loader_speed", REPO / "scripts" / "loader_speed.py")
    loader_speed = importlib.util.module_from_spec(script)
    script.loader.exec_module(loader_speed)
    overrides = [o for o in tiny_overrides(synthetic_root, tmp_path) if o != "num_workers=0"]
    epochs = loader_speed.loader_epochs(overrides, workers=1, epochs=2)
    # the full batches of 4 of the 18 training tiles (the last partial batch is dropped, as in training)
    assert [images for images, _ in epochs] == [16, 16] and all(seconds > 0 for _, seconds in epochs)
    loader_speed.main(["--workers", "0", "--epochs", "2", "--resident", "--", *overrides])
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| workers | epoch 1 img/s | epoch 2 img/s |" and table[2].startswith("| 0 | ")
    assert table[3].startswith("| split on cpu | ")
