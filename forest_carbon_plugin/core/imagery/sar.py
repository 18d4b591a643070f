"""Sentinel-1 backscatter features: speckle filtering, decibels and the VH/VV ratio.

:func:`sar_features` turns a pair of terrain-corrected gamma0 rasters (VV and VH, linear
power, on one grid) into a float32 Cloud-Optimized GeoTIFF with three bands:

``VV_dB``, ``VH_dB``
    10·log10 of the speckle-filtered gamma0; the filter runs in the linear (power) domain.
``VH_VV_ratio_dB``
    ``VH_dB − VV_dB`` (the cross-pol ratio in dB).

No-data is NaN wherever an input pixel is no-data, NaN or ≤ 0. The filters treat such
pixels, and pixels beyond the raster's edge, as missing: local statistics use the valid
pixels of a window only.

Filters are configured values, :class:`RefinedLee`, :class:`GammaMAP` (each with its
``window`` in pixels and ``looks``, the equivalent number of looks L; σv² = 1/L is the speckle's
normalized variance; Sentinel-1 IW GRDH has L ≈ 4.4) or :class:`NoFilter`; the array functions:

* :func:`refined_lee` — Lee (1981), "Refined filtering of image noise using local
  statistics", Computer Graphics and Image Processing 15:380-389, in the form of ESA SNAP
  and the widely used Earth Engine port: the means of 3×3 sub-windows laid 3×3 over the
  7×7 window give gradients in 4 directions; the strongest picks the edge orientation and
  the side of the edge nearer the centre picks one of 8 non-edge (half/triangle) windows;
  the local mean m and variance v of the pixels of that window give the MMSE weight
  ``b = clip((v − m²σv²) / (v (1 + σv²)), 0, 1)`` and the result ``m + b (z − m)``.
  Other odd window sizes W = 2k+1: sub-windows of side s = 2·((W − 1)//4) + 1 centred at
  0 and ±(W − s)/2, so that they span the window as the 3×3 ones span 7×7 (W = 3: the 9
  pixels themselves; W = 5: 3×3 sub-windows overlapping by 2; W = 9 and 11: 5×5), and the
  8 directional windows are the W×W window's half-planes and triangles, centre row,
  column or diagonal included. Where no gradient can be formed (a corner of the raster,
  no-data all round) the whole window is used.
* :func:`gamma_map` — Lopes, Touzi & Nezry (1990), "Adaptive speckle filters and scene
  heterogeneity", IEEE TGRS 28(6):992-1000: with Cu = 1/√L, Cmax = √2·Cu and
  Ci = s/m over the W×W window: Ci ≤ Cu → m; Ci ≥ Cmax → the pixel unchanged; otherwise
  α = (1 + Cu²)/(Ci² − Cu²), b = α − L − 1 and
  R = (b m + √(b² m² + 4 α L m I)) / (2α).

Local variances are population variances (divided by the number of valid pixels).
Every window sum is an explicit sum of shifted slices in a fixed order, so a pixel's
result depends only on its W×W neighbourhood and not on where a block starts: the
block-wise output (each block read with a halo of W//2 pixels) is bit-for-bit the result
of filtering the whole image at once.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..raster.grid import DEFAULT_BLOCK, Grid, crs_name
from ..raster.read import Readers, same_grid
from ..parallel.pool import default_workers
from ..raster.write import RasterSpec, process_blocks
from ..errors import ForestCarbonError
from ..outputs import provenance as make_provenance
from ..progress import NullProgress, Progress

BANDS = ("VV_dB", "VH_dB", "VH_VV_ratio_dB")
S1_IW_GRDH_LOOKS = 4.4

#: the 8 directional windows of the refined Lee filter, in the order of ``_DIRECTIONS``
#: (a predicate on the offsets dy (down), dx (right)), and the whole window last
_WINDOWS = (
    lambda dy, dx: dy <= 0,        # 0 top half
    lambda dy, dx: dy >= 0,        # 1 bottom half
    lambda dy, dx: dx <= dy,       # 2 lower-left triangle
    lambda dy, dx: dx >= dy,       # 3 upper-right triangle
    lambda dy, dx: dx <= 0,        # 4 left half
    lambda dy, dx: dx >= 0,        # 5 right half
    lambda dy, dx: dx + dy <= 0,   # 6 upper-left triangle
    lambda dy, dx: dx + dy >= 0,   # 7 lower-right triangle
    lambda dy, dx: True,           # 8 whole window
)
#: for each of the 4 gradients: the sub-windows (index row*3+col of the 3×3 layout) on
#: its two sides, and the directional window for each side
_DIRECTIONS = (
    ((1, 7), (0, 1)),  # vertical gradient (horizontal edge): top / bottom half
    ((6, 2), (2, 3)),  # across the main diagonal: lower-left / upper-right triangle
    ((3, 5), (4, 5)),  # horizontal gradient (vertical edge): left / right half
    ((0, 8), (6, 7)),  # across the anti-diagonal: upper-left / lower-right triangle
)


# -- array functions -------------------------------------------------------------------------------
def to_db(intensity) -> np.ndarray:
    """10·log10 of linear power.

    Parameters
    ----------
    intensity : array_like
        Linear power (gamma0).

    Returns
    -------
    numpy.ndarray
        Decibels, float64; NaN where the input is NaN or ≤ 0.
    """
    values = np.asarray(intensity, dtype=np.float64)
    out = np.full(values.shape, np.nan)
    good = np.isfinite(values) & (values > 0)
    out[good] = 10.0 * np.log10(values[good])
    return out


def refined_lee(intensity, window: int = 7, looks: float = S1_IW_GRDH_LOOKS) -> np.ndarray:
    """Refined Lee filter (Lee 1981) of a 2-D linear-power array.

    Parameters
    ----------
    intensity : array_like
        2-D linear power; NaN = missing.
    window : int
        Odd side of the moving window, pixels (3 to :data:`MAX_WINDOW`; 7 is the standard).
    looks : float
        Equivalent number of looks L (speckle variance 1/L).

    Returns
    -------
    numpy.ndarray
        Filtered linear power, float64; NaN where the input is missing.
    """
    k = _half_window(window)
    _check_looks(looks)
    return _refined_lee_padded(_pad(intensity, k), k, float(looks))


def gamma_map(intensity, window: int = 7, looks: float = S1_IW_GRDH_LOOKS) -> np.ndarray:
    """Gamma-MAP filter (Lopes, Touzi & Nezry 1990) of a 2-D linear-power array.

    Parameters
    ----------
    intensity : array_like
        Linear power, 2-D (NaN: no data).
    window, looks : int, float
        The W×W window's side (odd, 3 to :data:`MAX_WINDOW` pixels) and the equivalent number of looks L.

    Returns
    -------
    numpy.ndarray
        The Gamma-MAP estimate, float64 (missing input stays NaN).
    """
    k = _half_window(window)
    _check_looks(looks)
    return _gamma_map_padded(_pad(intensity, k), k, float(looks))


#: the largest filter window accepted (pixels)
MAX_WINDOW = 25


def _half_window(window) -> int:
    try:
        w = int(window)
    except (TypeError, ValueError):
        raise ForestCarbonError(f"WINDOW must be an odd whole number of pixels, 3 or more "
                                f"(got {window!r}).") from None
    if w != window or w < 3 or w % 2 == 0:
        raise ForestCarbonError(f"WINDOW must be an odd whole number of pixels, 3 or more (got {window!r}): "
                                "use e.g. 5, 7 (the standard refined Lee window) or 9.")
    if w > MAX_WINDOW:
        # every window sum is explicit (W² slices per pixel): past this a filter takes hours and blurs the
        # image past use
        raise ForestCarbonError(f"WINDOW {w} is too large: speckle filters use 5 to 11 pixels; give an odd "
                                f"number up to {MAX_WINDOW}.")
    return w // 2


def _check_looks(looks) -> None:
    try:
        ok = math.isfinite(float(looks)) and float(looks) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ForestCarbonError(f"LOOKS (the equivalent number of looks) must be a number greater than 0 "
                                f"(got {looks!r}); Sentinel-1 IW GRDH products have about "
                                f"{S1_IW_GRDH_LOOKS}.")


def _clean(intensity) -> np.ndarray:
    """float64 copy with NaN wherever the value is not finite."""
    values = np.array(intensity, dtype=np.float64)
    if values.ndim != 2:
        raise ForestCarbonError(f"A speckle filter needs a 2-D array (got {values.ndim} dimensions).")
    values[~np.isfinite(values)] = np.nan
    return values


def _pad(intensity, k: int) -> np.ndarray:
    values = _clean(intensity)
    return np.pad(values, k, mode="constant", constant_values=np.nan)


def _row_plan(k: int, predicate):
    """For each row dy of the W×W window that ``predicate`` keeps pixels of: ("prefix", last dx)
    or ("suffix", first dx) of the run of dx kept (in ``_WINDOWS`` every run touches −k or k)."""
    plan = []
    offsets = range(-k, k + 1)
    for dy in offsets:
        kept = [dx for dx in offsets if predicate(dy, dx)]
        if not kept:
            continue
        if kept[0] == -k:
            plan.append((dy, "prefix", kept[-1]))
        else:
            plan.append((dy, "suffix", kept[0]))
    return plan


def _chosen_window_sum(a: np.ndarray, k: int, choice: np.ndarray) -> np.ndarray:
    """Per pixel, the sum of ``a`` over the window ``_WINDOWS[choice]`` around it.

    ``a`` is padded by ``k`` on every side, shape (H+2k, W'+2k); the result has shape
    (H, W'). Row-wise prefix and suffix sums are built once; a window sum adds, row by row,
    the prefix or suffix the window keeps on that row, always in the same order.
    """
    rows, cols = a.shape[0] - 2 * k, a.shape[1] - 2 * k
    offsets = range(-k, k + 1)
    prefix, suffix = {}, {}
    acc = None
    for dx in offsets:  # prefix[dx] = sum over -k..dx
        piece = a[:, k + dx:k + dx + cols]
        acc = piece.copy() if acc is None else acc + piece
        prefix[dx] = acc
    acc = None
    for dx in reversed(offsets):  # suffix[dx] = sum over dx..k
        piece = a[:, k + dx:k + dx + cols]
        acc = piece.copy() if acc is None else acc + piece
        suffix[dx] = acc
    out = np.zeros((rows, cols))
    for index, predicate in enumerate(_WINDOWS):
        here = choice == index
        if not here.any():
            continue
        total = None
        for dy, kind, dx in _row_plan(k, predicate):
            row = (prefix if kind == "prefix" else suffix)[dx][k + dy:k + dy + rows]
            total = row.copy() if total is None else total + row
        np.copyto(out, total, where=here)
    return out


def _box_sums(arrays, k: int, h: int, d: int):
    """Sums over (2h+1)² boxes for centres on the (H+2d)×(W'+2d) domain (h + d ≤ k)."""
    out = []
    for a in arrays:
        m = k - d  # margin of ``a`` beyond the centre domain
        cols = a.shape[1] - 2 * m
        rows = a.shape[0] - 2 * m
        row_sum = None
        for dx in range(-h, h + 1):
            piece = a[:, m + dx:m + dx + cols]
            row_sum = piece.copy() if row_sum is None else row_sum + piece
        total = None
        for dy in range(-h, h + 1):
            piece = row_sum[m + dy:m + dy + rows]
            total = piece.copy() if total is None else total + piece
        out.append(total)
    return out


def _valid_and_zeroed(padded):
    valid = np.isfinite(padded)
    return valid.astype(np.float64), np.where(valid, padded, 0.0)


def _refined_lee_padded(padded: np.ndarray, k: int, looks: float) -> np.ndarray:
    rows, cols = padded.shape[0] - 2 * k, padded.shape[1] - 2 * k
    valid, z0 = _valid_and_zeroed(padded)
    centre = padded[k:k + rows, k:k + cols]

    # 3×3 layout of sub-window means
    s = 2 * ((2 * k) // 4) + 1
    h = s // 2
    d = k - h
    sub_sum, sub_n = _box_sums([z0, valid], k, h, d)
    with np.errstate(invalid="ignore", divide="ignore"):
        sub_mean = sub_sum / sub_n  # NaN where a sub-window holds no valid pixel
    means = [sub_mean[d + i * d:d + i * d + rows, d + j * d:d + j * d + cols]
             for i in (-1, 0, 1) for j in (-1, 0, 1)]
    m4 = means[4]

    # edge orientation: the strongest of 4 gradients (first one on ties); none → whole window
    best = np.full((rows, cols), -np.inf)
    choice = np.full((rows, cols), 8, dtype=np.int8)
    for (a, b), (win_a, win_b) in _DIRECTIONS:
        gradient = np.abs(means[a] - means[b])
        gradient[np.isnan(gradient)] = -np.inf
        stronger = gradient > best
        best = np.where(stronger, gradient, best)
        # the side whose sub-window mean is nearer the centre's (side a on ties)
        dist_a = np.abs(means[a] - m4)
        dist_b = np.abs(means[b] - m4)
        dist_a[np.isnan(dist_a)] = np.inf
        dist_b[np.isnan(dist_b)] = np.inf
        side = np.where(dist_a <= dist_b, win_a, win_b).astype(np.int8)
        choice = np.where(stronger, side, choice)

    # statistics of the chosen directional window
    count = np.maximum(_chosen_window_sum(valid, k, choice), 1.0)
    mean = _chosen_window_sum(z0, k, choice) / count
    var_z = np.maximum(_chosen_window_sum(z0 * z0, k, choice) / count - mean * mean, 0.0)

    sigma_v2 = 1.0 / looks
    with np.errstate(invalid="ignore", divide="ignore"):
        b = (var_z - mean * mean * sigma_v2) / (var_z * (1.0 + sigma_v2))
    b = np.where(var_z > 0, np.clip(b, 0.0, 1.0), 0.0)
    out = mean + b * (centre - mean)
    out[np.isnan(centre)] = np.nan
    return out


def _gamma_map_padded(padded: np.ndarray, k: int, looks: float) -> np.ndarray:
    rows, cols = padded.shape[0] - 2 * k, padded.shape[1] - 2 * k
    valid, z0 = _valid_and_zeroed(padded)
    centre = padded[k:k + rows, k:k + cols]
    total, total2, n = _box_sums([z0, z0 * z0, valid], k, k, 0)
    n = np.maximum(n, 1.0)
    m = total / n
    var = np.maximum(total2 / n - m * m, 0.0)
    cu = 1.0 / math.sqrt(looks)
    cmax = math.sqrt(2.0) * cu
    with np.errstate(invalid="ignore", divide="ignore"):
        ci = np.sqrt(var) / m
        alpha = (1.0 + cu * cu) / (ci * ci - cu * cu)
        b = alpha - looks - 1.0
        r = (b * m + np.sqrt(b * b * m * m + 4.0 * alpha * looks * m * centre)) / (2.0 * alpha)
    out = np.where(ci <= cu, m, np.where(ci >= cmax, centre, r))
    out[np.isnan(centre)] = np.nan
    return out


def _none_padded(padded: np.ndarray, k: int, looks: float) -> np.ndarray:
    return padded[k:padded.shape[0] - k, k:padded.shape[1] - k].copy()


class SpeckleFilter:
    """A speckle filter: :meth:`check` validates its settings, :meth:`padded` filters an array padded
    by :meth:`half_window` pixels of NaN, and calling it filters a whole 2-D array."""

    name: ClassVar[str] = ""

    def half_window(self) -> int:
        """k of the filter's (2k + 1)-pixel ``window``; checks the window and ``looks``."""
        k = _half_window(self.window)
        _check_looks(self.looks)
        return k

    def padded(self, padded: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        """The filter and its settings, for the output's provenance."""
        raise NotImplementedError

    def __call__(self, intensity) -> np.ndarray:
        """The filter of a 2-D linear-power array (NaN = missing), float64."""
        k = self.half_window()
        return self.padded(_pad(intensity, k), k)


@dataclass(frozen=True)
class RefinedLee(SpeckleFilter):
    """Refined Lee filter (Lee 1981) over ``window`` × ``window`` pixels with ``looks`` looks."""

    window: int = 7
    looks: float = S1_IW_GRDH_LOOKS
    name: ClassVar[str] = "refined_lee"

    def padded(self, padded, k):
        return _refined_lee_padded(padded, k, float(self.looks))

    def describe(self) -> str:
        return f"refined Lee {int(self.window)}×{int(self.window)} (Lee 1981), L = {self.looks:g}"


@dataclass(frozen=True)
class GammaMAP(SpeckleFilter):
    """Gamma-MAP filter (Lopes, Touzi & Nezry 1990) over ``window`` × ``window`` pixels with ``looks`` looks."""

    window: int = 7
    looks: float = S1_IW_GRDH_LOOKS
    name: ClassVar[str] = "gamma_map"

    def padded(self, padded, k):
        return _gamma_map_padded(padded, k, float(self.looks))

    def describe(self) -> str:
        return f"Gamma-MAP {int(self.window)}×{int(self.window)} (Lopes et al. 1990), L = {self.looks:g}"


@dataclass(frozen=True)
class NoFilter(SpeckleFilter):
    """No speckle filter: the backscatter as it is."""

    name: ClassVar[str] = "none"

    def half_window(self) -> int:
        return 0

    def padded(self, padded, k):
        return _none_padded(padded, k, 0.0)

    def describe(self) -> str:
        return "no speckle filter"


# -- rasters ---------------------------------------------------------------------------------------
def sar_features(vv_path, vh_path, out_path, filter: SpeckleFilter = RefinedLee(),  # noqa: A002
                 progress: Progress | None = None, max_workers: int | None = None,
                 block_size: int = DEFAULT_BLOCK) -> Path:
    """Speckle-filtered VV and VH gamma0 in dB and their ratio, as a float32 COG at ``out_path``.

    Parameters
    ----------
    vv_path, vh_path : str or Path
        Single-band gamma0 rasters in linear power on the same grid (band 1 is used).
    out_path : str or Path
        The output: bands ``VV_dB``, ``VH_dB``, ``VH_VV_ratio_dB``.
    filter : RefinedLee, GammaMAP or NoFilter
        The speckle filter, with its window (pixels) and equivalent number of looks.
    progress : Progress, optional
        Receives progress, messages and cancellation.
    max_workers : int, optional
        Worker threads (default: all cores, at most 8).
    block_size : int
        Side of a block, in pixels; each block is read with a halo of ``window // 2`` pixels.

    Returns
    -------
    Path
        ``out_path``.
    """
    progress = progress or NullProgress()
    if not isinstance(filter, SpeckleFilter):
        raise ForestCarbonError(f"Unknown speckle filter {filter!r}: use RefinedLee(window, looks), "
                                "GammaMAP(window, looks) or NoFilter() (refined_lee, gamma_map, none).")
    k = filter.half_window()
    grid = _check_pair(vv_path, vh_path)
    plan = _Plan(grid, (str(vv_path), str(vh_path)), filter, k)
    params = {"filter": filter.name, "window": getattr(filter, "window", None),
              "looks": getattr(filter, "looks", None)}
    steps = ["invalid (no-data, NaN, ≤ 0) → NaN", filter.describe(), "10·log10", "VH_VV_ratio_dB = VH_dB − VV_dB"]
    record = make_provenance("forestcarbon:sarfeatures", params, inputs=[vv_path, vh_path], steps=steps)
    tags = {"FILTER": filter.name, "UNITS": "dB", "STEPS": "; ".join(steps)}
    if not isinstance(filter, NoFilter):
        tags.update({"WINDOW": int(filter.window), "LOOKS": f"{float(filter.looks):g}"})
    band_tags = [{"UNITS": "dB", "SOURCE": "gamma0 VV"}, {"UNITS": "dB", "SOURCE": "gamma0 VH"},
                 {"UNITS": "dB", "SOURCE": "VH_dB - VV_dB"}]
    progress.info(f"{grid.width} × {grid.height} pixels; {steps[1]}.")
    try:
        spec = RasterSpec(count=len(BANDS), descriptions=tuple(BANDS), tags=tags, provenance=record,
                          band_tags=tuple(band_tags), block_size=block_size)
        process_blocks(grid, plan.compute, out_path, spec, progress=progress,
                       max_workers=default_workers(max_workers), finish=plan.check_inputs)
    finally:
        plan.readers.close()
    return Path(out_path)


def _open_grid(path, label: str) -> Grid:
    import rasterio

    try:
        with rasterio.open(path) as src:
            if src.count < 1:
                raise ForestCarbonError(f"{label} '{path}' has no bands: choose a gamma0 GeoTIFF.")
            return Grid.of(src)
    except rasterio.errors.RasterioIOError as exc:
        raise ForestCarbonError(f"{label} '{path}' cannot be read as a raster ({exc}): choose a Sentinel-1 "
                                "gamma0 GeoTIFF (linear power).") from exc


def _check_pair(vv_path, vh_path) -> Grid:
    from rasterio.crs import CRS

    vv = _open_grid(vv_path, "INPUT_VV")
    vh = _open_grid(vh_path, "INPUT_VH")
    if vv.crs is not None and vh.crs is not None:
        if same_grid(vv, vh):
            return vv
    elif vv.crs is None and vh.crs is None and (vv.width, vv.height) == (vh.width, vh.height) \
            and vv.transform.almost_equals(vh.transform):
        return vv
    what = []
    if (vv.width, vv.height) != (vh.width, vh.height):
        what.append(f"size {vv.width} × {vv.height} vs {vh.width} × {vh.height} pixels")
    if (vv.crs is None) != (vh.crs is None) or (vv.crs is not None and CRS.from_user_input(vv.crs)
                                                 != CRS.from_user_input(vh.crs)):
        what.append(f"CRS {crs_name(vv.crs)} vs {crs_name(vh.crs)}")
    if not what:
        what.append(f"origin/pixel size {tuple(vv.transform)[:6]} vs {tuple(vh.transform)[:6]}")
    raise ForestCarbonError("INPUT_VV and INPUT_VH are not on the same grid (" + "; ".join(what) + "): use "
                            "the VV and VH bands of one terrain-corrected product, or resample one onto the "
                            "other's grid (e.g. with GDAL Warp) first.")


class _Plan:
    """What every block needs; ``compute`` runs in worker threads."""

    def __init__(self, grid: Grid, paths, speckle: SpeckleFilter, k: int):
        self.grid, self.paths, self.speckle, self.k = grid, paths, speckle, k
        self.readers = Readers(grid)
        # per input: [finite values read, of which ≤ 0]; blocks run in threads
        self.seen = {path: [0, 0] for path in paths}
        self._lock = threading.Lock()

    def check_inputs(self) -> None:
        """After the last block: refuse inputs with no valid pixel, or that hold dB rather than linear power."""
        for label, path in zip(("INPUT_VV", "INPUT_VH"), self.paths):
            finite, not_positive = self.seen[path]
            if finite == 0:
                raise ForestCarbonError(f"{label} ('{Path(path).name}') has no valid pixel (no-data or NaN "
                                        "everywhere): give the gamma0 band of a terrain-corrected product.")
            if not_positive > 0.5 * finite:
                raise ForestCarbonError(
                    f"{label} ('{Path(path).name}'): {100 * not_positive / finite:.0f}% of its pixels are ≤ 0, as dB "
                    "values are; the filters need linear power (gamma0). Convert it first: 10^(dB/10) in the "
                    "Raster Calculator.")

    def _read_halo(self, path, window) -> np.ndarray:
        """Band 1 over ``window`` grown by k pixels on each side; NaN outside the raster and
        where the pixel is no-data, NaN or ≤ 0."""
        from rasterio.windows import Window

        k = self.k
        row0, col0 = int(window.row_off) - k, int(window.col_off) - k
        rows, cols = int(window.height) + 2 * k, int(window.width) + 2 * k
        out = np.full((rows, cols), np.nan)
        r0, c0 = max(row0, 0), max(col0, 0)
        r1, c1 = min(row0 + rows, self.grid.height), min(col0 + cols, self.grid.width)
        src = self.readers.dataset(path)
        data = src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0), masked=True, out_dtype="float64")
        values = np.ma.getdata(data).astype(np.float64, copy=True)
        # the block's own pixels (not its halo, which its neighbours count) for check_inputs
        i0, j0 = int(window.row_off) - r0, int(window.col_off) - c0
        own = values[i0:i0 + int(window.height), j0:j0 + int(window.width)]
        own_ok = ~np.ma.getmaskarray(data)[i0:i0 + int(window.height), j0:j0 + int(window.width)] & np.isfinite(own)
        finite, not_positive = int(own_ok.sum()), int((own_ok & (own <= 0)).sum())
        with self._lock:
            self.seen[path][0] += finite
            self.seen[path][1] += not_positive
        bad = np.ma.getmaskarray(data) | ~np.isfinite(values) | ~(values > 0)
        values[bad] = np.nan
        out[r0 - row0:r1 - row0, c0 - col0:c1 - col0] = values
        return out

    def compute(self, window) -> np.ndarray:
        bands = []
        for path in self.paths:
            padded = self._read_halo(path, window)
            bands.append(to_db(self.speckle.padded(padded, self.k)))
        vv_db, vh_db = bands
        return np.stack([vv_db, vh_db, vh_db - vv_db]).astype(np.float32)
