"""Statistics of the report: pure functions of plain numbers (numpy only, deterministic).

- ``mean``, ``sample_std`` (ddof=1) and ``bootstrap_ci``: a 95 % percentile bootstrap confidence
  interval of the mean over seeds (the seeds resampled with replacement, 10,000 times by default);
- ``iqm`` (interquartile mean: the mean of the middle 50 %, as ``scipy.stats.trim_mean(x, 0.25)``)
  and ``stratified_iqm_ci``: its bootstrap interval over several tasks, each task's seeds resampled on
  their own (Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice");
- ``majority_miou`` (the mIoU of always predicting a split's most frequent class, from the pixels
  of each class) and ``normalised`` (0 = that majority baseline, 1 = a reference such as a scratch UNet).

Every resampling function takes ``seed`` (default ``DEFAULT_SEED``): the same numbers give the same
interval on every machine and in every report.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

DEFAULT_SEED = 0
DEFAULT_RESAMPLES = 10_000
CONFIDENCE = 0.95
NAN = float("nan")


def _array(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean (NaN for no values); summed exactly, so the order of the seeds never matters."""
    x = _array(values)
    return math.fsum(x) / len(x) if len(x) else NAN


def sample_std(values: Sequence[float]) -> float:
    """The sample standard deviation (ddof=1); NaN for fewer than two values, where it is undefined."""
    x = _array(values)
    return float(np.std(x, ddof=1)) if len(x) > 1 else NAN


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(samples, [tail, 1 - tail])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: (NaN, NaN) for fewer than two values.

    One value would give a zero-width interval, which claims a certainty a single seed cannot give.
    """
    x = _array(values)
    if len(x) < 2:
        return NAN, NAN
    picks = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    return _percentiles(x[picks].mean(axis=1), confidence)


def _trimmed_rows(sorted_rows: np.ndarray) -> np.ndarray:
    """The mean of each row's middle part, the rows sorted: ``n // 4`` values cut from each end, as
    ``scipy.stats.trim_mean(x, 0.25)`` cuts ``int(0.25 * n)``; so 5 values keep 3 and 6 keep 4."""
    n = sorted_rows.shape[-1]
    cut = n // 4
    return sorted_rows[..., cut : n - cut].mean(axis=-1)


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the values left after cutting a quarter (rounded down) from each end."""
    x = _array(values)
    return float(_trimmed_rows(np.sort(x))) if len(x) else NAN


def stratified_iqm_ci(
    strata: Sequence[Sequence[float]],
    confidence: float = CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the IQM of all scores of several tasks (strata).

    Each resample draws every task's seeds with replacement from that task alone, so every task keeps
    its number of runs and weight in the pool; the IQM is then taken over the pooled draw. (NaN, NaN)
    when no task has two values (nothing would be resampled).
    """
    arrays = [_array(s) for s in strata if len(s)]
    if not arrays or max(len(a) for a in arrays) < 2:
        return NAN, NAN
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([a[rng.integers(0, len(a), size=(resamples, len(a)))] for a in arrays], axis=1)
    return _percentiles(_trimmed_rows(np.sort(pooled, axis=1)), confidence)


def majority_miou(support: Sequence[float]) -> float:
    """mIoU of predicting the most frequent class everywhere, from the pixels of each class in the truth.

    That class gets IoU = n_major / N (every pixel predicted as it), every other class present in the
    truth gets 0, and a class absent from truth and prediction is undefined and left out of the mean,
    as ``benchmark.engine.metrics`` does: mIoU = n_major / (N * K), K = classes present. NaN if empty.
    """
    x = _array(support)
    total = x.sum()
    if not total > 0:
        return NAN
    return float(x.max() / (total * np.count_nonzero(x)))


def normalised(score: float, majority: float, reference: float) -> float:
    """``(score - majority) / (reference - majority)``: 0 at the majority baseline, 1 at the reference.

    NaN when the reference does not beat the majority baseline: the scale would be undefined or
    upside down.
    """
    if not reference > majority:
        return NAN
    return (score - majority) / (reference - majority)
