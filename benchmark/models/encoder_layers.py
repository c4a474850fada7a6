"""An encoder's parameters by depth, for the strategies between frozen and unfrozen: training only the
last blocks (``mode=partial``) and layer-wise learning-rate decay (``encoder_lr_decay``).

Depth 0 holds what comes before the first transformer block (patch embedding, tokens, position tables),
depth ``i + 1`` block ``i``, depth ``n + 1`` what follows the last block (a final norm). The blocks are
the family's :meth:`~benchmark.models.encoders.base.Encoder.transformer_blocks`.
"""

from __future__ import annotations

from torch import nn

from benchmark.models.encoders.base import Encoder


def parameter_depths(encoder: Encoder) -> tuple[dict[str, int], int]:
    """``({parameter name: depth}, n blocks)``; a parameter outside the blocks is placed before or after
    them by where it comes in ``named_parameters`` (registration order)."""
    blocks = encoder.transformer_blocks()
    in_block = {id(p): i + 1 for i, block in enumerate(blocks) for p in block.parameters()}
    depths, seen_block = {}, False
    for name, param in encoder.named_parameters():
        if id(param) in in_block:
            depths[name] = in_block[id(param)]
            seen_block = True
        else:
            depths[name] = len(blocks) + 1 if seen_block else 0
    return depths, len(blocks)


def train_last_blocks(encoder: Encoder, count: int) -> None:
    """Freeze ``encoder`` but for its last ``count`` blocks and what follows them."""
    depths, blocks = parameter_depths(encoder)
    if not 1 <= count <= blocks:
        raise ValueError(f"unfreeze_last={count}: {type(encoder).__name__} has {blocks} blocks; use 1..{blocks}")
    for name, param in encoder.named_parameters():
        param.requires_grad_(depths[name] > blocks - count)


def decayed_groups(encoder: Encoder, lr: float, decay: float) -> list[dict]:
    """Parameter groups of the trainable encoder parameters, one per depth: LR ``lr * decay ** (n + 1 - depth)``
    (the last block ``lr * decay``, the embeddings ``lr * decay ** (n + 1)``, what follows the blocks ``lr``)."""
    if not 0 < decay <= 1:
        raise ValueError(f"encoder_lr_decay must be in (0, 1], got {decay}")
    depths, blocks = parameter_depths(encoder)
    groups: dict[int, list[nn.Parameter]] = {}
    for name, param in encoder.named_parameters():
        if param.requires_grad:
            groups.setdefault(depths[name], []).append(param)
    return [{"params": params, "lr": lr * decay ** (blocks + 1 - depth), "depth": depth} for depth, params in sorted(groups.items())]
