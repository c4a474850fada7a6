"""Encoder + decoder + training mode: ``frozen`` (pretrained encoder, only the decoder trains),
``unfrozen`` (pretrained encoder, everything trains), ``random`` (same architecture, random init,
everything trains), ``partial`` (pretrained encoder, its last blocks and the decoder train) or ``lora``
(pretrained encoder frozen, low-rank adapters on its projections and the decoder train); PANGAEA's ``finetune`` flag is accepted as an alias."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from benchmark.models.encoder_layers import (
    ProgressiveSchedule, freeze_norm_layers, norm_layers, train_from_depth, train_last_blocks,
)
from benchmark.models.encoders.base import Encoder
from benchmark.models.lora import adapter_state_dict, load_adapter_state_dict

MODES = ("frozen", "partial", "progressive", "lora", "unfrozen", "random")


def resolve_mode(mode: str, finetune: bool | None) -> str:
    """Combine ``mode`` with PANGAEA's ``finetune`` alias (true = unfrozen, false = frozen)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if finetune is None:
        return mode
    if mode == "frozen":
        return "unfrozen" if finetune else "frozen"
    if not finetune:
        raise ValueError(
            f"finetune=false contradicts mode={mode}: finetune=false means a frozen encoder. "
            "Give only one of the two."
        )
    return mode


class Segmentor(nn.Module):
    """Segmentation model: ``decoder(encoder(image), output_size)``.

    Modes: ``frozen`` keeps the pretrained encoder in eval mode without gradients (only the decoder
    trains); ``unfrozen`` trains everything from the pretrained weights; ``random`` trains everything
    from random initialisation; ``partial`` trains the last ``unfreeze_last`` encoder blocks (and what
    follows them) with the decoder; ``progressive`` trains the decoder alone first, then lets the encoder's
    blocks join from the top (:class:`~benchmark.models.encoder_layers.ProgressiveSchedule`); ``lora`` trains the decoder and the adapters that
    :func:`~benchmark.models.lora.add_lora` injected into the (otherwise frozen) encoder.

    ``freeze_norm`` keeps the encoder's norm layers as released while the rest of it trains: their scale and
    shift do not train and they stay in eval mode (BatchNorm uses and keeps its running statistics).
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: nn.Module,
        mode: str,
        unfreeze_last: int | None = None,
        progressive: ProgressiveSchedule | None = None,
        freeze_norm: bool = False,
        per_frame: bool = False,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.encoder = encoder
        self.decoder = decoder
        self.mode = mode
        if mode == "frozen":
            self.encoder.requires_grad_(False)
            self.encoder.eval()
        if mode == "partial":
            train_last_blocks(self.encoder, int(unfreeze_last or 0))
        self.freeze_norm = freeze_norm
        self.per_frame = per_frame
        if freeze_norm:
            freeze_norm_layers(self.encoder)
        # Progressive: everything is trainable when the optimizer is built; set_epoch then freezes what waits.
        self.progressive = (progressive or ProgressiveSchedule()) if mode == "progressive" else None
        self.lowest_trained_depth: int | None = -1
        self.learnable = frozenset(n for n, p in self.encoder.named_parameters() if p.requires_grad)

    def set_epoch(self, epoch: int) -> str | None:
        """Apply the progressive schedule for ``epoch``; a description of what trains when that changed."""
        if self.progressive is None:
            return None
        lowest = self.progressive.lowest_depth(epoch, len(self.encoder.transformer_blocks()))
        if lowest == self.lowest_trained_depth:
            return None
        self.lowest_trained_depth = lowest
        trained = train_from_depth(self.encoder, lowest, self.learnable)
        if lowest is None:
            return "the decoder trains; the encoder is frozen"
        blocks = len(self.encoder.transformer_blocks())
        first = "the embeddings" if lowest == 0 else f"block {lowest - 1}"
        return f"the decoder and the encoder from {first} up train ({len(trained)} tensors; {blocks} blocks)"

    @property
    def encoder_trains(self) -> bool:
        return self.mode != "frozen"

    def train(self, mode: bool = True) -> "Segmentor":
        super().train(mode)
        if not self.encoder_trains:
            self.encoder.eval()
        if self.freeze_norm:  # looked up each time: SyncBatchNorm conversion replaces the modules
            for layer in norm_layers(self.encoder):
                layer.eval()
        return self

    def encode(self, image: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Encoder features; without autograd when the encoder is frozen. With ``per_frame``, a single-date
        encoder sees each frame of (B, C, T, H, W) input as a sample and returns (B, T, C_i, h_i, w_i) maps."""
        with contextlib.nullcontext() if self.encoder_trains else torch.no_grad():
            if not self.per_frame:
                return self.encoder(image)
            b, t = next(iter(image.values())).shape[:3:2]
            frames = {m: x.transpose(1, 2).reshape(b * t, x.shape[1], 1, *x.shape[3:]) for m, x in image.items()}
            return [f.view(b, t, *f.shape[1:]) for f in self.encoder(frames)]

    def forward(self, image: dict[str, torch.Tensor], output_size: tuple[int, int]) -> torch.Tensor:
        return self.decoder(self.encode(image), output_size)

    def trainable_state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold: the decoder, plus the encoder when it trains (only its adapters
        under LoRA: the base weights are the release file's)."""
        state = {"decoder": self.decoder.state_dict()}
        if self.mode == "lora":
            state["encoder_adapters"] = adapter_state_dict(self.encoder)
        elif self.encoder_trains:
            state["encoder"] = self.encoder.state_dict()
        return state

    def load_trainable_state_dict(self, state: dict[str, Any]) -> None:
        self.decoder.load_state_dict(state["decoder"])
        if self.mode == "lora":
            load_adapter_state_dict(self.encoder, state.get("encoder_adapters", {}))
        elif self.encoder_trains:
            if "encoder" not in state:
                raise ValueError(f"the checkpoint holds no encoder weights but mode={self.mode} trains the encoder")
            self.encoder.load_state_dict(state["encoder"])

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        encoder = sum(p.numel() for p in self.encoder.parameters())
        return {"total_params": total, "trainable_params": trainable, "encoder_params": encoder}
