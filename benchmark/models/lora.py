"""LoRA adapters on an encoder's attention (and optionally MLP) projections, through Hugging Face ``peft``.

The adapters are injected into the encoder module in place (``peft.inject_adapter_in_model``): every
targeted ``nn.Linear`` gains a low-rank update ``B @ A`` scaled by ``alpha / rank`` beside its frozen weight.
A fused qkv projection is adapted as one layer (one update for q, k and v together). Which layers an
encoder family exposes is its :attr:`~benchmark.models.encoders.base.Encoder.lora_targets`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

ADAPTER_MARK = "lora_"  # peft names every adapter parameter lora_A / lora_B


@dataclass(frozen=True)
class LoraSettings:
    """``rank`` r and ``alpha`` of the updates, dropout on their input, and whether MLPs are adapted too."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    mlp: bool = False

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"lora.rank must be >= 1, lora.alpha > 0 and lora.dropout in [0, 1): got {self}")


def add_lora(encoder: nn.Module, targets: dict[str, str], settings: LoraSettings) -> int:
    """Freeze ``encoder`` and inject adapters into the layers ``targets["attention"]`` (and ``targets["mlp"]``)
    match (regular expressions over module names); returns the number of adapted layers."""
    from peft import LoraConfig, inject_adapter_in_model  # imported here: only mode=lora needs peft

    pattern = targets["attention"] if not settings.mlp else f"(?:{targets['attention']})|(?:{targets['mlp']})"
    matched = [name for name, module in encoder.named_modules() if isinstance(module, nn.Linear) and re.fullmatch(pattern, name)]
    if not matched:
        raise ValueError(f"no layer of {type(encoder).__name__} matches the LoRA targets {pattern!r}")
    encoder.requires_grad_(False)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=pattern, bias="none")
    inject_adapter_in_model(config, encoder)
    return len(matched)


def adapter_state_dict(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights only (the frozen base weights come from the release file)."""
    return {k: v for k, v in encoder.state_dict().items() if ADAPTER_MARK in k}


def load_adapter_state_dict(encoder: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapters saved by :func:`adapter_state_dict`; every adapter of ``encoder`` must be in ``state``."""
    expected = set(adapter_state_dict(encoder))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"the checkpoint's LoRA adapters do not fit this encoder: missing {missing[:4]}, unexpected "
            f"{unexpected[:4]} (another lora.rank, lora.mlp or encoder than the run's?)"
        )
    encoder.load_state_dict(state, strict=False)
