"""Segmentation metrics from a dataset-level confusion matrix (rows = target, columns = prediction)."""

from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


def confusion_matrix_metric(num_classes: int, ignore_index: int, device: torch.device) -> MulticlassConfusionMatrix:
    """A torchmetrics accumulator of pixel counts; pixels whose target is ``ignore_index`` are skipped.

    Synchronisation over ranks is done by the evaluator (one all-reduce of the summed matrix), so
    the metric itself never syncs.
    """
    return MulticlassConfusionMatrix(
        num_classes=num_classes,
        ignore_index=ignore_index,
        sync_on_compute=False,
        validate_args=False,
    ).to(device)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """Element-wise ratio, NaN where the denominator is 0 (a class absent from both maps)."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.full_like(numerator, float("nan")))


def segmentation_metrics(confusion: torch.Tensor, class_names: Sequence[str]) -> dict[str, object]:
    """mIoU and friends from a (K, K) confusion matrix of pixel counts.

    Per class: IoU = TP / (TP + FP + FN), precision = TP / (TP + FP), recall = TP / (TP + FN),
    F1 = 2PR / (P + R). Macro means skip classes whose value is undefined (NaN). ``oAcc`` is the
    share of correct pixels; ``mAcc`` the mean per-class recall. All values are fractions in [0, 1].
    """
    cm = confusion.detach().to(torch.float64).cpu()
    tp = cm.diag()
    support = cm.sum(dim=1)  # pixels of each class in the target
    predicted = cm.sum(dim=0)
    fp = predicted - tp
    fn = support - tp
    iou = _ratio(tp, tp + fp + fn)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * precision * recall, precision + recall)
    f1 = torch.where(torch.isnan(precision) | torch.isnan(recall), torch.full_like(f1, float("nan")), f1)

    def mean(values: torch.Tensor) -> float:
        return float(values.nanmean()) if not torch.isnan(values).all() else float("nan")

    def per_class(values: torch.Tensor) -> dict[str, float]:
        return {name: float(v) for name, v in zip(class_names, values)}

    total = cm.sum()
    return {
        "mIoU": mean(iou),
        "mF1": mean(f1),
        "mPrecision": mean(precision),
        "mRecall": mean(recall),
        "oAcc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mAcc": mean(recall),
        "IoU": per_class(iou),
        "F1": per_class(f1),
        "Precision": per_class(precision),
        "Recall": per_class(recall),
        "pixels": int(total),
        "confusion_matrix": cm.long().tolist(),
    }
