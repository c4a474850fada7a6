"""Label fractions: train on a stratified subset of the train split's tiles, the same one on every run.

``dataset.train_fraction=f`` (0 < f <= 1; 1.0, the default, is the whole split and needs no file) trains on
``max(1, round(f * n))`` of the ``n`` tiles of the train split (halves round up); ``dataset.subset_draw=d``
(default 0) picks one of several different draws. Validation and test always stay whole.

How a subset is drawn. A tile's burn share is the share of class-1 pixels among the labelled pixels of its
mask (masks read through the dataset's raster cache, so a cached mask is not decoded again). The tiles are
sorted by burn share (equal shares in an order drawn for ``d``) and the sorted list is halved, each half
halved again, down to single tiles: these nested halves are the strata. Draw ``d`` orders the tiles by
interleaving the two halves of every stratum, the half that goes first chosen at random by a generator
seeded with ``d`` alone; every prefix of that order holds the same share, to within one tile, of every
stratum at every level. The subset of fraction ``f`` is the first ``max(1, round(f * n))`` tiles of the order,
so the subsets of one draw are nested: from one split, the 1 % subset of draw ``d`` lies inside its 10 %
subset, which lies inside its 50 % subset.

Files. A subset is written once per (dataset folder, fraction, draw) to
``<root_path>/subsets/train_f<fraction>_d<draw>.json`` (atomically, by rank 0) and read back by every later
run. Its content is a function of the split's tiles and masks, the fraction and the draw only (no path, no
time), so machines with copies of the data write the same bytes and two jobs racing to write it write the
same file; its SHA-256 (``subset_sha256`` in results.json) names the tiles a run trained on. A file that
exists is used as it is; one that lists a tile the current train split does not hold is an error that names
it: delete it to draw again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from benchmark.atomic import write_json
from benchmark.data.hlsburnscars import read_mask

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the file's fields change meaning; newer files are refused
SUBSET_KEYS = ("train_fraction", "subset_draw")  # dataset keys read here, not by the dataset class
FOLDER = "subsets"
DRAW_SALT = 0x5B5E7  # keeps a draw's generator apart from generators seeded with the same small integer
METHOD = (
    "tiles sorted by burn share (equal shares in an order drawn for the draw) and halved recursively into "
    "strata; the draw's order interleaves the two halves of every stratum, the half that goes first chosen "
    f"at random (numpy.random.default_rng([{DRAW_SALT}, draw])); the subset is the first "
    "max(1, round(fraction * tiles)) tiles of that order (halves up), listed here in that order"
)
NESTED = (
    "yes: for one split and draw, the subset of a smaller fraction is a prefix of the same order as that of "
    "a larger fraction, so it is contained in it"
)


class SubsetError(ValueError):
    """A subset file that cannot be used or written (the message names the file and what to do)."""


def requested_subset(dataset_cfg: Mapping[str, Any]) -> tuple[float, int]:
    """``(dataset.train_fraction, dataset.subset_draw)``, checked; configs older than these keys get ``(1.0, 0)``."""
    fraction = dataset_cfg.get("train_fraction", 1.0)
    draw = dataset_cfg.get("subset_draw", 0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"dataset.train_fraction={fraction}: must be a number in (0, 1], the share of the train "
                         "split's tiles to train on (1.0 = all of them)")
    if isinstance(draw, bool) or not isinstance(draw, int) or draw < 0:
        raise ValueError(f"dataset.subset_draw={draw}: must be a whole number >= 0 (0, 1, 2, ... draw different "
                         "subsets of the same size)")
    return float(fraction), draw


def subset_path(root_path: str | Path, fraction: float, draw: int) -> Path:
    """Where the subset of ``fraction`` and ``draw`` of the dataset in ``root_path`` is kept."""
    return Path(root_path) / FOLDER / f"train_f{fraction!r}_d{draw}.json"


def subset_size(fraction: float, tiles: int) -> int:
    """``round(fraction * tiles)`` with halves up, at least one tile."""
    return max(1, math.floor(fraction * tiles + 0.5))


def burn_shares(dataset: Any) -> dict[str, float]:
    """``{stem: share of class-1 pixels among the labelled mask pixels}`` of every scene of ``dataset``."""
    cache = getattr(dataset, "raster_cache", None)
    shares = {}
    for stem, _, mask_path in dataset.scenes:
        mask = read_mask(mask_path) if cache is None else cache.load(mask_path, read_mask)
        labelled = (mask >= 0) & (mask < dataset.num_classes) & (mask != dataset.ignore_index)
        total = int(labelled.sum())
        # rounded so that the file, and the order of ties, do not hang on the last bits of a division
        shares[stem] = round(int((labelled & (mask == 1)).sum()) / total, 6) if total else 0.0
    return shares


def interleaved(ranked: Sequence[str], rng: np.random.Generator) -> list[str]:
    """``ranked`` (sorted by burn share) in an order whose every prefix takes half, to within one tile, of
    each half of every stratum (each half of the list, each half of those, ...)."""
    if len(ranked) < 2:
        return list(ranked)
    half = len(ranked) // 2
    first, second = interleaved(ranked[:half], rng), interleaved(ranked[half:], rng)
    if rng.random() < 0.5:
        first, second = second, first
    merged = [stem for pair in zip(first, second) for stem in pair]
    longer = first if len(first) > len(second) else second
    return merged + longer[len(merged) // 2:]


def draw_order(shares: Mapping[str, float], draw: int) -> list[str]:
    """Draw ``draw``'s order of the tiles: the subset of every fraction is a prefix of it."""
    rng = np.random.default_rng([DRAW_SALT, draw])
    names = sorted(shares)
    ties = dict(zip(names, rng.permutation(len(names)).tolist()))
    return interleaved(sorted(names, key=lambda stem: (shares[stem], ties[stem])), rng)


def choose(shares: Mapping[str, float], fraction: float, draw: int) -> list[str]:
    """The tiles of the subset, in draw order."""
    return draw_order(shares, draw)[: subset_size(fraction, len(shares))]


def mean_share(shares: Sequence[float]) -> float:
    return round(float(np.mean(shares)), 6) if shares else 0.0


def subset_record(dataset: Any, split: Mapping[str, Any], fraction: float, draw: int) -> dict[str, Any]:
    """The content of the subset file of ``fraction`` and ``draw`` of the split ``dataset``."""
    shares = burn_shares(dataset)
    chosen = choose(shares, fraction, draw)
    files = {stem: (Path(image).name, Path(mask).name) for stem, image, mask in dataset.scenes}
    return {
        "format_version": FORMAT_VERSION,
        "dataset": type(dataset).__name__,
        "split": {**split, "tiles": len(shares)},
        "fraction": fraction,
        "draw": draw,
        "burn_share": "share of class-1 pixels among the labelled pixels of the tile's mask",
        "method": METHOD,
        "nested": NESTED,
        "split_mean_burn_share": mean_share(list(shares.values())),
        "subset_mean_burn_share": mean_share([shares[stem] for stem in chosen]),
        "tiles": [{"stem": stem, "image": files[stem][0], "mask": files[stem][1], "burn_share": shares[stem]}
                  for stem in chosen],
    }


def parse(path: Path, content: bytes, fraction: float, draw: int) -> tuple[list[str], dict[str, Any]]:
    """The stems listed by a subset file and the file's record; :class:`SubsetError` if it is not one for
    ``fraction`` and ``draw``."""
    fix = f"delete it (rm {path}) to draw the subset again"
    try:
        record = json.loads(content)
        chosen = [str(tile["stem"]) for tile in record["tiles"]]
        version, recorded = record["format_version"], (record["fraction"], record["draw"])
    except (ValueError, KeyError, TypeError) as error:
        raise SubsetError(f"{path} is not a readable subset file ({type(error).__name__}: {error}): {fix}") from None
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SubsetError(f"{path} has format_version {version!r}; this geofm-bench reads 1..{FORMAT_VERSION}: use "
                          f"the version that wrote it, or {fix}")
    if recorded != (fraction, draw) or not chosen:
        raise SubsetError(f"{path} holds fraction={recorded[0]}, draw={recorded[1]} and {len(chosen)} tile(s), not "
                          f"a subset of dataset.train_fraction={fraction}, dataset.subset_draw={draw}: {fix}")
    return chosen, record


def read_subset(path: Path, stems: set[str], fraction: float, draw: int) -> tuple[list[str], str]:
    """The stems of an existing subset file and the SHA-256 of its content, after checking them against
    ``stems`` (the current train split); :class:`SubsetError` naming the file and the fix otherwise."""
    content = path.read_bytes()
    chosen, record = parse(path, content, fraction, draw)
    missing = [stem for stem in chosen if stem not in stems]
    if missing:
        raise SubsetError(
            f"{path} lists {len(missing)} tile(s) that the current train split does not hold (e.g. {missing[0]}): it "
            "was drawn from other data or another split (dataset.val_fraction, dataset.split_seed). Delete it "
            f"(rm {path}) to draw the subset again from the current split"
        )
    drawn_from = record.get("split", {}).get("tiles") if isinstance(record.get("split"), dict) else None
    if drawn_from != len(stems):
        log.warning("%s was drawn from a train split of %s tiles; the split now has %d: it is used as it is (delete "
                    "it to draw again from the current split)", path, drawn_from, len(stems))
    return chosen, hashlib.sha256(content).hexdigest()


def train_subset(dataset: Any, dataset_cfg: Mapping[str, Any], fraction: float, draw: int) -> list[str]:
    """The stems of the subset of the train split ``dataset``: read from its file, which is first drawn and
    written when there is none. Call on one process (rank 0) and share the result."""
    if not hasattr(dataset, "scenes"):
        raise ValueError(f"dataset.train_fraction={fraction} needs a dataset that lists its scenes; "
                         f"{type(dataset).__name__} does not: use dataset.train_fraction=1.0")
    path = subset_path(dataset_cfg["root_path"], fraction, draw)
    stems = {scene[0] for scene in dataset.scenes}
    if not path.is_file():
        split = {"name": "train", "folder": Path(dataset.scenes[0][1]).parent.name,
                 "val_fraction": dataset_cfg.get("val_fraction"), "split_seed": dataset_cfg.get("split_seed")}
        record = subset_record(dataset, split, fraction, draw)
        try:
            write_json(path, record)
        except OSError as error:
            raise SubsetError(f"cannot write the subset file {path} ({error}): make {path.parent} writable, or "
                              "point dataset.root_path at a writable copy of the dataset") from error
        log.info("Drew the train subset of dataset.train_fraction=%s, dataset.subset_draw=%d: %s", fraction, draw, path)
    chosen, digest = read_subset(path, stems, fraction, draw)
    log.info("train split: training on %d of %d tiles (dataset.train_fraction=%s, dataset.subset_draw=%d) listed "
             "in %s (sha256 %s)", len(chosen), len(stems), fraction, draw, path, digest)
    return chosen


def restrict(dataset: Any, chosen: Sequence[str]) -> None:
    """Keep only the scenes ``chosen`` of ``dataset`` (in their split order)."""
    keep = set(chosen)
    dataset.scenes = [scene for scene in dataset.scenes if scene[0] in keep]
    if len(dataset.scenes) != len(keep):
        raise SubsetError(f"{len(keep) - len(dataset.scenes)} tile(s) of the train subset are missing from this "
                          "process's train split: every process must see the same dataset files")


def recorded_sha256(dataset_cfg: Mapping[str, Any]) -> str | None:
    """SHA-256 of the subset file a run trains on; None when it trains on the whole split (or the file is gone)."""
    fraction, draw = requested_subset(dataset_cfg)
    if fraction == 1.0:
        return None
    path = subset_path(dataset_cfg["root_path"], fraction, draw)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        log.warning("The subset file %s is gone: results.json records no subset_sha256", path)
        return None
