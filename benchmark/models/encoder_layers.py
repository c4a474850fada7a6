"""An encoder's parameters by depth, for the strategies between frozen and unfrozen: training only the
last blocks (``mode=partial``), unfreezing them top-down (``mode=progressive``) and layer-wise
learning-rate decay (``encoder_lr_decay``); and the norm layers kept as released (``freeze_encoder_norm``).

Depth 0 holds what comes before the first transformer block (patch embedding, tokens, position tables),
depth ``i + 1`` block ``i``, depth ``n + 1`` what follows the last block (a final norm). The blocks are
the family's :meth:`~benchmark.models.encoders.base.Encoder.transformer_blocks`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from benchmark.models.encoders.base import Encoder

# Normalisation layers: BatchNorm and InstanceNorm (running statistics), GroupNorm, LayerNorm (timm's too).
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def norm_layers(encoder: nn.Module) -> list[nn.Module]:
    return [module for module in encoder.modules() if isinstance(module, NORM_LAYERS)]


def freeze_norm_layers(encoder: nn.Module) -> int:
    """Freeze the scale and shift of every norm layer of ``encoder`` (the Segmentor also keeps them in eval
    mode, so BatchNorm statistics stay the released ones); returns how many layers."""
    layers = norm_layers(encoder)
    for layer in layers:
        layer.requires_grad_(False)
    return len(layers)


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
    """Freeze ``encoder`` but for its last ``count`` blocks and what follows them (fixed tables stay fixed)."""
    depths, blocks = parameter_depths(encoder)
    if not 1 <= count <= blocks:
        raise ValueError(f"unfreeze_last={count}: {type(encoder).__name__} has {blocks} blocks; use 1..{blocks}")
    for name, param in encoder.named_parameters():
        param.requires_grad_(param.requires_grad and depths[name] > blocks - count)


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


@dataclass(frozen=True)
class ProgressiveSchedule:
    """``mode=progressive``: the decoder alone for ``head_epochs`` epochs, then the encoder's depths join
    from the top (what follows the blocks and the last block first), one more every ``epochs_per_block``
    epochs, the embeddings last, until everything trains."""

    head_epochs: int = 2
    epochs_per_block: int = 1

    def __post_init__(self) -> None:
        if self.head_epochs < 0 or self.epochs_per_block < 1:
            raise ValueError(f"progressive.head_epochs must be >= 0 and progressive.epochs_per_block >= 1: got {self}")

    def lowest_depth(self, epoch: int, blocks: int) -> int | None:
        """The lowest depth that trains in (0-based) ``epoch``; None while the encoder is frozen."""
        if epoch < self.head_epochs:
            return None
        return max(0, blocks - (epoch - self.head_epochs) // self.epochs_per_block)


def train_from_depth(encoder: Encoder, lowest: int | None, learnable: frozenset[str]) -> list[str]:
    """Let the ``learnable`` parameters at ``lowest`` depth and above train (none when ``lowest`` is None);
    returns their names. Parameters outside ``learnable`` (fixed position tables) never train."""
    depths, _ = parameter_depths(encoder)
    trained = []
    for name, param in encoder.named_parameters():
        param.requires_grad_(lowest is not None and name in learnable and depths[name] >= lowest)
        if param.requires_grad:
            trained.append(name)
    return trained
