"""Accuracy of predictions and of their uncertainty: plain functions on arrays.

- :func:`regression_metrics` (and :class:`StreamingSums`, the same numbers block by block) — n, RMSE, MAE,
  bias (mean of prediction − reference), R² (1 − SSres/SStot), relative RMSE (RMSE / mean reference, %).
- :func:`gaussian_intervals`, :func:`interval_coverage` — central intervals ``pred ± z·σ`` and the share of
  references inside them (PICP) with their mean width (MPIW); Gneiting & Raftery (2007), "Strictly proper
  scoring rules, prediction, and estimation", JASA 102:359–378, on judging intervals by coverage and width.
- :func:`calibration_bins` — Lang et al. (2022, 2023): bin the samples by predicted σ (equal-width bins, bins
  with fewer than ``min_count`` samples dropped) and compare the observed RMSE with the predicted σ
  (mean and RMS) in each bin; ENCE and UCE summarize it.
- :func:`semivariogram`, :func:`fit_exponential` — the empirical residual semivariogram binned by distance,
  fitted by ``γ(h) = nugget + psill·(1 − exp(−3h/r))`` with r the *practical* range (95 % of the sill),
  with Cressie's (1985) weights.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ForestCarbonError
from ..stats import z_score

LEVELS = (0.5, 0.68, 0.8, 0.9, 0.95)

__all__ = ["LEVELS", "StreamingSums", "regression_metrics", "interval_coverage", "gaussian_intervals",
           "calibration_bins", "semivariogram", "exponential_model", "fit_exponential"]


class StreamingSums:
    """Exact streaming sums for the regression metrics (shifted by the first reference mean so that
    SStot does not lose digits on large values)."""

    def __init__(self):
        self.n = 0
        self.shift = None
        self.s_res = self.s_res2 = self.s_abs = 0.0
        self.s_ref = self.s_ref2 = self.s_pred = 0.0

    def add(self, pred, ref) -> None:
        pred = np.asarray(pred, dtype=np.float64).ravel()
        ref = np.asarray(ref, dtype=np.float64).ravel()
        if pred.size == 0:
            return
        if self.shift is None:
            self.shift = float(ref.mean())
        res = pred - ref
        r = ref - self.shift
        self.n += pred.size
        self.s_res += res.sum()
        self.s_res2 += np.dot(res, res)
        self.s_abs += np.abs(res).sum()
        self.s_ref += r.sum()
        self.s_ref2 += np.dot(r, r)
        self.s_pred += pred.sum()

    def metrics(self) -> dict:
        n = self.n
        if n == 0:
            return {"n": 0, "rmse": None, "mae": None, "bias": None, "r2": None, "relative_rmse_pct": None,
                    "mean_reference": None, "mean_prediction": None}
        mean_ref = self.shift + self.s_ref / n
        ss_tot = self.s_ref2 - self.s_ref ** 2 / n
        rmse = math.sqrt(max(self.s_res2, 0.0) / n)
        return {
            "n": int(n),
            "rmse": rmse,
            "mae": self.s_abs / n,
            "bias": self.s_res / n,
            "r2": 1.0 - self.s_res2 / ss_tot if ss_tot > 0 else None,
            "relative_rmse_pct": 100.0 * rmse / mean_ref if mean_ref != 0 else None,
            "mean_reference": mean_ref,
            "mean_prediction": self.s_pred / n,
        }


def regression_metrics(pred, ref) -> dict:
    """Accuracy of predictions against references.

    Parameters
    ----------
    pred, ref : array_like
        Predictions and references of equal size, in the same unit; NaNs are left out pairwise.

    Returns
    -------
    dict
        ``n``, ``rmse``, ``mae``, ``bias`` (mean of pred − ref), ``r2`` (1 − SSres/SStot; None when the reference
        is constant), ``relative_rmse_pct`` (% of the mean reference), ``mean_reference``, ``mean_prediction``.
    """
    pred = np.asarray(pred, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    if pred.shape != ref.shape:
        raise ForestCarbonError(f"Predictions ({pred.size}) and references ({ref.size}) differ in number.")
    ok = np.isfinite(pred) & np.isfinite(ref)
    sums = StreamingSums()
    sums.add(pred[ok], ref[ok])
    return sums.metrics()


def gaussian_intervals(pred, std, levels=LEVELS) -> dict:
    """Central Gaussian intervals ``pred ± z(level)·std``.

    Parameters
    ----------
    pred, std : array_like
        Prediction and its standard deviation, same unit.
    levels : sequence of float
        Central coverages (0-1).

    Returns
    -------
    dict
        ``{level: (lower, upper)}`` float64 arrays.
    """
    pred = np.asarray(pred, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    out = {}
    for level in levels:
        half = z_score(level) * std
        out[float(level)] = (pred - half, pred + half)
    return out


def interval_coverage(ref, lower, upper) -> dict:
    """Prediction interval coverage probability (PICP) and mean width (MPIW).

    Parameters
    ----------
    ref, lower, upper : array_like
        References and interval bounds; pairs with a NaN are left out.

    Returns
    -------
    dict
        ``n``, ``coverage`` (share of references with ``lower ≤ ref ≤ upper``) and ``mean_width``; None without
        data.
    """
    ref, lower, upper = (np.asarray(a, dtype=np.float64).ravel() for a in (ref, lower, upper))
    ok = np.isfinite(ref) & np.isfinite(lower) & np.isfinite(upper)
    n = int(ok.sum())
    if n == 0:
        return {"n": 0, "coverage": None, "mean_width": None}
    inside = (ref[ok] >= lower[ok]) & (ref[ok] <= upper[ok])
    return {"n": n, "coverage": float(inside.mean()), "mean_width": float((upper[ok] - lower[ok]).mean())}


def calibration_bins(pred_std, residual, n_bins: int = 10, min_count: int = 10) -> dict:
    """Observed RMSE against predicted σ in equal-width bins of σ (Lang et al. 2022, 2023).

    Parameters
    ----------
    pred_std : array_like
        Predicted standard deviations.
    residual : array_like
        Prediction − reference, same unit.
    n_bins : int
        Equal-width bins between the smallest and largest σ.
    min_count : int
        Bins with fewer samples are dropped.

    Returns
    -------
    dict
        ``bins`` (each with its σ range, n, mean σ, RMS σ = √mean σ², RMSE and mean residual), ``ence`` (mean over
        bins of |RMS σ − RMSE| / RMS σ), ``uce`` (Σ (n_b/n)·|MSE_b − mean σ²_b|) and ``n``.

    References
    ----------
    Lang, N. et al. (2023). A high-resolution canopy height model of the Earth. Nature Ecology & Evolution
    7:1778–1789.
    """
    s = np.asarray(pred_std, dtype=np.float64).ravel()
    r = np.asarray(residual, dtype=np.float64).ravel()
    ok = np.isfinite(s) & np.isfinite(r)
    s, r = s[ok], r[ok]
    if s.size == 0:
        return {"bins": [], "ence": None, "uce": None, "n": 0}
    lo, hi = float(s.min()), float(s.max())
    if hi <= lo:
        hi = lo + max(abs(lo) * 1e-6, 1e-12)
    edges = np.linspace(lo, hi, n_bins + 1)
    index = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        sel = index == b
        count = int(sel.sum())
        if count < min_count:
            continue
        sb, rb = s[sel], r[sel]
        bins.append({"std_from": float(edges[b]), "std_to": float(edges[b + 1]), "n": count,
                     "mean_std": float(sb.mean()), "rms_std": float(math.sqrt(np.mean(sb ** 2))),
                     "rmse": float(math.sqrt(np.mean(rb ** 2))), "mean_residual": float(rb.mean())})
    n = sum(b["n"] for b in bins)
    ence = float(np.mean([abs(b["rms_std"] - b["rmse"]) / b["rms_std"] for b in bins if b["rms_std"] > 0])) \
        if bins and any(b["rms_std"] > 0 for b in bins) else None
    uce = float(sum(b["n"] / n * abs(b["rmse"] ** 2 - b["rms_std"] ** 2) for b in bins)) if n else None
    return {"bins": bins, "ence": ence, "uce": uce, "n": int(n)}


def semivariogram(x, y, residual, n_lags: int = 15, max_distance: float | None = None) -> dict:
    """Empirical semivariogram γ(h) = ½·mean((r_i − r_j)²) over pairs, binned by distance.

    All pairs are used: keep the points to a few thousand (n² / 2 pairs).

    Parameters
    ----------
    x, y : array_like
        Coordinates (CRS units, metres for a projected CRS).
    residual : array_like
        The residual at each point.
    n_lags : int
        Equal distance bins; empty bins are dropped.
    max_distance : float, optional
        The largest distance (CRS units); default half the largest pairwise distance.

    Returns
    -------
    dict
        ``lag`` (mean distance per bin), ``gamma``, ``pairs``, ``n_points``, ``max_distance`` and ``variance``
        (of the residuals, ddof 1).
    """
    from scipy.spatial.distance import pdist

    x, y, r = (np.asarray(a, dtype=np.float64).ravel() for a in (x, y, residual))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(r)
    x, y, r = x[ok], y[ok], r[ok]
    if r.size < 3:
        return {"lag": [], "gamma": [], "pairs": [], "n_points": int(r.size), "max_distance": max_distance,
                "variance": None}
    xy = np.column_stack([x, y])
    d = pdist(xy)
    g = 0.5 * pdist(r[:, None], "sqeuclidean")
    if max_distance is None:
        max_distance = 0.5 * float(d.max())
    if not max_distance > 0:
        raise ForestCarbonError("The semivariogram needs points at distinct positions.")
    keep = d <= max_distance
    d, g = d[keep], g[keep]
    edges = np.linspace(0.0, max_distance, n_lags + 1)
    index = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, n_lags - 1)
    counts = np.bincount(index, minlength=n_lags)
    sum_d = np.bincount(index, weights=d, minlength=n_lags)
    sum_g = np.bincount(index, weights=g, minlength=n_lags)
    has = counts > 0
    return {"lag": (sum_d[has] / counts[has]).tolist(), "gamma": (sum_g[has] / counts[has]).tolist(),
            "pairs": counts[has].astype(int).tolist(), "n_points": int(r.size), "max_distance": float(max_distance),
            "variance": float(np.var(r, ddof=1))}


def exponential_model(h, nugget, partial_sill, practical_range):
    """The exponential semivariogram model with a *practical* range.

    Parameters
    ----------
    h : array_like
        Distances (CRS units).
    nugget, partial_sill : float
        In the residuals' unit squared.
    practical_range : float
        The distance at which γ reaches 95 % of the partial sill (CRS units).

    Returns
    -------
    numpy.ndarray
        ``nugget + partial_sill·(1 − exp(−3h/practical_range))``.
    """
    return nugget + partial_sill * (1.0 - np.exp(-3.0 * np.asarray(h, dtype=np.float64) / practical_range))


def fit_exponential(lag, gamma, pairs=None, max_distance: float | None = None) -> dict:
    """Fit :func:`exponential_model` to an empirical semivariogram.

    Weighted least squares (``scipy.optimize.curve_fit``) with Cressie's (1985) weights N(h)/γ(h)²; bounds:
    nugget, partial sill ≥ 0; practical range in (0, 3·max_distance].

    Parameters
    ----------
    lag, gamma : array_like
        The empirical semivariogram (:func:`semivariogram`).
    pairs : array_like, optional
        Pairs per lag (default: equal weights).
    max_distance : float, optional
        The largest lag considered (default the largest lag).

    Returns
    -------
    dict
        ``nugget``, ``partial_sill``, ``sill``, ``practical_range``, ``range_parameter`` (practical range / 3, the
        *a* of ``exp(−h/a)``), ``nugget_ratio`` and ``converged`` (False, with None values, when it failed or
        there are fewer than 3 lags).
    """
    from scipy.optimize import curve_fit

    lag = np.asarray(lag, dtype=np.float64)
    gamma = np.asarray(gamma, dtype=np.float64)
    empty = {"model": "exponential", "nugget": None, "partial_sill": None, "sill": None, "practical_range": None,
             "range_parameter": None, "nugget_ratio": None, "converged": False}
    if lag.size < 3:
        return empty
    if max_distance is None:
        max_distance = float(lag.max())
    # Cressie's weights N(h)/γ(h)²: lags with many pairs and small γ (near the origin) count most
    counts = np.ones_like(lag) if pairs is None else np.maximum(np.asarray(pairs, dtype=np.float64), 1.0)
    sigma = np.maximum(gamma, 1e-12 * max(float(gamma.max()), 1e-300)) / np.sqrt(counts)
    top = float(max(gamma.max(), 1e-12))
    p0 = (float(max(gamma[0], 0.0)) * 0.5, max(top - 0.5 * float(max(gamma[0], 0.0)), 1e-12),
          max_distance / 3.0)
    upper = (2.0 * top, 2.0 * top, 3.0 * max_distance)
    lower = (0.0, 0.0, 1e-6 * max_distance)
    p0 = tuple(min(max(p, lo * 1.0001 + 1e-15), hi * 0.9999) for p, lo, hi in zip(p0, lower, upper))
    try:
        params, _ = curve_fit(exponential_model, lag, gamma, p0=p0, sigma=sigma, bounds=(lower, upper),
                              maxfev=20000)
    except (RuntimeError, ValueError):
        return empty
    nugget, psill, prange = (float(p) for p in params)
    sill = nugget + psill
    return {"model": "exponential", "nugget": nugget, "partial_sill": psill, "sill": sill,
            "practical_range": prange, "range_parameter": prange / 3.0,
            "nugget_ratio": nugget / sill if sill > 0 else None, "converged": True}
