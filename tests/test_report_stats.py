"""The report's statistics: mean, sample std, bootstrap intervals, interquartile mean and normalised
mIoU, checked against hand-computed numbers and exhaustive enumerations of all resamples; then how
they reach leaderboard.md, leaderboard.csv and the plots, and how runs with another label fraction
(``dataset.train_fraction`` in config.yaml) are kept apart and plotted."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection, PolyCollection

from benchmark.engine.metrics import segmentation_metrics
from benchmark.report import collect, group_runs, plots, write_report
from benchmark.report.stats import (
    bootstrap_ci, iqm, majority_miou, mean, normalised, sample_std, stratified_iqm_ci,
)
from benchmark.results import RunConfig
from test_report import metrics, read_csv, table, write_run

# Whether results.json records the label fraction too (it is being added next to config.yaml's key).
RECORDS_FRACTION = "train_fraction" in {f.name for f in dataclasses.fields(RunConfig)}

# The bootstrap distribution of a statistic over n=3 values has 27 equally likely resamples. The
# quantile levels checked below lie far (>= 6 standard errors of the empirical CDF at 10,000
# resamples) from the jumps of that discrete distribution, so the Monte Carlo interval lands on the
# exact atoms: it must agree with the enumeration to rounding.
TOLERANCE = 1e-9


def exact_interval(statistics: Sequence[float], confidence: float) -> tuple[float, float]:
    """The percentile interval of an enumerated, equally likely bootstrap distribution."""
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(np.asarray(statistics), [tail, 1 - tail], method="inverted_cdf")
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------------
# Pure statistics


def test_mean_and_sample_std_by_hand() -> None:
    assert mean([1, 2, 3, 4]) == 2.5
    assert sample_std([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(math.sqrt(32 / 7))  # squares sum to 32, n-1 = 7
    assert sample_std([0.5, 0.7]) == pytest.approx(math.sqrt(0.02))


def test_one_seed_has_a_mean_but_no_std_and_no_interval() -> None:
    assert mean([0.7]) == 0.7
    assert math.isnan(sample_std([0.7]))
    assert all(math.isnan(v) for v in bootstrap_ci([0.7]))
    assert math.isnan(mean([])) and math.isnan(iqm([]))


def test_iqm_of_eight_values_is_the_mean_of_the_middle_four() -> None:
    assert iqm([1, 2, 3, 4, 5, 6, 7, 8]) == 4.5  # mean of 3, 4, 5, 6
    assert iqm([8, 1, 7, 2, 6, 3, 5, 4]) == 4.5, "order does not matter"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1, 2, 3, 4, 100], 3.0),  # n=5: int(1.25) = 1 cut from each end -> mean(2, 3, 4)
        ([10, 1, 2, 3, 4, 5], 3.5),  # n=6: int(1.5) = 1 -> mean(2, 3, 4, 5)
        ([0, 1, 2, 3, 4, 5, 100], 3.0),  # n=7: int(1.75) = 1 -> mean(1, 2, 3, 4, 5)
        ([0, 0, 1, 2, 3, 4, 5, 90, 99], 3.0),  # n=9: int(2.25) = 2 -> mean(1, 2, 3, 4, 5)
        ([1, 2, 9], 4.0),  # n=3: int(0.75) = 0, nothing cut
    ],
)
def test_iqm_cuts_what_trim_mean_cuts_when_n_is_not_divisible_by_4(values: list[float], expected: float) -> None:
    assert iqm(values) == pytest.approx(expected)


def test_iqm_equals_scipy_trim_mean_on_random_samples() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in range(1, 23):
        values = rng.normal(size=n)
        assert iqm(values) == pytest.approx(stats.trim_mean(values, 0.25), abs=1e-12), n


@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_bootstrap_interval_of_three_seeds_matches_the_enumeration_of_all_27_resamples(confidence: float) -> None:
    values = [0.0, 1.0, 3.0]
    means = [sum(resample) / 3 for resample in itertools.product(values, repeat=3)]
    lo, hi = bootstrap_ci(values, confidence=confidence)
    assert (lo, hi) == pytest.approx(exact_interval(means, confidence), abs=TOLERANCE)
    # by hand: mean 0 and mean 3 have probability 1/27 = 3.7 % > 2.5 %, so the 95 % interval of three
    # seeds is their range; the 10 % and 90 % points are the sums 1 and 7 (cumulative 4/27 and 26/27)
    assert exact_interval(means, confidence) == ((0.0, 3.0) if confidence == 0.95 else (1 / 3, 7 / 3))


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    values = [0.61, 0.64, 0.58, 0.70, 0.66]
    assert bootstrap_ci(values) == bootstrap_ci(values)
    assert bootstrap_ci(values, seed=1) == bootstrap_ci(values, seed=1)
    lo, hi = bootstrap_ci(values)
    assert min(values) < lo < mean(values) < hi < max(values), "five seeds: narrower than their range"


def test_stratified_iqm_interval_matches_the_enumeration_of_all_resamples() -> None:
    strata = [[0.0, 1.0], [2.0, 4.0]]
    pooled_iqms = [
        iqm([*a, *b]) for a in itertools.product(strata[0], repeat=2) for b in itertools.product(strata[1], repeat=2)
    ]
    assert stratified_iqm_ci(strata) == pytest.approx(exact_interval(pooled_iqms, 0.95), abs=TOLERANCE)
    assert exact_interval(pooled_iqms, 0.95) == (1.0, 2.5)  # by hand: 3 of 16 draws give 1.0, 3 give 2.5


def test_stratified_bootstrap_resamples_within_each_task() -> None:
    """Tasks that are constant inside keep their values in every draw: the interval has no width. (A
    bootstrap over the pooled scores would draw e.g. four 10s.)"""
    assert stratified_iqm_ci([[0.0, 0.0], [10.0, 10.0]]) == (5.0, 5.0)
    assert stratified_iqm_ci([[1.0, 1.0, 1.0], [5.0, 5.0]]) == pytest.approx((7 / 3, 7 / 3))  # n=5: mean(1, 1, 5)
    assert all(math.isnan(v) for v in stratified_iqm_ci([[0.3], [0.5]])), "nothing to resample"


@pytest.mark.parametrize("support", [[70, 30], [5, 80, 15], [0, 40, 60], [25, 25, 25, 25]])
def test_majority_class_miou_equals_the_benchmarks_metric_of_that_prediction(support: list[int]) -> None:
    major = int(np.argmax(support))
    confusion = torch.zeros(len(support), len(support), dtype=torch.long)
    confusion[:, major] = torch.tensor(support)  # every pixel predicted as the majority class
    assert majority_miou(support) == pytest.approx(segmentation_metrics(confusion, [str(i) for i in support])["mIoU"])
    assert majority_miou([70, 30]) == 0.35  # by hand: 70 / (100 * 2)


def test_normalised_score() -> None:
    assert normalised(0.6, majority=0.35, reference=0.6) == pytest.approx(1.0)
    assert normalised(0.35, majority=0.35, reference=0.6) == 0.0
    assert normalised(0.475, majority=0.35, reference=0.6) == pytest.approx(0.5)
    assert normalised(0.8, majority=0.35, reference=0.6) == pytest.approx(1.8)
    assert math.isnan(normalised(0.5, majority=0.35, reference=0.35)), "a reference no better than the majority"


# --------------------------------------------------------------------------------------------------
# In the report

MAJORITY = 0.35  # support [70, 30] of metrics()' confusion matrix [[60, 10], [5, 25]]


def job(encoder: str, decoder: str, mode: str, seed: int, dataset: str = "hlsburnscars") -> dict[str, Any]:
    return {"dataset": dataset, "encoder": encoder, "decoder": decoder, "mode": mode, "seed": seed}


def write_group(work_dir: Path, encoder: str, decoder: str, mode: str, mious: Sequence[float], fraction: float | None = None,
                **kwargs: Any) -> None:
    """Runs of one experiment with the given test mIoU (seed i gets ``mious[i]``); ``fraction``: the
    ``dataset.train_fraction`` written into their config.yaml."""
    rng = np.random.default_rng(len(mious))
    if fraction is not None and RECORDS_FRACTION:
        kwargs = {**kwargs, "train_fraction": fraction}  # as benchmark/run.py records it
    for seed, miou in enumerate(mious):
        name = f"{encoder}_{decoder}_{mode}_{fraction}_s{seed}"
        write_run(work_dir, name, job(encoder, decoder, mode, seed), rng, test={**metrics(rng), "mIoU": miou}, **kwargs)
        if fraction is not None:
            with (work_dir / name / "config.yaml").open("a") as handle:
                handle.write(f"dataset:\n  name: HLSBurnScars\n  train_fraction: {fraction}\n")


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """A scratch UNet (the reference) and a frozen encoder behind two decoders."""
    work_dir = tmp_path / "wd"
    write_group(work_dir, "unet", "seg_unet", "random", [0.55, 0.65])
    write_group(work_dir, "dofa", "seg_upernet", "frozen", [0.7, 0.8, 0.9])
    write_group(work_dir, "dofa", "seg_linear", "frozen", [0.5, 0.6, 0.62, 0.71])
    return work_dir


def test_markdown_shows_the_interval_and_the_score_normalised_between_majority_and_unet(study: Path, tmp_path: Path) -> None:
    write_report([study], tmp_path / "report")
    markdown = (tmp_path / "report" / "leaderboard.md").read_text()
    titles, rows = table(markdown, "hlsburnscars")
    rows_by = {(row[0], row[1]): row for row in rows}
    upernet, linear, unet = rows_by["dofa", "seg_upernet"], rows_by["dofa", "seg_linear"], rows_by["unet", "seg_unet"]
    ci, norm = titles.index("test mIoU 95% CI"), titles.index("norm. mIoU")
    assert titles.index("test mIoU") < ci < norm < titles.index("IoU Burn scar")
    assert upernet[titles.index("n")] == "3" and upernet[ci] == "[70.00, 90.00]", "three seeds: their range"
    lo, hi = bootstrap_ci([0.5, 0.6, 0.62, 0.71])
    assert linear[ci] == f"[{100 * lo:.2f}, {100 * hi:.2f}]"
    # reference 0.60 (mean of the UNet's 0.55, 0.65): (0.7, 0.8, 0.9) -> 1.4, 1.8, 2.2; the UNet's own
    # runs -> 0.8, 1.2 (std 0.2 * sqrt(2))
    assert upernet[norm] == "**1.80 ± 0.40**" and unet[norm] == "1.00 ± 0.28"
    assert "majority class everywhere (mIoU 35.00 % on this test split)" in markdown
    assert "`unet / seg_unet / random` (mean test mIoU 60.00 %, n = 2)" in markdown


def test_iqm_table_pools_the_decoders_of_an_encoder_and_mode(study: Path, tmp_path: Path) -> None:
    write_report([study], tmp_path / "report")
    titles, rows = table((tmp_path / "report" / "leaderboard.md").read_text(), "Interquartile mean over tasks")
    assert len(rows) == 1, "the UNet has one task: no row"
    row = dict(zip(titles[:5], rows[0]))
    assert row == {"encoder · mode": "dofa · frozen", "tasks": "2", "over": "decoder", "runs": "7", "IQM test mIoU": "68.60"}
    # by hand: 7 scores sorted 0.5, 0.6, 0.62, 0.7, 0.71, 0.8, 0.9; int(7/4) = 1 cut from each end -> mean of 5
    assert iqm([0.7, 0.8, 0.9, 0.5, 0.6, 0.62, 0.71]) == pytest.approx((0.6 + 0.62 + 0.7 + 0.71 + 0.8) / 5)
    lo, hi = stratified_iqm_ci([[0.5, 0.6, 0.62, 0.71], [0.7, 0.8, 0.9]])  # tasks in display order
    assert rows[0][titles.index("IQM test mIoU") + 1] == f"[{100 * lo:.2f}, {100 * hi:.2f}]"
    normalised_scores = [[(v - MAJORITY) / (0.6 - MAJORITY) for v in s] for s in ([0.5, 0.6, 0.62, 0.71], [0.7, 0.8, 0.9])]
    assert rows[0][titles.index("IQM norm. mIoU")] == f"{iqm([v for s in normalised_scores for v in s]):.2f}"
    lo, hi = stratified_iqm_ci(normalised_scores)
    assert rows[0][titles.index("IQM norm. mIoU") + 1] == f"[{lo:.2f}, {hi:.2f}]"


def test_csv_rows_carry_their_groups_statistics(study: Path, tmp_path: Path) -> None:
    write_report([study], tmp_path / "report")
    rows = [row for row in read_csv(tmp_path / "report" / "leaderboard.csv") if row["decoder"] == "seg_upernet"]
    assert len(rows) == 3
    for row in rows:
        assert row["group_n"] == "3" and float(row["group_test_mIoU_mean"]) == pytest.approx(0.8)
        assert float(row["group_test_mIoU_std"]) == pytest.approx(0.1)
        assert (float(row["group_test_mIoU_ci95_lo"]), float(row["group_test_mIoU_ci95_hi"])) == pytest.approx((0.7, 0.9))
        assert (float(row["majority_mIoU"]), float(row["reference_mIoU"])) == pytest.approx((MAJORITY, 0.6))
        assert float(row["norm_mIoU"]) == pytest.approx((float(row["test_mIoU"]) - MAJORITY) / (0.6 - MAJORITY))
        assert float(row["group_norm_mIoU_mean"]) == pytest.approx(1.8)
        assert row["group_test_IoU_Burn scar_mean"] != "", "per-class IoU summarised too"


def test_one_seed_shows_no_std_and_no_interval(tmp_path: Path) -> None:
    write_group(tmp_path / "wd", "prithvi", "seg_fcn", "frozen", [0.61])
    write_report([tmp_path / "wd"], tmp_path / "report")
    titles, rows = table((tmp_path / "report" / "leaderboard.md").read_text(), "hlsburnscars")
    assert rows[0][titles.index("test mIoU")] == "61.00" and rows[0][titles.index("test mIoU 95% CI")] == "–"
    assert "norm. mIoU" not in titles, "no UNet: no normalised column"
    row = read_csv(tmp_path / "report" / "leaderboard.csv")[0]
    assert row["group_n"] == "1" and row["group_test_mIoU_std"] == "" and row["group_test_mIoU_ci95_lo"] == ""


def test_bar_error_bars_are_the_bootstrap_interval_not_the_std(study: Path) -> None:
    groups = group_runs(collect([study]))
    figure = plots.miou_by_decoder_and_mode(groups)
    spans = set()
    for ax in figure.axes:
        for container in ax.containers:
            if getattr(container, "errorbar", None) is not None:
                (segment,) = container.errorbar.lines[2][0].get_segments()
                spans.add(tuple(round(float(y), 6) for y in segment[:, 1]))
    lo, hi = bootstrap_ci([0.5, 0.6, 0.62, 0.71])
    assert {(70.0, 90.0), (55.0, 65.0), (round(100 * lo, 6), round(100 * hi, 6))} == spans


def test_runs_with_another_label_fraction_are_a_group_of_their_own_and_get_a_plot(tmp_path: Path) -> None:
    work_dir = tmp_path / "wd"
    for fraction, mious in ((1.0, [0.7, 0.72]), (0.1, [0.5, 0.56]), (0.01, [0.3, 0.31])):
        write_group(work_dir, "dofa", "seg_upernet", "frozen", mious, fraction=fraction)
    write_group(work_dir, "dofa", "seg_linear", "frozen", [0.6, 0.62])  # config.yaml without the key: 1.0
    written = write_report([work_dir], tmp_path / "report")
    titles, rows = table((tmp_path / "report" / "leaderboard.md").read_text(), "hlsburnscars")
    column = titles.index("dataset.train_fraction")
    assert [(row[1], row[column], row[titles.index("n")]) for row in rows] == [
        ("seg_linear", "1", "2"), ("seg_upernet", "0.01", "2"), ("seg_upernet", "0.1", "2"), ("seg_upernet", "1", "2"),
    ], "never averaged over fractions; fewest labels first"
    assert {row["train_fraction"] for row in read_csv(tmp_path / "report" / "leaderboard.csv")} == {"1.0", "0.1", "0.01"}
    assert tmp_path / "report" / "miou_vs_label_fraction.png" in written
    figure = plots.miou_against_label_fraction(group_runs(collect([work_dir])))
    (ax,) = figure.axes
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert sorted(lines) == ["linear", "upernet"], "a decoder run with one fraction is a point of its own"
    assert list(lines["upernet"].get_xdata()) == [0.01, 0.1, 1.0]
    assert list(lines["upernet"].get_ydata()) == pytest.approx([30.5, 53.0, 71.0])
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert ax.get_title() == "hlsburnscars · dofa · frozen" and len(bands) == 2, "a CI band per line"
    (bar,) = [c for c in ax.collections if isinstance(c, LineCollection)]  # the lone point's interval
    assert [round(float(y), 6) for y in bar.get_segments()[0][:, 1]] == [60.0, 62.0], "two seeds: their range"


def test_an_unreadable_config_yaml_counts_as_all_labels(tmp_path: Path) -> None:
    write_group(tmp_path / "wd", "dofa", "seg_upernet", "frozen", [0.7, 0.72])
    (tmp_path / "wd" / "dofa_seg_upernet_frozen_None_s0" / "config.yaml").write_text("dataset: [unclosed\n")
    (tmp_path / "wd" / "dofa_seg_upernet_frozen_None_s1" / "config.yaml").write_text("dataset:\n  train_fraction: all\n")
    groups = group_runs(collect([tmp_path / "wd"]))
    assert len(groups) == 1 and groups[0].train_fraction == 1.0
    written = write_report([tmp_path / "wd"], tmp_path / "report")
    assert not any(path.name == "miou_vs_label_fraction.png" for path in written)


@pytest.mark.skipif(not RECORDS_FRACTION, reason="this results.json schema records no label fraction")
def test_without_a_config_yaml_the_fraction_comes_from_results_json(tmp_path: Path) -> None:
    write_group(tmp_path / "wd", "dofa", "seg_upernet", "frozen", [0.5, 0.56], fraction=0.1)
    for seed in (0, 1):
        (tmp_path / "wd" / f"dofa_seg_upernet_frozen_0.1_s{seed}" / "config.yaml").unlink()
    (group,) = group_runs(collect([tmp_path / "wd"]))
    assert group.train_fraction == 0.1
