"""Height normalization and terrain models from ground returns, as lidR's ``tin()``.

lidR 4.3.2 ``normalize_height(las, tin(), use_class = c(2L, 9L))`` and
``rasterize_terrain(las, res, tin())`` (Roussel et al. 2020, Remote Sensing of Environment
251:112061; lidR's ``R/algorithm-spi.R``): a Delaunay
triangulation of the ground and water returns, linear interpolation inside the hull, and
inverse-distance weighting of the 3 nearest ground returns (power 1, within 50 m) outside
it (lidR's ``tin(extrapolate = knnidw(3, 1, 50))``). Ground returns get a height of exactly 0.
Catalog tiles are processed with a 30 m buffer of ground returns from their neighbours
(lidR's default chunk buffer), so heights across tile edges equal those of a merged file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from .catalog import Catalog, LasWriter, buffered_points, cell_owner, open_catalog, read_las
from ..parallel.tilemap import map_tiles
from ..dependencies import require
from ..errors import ForestCarbonError
from ..raster.grid import Grid
from ..outputs import atomic_output, provenance as make_provenance
from ..progress import NullProgress, Progress, check_cancel
from ..raster.write import write_raster
from .info import looks_normalized
from .tin import bucket_index, interpolate, locate

GROUND_CLASSES = (2, 9)
BUFFER_M = 30.0
ORIGIN_STEP_M = 1000.0
IDW_K, IDW_POWER, IDW_RMAX = 3, 1.0, 50.0
# what the drivers (canopy height model, tree tops, metrics) do to Z: "auto" subtracts the ground from
# tiles whose Z look like elevations, "always" from every tile, "never" uses Z as heights
NORMALIZE_MODES = ("auto", "always", "never")


class GroundSurface:
    """Ground elevation at any (x, y): TIN inside the hull, k-NN IDW outside (lidR's tin())."""

    def __init__(self, gx, gy, gz):
        from scipy.spatial import Delaunay, QhullError, cKDTree

        if len(gx) < 3:
            raise ForestCarbonError(
                f"Only {len(gx)} ground points (classes 2 and 9): a terrain needs at least 3. "
                "Classify the ground first (forestcarbon:classifyground).")
        # triangulate in coordinates local to a fixed 1 km origin: with map coordinates (10⁵-10⁶ m) qhull's
        # lifted paraboloid loses the centimetres that decide which diagonal a near-square takes, so a tile's TIN
        # and the merged file's differed far inside the tile (0.15 m, 6 % of points); the origin is a function of
        # the coordinates alone, so neighbouring tiles mostly share one frame, and any frame of < 2 km keeps them
        self.origin = np.floor(np.array([np.min(gx), np.min(gy)]) / ORIGIN_STEP_M) * ORIGIN_STEP_M
        self.points = np.column_stack([gx, gy]) - self.origin
        self.z = np.asarray(gz, dtype=np.float64)
        try:
            self.tri = Delaunay(self.points)
        except QhullError as exc:
            raise ForestCarbonError(f"The ground points cannot be triangulated (all on a line?): {exc}") from exc
        self.tree = cKDTree(self.points)
        # built here, in the worker that makes the surface, and shipped with it: scipy's barycentric
        # transform alone takes seconds on 10⁵ triangles, which would hold up the caller (and its Cancel)
        self.tri.transform  # noqa: B018 (computed on first access, then kept and pickled)
        self._buckets = bucket_index(self.tri)

    def __call__(self, x, y) -> np.ndarray:
        q = np.column_stack([x, y]) - self.origin
        simplex = locate(self.tri, q[:, 0], q[:, 1], self._buckets)
        out = interpolate(self.tri, self.z, q[:, 0], q[:, 1], simplex)
        inside = simplex >= 0
        outside = ~inside
        if outside.any():
            k = min(IDW_K, len(self.z))
            dist, idx = self.tree.query(q[outside], k=k, distance_upper_bound=IDW_RMAX)
            dist = dist.reshape(-1, k)
            idx = idx.reshape(-1, k)
            valid = np.isfinite(dist)
            with np.errstate(divide="ignore", invalid="ignore"):
                w = np.where(valid, 1 / np.maximum(dist, 1e-12) ** IDW_POWER, 0.0)
                zz = np.where(valid, self.z[np.minimum(idx, len(self.z) - 1)], 0.0)
                out[outside] = (w * zz).sum(axis=1) / w.sum(axis=1)
        return out


def _ground_near(catalog: Catalog, i: int, buffer: float):
    """Ground points (x, y, z) of tile i and of its neighbours within ``buffer``."""
    pts, _ = buffered_points(catalog, i, buffer, ("x", "y", "z", "classification"))
    keep = np.isin(pts["classification"], GROUND_CLASSES)
    g = np.column_stack([pts["x"][keep], pts["y"][keep], pts["z"][keep]])
    # duplicates in (x, y) make the triangulation drop points: keep the lowest, like a ground filter
    order = np.lexsort((g[:, 2], g[:, 1], g[:, 0]))
    g = g[order]
    first = np.r_[True, (np.diff(g[:, 0]) != 0) | (np.diff(g[:, 1]) != 0)] if len(g) else np.empty(0, bool)
    return g[first]


def ground_surface_for_tile(catalog: Catalog, i: int, buffer: float = BUFFER_M) -> GroundSurface:
    """The ground surface of tile ``i``, with its neighbours' ground within ``buffer``.

    Parameters
    ----------
    catalog : Catalog
        The tiles; the ``i``-th is the one whose surface is built.
    i : int
    buffer : float
        Width (m) of the band of neighbours' ground returns (lidR's default chunk buffer, 30 m).

    Returns
    -------
    GroundSurface
        TIN of the ground and water returns (classes 2 and 9), IDW outside its hull.
    """
    g = _ground_near(catalog, i, buffer)
    if len(g) < 3:
        raise ForestCarbonError(
            f"'{Path(catalog.tiles[i].path).name}' has no ground points (classes 2 and 9) to normalize "
            "heights with: classify the ground first (forestcarbon:classifyground).")
    return GroundSurface(g[:, 0], g[:, 1], g[:, 2])


def check_normalize_mode(normalize: str) -> None:
    """Refuse a ``normalize`` that is not one of :data:`NORMALIZE_MODES`."""
    if normalize not in NORMALIZE_MODES:
        raise ForestCarbonError(f"normalize must be one of {NORMALIZE_MODES} (got {normalize!r}).")


def looks_normalized_z(z: np.ndarray, classification: np.ndarray) -> bool:
    """Whether heights ``z`` already look like heights above ground.

    The heuristic lidarinfo reports (:func:`.info.looks_normalized`), on the points themselves.

    Parameters
    ----------
    z : ndarray
        Z of the points (m), at least one.
    classification : ndarray
        ASPRS classes of the points (2 = ground).

    Returns
    -------
    bool
    """
    ground = classification == 2
    near = np.abs(z) <= 0.5
    flag, _ = looks_normalized(int(ground.sum()), int((near & ground).sum()), len(z), int(near.sum()),
                               float(z.min()), float(z.max()))
    return bool(flag)


def wants_heights(normalize: str, z: np.ndarray, classification: np.ndarray) -> bool:
    """Whether ``normalize`` asks for these points' Z to be replaced by heights above ground."""
    return normalize == "always" or (normalize == "auto" and not looks_normalized_z(z, classification))


def normalized_heights(catalog: Catalog, i: int, pts: dict, stats: dict | None = None) -> np.ndarray:
    """Heights above the ground TIN of tile ``i`` (lidR's ``tin()``, with a 30 m buffer of neighbours' ground).

    Parameters
    ----------
    catalog : Catalog
        The tiles; tile ``i``'s neighbours lend their ground returns within the buffer.
    i : int
        Index of the tile the points come from.
    pts : dict
        Arrays ``x``, ``y``, ``z`` (m) and ``classification`` of the points.
    stats : dict, optional
        Receives ``ground_points``: how many ground returns the TIN has.

    Returns
    -------
    ndarray
        Height above ground (m) of each point; exactly 0 for ground and water returns (classes 2, 9).
    """
    surface = ground_surface_for_tile(catalog, i)
    if stats is not None:
        stats["ground_points"] = len(surface.z)
    ground_z = surface(pts["x"], pts["y"])
    if np.isnan(ground_z).any():
        raise ForestCarbonError(
            f"Some points of '{Path(catalog.tiles[i].path).name}' are more than {IDW_RMAX:g} m from any ground "
            "point: classify more ground (forestcarbon:classifyground) or normalize with "
            "forestcarbon:normalizeheight first.")
    height = pts["z"] - ground_z
    height[np.isin(pts["classification"], GROUND_CLASSES)] = 0.0
    return height


def tile_heights(catalog: Catalog, i: int, pts: dict, normalize: str, mine=None):
    """Z of ``pts`` (tile ``i``, maybe with a buffer) as heights above ground per ``normalize``.

    The decision of "auto" is taken on the tile's own points (``mine``, all when None), with
    lidarinfo's test.

    Parameters
    ----------
    catalog : Catalog
        The tiles.
    i : int
        Index of the tile.
    pts : dict
        Arrays ``x``, ``y``, ``z`` (m), ``return_number`` and ``classification``.
    normalize : {"auto", "always", "never"}
        See :data:`NORMALIZE_MODES`.
    mine : ndarray of bool, optional
        Which of ``pts`` belong to tile ``i`` (the others are its buffer).

    Returns
    -------
    z : ndarray
        Heights (m) of all ``pts``.
    info : dict
        What was done, for :func:`normalization_report`: ``zmin``, ``zmax`` (m), ``normalized``,
        ``ground`` (ground points of the TIN), ``looks_normalized`` and ``first`` (first returns).
    """
    own = pts if mine is None else {k: v[mine] for k, v in pts.items()}
    z = pts["z"]
    first = own["return_number"] == 1
    info = {"zmin": float(own["z"].min()) if len(own["z"]) else np.nan,
            "zmax": float(own["z"].max()) if len(own["z"]) else np.nan, "normalized": False, "ground": 0,
            "looks_normalized": None, "first": int(first.sum())}
    if normalize != "always" and len(own["z"]):
        info["looks_normalized"] = looks_normalized_z(own["z"], own["classification"])
    if normalize == "always" or (normalize == "auto" and info["looks_normalized"] is False):
        stats: dict = {}
        try:
            z = normalized_heights(catalog, i, pts, stats=stats)
        except ForestCarbonError as exc:
            why = "NORMALIZE is always" if normalize == "always" else \
                f"its Z look like elevations ({info['zmin']:,.1f}–{info['zmax']:,.1f} m)"
            raise ForestCarbonError(f"Heights above ground are needed ({why}), but: {exc} Or set NORMALIZE "
                                    "(Height normalization) to never to use Z as it is.") from exc
        info.update(normalized=True, ground=stats.get("ground_points", 0))
    return z, info


def normalization_report(infos: list, normalize: str, progress: Progress) -> None:
    """Say in the log what was done to Z: 'heights were elevations (449–557 m): normalized with …'.

    Parameters
    ----------
    infos : list of dict
        :func:`tile_heights`' ``info`` of every tile.
    normalize : {"auto", "always", "never"}
        The mode the tiles were read with.
    progress : Progress
        Where the lines go (info, or a warning when "never" kept elevations).
    """
    done = [f for f in infos if f["normalized"]]
    kept = [f for f in infos if not f["normalized"] and np.isfinite(f["zmin"])]
    tiles = len(infos)

    def span(fs):
        return f"{min(f['zmin'] for f in fs):,.1f}–{max(f['zmax'] for f in fs):,.1f} m"

    if done:
        what = "heights were elevations" if normalize == "auto" else "NORMALIZE is always"
        where = "" if tiles == 1 else f" in {len(done)} of {tiles} tiles (each with its neighbours' ground within 30 m)"
        progress.info(f"{what} (Z {span(done)}): normalized with the ground TIN of "
                      f"{sum(f['ground'] for f in done):,} ground points{where}.")
    if kept:
        if normalize == "never" and any(f["looks_normalized"] is False for f in kept):
            progress.warning(f"NORMALIZE is never and Z looks like elevations (Z {span(kept)}): the output holds "
                             "elevations, not heights. Use NORMALIZE auto, or forestcarbon:normalizeheight first.")
        elif normalize == "never":
            progress.info(f"NORMALIZE is never: Z used as heights (Z {span(kept)}).")
        else:
            progress.info(f"Z already looks like heights above ground (Z {span(kept)}): used as it is"
                          + ("" if tiles == 1 else f" in {len(kept)} of {tiles} tiles") + ".")


def _surface_task(catalog, i):
    """The ground TIN of tile ``i`` (with its neighbours' ground within the buffer)."""
    return ground_surface_for_tile(catalog, i)


def _ground_under(surface, x, y, progress, chunk: int = 16384) -> np.ndarray:
    """``surface(x, y)`` in chunks, checking for cancel between them (a tile can take seconds)."""
    out = np.empty(len(x))
    for start in range(0, len(x), chunk):
        check_cancel(progress)
        out[start:start + chunk] = surface(x[start:start + chunk], y[start:start + chunk])
    return out


def normalize_height(source, output, output_dtm=None, dtm_res_m: float = 1.0, crs: str | None = None,
                     progress: Progress | None = None, parameters: dict | None = None,
                     max_workers: int = 1) -> dict:
    """Write a LAZ with heights above ground (and the original Z in the extra dimension ``Zref``).

    Parameters
    ----------
    source : str or Path
        A LAS/LAZ file, a .vpc or a folder of tiles (one point format).
    output : str or Path
        The LAS/LAZ to write (the tiles one after the other).
    output_dtm : str or Path, optional
        A GeoTIFF of the ground TIN at ``dtm_res_m``.
    dtm_res_m : float
        Cell size (m) of the terrain model; its grid is snapped to multiples of it.
    crs : str, optional
        The CRS to assume when the files have none.
    progress : Progress, optional
        Progress and cancel.
    parameters : dict, optional
        The parameters recorded in the terrain model's provenance.
    max_workers : int
        Ground TINs built in parallel worker processes.

    Returns
    -------
    dict
        ``points`` written and ``tiles`` read.

    References
    ----------
    Roussel et al. (2020) lidR, Remote Sensing of Environment 251:112061 (``normalize_height``, ``tin()``).
    """
    laspy = require("laspy", "lazrs")[0]
    progress = progress or NullProgress()
    if output_dtm is not None and not dtm_res_m > 0:
        raise ForestCarbonError(f"dtm_res_m must be positive (got {dtm_res_m}).")
    catalog = open_catalog(source, crs)
    formats = set()
    for t in catalog.tiles:
        with laspy.open(t.path) as r:
            formats.add((r.header.point_format.id, str(r.header.version)))
    if len(formats) > 1:
        raise ForestCarbonError(f"The tiles mix point formats {sorted(formats)}: convert them to one format first.")
    grid = Grid.covering(*catalog.bounds, dtm_res_m) if output_dtm is not None else None
    dtm = np.full(grid.shape, np.nan) if grid is not None else None
    owner = cell_owner(catalog, grid) if grid is not None else None
    record = make_provenance("forestcarbon:normalizeheight", parameters or {"dtm_res_m": dtm_res_m},
                             inputs=[t.path for t in catalog.tiles])
    total = 0
    args = [(catalog, i) for i in range(len(catalog.tiles))]
    centres = grid.centres() if grid is not None else None
    with atomic_output(output) as tmp:
        with LasWriter(laspy, tmp, z_offset=0.0) as writer, \
                contextlib.closing(map_tiles(_surface_task, args, max_workers, progress, share=100.0)) as surfaces:
            for i, surface in enumerate(surfaces):
                tile = catalog.tiles[i]
                las = read_las(tile.path)
                ground_z = _ground_under(surface, np.asarray(las.x), np.asarray(las.y), progress)
                if np.isnan(ground_z).any():
                    bad = int(np.isnan(ground_z).sum())
                    raise ForestCarbonError(
                        f"{bad:,} points of '{Path(tile.path).name}' are more than {IDW_RMAX:g} m from any ground "
                        "point and cannot be normalized: classify more ground (forestcarbon:classifyground) or "
                        "clip the cloud.")
                z = np.asarray(las.z, dtype=np.float64)
                height = z - ground_z
                height[np.isin(np.asarray(las.classification), GROUND_CLASSES)] = 0.0
                if "Zref" not in las.point_format.dimension_names:
                    las.add_extra_dim(laspy.ExtraBytesParams(name="Zref", type=np.float64,
                                                             description="Z before normalization"))
                las.Zref = z
                las.z = height
                writer.write(las)
                total += len(las.points)
                if dtm is not None:
                    mine = owner == i
                    dtm[mine] = surface(centres[0][mine], centres[1][mine])
        check_cancel(progress)
        if dtm is not None:
            # written before the cloud is moved into place: a failure or cancel leaves neither
            write_raster(output_dtm, dtm.astype(np.float32), grid.transform, catalog.crs,
                         descriptions=["elevation_m"], provenance=record)
    return {"points": total, "tiles": len(catalog.tiles)}
