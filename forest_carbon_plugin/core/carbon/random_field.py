"""Correlated Gaussian error fields and the Monte Carlo draws of a map total's error.

The per-pixel errors of a biomass map are modelled as a zero-mean, unit-variance Gaussian random field ε with
the exponential correlation ``ρ(d) = exp(−3d / range)`` (``range`` = practical range, where ρ = 0.05, as
``validatepredictions`` fits it), scaled by each pixel's σ. The error of a polygon's total is Σ uᵢ·εᵢ with
uᵢ = wᵢ·aᵢ·σᵢ (share of the pixel inside, pixel area in ha, σ in Mg/ha).

Fields are simulated by circulant embedding and FFT (Dietrich & Newsam 1997) in memory-bounded batches. A
window larger than :data:`MAX_SIM_SIDE` pixels a side is simulated on coarser cells (the sums of u inside
them) and rescaled to the exact variance ``uᵀΣu`` computed by FFT on the full grid: a linear functional of a
Gaussian field is Gaussian, so the rescaled draws have exactly the right distribution.

References
----------
Dietrich C.R. & Newsam G.N. (1997) Fast and exact simulation of stationary Gaussian processes through
circulant embedding of the covariance matrix. SIAM Journal on Scientific Computing 18(4):1088-1107.
"""

from __future__ import annotations

import math

import numpy as np

from ..progress import check_cancel

__all__ = ["MAX_SIM_SIDE", "MAX_BATCH_BYTES", "correlated_field", "exact_variance", "simulate_error_totals"]

MAX_SIM_SIDE = 128  #: largest window side (pixels) simulated pixel by pixel; larger windows are coarsened
MAX_BATCH_BYTES = 128 * 2 ** 20  #: memory of one batch of FFT fields


def _embedding(shape, res_m, range_m):
    """Eigenvalues (real FFT of the first row) of the circulant embedding of the exponential covariance on
    a grid of ``shape`` cells of size ``res_m`` (x, y); returns (λ, embedded shape)."""
    from scipy import fft

    rows, cols = shape
    m = (fft.next_fast_len(2 * rows), fft.next_fast_len(2 * cols))
    i = np.arange(m[0])
    j = np.arange(m[1])
    di = np.minimum(i, m[0] - i) * res_m[1]
    dj = np.minimum(j, m[1] - j) * res_m[0]
    d = np.hypot(di[:, None], dj[None, :])
    # exp(−3d/range): the e-folding distance is a third of the practical range
    c = np.exp(-d / (range_m / 3.0))
    lam = fft.fft2(c, workers=-1).real
    return lam, m


def _uniform_batches(shape, n, rng, draw, max_bytes):
    """Batches of ``draw(k)`` (k fields of ``shape``) until ``n`` fields, each batch within ``max_bytes``."""
    per = max(1, int(max_bytes // (8 * shape[0] * shape[1])))
    done = 0
    while done < n:
        k = min(per, n - done)
        yield draw(k)
        done += k


def _fft_batches(shape, res_m, range_m, n, rng, max_bytes):
    from scipy import fft

    rows, cols = shape
    lam, m = _embedding(shape, res_m, range_m)
    # the (rare, small) negative eigenvalues of the embedding are set to 0
    scale = np.sqrt(np.clip(lam, 0.0, None) / (m[0] * m[1])).astype(np.float32)
    per = max(1, int(max_bytes // (8 * m[0] * m[1])))
    done = 0
    while done < n:
        pairs = min(per, (n - done + 1) // 2)
        # single precision: the fields are summed against float64 weights; 2 fields per complex FFT
        z = np.empty((pairs, *m), dtype=np.complex64)
        z.real = rng.standard_normal((pairs, *m), dtype=np.float32)
        z.imag = rng.standard_normal((pairs, *m), dtype=np.float32)
        z *= scale
        w = fft.fft2(z, workers=-1, overwrite_x=True)[:, :rows, :cols]
        fields = np.concatenate([w.real, w.imag], axis=0)[: n - done]
        done += len(fields)
        yield fields


def _field_batches(shape, res_m, range_m, n, rng, max_bytes=MAX_BATCH_BYTES):
    """Yield batches (k, rows, cols) of unit-variance fields, ``n`` in all."""
    rows, cols = shape
    if math.isinf(range_m):
        # fully correlated: one standard normal per realization, the same at every pixel
        def same(k):
            return np.broadcast_to(rng.standard_normal((k, 1, 1)).astype(np.float32), (k, rows, cols))

        return _uniform_batches(shape, n, rng, same, max_bytes)
    if range_m <= 0:
        return _uniform_batches(shape, n, rng, lambda k: rng.standard_normal((k, rows, cols), dtype=np.float32),
                                max_bytes)
    return _fft_batches(shape, res_m, range_m, n, rng, max_bytes)


def _pair(res_m) -> tuple[float, float]:
    return (float(res_m), float(res_m)) if np.isscalar(res_m) else tuple(float(r) for r in res_m)


def correlated_field(shape, res_m, range_m: float, n: int = 1, seed=None) -> np.ndarray:
    """Realizations of a Gaussian random field with the exponential correlation.

    Parameters
    ----------
    shape : (int, int)
        Rows and columns of the grid.
    res_m : float or (float, float)
        Cell size in metres (x, y), or one number for square cells.
    range_m : float
        Practical range of ``ρ(d) = exp(−3d / range_m)`` in metres; 0 gives independent cells,
        ``math.inf`` one value per realization.
    n : int
        Number of realizations.
    seed : int or None
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    numpy.ndarray
        ``(n, rows, cols)`` float32, zero mean and unit variance (circulant embedding, Dietrich & Newsam 1997,
        on a grid at least twice the window).
    """
    rng = np.random.default_rng(seed)
    return np.concatenate(list(_field_batches(tuple(shape), _pair(res_m), float(range_m), int(n), rng)), axis=0)


def exact_variance(u: np.ndarray, res_m, range_m: float) -> float:
    """The variance of Σ uᵢ εᵢ, ``uᵀΣu``, for the exponential correlation on the grid of ``u``.

    Parameters
    ----------
    u : numpy.ndarray
        2-D weights (Mg per unit of ε).
    res_m : (float, float)
        Cell size in metres (x, y).
    range_m : float
        Practical range in metres (0: independent, ``math.inf``: fully correlated).

    Returns
    -------
    float
        ``uᵀΣu`` in Mg², computed exactly by FFT convolution on the circulant embedding.
    """
    from scipy import fft

    if range_m <= 0:
        return float(np.sum(u * u))
    if math.isinf(range_m):
        return float(np.sum(u)) ** 2
    lam, m = _embedding(u.shape, _pair(res_m), range_m)
    padded = np.zeros(m)
    padded[: u.shape[0], : u.shape[1]] = u
    cu = fft.ifft2(fft.fft2(padded, workers=-1) * lam, workers=-1).real[: u.shape[0], : u.shape[1]]
    return float(np.sum(u * cu))


def _coarsen(u, factor):
    rows, cols = u.shape
    pr, pc = (-rows) % factor, (-cols) % factor
    padded = np.pad(u, ((0, pr), (0, pc)))
    return padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).sum(axis=(1, 3))


def simulate_error_totals(u: np.ndarray, res_m, range_m: float, n: int, rng, progress=None) -> tuple[np.ndarray, dict]:
    """Monte Carlo draws of the error of a total, Σ uᵢ εᵢ.

    Parameters
    ----------
    u : numpy.ndarray
        2-D weights wᵢ·aᵢ·σᵢ (Mg per unit of ε).
    res_m : (float, float)
        Cell size in metres (x, y).
    range_m : float
        Practical range of the error correlation in metres (0: independent, ``math.inf``: fully correlated).
    n : int
        Number of draws.
    rng : numpy.random.Generator
    progress : Progress or None
        Polled for cancellation between batches.

    Returns
    -------
    (numpy.ndarray, dict)
        ``n`` draws in Mg, and how they were made (``coarsening`` factor, ``rescale`` ratio or ``fully_correlated``).
    """
    res_m = _pair(res_m)
    if math.isinf(range_m):
        # every pixel shares one ε: the total's error is Σu·ε exactly, no field needed
        return float(np.sum(u)) * rng.standard_normal(n), {"coarsening": None, "fully_correlated": True}
    factor = max(1, int(math.ceil(max(u.shape) / MAX_SIM_SIDE)))
    info = {"coarsening": factor}
    if factor == 1:
        grid_u, grid_res = u, res_m
    else:
        grid_u, grid_res = _coarsen(u, factor), (res_m[0] * factor, res_m[1] * factor)
    totals = np.empty(n)
    done = 0
    for batch in _field_batches(grid_u.shape, grid_res, range_m, n, rng):
        check_cancel(progress)
        k = len(batch)
        totals[done:done + k] = np.tensordot(batch, grid_u, axes=([1, 2], [0, 1]))
        done += k
    if factor > 1:
        exact = exact_variance(u, res_m, range_m)
        coarse = exact_variance(grid_u, grid_res, range_m)
        ratio = math.sqrt(exact / coarse) if coarse > 0 else 0.0
        totals *= ratio
        info["rescale"] = ratio
    return totals, info
