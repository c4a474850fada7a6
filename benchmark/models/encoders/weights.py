"""Finding, reading and strictly loading encoder release checkpoints.

Loading never falls back to random weights: a missing file is downloaded (by one process, the others
wait) or reported, a foreign or damaged file is reported with what is wrong in it. Reading never runs
code from the file: see :func:`benchmark.engine.checkpoint.safe_torch_load`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import torch

from benchmark.download import DownloadError, download_file
from benchmark.engine.checkpoint import CheckpointReadError, UntrustedPickleError, safe_torch_load

if TYPE_CHECKING:
    from benchmark.models.encoders.base import Encoder

log = logging.getLogger(__name__)


class WeightsNotFoundError(FileNotFoundError):
    """The weights file is absent and could not be downloaded."""


class CheckpointLayoutError(ValueError):
    """The file is not a release checkpoint of the expected family, or cannot be read."""


# Top-level keys by which each published layout can be recognised, to tell a user which file they gave.
_LAYOUT_SIGNATURES = (
    ("CROMA (dict of s1_encoder / s2_encoder / joint_encoder)", ("s2_encoder", "s1_encoder")),
    ("DOFA (flat state_dict with patch_embed.weight_generator)", ("patch_embed.weight_generator.weight_tokens",)),
    ("Prithvi MAE (flat, 3-D patch embedding)", ("patch_embed.proj.weight", "decoder_pred.weight")),
    ("Prithvi (encoder.-prefixed layout)", ("encoder.patch_embed.proj.weight",)),
    ("SSL4EO MAE / data2vec ({'model': state_dict})", ("model",)),
    ("SSL4EO DINO ({'teacher': ...})", ("teacher",)),
    ("SSL4EO MoCo ({'state_dict': module.base_encoder...})", ("state_dict",)),
)


def describe_checkpoint(checkpoint: Any) -> str:
    """A short guess of which release layout ``checkpoint`` is, for error messages ("the file ...")."""
    if not isinstance(checkpoint, Mapping):
        return f"is an object of type {type(checkpoint).__name__}, not a dict"
    keys = set(checkpoint)
    for name, signature in _LAYOUT_SIGNATURES:
        if any(key in keys for key in signature):
            return f"looks like a {name} checkpoint"
    sample = ", ".join(sorted(map(str, keys))[:8])
    return f"is an unrecognised dict with keys [{sample}{', ...' if len(keys) > 8 else ''}]"


def resolve_weights_file(encoder_weights: str | None, download_url: str | None) -> Path:
    """Path of the weights file, downloading it from ``download_url`` when it is missing."""
    if not encoder_weights:
        raise WeightsNotFoundError(
            "This encoder needs pretrained weights but `encoder.encoder_weights` is empty. "
            "Set encoder.encoder_weights=<path to the release file>, or use mode=random to train "
            "the same architecture from scratch."
        )
    path = Path(encoder_weights)
    if path.is_file():
        return path
    if path.exists():
        raise WeightsNotFoundError(f"encoder_weights {path} is not a file")
    reason = "no download_url is configured"
    if download_url:
        log.info("Encoder weights %s not found; downloading %s", path, download_url)
        try:
            return download_file(download_url, path)
        except DownloadError as error:
            reason = str(error)
    fetch = (
        f"`python scripts/download_weights.py --url {download_url} --output {path}` on a machine "
        "with internet access (or download the URL by hand) and copy the file there"
        if download_url
        else "the model authors' release page"
    )
    raise WeightsNotFoundError(
        f"Encoder weights file {path} does not exist and could not be downloaded ({reason}). "
        f"URL: {download_url}. Get it with {fetch}; or point encoder.encoder_weights=<path> at "
        "your copy. Use mode=random to train without pretrained weights."
    )


def read_checkpoint(path: str | Path) -> Any:
    """Unpickle a release file on CPU without running code in it (see :func:`safe_torch_load`).

    Besides tensors, a file may hold the allow-listed objects some releases carry (training args, numpy
    scalars); anything else raises :class:`UntrustedPickleError` unless the file is in
    ``trusted_pickle_files``. A damaged or foreign file raises :class:`CheckpointLayoutError`.
    """
    path = Path(path)
    try:
        return safe_torch_load(path, damaged_hint="An interrupted download? Delete it and fetch it again.")
    except UntrustedPickleError:
        raise
    except CheckpointReadError as error:
        raise CheckpointLayoutError(str(error)) from error


def unwrap(checkpoint: Any, key: str, expected: str) -> Mapping[str, Any]:
    """``checkpoint[key]`` when the layout has that wrapper, else a :class:`CheckpointLayoutError`."""
    if not isinstance(checkpoint, Mapping) or key not in checkpoint:
        raise CheckpointLayoutError(
            f"expected {expected} with top-level key {key!r}, but the file "
            f"{describe_checkpoint(checkpoint)}. Check encoder.encoder_weights points at the right file."
        )
    return checkpoint[key]


def drop_keys(
    state_dict: Mapping[str, torch.Tensor],
    prefixes: Iterable[str],
) -> dict[str, torch.Tensor]:
    """Copy of ``state_dict`` without the keys starting with any of ``prefixes``."""
    prefixes = tuple(prefixes)
    return {key: value for key, value in state_dict.items() if not key.startswith(prefixes)}


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys starting with ``prefix``, with it removed; other keys are dropped."""
    return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}


def check_band_count(file_bands: int, bands: Sequence[str], owner: str) -> None:
    """Raise when a file's input layer was pretrained on another number of bands than configured."""
    if file_bands != len(bands):
        raise CheckpointLayoutError(
            f"the file's input layer takes {file_bands} bands, but {owner} is configured for "
            f"{len(bands)} ({', '.join(bands)}). The file was pretrained on other bands: use the encoder "
            "config made for it (e.g. the SAR instead of the optical variant), or point "
            "encoder.encoder_weights at the release file for these bands."
        )


def strict_load(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``module`` requiring every key and shape to match exactly."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = sorted(
        f"{key}: file {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    )
    if missing or unexpected or mis_shaped:
        def listing(title: str, items: list[str]) -> str:
            shown = ", ".join(items[:10]) + (f", ... ({len(items)} in all)" if len(items) > 10 else "")
            return f"\n  {title} ({len(items)}): {shown}" if items else ""

        raise CheckpointLayoutError(
            f"{source} does not match {type(module).__name__}:"
            + listing("missing keys", missing)
            + listing("unexpected keys", unexpected)
            + listing("mis-shaped keys", mis_shaped)
            + "\nThe file may belong to another encoder or another band/size configuration."
        )
    module.load_state_dict(state_dict, strict=True)


def load_release_weights(encoder: "Encoder", path: str | Path) -> None:
    """Read a release file and load it into ``encoder`` strictly (after its documented adaptations)."""
    checkpoint = read_checkpoint(path)
    try:
        state_dict = encoder.convert_release_checkpoint(checkpoint)
    except CheckpointLayoutError as error:
        raise CheckpointLayoutError(f"{path}: {error}") from error
    strict_load(encoder, state_dict, source=str(path))
    log.info("%s: loaded %d tensors from %s", type(encoder).__name__, len(state_dict), path)
