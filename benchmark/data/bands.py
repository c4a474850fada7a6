"""Band catalogue: every band name the benchmark understands, with its modality and wavelength.

Datasets and encoders describe their inputs by band *name*; preprocessing matches names through
this catalogue. Aliases (e.g. the HLS names ``BLUE`` or ``NIR_NARROW`` used by TerraTorch and Prithvi)
resolve to the canonical Sentinel-2 / Sentinel-1 names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence


@dataclass(frozen=True)
class Band:
    """One spectral or radar band.

    Args:
        name: canonical name (``B2``, ``B8A``, ``VV``...).
        modality: ``"optical"`` or ``"sar"``.
        wavelength_um: central wavelength in micrometres (DOFA's convention for SAR: 3.75).
        description: human-readable name.
    """

    name: str
    modality: str
    wavelength_um: float
    description: str


_BANDS = (
    Band("B1", "optical", 0.443, "coastal aerosol"),
    Band("B2", "optical", 0.490, "blue"),
    Band("B3", "optical", 0.560, "green"),
    Band("B4", "optical", 0.665, "red"),
    Band("B5", "optical", 0.705, "red edge 1"),
    Band("B6", "optical", 0.740, "red edge 2"),
    Band("B7", "optical", 0.783, "red edge 3"),
    Band("B8", "optical", 0.832, "NIR (broad)"),
    Band("B8A", "optical", 0.864, "NIR (narrow)"),
    Band("B9", "optical", 0.945, "water vapour"),
    Band("B10", "optical", 1.373, "cirrus"),
    Band("B11", "optical", 1.610, "SWIR 1"),
    Band("B12", "optical", 2.200, "SWIR 2"),
    Band("VV", "sar", 3.75, "Sentinel-1 VV"),
    Band("VH", "sar", 3.75, "Sentinel-1 VH"),
)

BANDS: dict[str, Band] = {band.name: band for band in _BANDS}

ALIASES: dict[str, str] = {
    "COASTAL": "B1",
    "BLUE": "B2",
    "GREEN": "B3",
    "RED": "B4",
    "RED_EDGE_1": "B5",
    "RED_EDGE_2": "B6",
    "RED_EDGE_3": "B7",
    "NIR": "B8",
    "NIR_BROAD": "B8",
    "NIR_NARROW": "B8A",
    "WATER_VAPOR": "B9",
    "CIRRUS": "B10",
    "SWIR_1": "B11",
    "SWIR_2": "B12",
    "B01": "B1",
    "B02": "B2",
    "B03": "B3",
    "B04": "B4",
    "B05": "B5",
    "B06": "B6",
    "B07": "B7",
    "B08": "B8",
    "B09": "B9",
}


class UnknownBandError(ValueError):
    """A band name that is neither canonical nor an alias."""


def resolve_band(name: str) -> Band:
    """Return the catalogue entry for ``name`` (canonical or alias, case-insensitive)."""
    key = str(name).upper()
    key = ALIASES.get(key, key)
    if key not in BANDS:
        known = ", ".join(BANDS)
        raise UnknownBandError(
            f"Unknown band name {name!r}. Known bands: {known} (aliases: {', '.join(ALIASES)}). "
            "Fix the `bands` list of the dataset config or the `input_bands` of the encoder config."
        )
    return BANDS[key]


def canonical_names(names: Iterable[str]) -> list[str]:
    """Canonical names for a list of band names; raises :class:`UnknownBandError` on unknown ones."""
    return [resolve_band(name).name for name in names]


def canonical_band_dict(bands: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Canonicalise a ``{modality: [band, ...]}`` mapping and check every band's modality."""
    result: dict[str, list[str]] = {}
    for modality, names in bands.items():
        canon = canonical_names(names)
        for name in canon:
            if BANDS[name].modality != modality:
                raise UnknownBandError(
                    f"Band {name!r} is a {BANDS[name].modality} band but is listed under {modality!r}."
                )
        result[str(modality)] = canon
    return result


def wavelengths_um(names: Sequence[str]) -> list[float]:
    """Central wavelengths in micrometres, in the given order."""
    return [resolve_band(name).wavelength_um for name in names]
