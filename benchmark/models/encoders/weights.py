"""Finding, reading and strictly loading encoder release checkpoints.

The builders call :func:`load_pretrained` on a freshly built encoder (unless ``mode=random``). Loading
never falls back to random weights: a missing file is downloaded (by one process, the others wait) or
reported, a foreign or damaged file is reported with what is wrong in it. Reading never runs code from
the file: see :func:`benchmark.engine.safe_load.safe_torch_load`. What a release file holds is described
beside each model (its ``release_layouts``), not here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

from benchmark.download import DownloadError, download_file
from benchmark.data.raster_cache import file_identity
from benchmark.engine.safe_load import CheckpointReadError, UntrustedPickleError, is_trusted, safe_torch_load
from benchmark.models.encoders.base import Encoder
from benchmark.models.encoders.croma import CROMA
from benchmark.models.encoders.dofa import DOFA
from benchmark.models.encoders.layout import CheckpointLayoutError, ReleaseLayout, match_layout
from benchmark.models.encoders.prithvi import Prithvi
from benchmark.models.encoders.ssl4eo import SSL4EODINO, SSL4EOMAE, SSL4EOData2Vec, SSL4EOMoCo

__all__ = ["CheckpointLayoutError", "WeightsNotFoundError", "load_pretrained", "resolve_weights_file"]

log = logging.getLogger(__name__)

# Every family's layouts, only to tell a user which file they gave when it is not the configured one.
KNOWN_LAYOUTS: tuple[ReleaseLayout, ...] = tuple(
    layout
    for family in (DOFA, Prithvi, CROMA, SSL4EOMAE, SSL4EODINO, SSL4EOMoCo, SSL4EOData2Vec)
    for layout in family.release_layouts
)


class WeightsNotFoundError(FileNotFoundError):
    """The weights file is absent and could not be downloaded."""


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

    The last file read is kept, so that the jobs of a sweep in one process read it once: the same file
    (path, size, modification time) read under the same trust gives the kept tensors in fresh containers.
    """
    path = Path(path)
    key = (file_identity(path), is_trusted(path)) if path.is_file() else None
    if key is not None and _last_read.get("key") == key:
        return fresh_containers(_last_read["checkpoint"])
    try:
        checkpoint = safe_torch_load(path, damaged_hint="An interrupted download? Delete it and fetch it again.")
    except UntrustedPickleError:
        raise
    except CheckpointReadError as error:
        raise CheckpointLayoutError(str(error)) from error
    _last_read.clear()
    _last_read.update(key=key, checkpoint=checkpoint)
    return fresh_containers(checkpoint)


_last_read: dict[str, Any] = {}  # the last release file read in this process (read_checkpoint)


def fresh_containers(value: Any) -> Any:
    """``value`` with new dicts and lists, the same tensors: renaming and adapting keys leaves the kept copy whole."""
    if isinstance(value, dict):
        return {key: fresh_containers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [fresh_containers(item) for item in value]
    return value


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


def load_pretrained(encoder: Encoder, encoder_weights: str | None, download_url: str | None) -> None:
    """Load the release file ``encoder_weights`` into ``encoder``, strictly.

    The file is downloaded from ``download_url`` when missing, read without running code, renamed by
    the encoder's release layout and adapted as the family documents (:meth:`Encoder.from_release`);
    then every parameter must come from it with the right shape.
    """
    path = resolve_weights_file(encoder_weights, download_url)
    checkpoint = read_checkpoint(path)
    try:
        layout = match_layout(encoder.release_layouts, checkpoint, KNOWN_LAYOUTS)
        state_dict = encoder.from_release(layout.to_model(checkpoint))
    except CheckpointLayoutError as error:
        raise CheckpointLayoutError(f"{path}: {error}") from error
    strict_load(encoder, state_dict, source=str(path))
    log.info("%s: loaded %d tensors from %s", type(encoder).__name__, len(state_dict), path)
