"""Label masks: one band of class ids, stored as integers, or as floats holding whole numbers with NaN
where no label was drawn (HLS Burn Intensity's severity maps read that way). The start-up checks
(:mod:`benchmark.data.validation`) and every loader read them through these functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def read_mask_array(src: Any) -> np.ndarray:
    """Band 1 of an open rasterio dataset, in its own dtype ``(H, W)``."""
    return src.read(1)


def value_counts(values: np.ndarray) -> dict[str, int]:
    unique, counts = np.unique(values, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(unique, counts)}


def class_ids(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64, valid bool)``: the mask's class ids and where it holds one (not NaN, not fractional)."""
    if np.issubdtype(mask.dtype, np.integer):
        return mask.astype(np.int64), np.ones(mask.shape, dtype=bool)
    valid = np.isfinite(mask) & (mask == np.floor(mask))
    return np.where(valid, mask, 0).astype(np.int64), valid


def mask_facts(mask: np.ndarray) -> dict[str, Any]:
    """``mask_values`` (count per class id; None for a mask that is not numeric), ``mask_nan`` and
    ``mask_fractional`` (pixels of a float mask holding NaN / a value that is not a whole number)."""
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        return {"mask_values": None, "mask_nan": 0, "mask_fractional": 0}
    ids, valid = class_ids(mask)
    nan = int(np.isnan(mask).sum()) if np.issubdtype(mask.dtype, np.floating) else 0
    return {"mask_values": value_counts(ids[valid]), "mask_nan": nan, "mask_fractional": int((~valid).sum()) - nan}


def target_from_mask(mask: np.ndarray, ignore_index: int) -> np.ndarray:
    """The training target int64 ``(H, W)``: the class ids, ``ignore_index`` where the mask holds none."""
    ids, valid = class_ids(mask)
    if not valid.all():
        ids[~valid] = ignore_index
    return ids
