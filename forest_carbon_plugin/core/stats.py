"""Gaussian helpers shared by inference, validation, carbon totals and the docks.

An interval ``[lower, upper]`` of central coverage ``c`` of a Gaussian error has half-width
``z(c) · σ`` with ``z(c) = Φ⁻¹(0.5 + c/2)``; so ``σ = (upper − lower) / (2 z(c))``. This is the
Gaussian-equivalent σ used wherever a model reports quantile bounds instead of a standard deviation
(IPCC 2006 Guidelines, Vol. 1, Ch. 3, Eq. 3.1 use the same relation for 95 % intervals, z = 1.96).
"""

from __future__ import annotations

from statistics import NormalDist

from .errors import ForestCarbonError

__all__ = ["z_score", "sigma_from_bounds"]


def z_score(level: float) -> float:
    """The standard normal quantile of a central interval.

    Parameters
    ----------
    level : float
        Coverage of the central interval, strictly between 0 and 1 (0.9 for a 90 % interval).

    Returns
    -------
    float
        ``Φ⁻¹(0.5 + level / 2)``: z(0.9) = 1.6449, z(0.95) = 1.9600.
    """
    if not 0 < level < 1:
        raise ForestCarbonError(f"A coverage or confidence level must lie between 0 and 1 (got {level}).")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def sigma_from_bounds(lower, upper, coverage: float):
    """The Gaussian-equivalent standard deviation of a central interval.

    Parameters
    ----------
    lower, upper : numpy.ndarray or float
        The interval's bounds, in the unit of the prediction.
    coverage : float
        The interval's central coverage (0.9 for the 5th–95th percentiles).

    Returns
    -------
    numpy.ndarray or float
        ``(upper − lower) / (2 z(coverage))``, in the prediction's unit.
    """
    return (upper - lower) / (2.0 * z_score(coverage))
