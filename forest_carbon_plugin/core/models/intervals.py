"""A prediction and its uncertainty from a model's declared outputs.

Prediction = mean of the members' means (median for quantile models); σ from the declared
variance/log-variance/std outputs; for an ensemble the epistemic variance between members (``np.var``,
ddof 0) is added to the mean aleatoric variance (Lang et al. 2023, Nature Ecology & Evolution
7:1778-1789); bounds at ``coverage`` are Gaussian (mean ± z·σ) or, for quantile models, the declared
quantiles (made non-crossing); a conformal factor (from calibration, :mod:`.conformal`) scales the
half-widths.
"""

from __future__ import annotations

import numpy as np

from ..errors import ForestCarbonError
from ..stats import sigma_from_bounds, z_score
from .card import ModelCard

__all__ = ["combine_members", "quantile_interval"]


def combine_members(card: ModelCard, member_outputs: list, coverage: float) -> dict:
    """Prediction, σ and bounds from every member's declared outputs.

    Parameters
    ----------
    card : ModelCard
        Declares each output's meaning (mean, variance, log_variance, std, quantile:q) and the conformal factor.
    member_outputs : list of dict
        One dict per member, output name → array (channels, pixels…), channel first.
    coverage : float
        Central coverage of the bounds (for a quantile model, the declared quantiles must span it).

    Returns
    -------
    dict
        float64 arrays (pixels…): ``prediction``, and when the model gives a spread ``std``, ``lower``, ``upper``.
    """
    means, variances, quantiles = [], [], {}
    for outputs in member_outputs:
        mean = var = None
        for spec in card.outputs:
            value = card.postprocess(np.asarray(outputs[spec.name], dtype=np.float64)[spec.channel],  # (channels, pixels…)
                                     spec.meaning)
            if spec.meaning == "mean":
                mean = value
            elif spec.meaning == "variance":
                var = np.maximum(value, 0)
            elif spec.meaning == "log_variance":
                var = np.exp(value)
            elif spec.meaning == "std":
                var = np.square(value)
            else:
                quantiles.setdefault(spec.quantile, []).append(value)
        if mean is None and 0.5 in quantiles:
            mean = quantiles[0.5][-1]
        if mean is None:
            raise ForestCarbonError("The model declares no 'mean' (or 'quantile:0.5') output: nothing to predict.")
        means.append(mean)
        if var is not None:
            variances.append(var)
    factor = card.conformal_factor or 1.0
    stack = np.stack(means)
    prediction = stack.mean(axis=0)
    z = z_score(coverage)
    result = {"prediction": prediction}
    if quantiles and not variances:
        levels = sorted(quantiles)
        low_q, high_q = levels[0], levels[-1]
        lower = np.mean(quantiles[low_q], axis=0)
        upper = np.mean(quantiles[high_q], axis=0)
        declared = high_q - low_q
        if abs(declared - coverage) > 1e-6:
            raise ForestCarbonError(f"The model's quantiles {low_q} and {high_q} make a {declared:.0%} interval, "
                                    f"not the {coverage:.0%} asked for: set COVERAGE to {declared:g}.")
        lower, centre, upper = quantile_interval(lower, prediction, upper)
        result["prediction"] = centre
        lower = centre - factor * (centre - lower)
        upper = centre + factor * (upper - centre)
        result.update(lower=lower, upper=upper, std=sigma_from_bounds(lower, upper, coverage))
        return result
    total = np.zeros_like(prediction)
    has_spread = False
    if variances:
        total = total + np.mean(np.stack(variances), axis=0)
        has_spread = True
    if len(means) > 1:
        total = total + stack.var(axis=0)
        has_spread = True
    if has_spread:
        std = np.sqrt(total) * factor
        result.update(std=std, lower=prediction - z * std, upper=prediction + z * std)
    return result


def quantile_interval(lower, median, upper):
    """Lower, median and upper quantile predictions made consistent.

    Sorted per pixel (quantile models fitted one per level can cross; sorting is the rearrangement of
    Chernozhukov, Fernández-Val & Galichon 2010, Econometrica 78:1093, which never makes an estimate worse), and
    a side of zero width given the other side's width, so that a conformal factor scales both (a collapsed side
    would stay collapsed at any factor).

    Parameters
    ----------
    lower, median, upper : array_like

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, numpy.ndarray)
        float64 ``(lower, median, upper)``.
    """
    q = np.sort(np.stack([np.asarray(a, dtype=np.float64) for a in (lower, median, upper)]), axis=0)
    lo, m, up = q[0], q[1], q[2]
    below, above = m - lo, up - m
    below, above = np.where(below > 0, below, above), np.where(above > 0, above, below)
    return m - below, m, m + above
