"""Release-checkpoint layouts: how a published file names an encoder's weights.

Each family describes its release file once, beside its model, as a :class:`ReleaseLayout`. The same
description reads a release file into the model's state_dict naming (loading) and writes a state_dict
in the release layout (tests, timing scripts), so the two directions cannot drift apart.

A checkpoint is a tree of dicts. A *key path* joins the keys from the top down to a value with ``/``:
``teacher/backbone.blocks.0.norm1.weight`` is ``checkpoint["teacher"]["backbone.blocks.0.norm1.weight"]``
(tensor names keep their dots).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

SEPARATOR = "/"


class CheckpointLayoutError(ValueError):
    """The file is not a release checkpoint of the expected family, or cannot be read."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{key path: value}`` of every non-dict value (and empty dict) in ``tree``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, path + SEPARATOR))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The tree whose :func:`flatten` is ``flat``."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(SEPARATOR)
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def _longest(prefixes: Iterable[str], key: str) -> str | None:
    """The longest of ``prefixes`` that ``key`` starts with."""
    return max((p for p in prefixes if key.startswith(p)), key=len, default=None)


@dataclass(frozen=True)
class ReleaseLayout:
    """How one published file stores an encoder.

    Attributes:
        name: the file's family for messages ("CROMA", "SSL4EO DINO").
        summary: its structure in a few words, for messages.
        signature: top-level keys, any of which marks a file of this layout.
        rules: ``(release path prefix, state_dict prefix)`` pairs. A key path under a release prefix
            is the model key with that prefix replaced (the longest prefix wins, both ways). Key paths
            under no rule belong to other networks or to the training state and are never read.
        ignored: key path prefixes the file carries besides the encoder (pretraining decoders, heads,
            momentum encoders): skipped when reading even under a rule; tests write them to prove it.
        article: "a" or "an", to read the name in a sentence.
    """

    name: str
    summary: str
    signature: tuple[str, ...]
    rules: tuple[tuple[str, str], ...] = (("", ""),)
    ignored: tuple[str, ...] = ()
    article: str = "a"

    @property
    def expected(self) -> str:
        keys = " or ".join(repr(key) for key in self.signature)
        return f"{self.article} {self.name} checkpoint ({self.summary}) with top-level key {keys}"

    def matches(self, checkpoint: Any) -> bool:
        """Whether ``checkpoint`` has this layout's signature (it may still miss keys)."""
        return isinstance(checkpoint, Mapping) and any(key in checkpoint for key in self.signature)

    def to_model(self, checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The encoder's weights in ``checkpoint``, under their state_dict names."""
        releases = dict(self.rules)
        state_dict: dict[str, torch.Tensor] = {}
        for path, value in flatten(checkpoint).items():
            release = _longest(releases, path)
            if release is None or path.startswith(self.ignored):
                continue
            state_dict[releases[release] + path[len(release):]] = value
        if not state_dict:
            sample = ", ".join(sorted(flatten(checkpoint))[:5])
            raise CheckpointLayoutError(
                f"expected {self.expected}, but no key of the file is under {list(releases)} (first keys: "
                f"{sample}). Check encoder.encoder_weights points at the right file."
            )
        return state_dict

    def to_release(
        self, state_dict: Mapping[str, torch.Tensor], extras: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The checkpoint tree holding ``state_dict`` in this layout, plus ``extras`` (key path -> value)."""
        models = {model: release for release, model in self.rules}
        flat: dict[str, Any] = {}
        for key, value in state_dict.items():
            model = _longest(models, key)
            if model is None:
                raise ValueError(f"no rule of the {self.name} layout covers the state_dict key {key!r}")
            flat[models[model] + key[len(model):]] = value
        return unflatten({**flat, **(extras or {})})


def match_layout(
    layouts: Sequence[ReleaseLayout], checkpoint: Any, known: Sequence[ReleaseLayout]
) -> ReleaseLayout:
    """The first of ``layouts`` that ``checkpoint`` has; otherwise an error saying which of the
    ``known`` layouts it looks like."""
    for layout in layouts:
        if layout.matches(checkpoint):
            return layout
    expected = ", or ".join(layout.expected for layout in layouts)
    raise CheckpointLayoutError(
        f"expected {expected}, but the file {describe_checkpoint(checkpoint, known)}. "
        "Check encoder.encoder_weights points at the right file."
    )


def describe_checkpoint(checkpoint: Any, known: Sequence[ReleaseLayout]) -> str:
    """A short guess of which ``known`` layout ``checkpoint`` is, for messages ("the file ...")."""
    if not isinstance(checkpoint, Mapping):
        return f"is an object of type {type(checkpoint).__name__}, not a dict"
    names = list(dict.fromkeys(layout.name for layout in known if layout.matches(checkpoint)))
    if names:  # files that share a wrapper key (SSL4EO MAE and data2vec) are named together
        return f"looks like a {' / '.join(names)} checkpoint"
    keys = sorted(map(str, checkpoint))
    return f"is an unrecognised dict with keys [{', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''}]"


def drop_keys(state_dict: Mapping[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    """Copy of ``state_dict`` without the keys starting with any of ``prefixes``."""
    prefixes = tuple(prefixes)
    return {key: value for key, value in state_dict.items() if not key.startswith(prefixes)}


def check_band_count(file_bands: int, bands: Sequence[str], owner: str) -> None:
    """Raise when a file's input layer was pretrained on another number of bands than configured."""
    if file_bands != len(bands):
        raise CheckpointLayoutError(
            f"the file's input layer takes {file_bands} bands, but {owner} is configured for "
            f"{len(bands)} ({', '.join(bands)}). The file was pretrained on other bands: use the encoder "
            "config made for it (e.g. the SAR instead of the optical variant), or point "
            "encoder.encoder_weights at the release file for these bands."
        )
