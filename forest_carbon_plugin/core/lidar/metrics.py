"""Point-cloud metrics per raster cell, with lidR's and FUSION's definitions.

Definitions: lidR 4.3.2 ``stdmetrics_z`` and ``stdmetrics_i`` (R/metrics_stdmetrics.R; Roussel
et al. 2020, Remote Sensing of Environment 251:112061), FUSION GridMetrics cover (McGaughey
2021: "percentage of first returns above the height break", strict ``>``). Every metric of
every cell is computed at once, vectorised over the points sorted by (cell, value): memory is
a few arrays of the point count, time O(n log n).

Floating point follows R where it changes results: quantiles are R's type 7
(``(1 − h)·x[lo] + h·x[hi]`` at index ``1 + (n − 1)·p``), the probabilities are built as
``seq(0.05, 0.95, 0.05)`` is, and the break sequences of ``zentropy`` and ``zpcum`` are
R's ``seq(from, to, by)`` (``pmin(from + k·by, to)``) with ``findInterval`` semantics.
"""

from __future__ import annotations

import numpy as np

QUANTILE_PROBS = 0.05 + np.arange(19) * 0.05  # seq(0.05, 0.95, 0.05)
STDMETRICS_Z = (["zmax", "zmean", "zsd", "zskew", "zkurt", "zentropy", "pzabovezmean", "pzabove2"]
                + [f"zq{5 * (k + 1)}" for k in range(19)] + [f"zpcum{k}" for k in range(1, 10)])
STDMETRICS_I = ["itot", "imax", "imean", "isd", "iskew", "ikurt", "ipground",
                "ipcumzq10", "ipcumzq30", "ipcumzq50", "ipcumzq70", "ipcumzq90"]
EXTRA = ["cover", "n", "point_density", "pulse_density"]


def metric_names(intensity: bool = False) -> list[str]:
    """Band names of ``canopymetrics``, in order.

    Parameters
    ----------
    intensity : bool
        Append lidR's ``stdmetrics_i`` names.

    Returns
    -------
    list of str
        ``stdmetrics_z`` in lidR's order, then ``cover``, ``n``, ``point_density``, ``pulse_density``
        (and the intensity metrics).
    """
    return STDMETRICS_Z + EXTRA + (STDMETRICS_I if intensity else [])


def _cell_value_order(values, cell, int_key=None):
    """Order by (cell, value). With ``int_key`` (integers in the values' order, e.g. the raw
    LAS Z), one argsort of a packed 64-bit key; otherwise a lexsort."""
    if len(values) == 0:
        return np.empty(0, dtype=np.int64)
    if int_key is not None:
        k = np.asarray(int_key, dtype=np.int64)
        k = k - k.min()
        bits = max(1, int(k.max()).bit_length())
        if int(cell.max()).bit_length() + bits <= 62:
            return np.argsort((cell << bits) | k)  # equal keys are equal values: order among them is free
    return np.lexsort((values, cell))


class _Sorted:
    """Points sorted by (cell, value) with per-cell segment bookkeeping."""

    def __init__(self, values, cell, ncells, int_key=None):
        values = np.asarray(values, dtype=np.float64)
        cell = np.asarray(cell, dtype=np.int64)
        self.order = None
        if not self._sort_keys(values, cell, int_key):
            self.order = _cell_value_order(values, cell, int_key)
            self.v = values[self.order]
            self.c = cell[self.order]
        self.count = np.bincount(self.c, minlength=ncells)
        self.start = np.cumsum(self.count) - self.count
        self.ncells = ncells

    def _sort_keys(self, values, cell, int_key) -> bool:
        """With integer keys in the values' order (the raw LAS Z) and a modest range: sort the
        packed (cell, key) integers themselves — faster than an argsort and a gather — and read
        the values back from a key → value table (equal keys are equal values)."""
        if int_key is None or len(values) == 0:
            return False
        k = np.asarray(int_key, dtype=np.int64)
        kmin = int(k.min())
        k = k - kmin
        span = int(k.max()) + 1
        bits = max(1, (span - 1).bit_length())
        if span > 1 << 24 or int(cell.max()).bit_length() + bits > 62:
            return False
        table = np.empty(span, dtype=np.float64)
        table[k] = values
        ncell = int(cell.max()) + 1
        if ncell * span <= max(4 * len(k), 1 << 20) and ncell << bits <= 1 << 28:
            # a counting sort: O(n + cells·span) instead of O(n log n)
            counts = np.bincount((cell << bits) | k, minlength=ncell << bits)
            packed = np.repeat(np.arange(ncell << bits, dtype=np.int64), counts)
        else:
            packed = np.sort((cell << bits) | k)
        self.c = packed >> bits
        self.v = table[packed & ((1 << bits) - 1)]
        return True

    def per_cell_sum(self, weights):
        return np.bincount(self.c, weights=weights, minlength=self.ncells)


def _moments(s: _Sorted):
    n = s.count.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = _r_mean(s)
        d = s.v - mean[s.c]
        d2 = d * d
        m2 = s.per_cell_sum(d2)
        m3 = s.per_cell_sum(d2 * d)
        m4 = s.per_cell_sum(d2 * d2)
        sd = np.sqrt(m2 / (n - 1))
        sd[n < 2] = np.nan  # R's sd() of one value is NA
        skew = (m3 / n) / (m2 / n) ** 1.5
        kurt = n * m4 / (m2 * m2)
    return mean, sd, skew, kurt


def _r_mean(s: _Sorted) -> np.ndarray:
    """R's mean(): the sum over n, then a second pass that adds the mean residual.

    It matters: with the first pass alone, 30 copies of 5.55 average to 5.550000000000001,
    and the skewness of a constant cell becomes −1 instead of R's NaN.
    """
    n = s.count.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s.per_cell_sum(s.v) / n
        mean = mean + s.per_cell_sum(s.v - mean[s.c]) / n
    return mean


def _quantiles(s: _Sorted, probs):
    """R type-7 quantiles of each non-empty cell; NaN for empty cells."""
    n = s.count
    out = np.full((len(probs), s.ncells), np.nan)
    has = n > 0
    start, nn = s.start[has], n[has]
    for i, p in enumerate(probs):
        index = 1 + (nn - 1) * p
        lo = np.floor(index).astype(np.int64)
        hi = np.ceil(index).astype(np.int64)
        h = index - lo
        x_lo = s.v[start + lo - 1]
        x_hi = s.v[start + hi - 1]
        q = x_lo.copy()
        mix = (index > lo) & (x_hi != x_lo)
        q[mix] = (1 - h[mix]) * x_lo[mix] + h[mix] * x_hi[mix]
        out[i, has] = q
    return out


def stdmetrics_z(z, cell, ncells, dz: float = 1.0, th: float = 2.0, zmin: float = 0.0, z_int=None) -> dict:
    """lidR's ``stdmetrics_z(z, dz, th, zmin)`` for every cell at once.

    Parameters
    ----------
    z : ndarray
        Heights (m) of the points.
    cell : ndarray of int
        Cell index (0 … ncells − 1) of each point.
    ncells : int
        Number of cells.
    dz : float
        Layer thickness (m) of ``zentropy``.
    th : float
        Height (m) of ``pzabove2`` (lidR's ``th``).
    zmin : float
        Lowest height (m) of the ``zentropy`` layers.
    z_int : ndarray of int, optional
        Integers in the order of ``z`` (the raw LAS Z), for a faster sort.

    Returns
    -------
    dict
        Metric name → array (ncells,), NaN for empty cells.

    References
    ----------
    Roussel et al. (2020) lidR, Remote Sensing of Environment 251:112061; lidR 4.3.2
    ``R/metrics_stdmetrics.R``.
    """
    s = _Sorted(z, cell, ncells, z_int)
    n = s.count
    has = n > 0
    nf = n.astype(np.float64)
    out = {}
    zmax = np.full(ncells, np.nan)
    zmax[has] = s.v[s.start[has] + n[has] - 1]
    zlow = np.full(ncells, np.nan)
    zlow[has] = s.v[s.start[has]]
    mean, sd, skew, kurt = _moments(s)
    out.update(zmax=zmax, zmean=mean, zsd=sd, zskew=skew, zkurt=kurt)
    out["zentropy"] = _entropy(s, zmax, zlow, dz)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["pzabovezmean"] = 100 * s.per_cell_sum((s.v > mean[s.c]).astype(np.float64)) / nf
        out["pzabove2"] = 100 * s.per_cell_sum((s.v > th).astype(np.float64)) / nf
    for name, q in zip([f"zq{5 * (k + 1)}" for k in range(19)], _quantiles(s, QUANTILE_PROBS)):
        out[name] = q
    zpcum = _zpcum(s, zmax, zmin)
    for k in range(9):
        out[f"zpcum{k + 1}"] = zpcum[k]
    for key in out:
        out[key][~has] = np.nan
    return out


def _count_below(s: _Sorted, thresholds, inclusive: bool = False) -> np.ndarray:
    """Per cell, how many values are < (or ≤) each threshold: (ncells, m) thresholds → counts.

    A binary search inside each cell's sorted segment, vectorised over cells and thresholds:
    O(cells · m · log n) instead of a pass over the points per threshold.
    """
    t = np.asarray(thresholds, dtype=np.float64)
    lo = np.broadcast_to(s.start[:, None], t.shape).copy()
    hi = lo + s.count[:, None]
    last = max(len(s.v) - 1, 0)
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        v = s.v[np.minimum(mid, last)] if len(s.v) else np.zeros(mid.shape)
        go_right = (v <= t) if inclusive else (v < t)
        lo = np.where(active & go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
    return lo - s.start[:, None]


def _entropy(s: _Sorted, zmax, zlow, dz):
    """Normalised Shannon entropy of the height histogram (dz bins from 0); lidR's entropy().

    Bins are R's ``findInterval(z, seq(0, ceiling(zmax/dz)·dz, dz))`` counted with
    ``fast_table(·, length(bk) − 1)``: values on the last break are dropped.
    """
    ncells = s.ncells
    result = np.full(ncells, np.nan)
    valid_cell = (zmax >= 2 * dz) & (zlow >= 0)
    if not valid_cell.any():
        return result
    cells = np.flatnonzero(valid_cell)
    nb = np.ceil(zmax[cells] / dz).astype(np.int64)  # length(bk) − 1
    k = np.arange(int(nb.max()) + 1)
    breaks = 0 + np.minimum(k[None, :], nb[:, None]) * dz  # R: from + (0:n)·by
    sub = _Sub(s, cells)
    below = _count_below(sub, breaks)  # count of z < b_k
    counts = np.diff(below, axis=1).astype(np.float64)  # bins [b_{k−1}, b_k)
    total = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = counts / total[:, None]
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0)
        result[cells] = -plogp.sum(axis=1) / np.log(nb)
    return result


class _Sub:
    """A view of some cells of a _Sorted (for _count_below)."""

    def __init__(self, s: _Sorted, cells):
        self.v = s.v
        self.start = s.start[cells]
        self.count = s.count[cells]


def _zpcum(s: _Sorted, zmax, zmin):
    """Cumulative share of points per tenth of (zmin, zmax]; lidR's zpcum1..9.

    Breaks are R's ``seq(zmin, zmax, (zmax − zmin)/10)`` = ``pmin(zmin + k·by, zmax)`` for
    k ≤ n = floor(10 + 1e-10); only z > zmin count; interval 11 (z on zmax) is dropped.
    """
    ncells = s.ncells
    out = np.full((9, ncells), np.nan)
    positive = zmax > zmin
    out[:, ~positive & np.isfinite(zmax)] = 0.0
    if not positive.any():
        return out
    cells = np.flatnonzero(positive)
    top = zmax[cells]
    by = (top - zmin) / 10
    steps = np.floor((top - zmin) / by + 1e-10).astype(np.int64)
    k = np.arange(11)
    breaks = np.minimum(zmin + k[None, :] * by[:, None], top[:, None])
    breaks = np.where(k[None, :] <= steps[:, None], breaks, np.inf)
    sub = _Sub(s, cells)
    below = _count_below(sub, breaks[:, 1:])  # z < b_k, k = 1..10
    at_or_below_min = _count_below(sub, np.full((len(cells), 1), zmin), inclusive=True)
    edges = np.column_stack([at_or_below_min, below])
    counts = np.diff(edges, axis=1).astype(np.float64)  # intervals 1..10
    total = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cum = np.cumsum(counts / total[:, None], axis=1) * 100
    out[:, cells] = cum[:, :9].T
    return out


def cover_and_density(z, first, cell, ncells, cell_area, height_break=2.0) -> dict:
    """FUSION cover (% of first returns above the break), point count and densities per m².

    Parameters
    ----------
    z : ndarray
        Heights (m) of the points.
    first : ndarray of bool
        First returns.
    cell : ndarray of int
        Cell index of each point.
    ncells : int
        Number of cells.
    cell_area : float or ndarray
        Area (m²) of each cell (or plot).
    height_break : float
        Height (m) a first return must exceed (strictly) to count as cover.

    Returns
    -------
    dict
        ``cover`` (%), ``n``, ``point_density`` and ``pulse_density`` (per m²), NaN for empty cells.

    References
    ----------
    McGaughey (2021) FUSION/LDV manual, GridMetrics (cover).
    """
    z = np.asarray(z)
    first = np.asarray(first, dtype=bool)
    n = np.bincount(cell, minlength=ncells).astype(np.float64)
    nfirst = np.bincount(cell[first], minlength=ncells).astype(np.float64)
    above = np.bincount(cell[first & (z > height_break)], minlength=ncells).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cover = 100 * above / nfirst
    out = {"cover": cover, "n": n, "point_density": n / cell_area, "pulse_density": nfirst / cell_area}
    empty = n == 0
    for key in out:
        out[key][empty] = np.nan
    return out


def stdmetrics_i(intensity, z, classification, cell, ncells) -> dict:
    """lidR's ``stdmetrics_i(i, z, class)`` for every cell (the returned set; intensity quantiles are not).

    Parameters
    ----------
    intensity : ndarray
        Intensity of the points.
    z : ndarray
        Heights (m) of the points.
    classification : ndarray
        ASPRS classes (2 = ground).
    cell : ndarray of int
        Cell index of each point.
    ncells : int
        Number of cells.

    Returns
    -------
    dict
        ``itot``, ``imax``, ``imean``, ``isd``, ``iskew``, ``ikurt``, ``ipground``, ``ipcumzq10`` … ``ipcumzq90``;
        NaN for empty cells.
    """
    i = np.asarray(intensity, dtype=np.float64)
    s = _Sorted(i, cell, ncells)
    n = s.count
    has = n > 0
    itot = s.per_cell_sum(s.v)
    imax = np.full(ncells, np.nan)
    imax[has] = s.v[s.start[has] + n[has] - 1]
    mean, sd, skew, kurt = _moments(s)
    cls = np.asarray(classification)[s.order]
    with np.errstate(invalid="ignore", divide="ignore"):
        ipground = 100 * s.per_cell_sum(np.where(cls == 2, s.v, 0.0)) / itot
    out = {"itot": itot, "imax": imax, "imean": mean, "isd": sd, "iskew": skew, "ikurt": kurt, "ipground": ipground}
    # ipcumzqXX: share of intensity carried by points at or below the height quantile XX
    zs = _Sorted(z, cell, ncells)
    zq = _quantiles(zs, [0.1, 0.3, 0.5, 0.7, 0.9])
    zvals = np.asarray(z, dtype=np.float64)[s.order]
    for q, name in zip(zq, ["ipcumzq10", "ipcumzq30", "ipcumzq50", "ipcumzq70", "ipcumzq90"]):
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = 100 * s.per_cell_sum(np.where(zvals <= q[s.c], s.v, 0.0)) / itot
    for key in out:
        out[key][~has] = np.nan
    return out
