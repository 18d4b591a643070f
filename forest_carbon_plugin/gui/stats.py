"""What the uncertainty explorer computes, without QGIS: testable against numpy and rasterio.

- :func:`window_stats` — histograms of the prediction and of its relative uncertainty over a map
  extent, read with a rasterio window (never the whole raster) at a resolution bounded by the canvas.
- :func:`sample_pixel` — one pixel's value, interval and relative uncertainty.
- :func:`write_value_by_alpha` — the derived raster of the value-by-alpha view.

Relative uncertainty is σ / |prediction|: σ from the std output, or from the interval bounds as
(upper − lower) / (2·z(coverage)) (the carbon core's conversion). Where the prediction is near 0
(|prediction| below :data:`NEAR_ZERO_FRACTION` of the extent's 99th percentile of |prediction|: bare
ground, water) it says nothing about the map and grows without bound (thousands of per cent), so those
pixels are counted apart (``rel_near_zero``), outside its histogram, median and share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import Cancelled
from ..core.outputs import provenance
from ..core.raster.grid import Grid
from ..core.raster.write import RasterSpec, raster_writer
from ..core.stats import sigma_from_bounds

UNCERTAINTY_KINDS = ("std", "lower", "upper")
#: predictions below this share of the extent's large values (its 99th percentile of |prediction|) are ≈ 0
NEAR_ZERO_FRACTION = 0.01
#: the relative-uncertainty histogram spans these percentiles (and the threshold); the rest is in the end bins
REL_PERCENTILES = (1.0, 99.0)


@dataclass
class Sources:
    """A prediction and the layers that describe its uncertainty (any of them may be None)."""

    prediction: str
    std: str | None = None
    lower: str | None = None
    upper: str | None = None
    coverage: float | None = None  #: needed when σ comes from lower/upper

    @property
    def has_uncertainty(self) -> bool:
        return self.std is not None or (self.lower is not None and self.upper is not None
                                        and self.coverage is not None)


def sigma_of(std=None, lower=None, upper=None, coverage=None):
    """σ from a std array, or from interval bounds at ``coverage`` (None when neither is given)."""
    if std is not None:
        return std
    if lower is not None and upper is not None and coverage is not None:
        return sigma_from_bounds(lower, upper, coverage)
    return None


def relative_uncertainty(prediction, sigma):
    """σ / |prediction| (NaN where the prediction is 0 or either value is not finite)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = sigma / np.abs(prediction)
    return np.where(np.isfinite(rel) & (prediction != 0), rel, np.nan)


# ----------------------------------------------------------------------------- windows

def pixel_window(transform, width: int, height: int, bounds):
    """The rasterio ``Window`` of every pixel that ``bounds`` (xmin, ymin, xmax, ymax, in the raster's
    CRS) touches, clipped to the raster; None when they do not overlap. North-up rasters only."""
    from rasterio.windows import Window

    xmin, ymin, xmax, ymax = bounds
    inv = ~transform
    cols = [(inv * (x, y))[0] for x in (xmin, xmax) for y in (ymin, ymax)]
    rows = [(inv * (x, y))[1] for x in (xmin, xmax) for y in (ymin, ymax)]
    eps = 1e-6  # an extent edge on a pixel edge does not take in the next pixel
    c0 = max(0, math.floor(min(cols) + eps))
    c1 = min(width, math.ceil(max(cols) - eps))
    r0 = max(0, math.floor(min(rows) + eps))
    r1 = min(height, math.ceil(max(rows) - eps))
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def bounded_shape(height: int, width: int, max_shape) -> tuple[int, int]:
    """(height, width) scaled down, keeping the aspect, to fit in ``max_shape`` (rows, cols)."""
    scale = min(1.0, max_shape[0] / height, max_shape[1] / width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def _read(src, window, out_shape, reference=None):
    """Band 1 as float64 with NaN for nodata, on ``reference``'s grid when ``src`` is on another."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    if reference is not None and (src.crs != reference.crs or src.transform != reference.transform
                                  or src.shape != reference.shape):
        with WarpedVRT(src, crs=reference.crs, transform=reference.transform, width=reference.width,
                       height=reference.height, resampling=Resampling.nearest) as vrt:
            return _read(vrt, window, out_shape)
    data = src.read(1, window=window, out_shape=out_shape, resampling=Resampling.nearest, masked=True)
    values = np.ma.getdata(data).astype("float64")
    values[np.ma.getmaskarray(data) | ~np.isfinite(values)] = np.nan
    return values


def read_window(sources: Sources, bounds, max_shape):
    """(arrays by kind, window, out_shape) of the prediction and its uncertainty layers over
    ``bounds``, read at most at ``max_shape`` pixels; arrays is None outside the raster."""
    import rasterio

    with rasterio.open(sources.prediction) as ref:
        window = pixel_window(ref.transform, ref.width, ref.height, bounds)
        if window is None:
            return None, None, None
        out_shape = bounded_shape(int(window.height), int(window.width), max_shape)
        arrays = {"prediction": _read(ref, window, out_shape)}
        for kind in UNCERTAINTY_KINDS:
            path = getattr(sources, kind)
            if path:
                with rasterio.open(path) as src:
                    arrays[kind] = _read(src, window, out_shape, reference=ref)
    return arrays, window, out_shape


# ----------------------------------------------------------------------------- statistics

@dataclass
class WindowStats:
    """Statistics of the prediction and of its relative uncertainty over one extent."""

    window: tuple  #: (row_off, col_off, height, width) in the prediction's pixels
    shape: tuple  #: (rows, cols) actually read (≤ the canvas size)
    pixels: int  #: valid prediction pixels read
    mean: float | None
    pred_counts: np.ndarray
    pred_edges: np.ndarray
    rel_counts: np.ndarray | None = None
    rel_edges: np.ndarray | None = None
    rel_mean: float | None = None
    rel_median: float | None = None
    rel_pixels: int = 0  #: pixels with a relative uncertainty in the statistics
    rel_undefined: int = 0  #: valid prediction pixels without σ (nodata in the uncertainty layers)
    rel_near_zero: int = 0  #: valid prediction pixels with |prediction| < near_zero_limit: left out
    near_zero_limit: float | None = None  #: NEAR_ZERO_FRACTION × the 99th percentile of |prediction|
    rel_overflow: int = 0  #: pixels above the last relative-uncertainty edge, counted in the last bin
    rel_underflow: int = 0  #: pixels below the first edge, counted in the first bin
    threshold: float | None = None
    share_above: float | None = None  #: share of rel_pixels whose relative uncertainty > threshold


def histogram_edges(values: np.ndarray, bins: int, low: float | None = None, high: float | None = None):
    """``bins`` + 1 equal-width edges over the finite ``values`` (or ``low``/``high``)."""
    lo = float(np.min(values)) if low is None else float(low)
    hi = float(np.max(values)) if high is None else float(high)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def window_stats(sources: Sources, bounds, max_shape=(600, 600), bins: int = 40, threshold: float = 0.2,
                 is_canceled=None) -> WindowStats | None:
    """Statistics over the pixels of ``sources.prediction`` that ``bounds`` touch (see the module doc).

    ``bounds`` (xmin, ymin, xmax, ymax) are in the prediction's CRS; at most ``max_shape`` (rows, cols)
    pixels are read (nearest neighbour from the COG's overviews when the extent holds more).
    The relative-uncertainty histogram spans its 1st to 99th percentile, widened to take in ``threshold``
    (so that the threshold line is on the plot); pixels outside are counted in the first and last bins
    (``rel_underflow``, ``rel_overflow``). Pixels whose prediction is ≈ 0 are left out of the relative
    statistics and counted in ``rel_near_zero`` (module doc). None when the extent misses the raster or
    ``is_canceled()`` turns true.
    """
    canceled = is_canceled or (lambda: False)
    arrays, window, shape = read_window(sources, bounds, max_shape)
    if arrays is None or canceled():
        return None
    pred = arrays["prediction"]
    valid = np.isfinite(pred)
    values = pred[valid]
    win = (int(window.row_off), int(window.col_off), int(window.height), int(window.width))
    if values.size == 0:
        return WindowStats(win, shape, 0, None, np.zeros(bins, int), histogram_edges(np.zeros(1), bins))
    edges = histogram_edges(values, bins)
    counts, _ = np.histogram(values, bins=edges)
    stats = WindowStats(win, shape, int(values.size), float(np.mean(values)), counts, edges, threshold=threshold)
    sigma = sigma_of(arrays.get("std"), arrays.get("lower"), arrays.get("upper"), sources.coverage)
    if sigma is None or canceled():
        return None if canceled() else stats
    has_sigma = np.isfinite(sigma)[valid]
    limit = NEAR_ZERO_FRACTION * float(np.percentile(np.abs(values), 99))
    near_zero = np.abs(values) < limit
    stats.near_zero_limit = limit
    stats.rel_near_zero = int(np.count_nonzero(near_zero & has_sigma))
    stats.rel_undefined = int(np.count_nonzero(~has_sigma))
    rel = relative_uncertainty(pred, sigma)[valid]
    defined = rel[has_sigma & ~near_zero & np.isfinite(rel)]
    stats.rel_pixels = int(defined.size)
    if defined.size:
        low, high = (float(v) for v in np.percentile(defined, REL_PERCENTILES))
        low, high = min(low, threshold), max(high, threshold)
        pad = 0.02 * (high - low)  # the threshold line off the plot's frame
        low, high = max(0.0, low - pad) if low == threshold else low, high + pad if high == threshold else high
        stats.rel_edges = histogram_edges(defined, bins, low, high)
        stats.rel_underflow = int(np.count_nonzero(defined < stats.rel_edges[0]))
        stats.rel_overflow = int(np.count_nonzero(defined > stats.rel_edges[-1]))
        stats.rel_counts, _ = np.histogram(np.clip(defined, stats.rel_edges[0], stats.rel_edges[-1]),
                                           bins=stats.rel_edges)
        stats.rel_mean = float(np.mean(defined))
        stats.rel_median = float(np.median(defined))
        stats.share_above = float(np.count_nonzero(defined > threshold) / defined.size)
    return stats


# ----------------------------------------------------------------------------- one pixel

def sample_pixel(sources: Sources, x: float, y: float) -> dict | None:
    """The values of every layer of ``sources`` at the pixel holding (x, y) (the prediction's CRS):
    ``row``, ``col``, ``prediction``, ``std``, ``lower``, ``upper``, ``sigma``, ``relative`` (None where
    nodata or absent). None outside the raster."""
    import rasterio
    from rasterio.windows import Window

    out = {}
    with rasterio.open(sources.prediction) as ref:
        row, col = ref.index(x, y)
        if not (0 <= row < ref.height and 0 <= col < ref.width):
            return None
        one = Window(col, row, 1, 1)
        out.update(row=int(row), col=int(col), prediction=float(_read(ref, one, (1, 1))[0, 0]))
        for kind in UNCERTAINTY_KINDS:
            path = getattr(sources, kind)
            if path:
                with rasterio.open(path) as src:
                    out[kind] = float(_read(src, one, (1, 1), reference=ref)[0, 0])
            else:
                out[kind] = None
    arr = {k: (None if out[k] is None else np.array([out[k]])) for k in ("std", "lower", "upper")}
    sigma = sigma_of(arr["std"], arr["lower"], arr["upper"], sources.coverage)
    out["sigma"] = None if sigma is None else float(sigma[0])
    rel = None if sigma is None else float(relative_uncertainty(np.array([out["prediction"]]), sigma)[0])
    out["relative"] = rel
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


# ----------------------------------------------------------------------------- value by alpha

def alpha_of(rel: np.ndarray, threshold: float, min_alpha: float = 0.1) -> np.ndarray:
    """Opacity 0-255 from relative uncertainty: opaque up to half the ``threshold``, then fading
    linearly to ``min_alpha``·255 at twice the ``threshold`` and beyond (and where it is undefined)."""
    rel = np.nan_to_num(rel, nan=np.inf)
    fade = 1.0 - (rel - threshold / 2.0) / (1.5 * threshold) * (1.0 - min_alpha)
    return 255.0 * np.clip(fade, min_alpha, 1.0)


def write_value_by_alpha(sources: Sources, out_path, threshold: float = 0.2, min_alpha: float = 0.1,
                         is_canceled=None, set_progress=None, rows_per_block: int = 256) -> Path:
    """Write the value-by-alpha raster: band 1 the prediction, band 2 its opacity (:func:`alpha_of`,
    0 on nodata), a float32 COG with NaN nodata on the prediction's grid (:mod:`..core.raster.write`), block by
    block and atomically (a cancelled run leaves nothing). QGIS shows it with ``value_by_alpha.qml`` (the prediction's ramp, alpha band 2)."""
    import rasterio
    from rasterio.windows import Window

    if not sources.has_uncertainty:
        raise ValueError("value by alpha needs a std layer, or lower and upper layers with their coverage")
    canceled = is_canceled or (lambda: False)
    with rasterio.open(sources.prediction) as ref:
        handles = {k: rasterio.open(getattr(sources, k)) for k in UNCERTAINTY_KINDS if getattr(sources, k)}
        record = provenance("forestcarbon:valuebyalpha", {"threshold": threshold, "min_alpha": min_alpha},
                            inputs=[p for p in (sources.prediction, *(h.name for h in handles.values()))])
        spec = RasterSpec(count=2, descriptions=("prediction", "alpha"), tags={"OUTPUT_KIND": "value_by_alpha"},
                          provenance=record)
        try:
            with raster_writer(Grid.of(ref), out_path, spec) as dst:
                for r0 in range(0, ref.height, rows_per_block):
                    if canceled():
                        raise Cancelled()
                    win = Window(0, r0, ref.width, min(rows_per_block, ref.height - r0))
                    shape = (int(win.height), int(win.width))
                    pred = _read(ref, win, shape)
                    parts = {k: _read(h, win, shape, reference=ref) for k, h in handles.items()}
                    sigma = sigma_of(parts.get("std"), parts.get("lower"), parts.get("upper"), sources.coverage)
                    alpha = np.where(np.isfinite(pred), alpha_of(relative_uncertainty(pred, sigma), threshold,
                                                                 min_alpha), 0.0)
                    dst.write(np.stack([pred, alpha]).astype("float32"), window=win)
                    if set_progress:
                        set_progress(100.0 * (r0 + shape[0]) / ref.height)
        finally:
            for handle in handles.values():
                handle.close()
    return Path(out_path)
