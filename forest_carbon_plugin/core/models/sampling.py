"""Training samples: the features and the target of each pixel, point, polygon or field plot.

* :func:`sample_training_data` — the feature rasters are stacked (bands of several rasters in order,
  warped onto the first raster's grid with bilinear resampling: exactly what ``predictraster`` reads).
  A *raster* target is read onto that grid (area average when it is finer, e.g. a 1 m CHM onto 30 m
  features); every pixel with a valid target and valid features is a candidate, and when there are more
  than ``max_samples`` a random subset stratified by target deciles (proportional allocation) is kept.
  A *point* target takes the features of the pixel it falls in; a *polygon* target the area-weighted
  mean of the features over the polygon (weights = the share of each pixel inside it, as
  ``validatepredictions`` averages predictions), located at its centroid for the spatial blocks.
* :func:`sample_plot_data` — the area-based approach: one vector layer of plots (e.g. ``plotmetrics``'
  output) whose numeric fields named like ``canopymetrics`` bands (or ``feature_fields``) are the features
  and ``target_field`` the response; plots without a target (or with a missing feature) are skipped and
  counted in the notes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import vector
from ..dependencies import require
from ..errors import ForestCarbonError
from ..lidar.metrics import metric_names
from ..lidar.plot_metrics import AREA_FIELD
from ..progress import NullProgress, Progress, check_cancel
from ..raster.coverage import polygon_coverage
from ..raster.read import Readers, stack_bands

WINDOW = 512
STRATA = 10  # target deciles for the stratified subset
EARTH_RADIUS_M = 6_371_008.8

__all__ = ["TrainingData", "sample_training_data", "sample_plot_data", "is_vector_features",
           "default_feature_fields"]


@dataclass
class TrainingData:
    """The training samples: features ``X`` (n, F), target ``y`` (n,), locations ``x``/``yc`` (the grid's CRS, or
    metres for plots), the feature names ``bands`` and what the sampling noted."""

    X: np.ndarray  # (n, F) float32
    y: np.ndarray  # (n,) float64
    x: np.ndarray  # (n,) sample coordinates (pixel centres / points / polygon centroids), grid CRS
    yc: np.ndarray
    bands: list  # feature names, in order
    grid: object  # Grid of the first feature raster
    target_name: str = "prediction"
    unit: str = ""
    n_candidates: int = 0  # valid samples before the cap
    kind: str = "raster"  # raster | point | polygon | plot
    notes: list = field(default_factory=list)
    crs: object = None  # plot data (no grid): the layer's CRS as WKT
    plot_area_m2: float | None = None
    skipped: dict = field(default_factory=dict)


def _feature_sources(features):
    paths = [Path(p) for p in ([features] if isinstance(features, (str, Path)) else features)]
    if not paths:
        raise ForestCarbonError("Give at least one FEATURES raster.")
    grid, sources, names = stack_bands(paths, "feature raster")
    names = [name or f"{path.stem}_b{band}" for name, (path, band, _) in zip(names, sources)]
    seen: dict = {}
    notes = []
    unique = []
    for name in names:
        key = name.lower()
        seen[key] = seen.get(key, 0) + 1
        unique.append(name if seen[key] == 1 else f"{name}_{seen[key]}")
    if unique != names:
        notes.append("Some feature bands share a name; later ones were renamed (" +
                     ", ".join(u for u, n in zip(unique, names) if u != n) + "). predictraster then matches the "
                     "bands by order, not by name.")
    return grid, sources, unique, notes


def _read_features(readers, sources, window) -> tuple[np.ndarray, np.ndarray]:
    """(F, h, w) float32 and the valid mask, read as ``predictraster`` reads them."""
    from rasterio.enums import Resampling

    data = np.empty((len(sources), int(window.height), int(window.width)), dtype=np.float32)
    valid = np.ones(data.shape[1:], dtype=bool)
    for k, (path, band, nodata) in enumerate(sources):
        values = readers.read(path, window, band=band, resampling=Resampling.bilinear, src_nodata=nodata,
                              dtype="float32")
        raw = np.ma.getdata(values)
        valid &= ~np.ma.getmaskarray(values) & np.isfinite(raw)
        data[k] = raw
    return data, valid


def _is_raster_source(source) -> bool:
    """A plain path that GDAL opens as a raster (a QGIS ``path|layername=`` source is a vector layer)."""
    return "|" not in str(source) and vector.is_raster(source)


def _stratified(y: np.ndarray, cap: int, rng) -> np.ndarray:
    """Indices of a random subset of ``cap`` samples stratified by target deciles (proportional)."""
    n = y.size
    if n <= cap:
        return np.arange(n)
    edges = np.unique(np.quantile(y, np.linspace(0, 1, STRATA + 1)[1:-1]))
    strata = np.searchsorted(edges, y, side="right")
    picks = []
    counts = np.bincount(strata)
    quota = np.floor(counts * cap / n).astype(int)
    short = cap - quota.sum()  # largest remainders first
    order = np.argsort(-(counts * cap / n - quota), kind="stable")
    quota[order[:short]] += 1
    for s, q in enumerate(quota):
        members = np.flatnonzero(strata == s)
        if q > 0:
            picks.append(rng.choice(members, size=min(q, members.size), replace=False))
    return np.sort(np.concatenate(picks))


def sample_training_data(features, target, target_field: str | None = None, max_samples: int = 50_000,
                         seed: int = 0, progress: Progress | None = None) -> TrainingData:
    """Features and target values of the training samples (see the module doc).

    Parameters
    ----------
    features : str, os.PathLike or sequence of them
        Feature rasters; bands stacked in order on the first raster's grid.
    target : str or os.PathLike
        A raster, or a point/polygon layer (``path`` or ``path|layername=x``).
    target_field : str, optional
        The numeric field of a vector target.
    max_samples : int
        Pixels kept at most (stratified by target deciles).
    seed : int
    progress : Progress, optional

    Returns
    -------
    TrainingData
    """
    progress = progress or NullProgress()
    if max_samples is not None and max_samples < 1:
        raise ForestCarbonError(f"max_samples must be at least 1 (got {max_samples}).")
    grid, sources, names, notes = _feature_sources(features)
    if target is None or str(target) == "":
        raise ForestCarbonError("Give a TARGET: a raster, or a point/polygon layer with a numeric TARGET_FIELD.")
    if _is_raster_source(target):
        data = _sample_raster_target(grid, sources, Path(target), max_samples, seed, progress)
    else:
        data = _sample_vector_target(grid, sources, target, target_field, max_samples, seed, progress)
    data.bands = names
    data.notes = notes + data.notes
    return data


def _overlaps(grid, path) -> bool:
    import rasterio
    from rasterio.warp import transform_bounds

    with rasterio.open(path) as src:
        if src.crs is None:
            raise ForestCarbonError(f"The target raster '{Path(path).name}' has no CRS: georeference it first.")
        b = transform_bounds(src.crs, grid.crs, *src.bounds, densify_pts=21)
    g = grid.bounds
    return b[0] < g[2] and b[2] > g[0] and b[1] < g[3] and b[3] > g[1]


def _sample_raster_target(grid, sources, path: Path, max_samples, seed, progress) -> TrainingData:
    import rasterio
    from rasterio.enums import Resampling

    if not _overlaps(grid, path):
        raise ForestCarbonError(f"The target '{path.name}' and the features do not overlap: give a target that "
                                "covers part of the feature rasters (same area, any CRS).")
    with rasterio.open(path) as src:
        t_nodata = src.nodatavals[0]
        name = (src.descriptions[0] or "").strip() or path.stem
        unit = src.tags(1).get("UNIT") or src.tags().get("UNIT") or (src.units[0] if src.units else "") or ""
        t_res = abs(src.transform.a)
    readers = Readers(grid)
    windows = list(grid.windows(WINDOW))
    flat, values = [], []
    try:
        for i, window in enumerate(windows):
            check_cancel(progress)
            t = readers.read(path, window, band=1, resampling=Resampling.average, src_nodata=t_nodata,
                             dtype="float32")
            tv = np.ma.getdata(t).astype(np.float64)
            ok = ~np.ma.getmaskarray(t) & np.isfinite(tv)
            if ok.any():
                _, valid = _read_features(readers, sources, window)
                ok &= valid
            r, c = np.nonzero(ok)
            flat.append((r + int(window.row_off)) * grid.width + c + int(window.col_off))
            values.append(tv[r, c])
            progress.set_progress(20.0 * (i + 1) / len(windows))
        flat = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
        y = np.concatenate(values) if values else np.zeros(0)
        n_candidates = y.size
        if n_candidates == 0:
            raise ForestCarbonError(f"No pixel has both a valid target ('{path.name}') and valid features: check "
                                    "that they overlap and that their nodata values are set right.")
        keep = _stratified(y, int(max_samples), np.random.default_rng(seed))
        flat, y = flat[keep], y[keep]
        X = np.empty((flat.size, len(sources)), dtype=np.float32)
        rows, cols = flat // grid.width, flat % grid.width
        for window in windows:
            r0, c0 = int(window.row_off), int(window.col_off)
            sel = np.flatnonzero((rows >= r0) & (rows < r0 + window.height) & (cols >= c0) &
                                 (cols < c0 + window.width))
            if sel.size:
                data, _ = _read_features(readers, sources, window)
                X[sel] = data[:, rows[sel] - r0, cols[sel] - c0].T
    finally:
        readers.close()
    xs, ys = grid.transform * (cols + 0.5, rows + 0.5)
    notes = []
    if t_res < grid.res * 0.99:
        notes.append(f"The target ({t_res:g} m pixels) was averaged (area-weighted) onto the {grid.res:g} m "
                     "feature grid.")
    if n_candidates > y.size:
        notes.append(f"{y.size:,} of {n_candidates:,} valid pixels sampled (stratified by target deciles).")
    return TrainingData(X, y, np.asarray(xs, float), np.asarray(ys, float), [], grid, name, unit, n_candidates,
                        "raster", notes)


def _sample_vector_target(grid, sources, target, target_field, max_samples, seed, progress) -> TrainingData:
    from rasterio.crs import CRS

    ds, layer = vector.open_vector(target, "TARGET")
    field_name = vector.numeric_field(layer, target_field, "TARGET", "TARGET_FIELD")
    feats, skipped = vector.features(layer, field_name, CRS.from_user_input(grid.crs).to_wkt())
    del ds
    if not feats:
        raise ForestCarbonError(f"TARGET has no feature with a geometry and a value in '{field_name}'.")
    readers = Readers(grid)
    rows_X, ys_, xs_, yc_ = [], [], [], []
    try:
        for i, (geom, value) in enumerate(feats):
            check_cancel(progress)
            sample = _target_features(readers, sources, grid, geom)
            if sample is not None:
                rows_X.append(sample[0])
                xs_.append(sample[1])
                yc_.append(sample[2])
                ys_.append(float(value))
            progress.set_progress(20.0 * (i + 1) / len(feats))
    finally:
        readers.close()
    if not ys_:
        raise ForestCarbonError("No TARGET feature lies on valid feature pixels: the target and the features do not "
                                "overlap (or the features are nodata there).")
    X = np.asarray(rows_X, dtype=np.float32)
    y = np.asarray(ys_, dtype=np.float64)
    keep = _stratified(y, int(max_samples), np.random.default_rng(seed))
    notes = [f"{len(feats) - len(ys_)} target feature(s) off the valid feature pixels were left out."] \
        if len(feats) > len(ys_) else []
    if skipped:
        notes.append(f"{skipped} target feature(s) without a geometry or a value were left out.")
    polygons = any(vector.geometry_kind(geom) == "polygon" for geom, _ in feats)
    if polygons:
        notes.append("Polygon targets are matched with the area-weighted mean of the features over each polygon "
                     "(weights = share of each pixel inside it) and placed at their centroid for the spatial blocks.")
    return TrainingData(X[keep], y[keep], np.asarray(xs_)[keep], np.asarray(yc_)[keep], [], grid, field_name, "",
                        y.size, "polygon" if polygons else "point", notes)


def _target_features(readers, sources, grid, geom):
    """(features, x, y) of one target feature: a point takes the pixel it falls in, a polygon the area-weighted
    mean over the pixels it covers, placed at its centroid; None off the valid feature pixels."""
    from rasterio.windows import Window

    kind = vector.geometry_kind(geom)
    if kind == "point":
        pt = geom if geom.GetGeometryCount() == 0 else geom.GetGeometryRef(0)
        px, py = pt.GetX(), pt.GetY()
        c, r = ~grid.transform * (px, py)
        c, r = int(math.floor(c)), int(math.floor(r))
        if not (0 <= c < grid.width and 0 <= r < grid.height):
            return None
        data, valid = _read_features(readers, sources, Window(c, r, 1, 1))
        return (data[:, 0, 0], px, py) if valid[0, 0] else None
    if kind != "polygon":
        raise ForestCarbonError(f"TARGET holds {kind} geometries: give points or polygons.")
    covered = polygon_coverage(vector.to_shapely(geom), grid)
    if covered is None:
        return None
    r0, c0, shares = covered
    data, valid = _read_features(readers, sources, Window(c0, r0, shares.shape[1], shares.shape[0]))
    w = shares * valid
    if w.sum() <= 0:
        return None
    centroid = geom.Centroid()
    return (data * w).reshape(len(sources), -1).sum(axis=1) / w.sum(), centroid.GetX(), centroid.GetY()


# ----------------------------------------------------------------------------- plot data (area-based approach)

def is_vector_features(features) -> bool:
    """Whether ``features`` is one vector layer of plots rather than rasters.

    Parameters
    ----------
    features : str, os.PathLike or sequence of them

    Returns
    -------
    bool
    """
    paths = [features] if isinstance(features, (str, Path)) else list(features or [])
    return len(paths) == 1 and not _is_raster_source(paths[0])


def default_feature_fields(numeric_fields, target_field: str) -> list:
    """The numeric fields named like ``canopymetrics`` bands.

    Parameters
    ----------
    numeric_fields : sequence of str
        The layer's numeric fields, in its order.
    target_field : str
        The response, left out.

    Returns
    -------
    list of str
        The fields named like :func:`..lidar.metrics.metric_names` (intensity metrics included), less the target
        and ``n`` (a point count depends on the plot's area, which differs from a grid cell's).
    """
    bands = {b.lower() for b in metric_names(intensity=True)} - {"n"}
    return [f for f in numeric_fields if f.lower() in bands and f != target_field]


@dataclass
class _PlotRows:
    """What the plots of a layer give, and how many were skipped and why."""

    rows: list = field(default_factory=list)
    y: list = field(default_factory=list)
    x: list = field(default_factory=list)
    yc: list = field(default_factory=list)
    areas: list = field(default_factory=list)
    no_target: int = 0
    no_geometry: int = 0
    incomplete: int = 0


def sample_plot_data(features, target_field: str | None, feature_fields=None,
                     progress: Progress | None = None) -> TrainingData:
    """Features and target of each plot of a vector layer (the area-based approach).

    Parameters
    ----------
    features : str, os.PathLike or a one-item sequence
        The plots (e.g. ``plotmetrics``' output): a path or ``path|layername=name``.
    target_field : str
        The numeric field with the plot measurement (e.g. AGB in Mg/ha).
    feature_fields : str or sequence of str, optional
        The numeric feature fields (a comma-separated string is split); default
        :func:`default_feature_fields`.
    progress : Progress, optional

    Returns
    -------
    TrainingData
        One row per plot with a target value and every feature, located at its point or centroid (in metres
        through a local equirectangular projection when the layer is geographic); ``plot_area_m2`` is the
        median plot area (the ``plotmetrics`` area field, or the polygons' areas).
    """
    progress = progress or NullProgress()
    source = features if isinstance(features, (str, Path)) else list(features)[0]
    ds, layer = vector.open_vector(source, "FEATURES")
    target_field, names, numeric = _plot_fields(layer, target_field, feature_fields)
    srs = layer.GetSpatialRef()
    area_field = AREA_FIELD if AREA_FIELD in numeric and AREA_FIELD not in names else None
    plots = _read_plots(layer, target_field, names, area_field, progress)
    del ds
    notes = _plot_notes(plots, target_field)
    if not plots.y:
        raise ForestCarbonError(f"No plot of FEATURES has both a value in '{target_field}' and every feature "
                                f"({', '.join(names)}).")
    x, yy = np.asarray(plots.x, float), np.asarray(plots.yc, float)
    if srs is not None and srs.IsGeographic():  # metres for the spatial groups: a local equirectangular projection
        lat0 = math.radians(float(np.mean(yy)))
        x, yy = np.radians(x) * EARTH_RADIUS_M * math.cos(lat0), np.radians(yy) * EARTH_RADIUS_M
        notes.append("Plot coordinates are geographic: distances for the spatial groups use a local "
                     "equirectangular projection.")
    data = TrainingData(np.asarray(plots.rows, dtype=np.float32), np.asarray(plots.y, dtype=np.float64), x, yy,
                        names, None, target_field, "", len(plots.y), "plot", notes)
    data.crs = srs.ExportToWkt() if srs is not None else None
    data.plot_area_m2 = float(np.median(plots.areas)) if plots.areas else None
    data.skipped = {"no_target": plots.no_target, "no_geometry": plots.no_geometry, "incomplete": plots.incomplete}
    return data


def _plot_fields(layer, target_field, feature_fields) -> tuple[str, list, list]:
    """(target field, feature fields, every numeric field) of a plots layer, checked."""
    ogr = require("osgeo.ogr")
    defn = layer.GetLayerDefn()
    types = {defn.GetFieldDefn(i).GetName(): defn.GetFieldDefn(i).GetType() for i in range(defn.GetFieldCount())}
    numeric = [f for f, t in types.items() if t in (ogr.OFTInteger, ogr.OFTInteger64, ogr.OFTReal)]
    if not target_field:
        raise ForestCarbonError("FEATURES is a vector layer (plots): set TARGET_FIELD to its numeric field with the "
                                f"plot measurement (numeric fields: {', '.join(numeric) or 'none'}).")
    target_field = vector.numeric_field(layer, target_field, "FEATURES", "TARGET_FIELD")
    if isinstance(feature_fields, str):
        feature_fields = [f.strip() for f in feature_fields.split(",") if f.strip()]
    if not feature_fields:
        names = default_feature_fields(numeric, target_field)
        if not names:
            raise ForestCarbonError(
                "FEATURES has no numeric field named like a 'canopymetrics' band (zmax, zmean, zq95, cover, …): "
                "compute them with forestcarbon:plotmetrics, or name the fields with FEATURE_FIELDS "
                f"(numeric fields: {', '.join(numeric) or 'none'}).")
        return target_field, names, numeric
    missing = [f for f in feature_fields if f not in types]
    if missing:
        raise ForestCarbonError(f"FEATURE_FIELDS names field(s) FEATURES lacks: {', '.join(missing)}. "
                                f"Numeric fields: {', '.join(numeric) or 'none'}.")
    text = [f for f in feature_fields if f not in numeric]
    if text:
        raise ForestCarbonError(f"FEATURE_FIELDS: {', '.join(text)} not numeric. Numeric fields: "
                                f"{', '.join(numeric)}.")
    if target_field in feature_fields:
        raise ForestCarbonError(f"The target '{target_field}' is also in FEATURE_FIELDS: leave it out.")
    return target_field, list(feature_fields), numeric


def _read_plots(layer, target_field, names, area_field, progress) -> _PlotRows:
    """Every plot with a target value, a geometry and every feature; the others counted."""
    srs = layer.GetSpatialRef()
    planar = not (srs is not None and srs.IsGeographic())
    plots = _PlotRows()
    layer.ResetReading()
    for feature in layer:
        check_cancel(progress)
        value = feature.GetField(target_field)
        if value is None or not math.isfinite(float(value)):
            plots.no_target += 1
            continue
        geom = feature.GetGeometryRef()
        if geom is None or geom.IsEmpty():
            plots.no_geometry += 1
            continue
        vals = [feature.GetField(f) for f in names]
        if any(v is None or not math.isfinite(float(v)) for v in vals):
            plots.incomplete += 1
            continue
        if vector.geometry_kind(geom) == "point":
            pt = geom if geom.GetGeometryCount() == 0 else geom.GetGeometryRef(0)
            px, py = pt.GetX(), pt.GetY()
        else:
            centroid = geom.Centroid()
            px, py = centroid.GetX(), centroid.GetY()
            if geom.GetArea() > 0 and area_field is None and planar:
                plots.areas.append(geom.GetArea())
        if area_field is not None and feature.GetField(area_field) is not None:
            plots.areas.append(float(feature.GetField(area_field)))
        plots.rows.append([float(v) for v in vals])
        plots.y.append(float(value))
        plots.x.append(px)
        plots.yc.append(py)
    return plots


def _plot_notes(plots: _PlotRows, target_field: str) -> list:
    notes = []
    if plots.no_target:
        notes.append(f"{plots.no_target} plot(s) without a value in '{target_field}' were skipped.")
    if plots.no_geometry:
        notes.append(f"{plots.no_geometry} plot(s) without a geometry were skipped.")
    if plots.incomplete:
        notes.append(f"{plots.incomplete} plot(s) with a missing feature value (e.g. plots without LiDAR points, "
                     "n = 0) were skipped.")
    return notes
