"""Spectral indices of a multiband raster, block by block.

Bands are found by their descriptions, case-insensitively: the plugin's names (coastal,
blue, green, red, nir, swir1, swir2, nir_broad, re1, re2, re3: HLS's common bands, Claverie et al.
2018) or Sentinel-2's zero-padded band names (B01 coastal, B02 blue, B03 green, B04 red,
B05 re1, B06 re2, B07 re3, B08 nir_broad, B8A nir, B11 swir1, B12 swir2). Landsat band
numbers ("B4", "SR_B4") are not recognised: their meaning changes between TM/ETM+ and OLI.
``band_map`` ("red=3,nir=7", 1-based band numbers) overrides or completes the descriptions.
NIR is ``nir`` (narrow NIR, Sentinel-2 B8A) when present, else ``nir_broad`` (B08).

Values are DN × scale + offset: with ``scale`` None or 0 the GDAL scale/offset of each band
(1 and 0 when unset), otherwise DN × ``scale``. Normalized differences (NDVI, GNDVI, NDRE,
NBR, NDMI) do not depend on the scale; EVI, SAVI and MSAVI need reflectance in 0–1, so asking
for them on data that look like scaled integers (median of the valid red values > 1.5) with
no scale is an error.

Output: float32, one band per index, described by the index name; NaN (the no-data value)
where an input band is no-data or NaN, or the index is undefined (zero denominator).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..raster.grid import Grid
from ..raster.read import Readers
from ..raster.write import RasterSpec, process_blocks
from ..errors import ForestCarbonError
from ..outputs import provenance

BAND_NAMES = ("coastal", "blue", "green", "red", "nir", "swir1", "swir2", "nir_broad", "re1", "re2", "re3")
SENTINEL2_ALIASES = {"b01": "coastal", "b02": "blue", "b03": "green", "b04": "red", "b05": "re1", "b06": "re2",
                     "b07": "re3", "b08": "nir_broad", "b8a": "nir", "b11": "swir1", "b12": "swir2"}
DEFAULT_INDICES = "NDVI,EVI,NBR,NDMI,SAVI"
#: a reflectance-valued red above this median means "not reflectance" (DN scaled by 1e3-1e4)
SCALED_MEDIAN = 1.5


def _nd(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        den = a + b
        return np.where(den == 0, np.nan, (a - b) / np.where(den == 0, 1, den))


def ndvi(nir, red):
    """Normalized difference vegetation index (Rouse et al. 1974): (nir − red)/(nir + red).

    Parameters
    ----------
    nir, red : numpy.ndarray
        Reflectance or any common scaling (the ratio does not depend on it).

    Returns
    -------
    numpy.ndarray
        NaN where nir + red = 0.
    """
    return _nd(nir, red)


def gndvi(nir, green):
    """Green NDVI (Gitelson et al. 1996): (nir − green)/(nir + green).

    Parameters
    ----------
    nir, green : numpy.ndarray

    Returns
    -------
    numpy.ndarray
        In −1…1; NaN where the sum is 0.
    """
    return _nd(nir, green)


def ndre(nir, re1):
    """Normalized difference red-edge (Barnes et al. 2000): (nir − re1)/(nir + re1).

    Parameters
    ----------
    nir, re1 : numpy.ndarray
        NIR and the first red-edge band (Sentinel-2 B05).

    Returns
    -------
    numpy.ndarray
    """
    return _nd(nir, re1)


def nbr(nir, swir2):
    """Normalized burn ratio (Key & Benson 2006): (nir − swir2)/(nir + swir2).

    Parameters
    ----------
    nir, swir2 : numpy.ndarray
        NIR and the 2.2 µm SWIR band.

    Returns
    -------
    numpy.ndarray
        Undefined (NaN) where both are 0.
    """
    return _nd(nir, swir2)


def ndmi(nir, swir1):
    """Normalized difference moisture index (Gao 1996's NDWI; Wilson & Sader 2002): (nir − swir1)/(nir + swir1).

    Parameters
    ----------
    nir, swir1 : numpy.ndarray
        NIR and the 1.6 µm SWIR band, in one scaling.

    Returns
    -------
    numpy.ndarray
    """
    return _nd(nir, swir1)


def evi(nir, red, blue):
    """Enhanced vegetation index (Huete et al. 2002): 2.5 (nir − red)/(nir + 6 red − 7.5 blue + 1).

    Parameters
    ----------
    nir, red, blue : numpy.ndarray
        Reflectance in 0-1 (the constants assume it).

    Returns
    -------
    numpy.ndarray
        NaN where the denominator is 0.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        den = nir + 6.0 * red - 7.5 * blue + 1.0
        return np.where(den == 0, np.nan, 2.5 * (nir - red) / np.where(den == 0, 1, den))


def savi(nir, red, soil: float = 0.5):
    """Soil-adjusted vegetation index (Huete 1988): (1 + L)(nir − red)/(nir + red + L).

    Parameters
    ----------
    nir, red : numpy.ndarray
        Reflectance in 0-1.
    soil : float
        The soil brightness factor L (0.5 for intermediate vegetation cover).

    Returns
    -------
    numpy.ndarray
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        den = nir + red + soil
        return np.where(den == 0, np.nan, (1.0 + soil) * (nir - red) / np.where(den == 0, 1, den))


def msavi(nir, red):
    """Modified SAVI (Qi et al. 1994) in its closed form (MSAVI2):
    (2 nir + 1 − sqrt((2 nir + 1)² − 8 (nir − red)))/2.

    Parameters
    ----------
    nir, red : numpy.ndarray
        Reflectance, 0-1.

    Returns
    -------
    numpy.ndarray
        NaN where the root is undefined.
    """
    with np.errstate(invalid="ignore"):
        root = (2.0 * nir + 1.0) ** 2 - 8.0 * (nir - red)
        return np.where(root < 0, np.nan, (2.0 * nir + 1.0 - np.sqrt(np.maximum(root, 0))) / 2.0)


@dataclass(frozen=True)
class IndexDef:
    function: object
    bands: tuple[str, ...]  # "nir" stands for nir or nir_broad
    absolute: bool  # needs reflectance in 0-1


INDICES = {
    "NDVI": IndexDef(ndvi, ("nir", "red"), False),
    "EVI": IndexDef(evi, ("nir", "red", "blue"), True),
    "NBR": IndexDef(nbr, ("nir", "swir2"), False),
    "NDMI": IndexDef(ndmi, ("nir", "swir1"), False),
    "SAVI": IndexDef(savi, ("nir", "red"), True),
    "GNDVI": IndexDef(gndvi, ("nir", "green"), False),
    "NDRE": IndexDef(ndre, ("nir", "re1"), False),
    "MSAVI": IndexDef(msavi, ("nir", "red"), True),
}


def parse_indices(indices) -> list[str]:
    """Index names from a comma/space-separated string or a list, upper-cased and checked.

    Parameters
    ----------
    indices : str or iterable of str
        Names of :data:`INDICES`, e.g. ``"NDVI,EVI"``.

    Returns
    -------
    list of str
        Refused when empty, unknown or repeated.
    """
    items = re.split(r"[,;\s]+", indices) if isinstance(indices, str) else list(indices or [])
    names = [str(i).strip().upper() for i in items if str(i).strip()]
    if not names:
        raise ForestCarbonError(f"No index asked for: give a comma-separated list of {', '.join(INDICES)}.")
    unknown = [n for n in names if n not in INDICES]
    if unknown:
        raise ForestCarbonError(f"Unknown index {', '.join(unknown)}: choose among {', '.join(INDICES)}.")
    if len(set(names)) != len(names):
        raise ForestCarbonError(f"An index is listed twice in {', '.join(names)}.")
    return names


def parse_band_map(text, band_count: int | None = None) -> dict[str, int]:
    """``"red=3, nir=7"`` → {"red": 3, "nir": 7}; Sentinel-2 names (``B8A=9``) are read as the plugin's.

    Parameters
    ----------
    text : str or None
        ``name=number`` items separated by commas or semicolons (1-based band numbers).
    band_count : int, optional
        The raster's band count, to refuse numbers beyond it.

    Returns
    -------
    dict
        Band name (of :data:`BAND_NAMES`) → band number; empty for no text.
    """
    if not text or not str(text).strip():
        return {}
    mapping = {}
    for item in re.split(r"[,;]", str(text)):
        if not item.strip():
            continue
        match = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*[=:]\s*(\d+)\s*", item)
        if not match:
            raise ForestCarbonError(f"BAND_MAP item {item.strip()!r} is not name=number: write e.g. "
                                    "'red=3,nir=8' with 1-based band numbers.")
        name, number = match.group(1).lower(), int(match.group(2))
        name = SENTINEL2_ALIASES.get(name, name)
        if name not in BAND_NAMES:
            raise ForestCarbonError(f"BAND_MAP names an unknown band {match.group(1)!r}: use "
                                    f"{', '.join(BAND_NAMES)}.")
        if name in mapping:
            raise ForestCarbonError(f"BAND_MAP gives the band {name!r} twice.")
        mapping[name] = number
    for name, number in mapping.items():
        if number < 1 or (band_count is not None and number > band_count):
            raise ForestCarbonError(f"BAND_MAP {name}={number}: the raster has bands 1 to {band_count}.")
    return mapping


def find_bands(descriptions: Sequence[str | None], band_map: dict[str, int] | None = None) -> dict[str, int]:
    """Band name → 1-based band number, from the descriptions, overridden or completed by ``band_map``.

    Parameters
    ----------
    descriptions : sequence of str or None
        The raster's band descriptions (plugin or Sentinel-2 names, any case).
    band_map : dict, optional
        Name → number given by the user; required for a name that several bands carry.

    Returns
    -------
    dict
    """
    found: dict[str, list[int]] = {}
    for i, text in enumerate(descriptions, start=1):
        key = (text or "").strip().lower()
        name = SENTINEL2_ALIASES.get(key, key)
        if name in BAND_NAMES:
            found.setdefault(name, []).append(i)
    bands = {}
    for name, numbers in found.items():
        if len(numbers) == 1:
            bands[name] = numbers[0]
        elif not band_map or name not in band_map:
            raise ForestCarbonError(f"Bands {', '.join(map(str, numbers))} are all described {name!r}: say "
                                    f"which one to use with BAND_MAP, e.g. '{name}={numbers[0]}'.")
    bands.update(band_map or {})
    return bands


def resolve_nir(bands: dict[str, int]) -> str | None:
    """The NIR band to use: ``nir`` (narrow, Sentinel-2 B8A) when found, else ``nir_broad`` (B08).

    Parameters
    ----------
    bands : dict
        Band name → number (:func:`find_bands`).

    Returns
    -------
    str or None
    """
    return "nir" if "nir" in bands else ("nir_broad" if "nir_broad" in bands else None)


def _band_for(index: str, role: str, bands: dict[str, int]) -> int:
    name = resolve_nir(bands) if role == "nir" else role
    if name is None or name not in bands:
        wanted = "nir (or nir_broad)" if role == "nir" else role
        known = ", ".join(f"{k}={v}" for k, v in sorted(bands.items(), key=lambda kv: kv[1])) or "none"
        raise ForestCarbonError(
            f"{index} needs the {wanted} band, which the raster's band descriptions do not name (bands found: "
            f"{known}). Give its 1-based band number with BAND_MAP, e.g. '{role}=4'.")
    return bands[name]


def spectral_indices(path, out_path, indices=DEFAULT_INDICES, band_map=None, scale=None, progress=None,
                     max_workers: int | None = None, parameters: dict | None = None) -> dict:
    """Write the spectral ``indices`` of the raster ``path`` to ``out_path`` (float32 COG).

    Parameters
    ----------
    path : str or Path
        A multiband raster whose bands are found by description (module docstring) or ``band_map``.
    out_path : str or Path
        The output, one band per index.
    indices : str or sequence of str
        Index names of :data:`INDICES` ("NDVI,EVI" or a list).
    band_map : dict or str, optional
        Band name → 1-based band number, or the same as "red=3,nir=7".
    scale : float, optional
        Reflectance = DN × ``scale``; None or 0: each band's GDAL scale/offset.
    progress, max_workers
        Progress and cancellation; threads computing blocks (None: the default).
    parameters : dict, optional
        More entries for the output's provenance.

    Returns
    -------
    dict
        ``indices``, ``bands`` (name → band number found), ``bands_used`` (index → role → band),
        ``scale`` (band → (scale, offset)) and ``output``.
    """
    import rasterio

    names = parse_indices(indices)
    try:
        src = rasterio.open(path)
    except Exception as exc:  # noqa: BLE001
        raise ForestCarbonError(f"{path} is not a readable raster ({exc}).") from exc
    with src:
        mapping = band_map if isinstance(band_map, dict) else parse_band_map(band_map, src.count)
        for name, number in mapping.items():
            if not 1 <= number <= src.count:
                raise ForestCarbonError(f"BAND_MAP {name}={number}: the raster has bands 1 to {src.count}.")
        bands = find_bands(src.descriptions, mapping)
        needed = {idx: tuple(_band_for(idx, role, bands) for role in INDICES[idx].bands) for idx in names}
        factors = band_factors(src, sorted({b for used in needed.values() for b in used}), scale)
        if not (scale is not None and scale != 0):
            _check_reflectance(src, names, needed, factors)
        grid = Grid.of(src)
    calculator = _IndexCalculator(path, names, needed, factors, Readers(grid))
    roles = {idx: dict(zip(INDICES[idx].bands, needed[idx])) for idx in names}
    record = {"INPUT": str(path), "INDICES": ",".join(names), "BAND_MAP": mapping, "SCALE": scale or 0,
              "bands_used": roles}
    record.update(parameters or {})
    try:
        spec = RasterSpec(count=len(names), descriptions=tuple(names),
                          provenance=provenance("spectralindices", record, [path]))
        process_blocks(grid, calculator.compute, out_path, spec, progress=progress, max_workers=max_workers,
                       finish=calculator.finish)
    finally:
        calculator.readers.close()
    return {"indices": names, "bands": bands, "bands_used": roles,
            "scale": dict(factors), "output": Path(out_path)}


def band_factors(src, numbers, scale=None) -> dict[int, tuple[float, float]]:
    """(scale, offset) of each band: reflectance = DN × scale + offset.

    Parameters
    ----------
    src : rasterio.DatasetReader
        The open raster (its GDAL scales/offsets are used when ``scale`` is not given).
    numbers : iterable of int
        1-based band numbers.
    scale : float, optional
        One scale for every band (offset 0); None or 0: the raster's own.

    Returns
    -------
    dict
        Band number → (scale, offset).
    """
    if scale is None or scale == 0:
        return {n: (float(src.scales[n - 1] or 1.0), float(src.offsets[n - 1] or 0.0)) for n in numbers}
    if not (scale > 0 and math.isfinite(scale)):
        raise ForestCarbonError(f"SCALE must be greater than 0 (got {scale}); 0 means automatic.")
    return {n: (float(scale), 0.0) for n in numbers}


def _check_reflectance(src, names, needed, factors) -> None:
    """Refuses indices that need reflectance in 0-1 (EVI, SAVI, MSAVI) on an unscaled red band whose
    median (on an overview of at most 1024 × 1024) looks like scaled integers."""
    absolute = [idx for idx in names if INDICES[idx].absolute]
    if not absolute:
        return
    red = needed[absolute[0]][1]
    if factors[red] != (1.0, 0.0):
        return
    sample = src.read(red, out_shape=(min(src.height, 1024), min(src.width, 1024)), masked=True)
    values = np.asarray(sample.compressed(), dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size and float(np.median(values)) > SCALED_MEDIAN:
        verb = "needs" if len(absolute) == 1 else "need"
        raise ForestCarbonError(
            f"{', '.join(absolute)} {verb} reflectance between 0 and 1, but the red band (band {red}) "
            f"has a median of {np.median(values):g}: the data look like scaled integers and the raster "
            "carries no scale factor. Set SCALE (e.g. 0.0001 for values × 10000, 0.001 for × 1000), "
            "or ask only for ratio indices (NDVI, GNDVI, NDRE, NBR, NDMI).")


class _IndexCalculator:
    """The per-block work of :func:`spectral_indices`; ``compute`` runs in worker threads."""

    def __init__(self, path, names, needed, factors, readers: Readers):
        self.path, self.names, self.needed, self.factors, self.readers = path, names, needed, factors, readers
        self.any_valid = False

    def compute(self, window) -> np.ndarray:
        values = {}
        for number, (scale, offset) in self.factors.items():
            arr = self.readers.read(self.path, window, number)
            data = np.asarray(np.ma.getdata(arr), dtype=np.float64) * scale + offset
            data[np.ma.getmaskarray(arr)] = np.nan
            values[number] = data
        out = np.empty((len(self.names), int(window.height), int(window.width)), dtype=np.float32)
        for k, idx in enumerate(self.names):
            result = INDICES[idx].function(*[values[b] for b in self.needed[idx]])
            out[k] = np.where(np.isfinite(result), result, np.nan)
        if np.isfinite(out).any():
            self.any_valid = True
        return out

    def finish(self) -> None:
        if not self.any_valid:
            raise ForestCarbonError(
                f"No pixel of '{Path(self.path).name}' gives a valid index: the bands used "
                f"({', '.join(f'band {b}' for b in self.factors)}) are no-data everywhere, or the index is "
                "undefined there (e.g. red + nir = 0). Check the input and BAND_MAP; nothing was written.")
