"""Conformalized quantile regression in multiplicative form (Romano, Patterson & Candès 2019, "Conformalized
quantile regression", NeurIPS 32).

``predictraster`` applies a factor f to the half-widths around the median: the interval
``m − f·(m − lo), m + f·(up − m)`` contains y iff the score ``s = (m − y)/(m − lo)`` (y below m) or
``(y − m)/(up − m)`` (y above m) is ≤ f, so f is the ⌈(n + 1)·coverage⌉-th smallest score of held-out samples
(s = 1 + Romano's max((lo − y)/(m − lo), (y − up)/(up − m)), his additive score divided by the half-width on
its side).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ForestCarbonError

__all__ = ["conformal_scores", "conformal_factor"]


def conformal_scores(y, lower, median, upper) -> np.ndarray:
    """Conformity scores of held-out samples for multiplicative interval scaling.

    Parameters
    ----------
    y : array_like
        Observed values.
    lower, median, upper : array_like
        The uncalibrated interval and its centre.

    Returns
    -------
    numpy.ndarray
        s = (m − y)/(m − lo) below the median, (y − m)/(up − m) above (0 at y = m; inf for a zero-width side that
        y falls on): y lies in ``m − f·(m − lo), m + f·(up − m)`` iff s ≤ f.
    """
    y, lo, m, up = (np.asarray(a, dtype=np.float64) for a in (y, lower, median, upper))
    below = y < m
    width = np.where(below, m - lo, up - m)
    gap = np.abs(y - m)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(gap == 0, 0.0, np.where(width > 0, gap / width, np.inf))
    return s


def conformal_factor(y, lower, median, upper, coverage: float = 0.9) -> float:
    """The factor that scales the half-widths so that the intervals reach ``coverage``.

    The finite-sample rule of split conformal prediction: the ⌈(n + 1)·coverage⌉-th smallest score (Romano et
    al. 2019). With too few samples for that rank (n < coverage/(1 − coverage)) the largest finite score.

    Parameters
    ----------
    y, lower, median, upper : array_like
        Held-out observations and their uncalibrated intervals.
    coverage : float
        Nominal coverage (0-1).

    Returns
    -------
    float
        The factor f (1 means the intervals are already calibrated).
    """
    if not 0 < coverage < 1:
        raise ForestCarbonError(f"coverage must lie between 0 and 1 (got {coverage}).")
    s = conformal_scores(y, lower, median, upper)
    s = np.sort(s[~np.isnan(s)])
    n = s.size
    if n == 0:
        raise ForestCarbonError("No held-out sample to calibrate the intervals with.")
    k = math.ceil((n + 1) * coverage - 1e-9)
    if k > n:
        finite = s[np.isfinite(s)]
        return float(finite[-1]) if finite.size else 1.0
    value = float(s[k - 1])
    if not math.isfinite(value):
        raise ForestCarbonError("The intervals have zero width where the targets differ from the prediction for "
                                "more than 1 − COVERAGE of the samples: no factor can calibrate them.")
    return value
