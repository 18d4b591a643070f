"""Canopy metrics of the points inside field plots (lidR's ``plot_metrics``), for the area-based
approach: the same metrics, named the same, as ``canopymetrics`` computes per grid cell.

A plot is a circle (centre and radius: a point is inside when ``(x − xc)² + (y − yc)² ≤ r²``,
as lidR's ``clip_circle``) or a polygon (a point on the boundary counts as inside). Every tile
of a catalog that touches a plot is read once; a plot that straddles tiles gathers its points
from all of them, so a catalog gives the values of one merged file. Heights are normalized per
tile as in ``canopymetrics`` (``NORMALIZE``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np

from .catalog import open_catalog, read_tile
from ..errors import ForestCarbonError
from .metrics import cover_and_density, metric_names, stdmetrics_z
from .normalize import check_normalize_mode, normalized_heights, wants_heights
from ..progress import NullProgress, Progress
from ..parallel.tilemap import map_tiles

# the field with each plot's area (m², in the cloud's CRS) that plotmetrics adds beside the metrics
AREA_FIELD = "plot_area_m2"


@dataclass
class Plot:
    """A circle (``centre`` and ``radius_m``) or polygons: a list of polygons, each a list of
    rings (exterior first, then holes), each ring an (n, 2) array of x, y."""

    centre: tuple | None = None
    radius_m: float | None = None
    polygons: list = field(default_factory=list)

    @property
    def bounds(self):
        if self.centre is not None:
            x, y = self.centre
            r = self.radius_m
            return x - r, y - r, x + r, y + r
        xy = np.vstack([ring for poly in self.polygons for ring in poly])
        return xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()

    @property
    def area_m2(self) -> float:
        if self.centre is not None:
            return math.pi * self.radius_m ** 2
        return sum(abs(_ring_area(poly[0])) - sum(abs(_ring_area(h)) for h in poly[1:]) for poly in self.polygons)

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.centre is not None:
            dx, dy = x - self.centre[0], y - self.centre[1]
            return dx * dx + dy * dy <= self.radius_m * self.radius_m
        inside = np.zeros(len(x), dtype=bool)
        for poly in self.polygons:
            inside |= _in_polygon(x, y, poly)
        return inside


def _ring_area(ring) -> float:
    ring = np.asarray(ring, dtype=float)
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _in_ring(x, y, ring) -> np.ndarray:
    """Even-odd rule, with points on an edge counted as inside."""
    ring = np.asarray(ring, dtype=float)
    if len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    inside = np.zeros(len(x), dtype=bool)
    on_edge = np.zeros(len(x), dtype=bool)
    x0, y0 = ring[:, 0], ring[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1):
        crosses = (ay > y) != (by > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = ax + (y - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (x < xint)
        cross = (bx - ax) * (y - ay) - (by - ay) * (x - ax)
        on_edge |= (np.abs(cross) <= 1e-9 * max(1.0, abs(bx - ax) + abs(by - ay))) & \
            (x >= min(ax, bx)) & (x <= max(ax, bx)) & (y >= min(ay, by)) & (y <= max(ay, by))
    return inside | on_edge


def _in_polygon(x, y, rings) -> np.ndarray:
    inside = _in_ring(x, y, rings[0])
    for hole in rings[1:]:
        inside &= ~_in_ring(x, y, hole) | _on_boundary(x, y, hole)
    return inside


def _on_boundary(x, y, ring) -> np.ndarray:
    ring = np.asarray(ring, dtype=float)
    out = np.zeros(len(x), dtype=bool)
    for (ax, ay), (bx, by) in zip(ring, np.roll(ring, -1, axis=0)):
        cross = (bx - ax) * (y - ay) - (by - ay) * (x - ax)
        out |= (np.abs(cross) <= 1e-9) & (x >= min(ax, bx)) & (x <= max(ax, bx)) & (y >= min(ay, by)) & \
            (y <= max(ay, by))
    return out


def _plots_in_tile(catalog, i, near, normalize):
    """(plot index, height, first return) of tile ``i``'s points inside ``near`` ((index, plot, box) triples)."""
    tile = catalog.tiles[i]
    pts = read_tile(tile.path, ("x", "y", "z", "return_number", "classification"))
    z = pts["z"]
    if wants_heights(normalize, z, pts["classification"]):
        z = normalized_heights(catalog, i, pts)
    cell, height, first = [], [], []
    for k, plot, box in near:
        inside = (pts["x"] >= box[0]) & (pts["x"] <= box[2]) & (pts["y"] >= box[1]) & (pts["y"] <= box[3])
        idx = np.flatnonzero(inside)
        idx = idx[plot.contains(pts["x"][idx], pts["y"][idx])]
        cell.append(np.full(len(idx), k, dtype=np.int64))
        height.append(z[idx])
        first.append(pts["return_number"][idx] == 1)
    return np.concatenate(cell), np.concatenate(height), np.concatenate(first)


@dataclass
class PlotMetricsResult:
    names: list  # metric names (canopymetrics' band names, without intensity)
    values: np.ndarray  # (plots, metrics), NaN where a plot has no point
    empty: list  # indices of plots without points
    warnings: list


def plot_metrics(source, plots: list, height_break: float = 2.0, normalize: str = "auto", crs: str | None = None,
                 progress: Progress | None = None, max_workers: int = 1) -> PlotMetricsResult:
    """Metrics of the points inside each plot, as lidR's ``plot_metrics(las, ~stdmetrics_z(Z), plots)``.

    Parameters
    ----------
    source : str or Path
        A LAS/LAZ file, a .vpc or a folder of tiles.
    plots : list of Plot or None
        The plots, in the cloud's CRS (None: a feature without geometry).
    height_break : float
        Height (m) above which returns count for ``cover`` and ``pzabove``.
    normalize : {"auto", "always", "never"}
        What to do to Z, per tile (see :data:`.normalize.NORMALIZE_MODES`).
    crs : str, optional
        The CRS to assume when the files have none.
    progress : Progress, optional
        Progress, cancel and the warning about empty plots.
    max_workers : int
        Tiles read in parallel worker processes.

    Returns
    -------
    PlotMetricsResult
        Metric names (canopymetrics' bands without intensity), a (plots, metrics) array, the empty
        plots and the warnings.

    References
    ----------
    Roussel et al. (2020) lidR, Remote Sensing of Environment 251:112061; McGaughey (2021) FUSION/LDV
    manual (cover).
    """
    progress = progress or NullProgress()
    check_normalize_mode(normalize)
    for k, plot in enumerate(plots):
        if plot is not None and plot.centre is not None and not (plot.radius_m and plot.radius_m > 0):
            raise ForestCarbonError(f"Plot {k}: radius_m must be greater than 0 (got {plot.radius_m}).")
    catalog = open_catalog(source, crs)
    names = metric_names(False)
    boxes = [plot.bounds if plot is not None else None for plot in plots]
    tasks = []
    for i, t in enumerate(catalog.tiles):
        near = [(k, plot, box) for k, (plot, box) in enumerate(zip(plots, boxes))
                if box is not None and box[0] <= t.maxx and box[2] >= t.minx and box[1] <= t.maxy and box[3] >= t.miny]
        if near:
            tasks.append((catalog, i, near, normalize))
    if all(b is None for b in boxes):
        raise ForestCarbonError(f"The plot layer has no plot with a geometry ({len(plots)} features): give a layer "
                                "of plot centres (points) or plot polygons.")
    if not tasks:
        x0, y0, x1, y1 = catalog.bounds
        raise ForestCarbonError(
            f"None of the {len(plots)} plots overlaps the point cloud ({x0:.1f}, {y0:.1f}) – ({x1:.1f}, {y1:.1f}): "
            "check that the plots and the cloud cover the same area and that both have the right CRS.")
    gathered = {k: [] for k in ("cell", "z", "first")}
    with contextlib.closing(map_tiles(_plots_in_tile, tasks, max_workers, progress, share=100.0)) as parts:
        for part in parts:
            for key, values in zip(("cell", "z", "first"), part):
                gathered[key].append(values)
    n_plots = len(plots)
    values = np.full((n_plots, len(names)), np.nan)
    if gathered["cell"]:
        cell = np.concatenate(gathered["cell"])
        z = np.concatenate(gathered["z"])
        first = np.concatenate(gathered["first"])
        if len(cell):
            areas = np.array([p.area_m2 if p is not None else np.nan for p in plots])
            m = stdmetrics_z(z, cell, n_plots, th=height_break)
            m.update(cover_and_density(z, first, cell, n_plots, areas, height_break))
            values = np.column_stack([m[name] for name in names])
    counts = values[:, names.index("n")]
    empty = [k for k in range(n_plots) if not counts[k] > 0]
    warnings = []
    if empty:
        warnings.append(f"{len(empty)} of {n_plots} plots hold no point of the cloud (outside it, or empty "
                        "geometry): their metrics are empty and n is 0.")
        values[empty, names.index("n")] = 0
    for w in warnings:
        progress.warning(w)
    return PlotMetricsResult(names, values, empty, warnings)
