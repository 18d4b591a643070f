"""Cross-validation folds that respect space, and cross-validation itself.

* :func:`spatial_folds` — square blocks of ``block_size_m`` (edges at multiples of the block size in the grid's
  CRS) are shuffled (seeded) and dealt to the folds in turn, so a block is never split between folds (Roberts
  et al. 2017, "Cross-validation strategies for data with temporal, spatial, hierarchical, or phylogenetic
  structure", Ecography 40:913–929); :func:`random_folds` is the ordinary random K-fold for comparison, which
  over-states the accuracy of maps of autocorrelated variables (Ploton et al. 2020, Nature Communications
  11:4540).
* Plots (the area-based approach): plots closer than a distance form groups (:func:`plot_groups`; the distance
  chosen by :func:`auto_group_distance` from the Clark–Evans aggregation index when none is given); with fewer
  than ``LOO_BELOW`` groups leave-one-group-out, otherwise the groups are dealt to the folds
  (:func:`group_folds`).
* :func:`cross_validate` — out-of-fold predictions, metrics and cross-fitted conformal calibration.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ForestCarbonError
from ..progress import Progress, check_cancel
from .accuracy import interval_coverage, regression_metrics
from .conformal import conformal_factor, conformal_scores
from .fit import Learner, predict_intervals

AUTO_BLOCK_PIXELS = 10  # BLOCK_SIZE 0: 10 pixels, halved (down to 2 pixels) until there are ≥ 2·FOLDS blocks
LOO_BELOW = 30  # fewer spatial groups than this: leave-one-group-out instead of FOLDS folds
CLUSTERED_R = 0.7  # Clark-Evans aggregation index below which plots are taken as clustered (BLOCK_SIZE 0)

__all__ = ["spatial_folds", "random_folds", "auto_block_size", "plot_groups", "auto_group_distance",
           "group_folds", "cross_validate", "LOO_BELOW"]


def spatial_folds(x, y, block_size_m: float, folds: int, seed: int = 0) -> np.ndarray:
    """Spatial-block folds: every sample of a square block in one fold (Roberts et al. 2017).

    Parameters
    ----------
    x, y : array_like
        Sample coordinates (the grid's CRS).
    block_size_m : float
        Block side; edges at multiples of it.
    folds : int
        Number of folds (at least 2, at most the number of blocks).
    seed : int
        Seed of the shuffle of the blocks, which are then dealt to the folds in turn.

    Returns
    -------
    numpy.ndarray
        Fold (0 … folds − 1) of each sample.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if not block_size_m > 0:
        raise ForestCarbonError(f"block_size_m must be greater than 0 (got {block_size_m}).")
    if folds < 2:
        raise ForestCarbonError(f"folds must be at least 2 (got {folds}).")
    bx = np.floor(x / block_size_m).astype(np.int64)
    by = np.floor(y / block_size_m).astype(np.int64)
    blocks, inverse = np.unique(np.column_stack([bx, by]), axis=0, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    if len(blocks) < folds:
        raise ForestCarbonError(f"The samples fall in {len(blocks)} spatial block(s) of {block_size_m:g} m, fewer "
                                f"than the {folds} folds: use a smaller BLOCK_SIZE or fewer FOLDS.")
    order = np.random.default_rng(seed).permutation(len(blocks))
    fold_of_block = np.empty(len(blocks), dtype=np.int64)
    fold_of_block[order] = np.arange(len(blocks)) % folds
    return fold_of_block[inverse]


def random_folds(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """Ordinary random K-fold (balanced, seeded).

    Parameters
    ----------
    n : int
        Number of samples.
    folds : int
    seed : int

    Returns
    -------
    numpy.ndarray
        Fold (0 … folds − 1) of each sample.
    """
    if folds < 2:
        raise ForestCarbonError(f"folds must be at least 2 (got {folds}).")
    return np.random.default_rng(seed).permutation(n) % folds


def auto_block_size(x, y, res: float, folds: int) -> tuple[float, str]:
    """The block side when none is given.

    Parameters
    ----------
    x, y : array_like
        Sample coordinates.
    res : float
        Pixel size of the features (m).
    folds : int

    Returns
    -------
    (float, str)
        ``AUTO_BLOCK_PIXELS`` pixels, halved (down to 2 pixels) until at least 2·``folds`` blocks hold samples; and
        a note saying so.
    """
    size = AUTO_BLOCK_PIXELS * res
    while True:
        blocks = len(np.unique(np.column_stack([np.floor(x / size), np.floor(y / size)]), axis=0))
        if blocks >= 2 * folds or size <= 2 * res:
            return size, f"BLOCK_SIZE {size:g} m chosen automatically ({blocks} blocks hold samples)."
        size /= 2


def plot_groups(x, y, distance_m: float) -> np.ndarray:
    """Group plots that lie close together (single linkage).

    Parameters
    ----------
    x, y : array_like
        Plot locations (m).
    distance_m : float
        Plots closer than this to a plot of a group join it; 0: each plot is its own group.

    Returns
    -------
    numpy.ndarray
        Group id of each plot.
    """
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    points = np.column_stack([np.asarray(x, float), np.asarray(y, float)])
    if not distance_m > 0 or len(points) < 2:
        return np.arange(len(points))
    pairs = cKDTree(points).query_pairs(distance_m, output_type="ndarray")
    from scipy.sparse import coo_matrix

    n = len(points)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])) if len(pairs) else ([], ([], [])),
                       shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


def auto_group_distance(x, y) -> tuple[float, str]:
    """The grouping distance for plots when none is given, from the Clark–Evans aggregation index.

    R is the mean nearest-neighbour distance over its expectation 0.5/√density for a random pattern (density over
    the plots' convex hull; Clark & Evans 1954, Ecology 35:445–453). When R < ``CLUSTERED_R`` the plots are
    clustered and are grouped at 1.5 × their median nearest-neighbour distance; otherwise each plot is its own
    group.

    Parameters
    ----------
    x, y : array_like
        Plot locations (m).

    Returns
    -------
    (float, str)
        The distance (m; 0 = no grouping) and a note saying why.
    """
    from scipy.spatial import ConvexHull, cKDTree

    points = np.column_stack([np.asarray(x, float), np.asarray(y, float)])
    n = len(points)
    if n < 4:
        return 0.0, "Too few plots to test for clustering: each plot is its own group."
    d, _ = cKDTree(points).query(points, k=2)
    nn = d[:, 1]
    try:
        area = ConvexHull(points).volume
    except Exception:  # noqa: BLE001 - collinear plots
        area = 0.0
    if not area > 0:
        return 0.0, "The plots lie on a line: each plot is its own group."
    r = float(nn.mean() / (0.5 / math.sqrt(n / area)))
    if r < CLUSTERED_R:
        dist = 1.5 * float(np.median(nn))
        return dist, (f"The plots cluster (Clark–Evans R = {r:.2f} < {CLUSTERED_R}): plots within {dist:.4g} m of "
                      "each other are one group in cross-validation.")
    return 0.0, (f"The plots do not cluster (Clark–Evans R = {r:.2f}): each plot is its own group in "
                 "cross-validation (set BLOCK_SIZE to group plots closer than that many metres).")


def group_folds(groups, folds: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Folds over groups of plots.

    Parameters
    ----------
    groups : array_like
        Group id of each plot (:func:`plot_groups`).
    folds : int
    seed : int

    Returns
    -------
    (numpy.ndarray, int)
        Fold of each plot and the number of folds: leave-one-group-out with fewer than ``LOO_BELOW`` groups (or no
        more than ``folds``), otherwise the groups shuffled (seeded) and dealt to ``folds`` folds.
    """
    groups = np.asarray(groups)
    labels, inverse = np.unique(groups, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    g = len(labels)
    if g < 2:
        raise ForestCarbonError("All plots fall in one spatial group: use a smaller BLOCK_SIZE.")
    rng = np.random.default_rng(seed)
    if g < LOO_BELOW or g <= folds:
        order = rng.permutation(g)
        return order[inverse], g
    order = rng.permutation(g)
    fold_of_group = np.empty(g, dtype=np.int64)
    fold_of_group[order] = np.arange(g) % folds
    return fold_of_group[inverse], folds


def _metrics(y, out: dict) -> dict:
    m = regression_metrics(out["prediction"], y)
    cov = interval_coverage(y, out["lower"], out["upper"])
    m.update(coverage_uncalibrated=cov["coverage"], mean_width_uncalibrated=cov["mean_width"])
    return m


def cross_validate(learner: Learner, X, y, fold_ids, coverage: float = 0.9, seed: int = 0,
                   progress: Progress | None = None, span=(0.0, 100.0)) -> dict:
    """Cross-validated accuracy and conformal calibration of a learner.

    Parameters
    ----------
    learner : QuantileGBM or RandomForest
    X : numpy.ndarray
        (n, F) features.
    y : numpy.ndarray
        (n,) target.
    fold_ids : numpy.ndarray
        (n,) fold of each sample (:func:`spatial_folds`, :func:`group_folds`, :func:`random_folds`).
    coverage : float
        Nominal coverage of the intervals.
    seed : int
    progress : Progress, optional
    span : (float, float)
        The share of the progress bar (percent) the folds fill.

    Returns
    -------
    dict
        ``oof``: out-of-fold prediction, lower and upper (each sample predicted by the model that did not see its
        fold); ``scores``: conformal scores; ``factor``: the conformal factor of all held-out scores; ``metrics``:
        RMSE, MAE, bias, R², uncalibrated coverage and the *cross-fitted* calibrated coverage (fold k's intervals
        scaled by the conformal factor of the other folds' scores).
    """
    fold_ids = np.asarray(fold_ids)
    n_folds = int(fold_ids.max()) + 1
    oof = {k: np.full(len(y), np.nan) for k in ("prediction", "lower", "upper")}
    for k in range(n_folds):
        check_cancel(progress)
        test = fold_ids == k
        if not test.any() or test.all():
            continue
        model = learner.fit(X[~test], y[~test], coverage, seed)
        out = predict_intervals(model, X[test])
        for key in oof:
            oof[key][test] = out[key]
        if progress is not None:
            progress.set_progress(span[0] + (span[1] - span[0]) * (k + 1) / n_folds)
    scores = conformal_scores(y, oof["lower"], oof["prediction"], oof["upper"])
    inside = np.zeros(len(y), dtype=bool)
    fold_factors = []
    for k in range(n_folds):
        test = fold_ids == k
        others = ~test
        f_k = conformal_factor(y[others], oof["lower"][others], oof["prediction"][others], oof["upper"][others],
                               coverage)
        fold_factors.append(f_k)
        inside[test] = scores[test] <= f_k
    factor = conformal_factor(y, oof["lower"], oof["prediction"], oof["upper"], coverage)
    metrics = _metrics(y, oof)
    metrics.update(coverage_calibrated=float(inside.mean()), conformal_factor=factor,
                   fold_factors=[float(f) for f in fold_factors], folds=n_folds)
    return {"metrics": metrics, "oof": oof, "scores": scores, "factor": factor}
