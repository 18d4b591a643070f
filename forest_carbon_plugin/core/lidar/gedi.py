"""GEDI L2A/L2B footprints: relative heights, canopy cover and PAI as points.

Reads the HDF5 granules of the GEDI L2A (``GEDI02_A``: elevation, relative heights rh0-rh100)
and L2B (``GEDI02_B``: canopy cover, plant area index) products with h5py, from files, zips of
them, or a folder holding either. One record per shot:

- from L2A: ``lat_lowestmode``/``lon_lowestmode`` (the point, EPSG:4326), ``elev_lowestmode``,
  ``rh`` columns 50, 75, 90, 95, 98, 100 (m), ``quality_flag``, ``degrade_flag``, ``sensitivity``;
- from L2B, joined by ``shot_number``: ``cover``, ``pai`` and ``l2b_quality_flag``;
- ``beam`` (``BEAM0101``), ``beam_type`` (``power``/``coverage``), ``delta_time`` and ``time_utc``
  (GEDI's epoch 2018-01-01T00:00:00Z + ``delta_time`` seconds; no leap second has occurred since
  the epoch).

With L2A files the footprints are the L2A shots (L2B values joined where the same shot is in
an L2B file; shots only in L2B are left out). L2B files alone give points too (their own
``geolocation`` group), with cover and PAI and no relative heights (NaN).

Quality (``quality=True``): ``quality_flag == 1`` (L2A; ``l2b_quality_flag`` for L2B alone),
``degrade_flag == 0`` and ``sensitivity >= min_sensitivity`` (0.9, the usual threshold over
land). A joined L2B shot whose ``l2b_quality_flag`` is 0 keeps its L2A values; its cover and PAI
become NaN. GEDI's fill values (−9999) are NaN.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..archives import extract_members
from ..errors import ForestCarbonError
from .catalog import Extent

GEDI_EPOCH = np.datetime64("2018-01-01T00:00:00", "ms")
RH_PERCENTILES = (50, 75, 90, 95, 98, 100)
POWER_BEAMS = ("BEAM0101", "BEAM0110", "BEAM1000", "BEAM1011")
COVERAGE_BEAMS = ("BEAM0000", "BEAM0001", "BEAM0010", "BEAM0011")
ALL_BEAMS = COVERAGE_BEAMS + POWER_BEAMS
HDF5_SUFFIXES = (".h5", ".hdf5", ".he5")
#: output columns in order (besides the geometry from lon/lat)
COLUMNS = ("shot_number", "beam", "beam_type", "time_utc", "delta_time", "lat", "lon", "elev_lowestmode",
           *(f"rh{p}" for p in RH_PERCENTILES), "cover", "pai", "sensitivity", "quality_flag", "degrade_flag",
           "l2b_quality_flag", "source")


@dataclass
class GediShots:
    """Columns of GEDI footprints (numpy arrays of equal length); see :data:`COLUMNS`."""

    columns: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)  # shots read / kept, for reports

    def __len__(self) -> int:
        return len(self.columns.get("shot_number", ()))

    def __getitem__(self, name):
        return self.columns[name]


def parse_beams(beams) -> tuple[str, ...] | None:
    """Beam names from a selection.

    Parameters
    ----------
    beams : str, sequence or None
        ``"BEAM0101,BEAM1011"`` (the ``BEAM`` prefix may be left out), ``"power"``, ``"coverage"``,
        ``"all"`` or a sequence of those.

    Returns
    -------
    tuple of str or None
        The beam names, in order, without repeats; None for all beams.
    """
    if beams is None:
        return None
    items = beams.replace(";", ",").split(",") if isinstance(beams, str) else list(beams)
    names: list[str] = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        low = item.lower()
        if low in ("all", "*"):
            return None
        if low in ("power", "full power", "full_power"):
            names += POWER_BEAMS
        elif low == "coverage":
            names += COVERAGE_BEAMS
        else:
            name = item.upper()
            if not name.startswith("BEAM"):
                name = "BEAM" + name
            if name not in ALL_BEAMS:
                raise ForestCarbonError(
                    f"Unknown GEDI beam '{item}'. Use beam names (BEAM0000, BEAM0001, BEAM0010, BEAM0011: coverage; "
                    "BEAM0101, BEAM0110, BEAM1000, BEAM1011: full power), 'power' or 'coverage'.")
            names.append(name)
    return tuple(dict.fromkeys(names)) or None


@contextlib.contextmanager
def _granules(paths):
    """Yield the HDF5 files among ``paths`` (files, zips, folders); zips are unpacked into a
    temporary folder removed afterwards."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    with tempfile.TemporaryDirectory(prefix="fc_gedi_") as tmp:
        files: list[Path] = []
        for i, p in enumerate(Path(str(x)) for x in paths):
            if p.is_dir():
                inside = sorted(q for q in p.iterdir() if q.suffix.lower() in HDF5_SUFFIXES + (".zip",))
                if not inside:
                    raise ForestCarbonError(f"The folder '{p}' holds no GEDI file (.h5 or .zip of .h5).")
            elif p.is_file():
                inside = [p]
            else:
                raise ForestCarbonError(f"'{p}' does not exist.")
            for q in inside:
                if q.suffix.lower() == ".zip":
                    files += _unzip(q, Path(tmp) / f"{i}_{len(files)}")
                else:
                    files.append(q)
        if not files:
            raise ForestCarbonError("No GEDI file was given: choose L2A/L2B .h5 files, zips of them, or a folder.")
        yield files


def _unzip(path: Path, dest: Path) -> list[Path]:
    files = extract_members(path, dest, wanted=lambda name: Path(name).suffix.lower() in HDF5_SUFFIXES)
    if not files:
        raise ForestCarbonError(f"The zip '{path}' holds no HDF5 (.h5) file: it is not a GEDI download.")
    return files


def _product(h5, name: str) -> str:
    """'L2A' or 'L2B', from METADATA/DatasetIdentification's shortName or the datasets present."""
    short = None
    ident = h5.get("METADATA/DatasetIdentification")
    if ident is not None and "shortName" in ident.attrs:
        value = ident.attrs["shortName"]
        value = value[0] if np.ndim(value) else value
        short = value.decode() if isinstance(value, bytes) else str(value)
        if short.upper() in ("GEDI_L2A", "GEDI02_A"):
            return "L2A"
        if short.upper() in ("GEDI_L2B", "GEDI02_B"):
            return "L2B"
    beams = [k for k in h5 if k.startswith("BEAM")]
    if short is None and beams:
        g = h5[beams[0]]
        if "rh" in g and "lat_lowestmode" in g:
            return "L2A"
        if "cover" in g and "pai" in g and "geolocation" in g:
            return "L2B"
    what = f"a {short} file" if short else "not a GEDI L2A or L2B file"
    raise ForestCarbonError(f"'{name}' is {what}: this tool reads the GEDI L2A (GEDI02_A: relative heights) and "
                            "L2B (GEDI02_B: cover, PAI) products. Download those granules (e.g. from NASA "
                            "Earthdata) and try again.")


def _beams_in(h5, beams):
    present = sorted(k for k in h5 if k.startswith("BEAM"))
    return [b for b in present if beams is None or b in beams]


def _fill_nan(a):
    a = np.asarray(a, dtype=np.float64)
    return np.where(a <= -9990, np.nan, a)


def _read_l2a_beam(g, beam, source):
    n = g["shot_number"].shape[0]
    rh = g["rh"]
    cols = {
        "shot_number": g["shot_number"][:].astype(np.uint64),
        "beam": np.full(n, beam, dtype=object),
        "delta_time": g["delta_time"][:].astype(np.float64),
        "lat": g["lat_lowestmode"][:].astype(np.float64),
        "lon": g["lon_lowestmode"][:].astype(np.float64),
        "elev_lowestmode": _fill_nan(g["elev_lowestmode"][:]),
        "sensitivity": g["sensitivity"][:].astype(np.float64),
        "quality_flag": g["quality_flag"][:].astype(np.int64),
        "degrade_flag": g["degrade_flag"][:].astype(np.int64),
        "source": np.full(n, source, dtype=object),
    }
    table = rh[:, list(RH_PERCENTILES)] if n else np.zeros((0, len(RH_PERCENTILES)))
    for k, p in enumerate(RH_PERCENTILES):
        cols[f"rh{p}"] = _fill_nan(table[:, k])
    return cols


def _read_l2b_beam(g, beam, source):
    n = g["shot_number"].shape[0]
    geo = g["geolocation"]
    return {
        "shot_number": g["shot_number"][:].astype(np.uint64),
        "beam": np.full(n, beam, dtype=object),
        "delta_time": (g["delta_time"] if "delta_time" in g else geo["delta_time"])[:].astype(np.float64),
        "lat": geo["lat_lowestmode"][:].astype(np.float64),
        "lon": geo["lon_lowestmode"][:].astype(np.float64),
        "elev_lowestmode": _fill_nan(geo["elev_lowestmode"][:]),
        "sensitivity": g["sensitivity"][:].astype(np.float64),
        "degrade_flag": geo["degrade_flag"][:].astype(np.int64),
        "cover": _fill_nan(g["cover"][:]),
        "pai": _fill_nan(g["pai"][:]),
        "l2b_quality_flag": g["l2b_quality_flag"][:].astype(np.int64),
        "source": np.full(n, source, dtype=object),
    }


def _concat(parts: Sequence[dict], names: Iterable[str]) -> dict:
    out = {}
    for name in names:
        arrays = [p[name] for p in parts if name in p]
        out[name] = np.concatenate(arrays) if arrays else None
    return out


def _extent_lonlat(extent: Extent | None):
    if extent is None:
        return None
    xmin, ymin, xmax, ymax = (float(v) for v in extent.bounds)
    if extent.crs:
        from rasterio.crs import CRS
        from rasterio.warp import transform_bounds

        crs = CRS.from_user_input(extent.crs)
        if crs != CRS.from_epsg(4326):
            xmin, ymin, xmax, ymax = transform_bounds(crs, CRS.from_epsg(4326), xmin, ymin, xmax, ymax,
                                                      densify_pts=21)
    return xmin, ymin, xmax, ymax


def read_gedi(paths, quality: bool = True, min_sensitivity: float = 0.9, beams=None,
              extent: Extent | None = None, progress=None) -> GediShots:
    """The footprints of GEDI L2A/L2B granules (files, zips of them, folders).

    Parameters
    ----------
    paths : str, Path or sequence of them
        HDF5 granules, zips of them, or folders holding either.
    quality : bool
        Keep only shots with ``quality_flag == 1`` (``l2b_quality_flag`` for L2B alone),
        ``degrade_flag == 0`` and ``sensitivity >= min_sensitivity``.
    min_sensitivity : float
        The beam sensitivity threshold (0.9, the usual one over land).
    beams : str or sequence, optional
        Beam names, ``"power"``, ``"coverage"`` or None (all); see :func:`parse_beams`.
    extent : Extent, optional
        Keep the shots inside it; its CRS defaults to EPSG:4326 (longitude/latitude).
    progress : Progress, optional
        Receives how many granules and shots were read and kept.

    Returns
    -------
    GediShots
        The :data:`COLUMNS` of the shots kept, and counts for reports.

    References
    ----------
    Hofton & Blair (2019), GEDI L2A ATBD (relative heights, quality flags); Tang & Armston (2019),
    GEDI L2B ATBD (canopy cover, PAI).
    """
    try:
        import h5py
    except ImportError as exc:
        raise ForestCarbonError(f"Reading GEDI files needs the Python package h5py ({exc}). Install it into the "
                                "Python QGIS runs: python -m pip install h5py") from exc
    wanted = parse_beams(beams)
    l2a_parts, l2b_parts, n_files = _read_granules(h5py, paths, wanted)
    if progress is not None:
        progress.info(f"{n_files['L2A']} L2A and {n_files['L2B']} L2B granule(s).")
    counts = {"l2a_files": n_files["L2A"], "l2b_files": n_files["L2B"]}
    if l2a_parts:
        cols, good_flag = _l2a_with_l2b(l2a_parts, l2b_parts, quality, counts)
    elif l2b_parts:
        cols, good_flag = _l2b_alone(l2b_parts)
    else:
        raise ForestCarbonError("The GEDI files hold none of the selected beams"
                                + (f" ({', '.join(wanted)})" if wanted else "") + ".")
    counts["shots_read"] = len(cols["shot_number"])
    keep = good_flag & (cols["degrade_flag"] == 0) & (cols["sensitivity"] >= float(min_sensitivity)) if quality \
        else np.ones(len(cols["shot_number"]), dtype=bool)
    if quality:
        counts["quality_kept"] = int(keep.sum())
    bbox = _extent_lonlat(extent)
    if bbox is not None:
        xmin, ymin, xmax, ymax = bbox
        keep &= (cols["lon"] >= xmin) & (cols["lon"] <= xmax) & (cols["lat"] >= ymin) & (cols["lat"] <= ymax)
    keep &= np.isfinite(cols["lat"]) & np.isfinite(cols["lon"])
    cols = {k: v[keep] for k, v in cols.items()}
    cols["time_utc"] = GEDI_EPOCH + np.round(cols["delta_time"] * 1000).astype("timedelta64[ms]")
    cols["beam_type"] = np.array(["power" if b in POWER_BEAMS else "coverage" for b in cols["beam"]], dtype=object)
    cols["shot_number"] = cols["shot_number"].astype(np.int64)  # < 2⁶³: GeoPackage/QGIS integers are signed
    counts["shots_kept"] = int(keep.sum())
    if progress is not None:
        progress.info(f"{counts['shots_read']} shots read, {counts['shots_kept']} kept.")
    return GediShots({k: cols[k] for k in COLUMNS}, counts)


def _read_granules(h5py, paths, wanted):
    """The per-beam columns of every granule: (L2A parts, L2B parts, granules per product)."""
    l2a_parts: list[dict] = []
    l2b_parts: list[dict] = []
    n_files = {"L2A": 0, "L2B": 0}
    with _granules(paths) as files:
        for path in files:
            with _open_hdf5(h5py, path) as h5:
                product = _product(h5, path.name)
                n_files[product] += 1
                for beam in _beams_in(h5, wanted):
                    try:
                        if product == "L2A":
                            l2a_parts.append(_read_l2a_beam(h5[beam], beam, path.name))
                        else:
                            l2b_parts.append(_read_l2b_beam(h5[beam], beam, path.name))
                    except KeyError as exc:
                        raise ForestCarbonError(f"'{path.name}' {beam} lacks a dataset the {product} product has "
                                                f"({exc}); is the file complete?") from exc
    return l2a_parts, l2b_parts, n_files


def _open_hdf5(h5py, path: Path):
    name = path.name
    try:
        is_h5 = h5py.is_hdf5(str(path))
    except OSError:
        is_h5 = False
    if not is_h5:
        raise ForestCarbonError(f"'{name}' is not an HDF5 file: give GEDI L2A/L2B granules (.h5), zips of "
                                "them, or a folder holding them.")
    try:
        return h5py.File(str(path), "r")
    except OSError as exc:
        raise ForestCarbonError(f"Cannot read '{name}' as HDF5 ({exc}).") from exc


def _l2a_with_l2b(l2a_parts, l2b_parts, quality: bool, counts: dict):
    """The L2A shots with the L2B cover and PAI joined by shot number; and the L2A quality flag test."""
    cols = _concat(l2a_parts, l2a_parts[0].keys())
    n = len(cols["shot_number"])
    for name in ("cover", "pai"):
        cols[name] = np.full(n, np.nan)
    cols["l2b_quality_flag"] = np.full(n, -1, dtype=np.int64)
    if l2b_parts:
        b = _concat(l2b_parts, ("shot_number", "cover", "pai", "l2b_quality_flag"))
        order = np.argsort(b["shot_number"], kind="stable")
        keys = b["shot_number"][order]
        pos = np.clip(np.searchsorted(keys, cols["shot_number"]), 0, max(0, len(keys) - 1))
        hit = (keys[pos] == cols["shot_number"]) if len(keys) else np.zeros(n, dtype=bool)
        src = order[pos[hit]]
        for name in ("cover", "pai", "l2b_quality_flag"):
            cols[name][hit] = b[name][src]
        counts["l2b_joined"] = int(hit.sum())
        if quality:
            bad = hit & (cols["l2b_quality_flag"] != 1)
            cols["cover"][bad] = np.nan
            cols["pai"][bad] = np.nan
    return cols, cols["quality_flag"] == 1


def _l2b_alone(l2b_parts):
    """The L2B shots with empty relative heights; and the L2B quality flag test."""
    cols = _concat(l2b_parts, l2b_parts[0].keys())
    n = len(cols["shot_number"])
    for p in RH_PERCENTILES:
        cols[f"rh{p}"] = np.full(n, np.nan)
    cols["quality_flag"] = np.full(n, -1, dtype=np.int64)
    return cols, cols["l2b_quality_flag"] == 1


def to_datetime(value) -> _dt.datetime:
    """A ``numpy.datetime64`` (UTC) as an aware ``datetime``.

    Parameters
    ----------
    value : numpy.datetime64
        A time, e.g. a shot's ``time_utc``.

    Returns
    -------
    datetime.datetime
        The same instant with ``tzinfo=UTC``, to the millisecond.
    """
    ms = int(np.datetime64(value, "ms").astype(np.int64))
    return _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(milliseconds=ms)
