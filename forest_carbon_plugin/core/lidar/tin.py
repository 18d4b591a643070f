"""Triangulated irregular networks: Delaunay triangulation and fast point location.

scipy's ``Delaunay.find_simplex`` walks the triangulation from one simplex to the next and
falls back to a brute-force search when the walk meets the sliver triangles that quantized
LiDAR coordinates produce; on 10⁵ queries that costs seconds to minutes. Here triangles are
bucketed on a regular grid by their bounding boxes, and each query tests only the triangles
of its bucket (vectorized barycentric test): linear in the number of queries.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-10
_BLOCK = 400_000


def locate(tri, x, y, buckets=None) -> np.ndarray:
    """Index of the triangle of ``tri`` holding each point; −1 outside.

    Parameters
    ----------
    tri : scipy.spatial.Delaunay
        The triangulation.
    x, y : ndarray
        Query points, in ``tri``'s coordinates.
    buckets : optional
        :func:`bucket_index` of ``tri``, for callers that locate points in many calls.

    Returns
    -------
    ndarray of int
        Simplex index per point, −1 outside the hull.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    out = np.full(len(x), -1, dtype=np.int64)
    if len(x) == 0 or len(tri.simplices) == 0:
        return out
    x0, y0, size, ncols, nrows, owner, counts, starts = buckets or bucket_index(tri)
    transform = tri.transform
    for b0 in range(0, len(x), _BLOCK):
        qx, qy = x[b0:b0 + _BLOCK], y[b0:b0 + _BLOCK]
        qc = np.floor((qx - x0) / size).astype(np.int64)
        qr = np.floor((qy - y0) / size).astype(np.int64)
        valid = (qc >= 0) & (qc < ncols) & (qr >= 0) & (qr < nrows)
        qi = np.flatnonzero(valid)
        cell = qr[qi] * ncols + qc[qi]
        n = counts[cell]
        pair_q = np.repeat(qi, n)
        offset = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        pair_t = owner[np.repeat(starts[cell], n) + offset]
        t = transform[pair_t]
        dx = qx[pair_q] - t[:, 2, 0]
        dy = qy[pair_q] - t[:, 2, 1]
        b1 = t[:, 0, 0] * dx + t[:, 0, 1] * dy
        b2 = t[:, 1, 0] * dx + t[:, 1, 1] * dy
        b3 = 1 - b1 - b2
        with np.errstate(invalid="ignore"):
            hit = (b1 >= -_EPS) & (b2 >= -_EPS) & (b3 >= -_EPS)
        pair_q, pair_t = pair_q[hit], pair_t[hit]
        first = np.unique(pair_q, return_index=True)[1]
        found = out[b0:b0 + _BLOCK]
        found[pair_q[first]] = pair_t[first]
    return out


def bucket_index(tri):
    """The triangles of ``tri`` bucketed on a grid by their bounding boxes (what :func:`locate` searches).

    Parameters
    ----------
    tri : scipy.spatial.Delaunay
        The triangulation.

    Returns
    -------
    tuple
        (x0, y0, bucket size, ncols, nrows, the triangle of each bucket entry, entries per bucket,
        first entry of each bucket), as :func:`locate` takes it.
    """
    pts = tri.points
    tx, ty = pts[tri.simplices, 0], pts[tri.simplices, 1]
    x0, y0 = pts[:, 0].min(), pts[:, 1].min()
    span = max(pts[:, 0].max() - x0, pts[:, 1].max() - y0, 1e-9)
    size = max(span / np.sqrt(len(tri.simplices)) * 1.5, span / 4096)
    ncols = int(np.floor((pts[:, 0].max() - x0) / size)) + 1
    nrows = int(np.floor((pts[:, 1].max() - y0) / size)) + 1
    c0 = np.floor((tx.min(axis=1) - x0) / size).astype(np.int64)
    c1 = np.floor((tx.max(axis=1) - x0) / size).astype(np.int64)
    r0 = np.floor((ty.min(axis=1) - y0) / size).astype(np.int64)
    r1 = np.floor((ty.max(axis=1) - y0) / size).astype(np.int64)
    w, h = c1 - c0 + 1, r1 - r0 + 1
    n_cells = w * h
    owner = np.repeat(np.arange(len(n_cells)), n_cells)
    k = np.arange(n_cells.sum()) - np.repeat(np.cumsum(n_cells) - n_cells, n_cells)
    keys = (r0[owner] + k // w[owner]) * ncols + (c0[owner] + k % w[owner])
    order = np.argsort(keys, kind="stable")
    keys, owner = keys[order], owner[order]
    counts = np.bincount(keys, minlength=ncols * nrows)
    starts = np.cumsum(counts) - counts
    return x0, y0, size, ncols, nrows, owner, counts, starts


def interpolate(tri, values, x, y, simplex=None) -> np.ndarray:
    """Linear (barycentric) interpolation of ``values`` given at the vertices of ``tri``.

    Parameters
    ----------
    tri : scipy.spatial.Delaunay
        The triangulation.
    values : ndarray
        One value per vertex.
    x, y : ndarray
        Query points, in ``tri``'s coordinates.
    simplex : ndarray of int, optional
        :func:`locate`'s result for the points, when already known.

    Returns
    -------
    ndarray
        Interpolated values; NaN outside the hull.
    """
    if simplex is None:
        simplex = locate(tri, x, y)
    q = np.column_stack([x, y])
    out = np.full(len(q), np.nan)
    inside = simplex >= 0
    if inside.any():
        s = simplex[inside]
        t = tri.transform[s]
        bary = np.einsum("ijk,ik->ij", t[:, :2], q[inside] - t[:, 2])
        w = np.column_stack([bary, 1 - bary.sum(axis=1)])
        out[inside] = (w * np.asarray(values)[tri.simplices[s]]).sum(axis=1)
    return out
