"""Segmentation metrics from a dataset-level confusion matrix (rows = target, columns = prediction)."""

from __future__ import annotations

from typing import Sequence

import torch


class ConfusionMatrix:
    """Pixel counts (K, K), rows = target, columns = prediction, accumulated batch by batch on ``device``;
    pixels whose target is ``ignore_index`` are skipped. (torchmetrics' MulticlassConfusionMatrix counts the
    same; importing torchmetrics took 4 s of every process's start.) The evaluator sums the matrices of the
    ranks (one all-reduce), so this never syncs."""

    def __init__(self, num_classes: int, ignore_index: int, device: torch.device) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.counts = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add the pixels of ``prediction`` and ``target``, both class ids of one shape."""
        keep = target != self.ignore_index
        cells = target[keep].long() * self.num_classes + prediction[keep].long()
        self.counts += torch.bincount(cells, minlength=self.num_classes**2)

    def compute(self) -> torch.Tensor:
        return self.counts.view(self.num_classes, self.num_classes)


def segmentation_metrics(confusion: torch.Tensor, class_names: Sequence[str]) -> dict[str, object]:
    """mIoU and friends from a (K, K) confusion matrix of pixel counts.

    Per class: IoU = TP / (TP + FP + FN), precision = TP / (TP + FP), recall = TP / (TP + FN),
    F1 = 2TP / (2TP + FP + FN). A class that occurs in the target or the prediction has every value
    defined: a ratio with an empty denominator counts as 0 (a class present but never predicted has
    precision 0 and F1 0; a class predicted but absent from the target has recall 0). Only a class absent
    from both is undefined (NaN) and left out of the macro means. ``oAcc`` is the share of correct pixels;
    ``mAcc`` the mean per-class recall. All values are fractions in [0, 1].
    """
    cm = confusion.detach().to(torch.float64).cpu()
    tp = cm.diag()
    support = cm.sum(dim=1)  # pixels of each class in the target
    predicted = cm.sum(dim=0)
    fp = predicted - tp
    fn = support - tp
    seen = (support + predicted) > 0

    def ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
        value = numerator / denominator.clamp(min=1)  # 0 where the denominator is 0
        return torch.where(seen, value, torch.full_like(value, float("nan")))

    iou = ratio(tp, tp + fp + fn)
    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)

    def mean(values: torch.Tensor) -> float:
        return float(values[seen].mean()) if seen.any() else float("nan")

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
