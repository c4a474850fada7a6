"""Segmentation metrics against a confusion matrix counted by hand."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.engine.metrics import ConfusionMatrix, segmentation_metrics


def test_metrics_from_hand_counted_pixels_with_ignored_pixels() -> None:
    # 3 classes, 12 pixels of which 2 are ignored (-1): counted by hand below.
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, -1, -1])
    pred = torch.tensor([0, 0, 1, 2, 1, 1, 0, 2, 2, 1, 0, 2])
    metric = ConfusionMatrix(num_classes=3, ignore_index=-1, device=torch.device("cpu"))
    metric.update(pred, target)
    matrix = metric.compute()
    # rows = target, cols = prediction
    assert matrix.tolist() == [[2, 1, 1], [1, 2, 0], [0, 1, 2]]

    m = segmentation_metrics(matrix, ["a", "b", "c"])
    # class a: TP 2, FP 1, FN 2 | class b: TP 2, FP 2, FN 1 | class c: TP 2, FP 1, FN 1
    assert m["IoU"]["a"] == pytest.approx(2 / 5)
    assert m["IoU"]["b"] == pytest.approx(2 / 5)
    assert m["IoU"]["c"] == pytest.approx(2 / 4)
    assert m["mIoU"] == pytest.approx((0.4 + 0.4 + 0.5) / 3)
    assert m["Precision"]["a"] == pytest.approx(2 / 3)  # TP / (TP + FP)
    assert m["Precision"]["b"] == pytest.approx(2 / 4)
    assert m["Recall"]["a"] == pytest.approx(2 / 4)  # TP / (TP + FN)
    assert m["Recall"]["b"] == pytest.approx(2 / 3)
    assert m["Recall"]["c"] == pytest.approx(2 / 3)
    f1_a = 2 * (2 / 3) * (2 / 4) / ((2 / 3) + (2 / 4))
    assert m["F1"]["a"] == pytest.approx(f1_a)
    assert m["oAcc"] == pytest.approx(6 / 10)  # ignored pixels are not counted
    assert m["mAcc"] == pytest.approx((2 / 4 + 2 / 3 + 2 / 3) / 3)  # mean per-class recall, not oAcc
    assert m["mAcc"] != pytest.approx(m["oAcc"])
    assert m["pixels"] == 10


def test_class_absent_everywhere_is_left_out_of_the_means() -> None:
    matrix = torch.tensor([[5, 0, 0], [1, 4, 0], [0, 0, 0]])
    m = segmentation_metrics(matrix, ["a", "b", "c"])
    assert math.isnan(m["IoU"]["c"])
    assert m["mIoU"] == pytest.approx((5 / 6 + 4 / 5) / 2)


def test_updates_accumulate_over_batches() -> None:
    metric = ConfusionMatrix(2, -1, torch.device("cpu"))
    metric.update(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]))
    metric.update(torch.tensor([[1, 1]]), torch.tensor([[1, -1]]))
    assert metric.compute().tolist() == [[1, 1], [0, 1]]


def test_class_never_predicted_counts_as_zero_in_the_means() -> None:
    # A model that never predicts burn: burn precision and F1 are 0, not NaN dropped from the means.
    m = segmentation_metrics(torch.tensor([[90, 0], [10, 0]]), ["not burned", "burn"])
    assert m["Precision"]["burn"] == 0.0 and m["F1"]["burn"] == 0.0 and m["IoU"]["burn"] == 0.0
    assert m["Precision"]["not burned"] == pytest.approx(0.9)
    assert m["mPrecision"] == pytest.approx(0.45)
    assert m["F1"]["not burned"] == pytest.approx(180 / 190)
    assert m["mF1"] == pytest.approx(0.5 * 180 / 190)  # 0.474
    assert m["mRecall"] == pytest.approx(0.5) and m["mAcc"] == pytest.approx(0.5)


def test_class_predicted_but_absent_from_the_target_has_recall_zero() -> None:
    m = segmentation_metrics(torch.tensor([[6, 4], [0, 0]]), ["a", "b"])
    assert m["Recall"]["b"] == 0.0 and m["Precision"]["b"] == 0.0 and m["F1"]["b"] == 0.0
    assert m["mRecall"] == pytest.approx((0.6 + 0.0) / 2)
    assert m["F1"]["a"] == pytest.approx(12 / 16)
