"""Training forest-structure models: sampling, spatial cross-validation, conformal calibration, ONNX export.

The recipe of ``forestcarbon:trainmodel`` as plain functions (no QGIS):

* :func:`sample_training_data` — the feature rasters are stacked (bands of several rasters in order,
  warped onto the first raster's grid with bilinear resampling: exactly what ``predictraster`` reads).
  A *raster* target is read onto that grid (area average when it is finer, e.g. a 1 m CHM onto 30 m
  features); every pixel with a valid target and valid features is a candidate, and when there are more
  than ``max_samples`` a random subset stratified by target deciles (proportional allocation) is kept.
  A *point* target takes the features of the pixel it falls in; a *polygon* target the area-weighted
  mean of the features over the polygon (weights = the share of each pixel inside it, as
  ``validatepredictions`` averages predictions), located at its centroid for the spatial blocks.
* :func:`spatial_folds` — square blocks of ``block_size_m`` (edges at multiples of the block size in the
  grid's CRS) are shuffled (seeded) and dealt to the folds in turn, so a block is never split between
  folds; :func:`random_folds` is the ordinary random K-fold for comparison.
* Models: :func:`fit_quantile_gbm` — three histogram gradient-boosting regressors with the pinball loss
  at (1 − COVERAGE)/2, 0.5 and (1 + COVERAGE)/2 (crossing is removed: lower ≤ median ≤ upper);
  :func:`fit_forest_ensemble` — a random forest for the mean and a second forest fitted on the squared
  out-of-bag residuals of the first (a local estimate of the residual *variance*, non-negative by
  construction); its interval is mean ± z·σ.
* :func:`conformal_factor` — conformalized quantile regression (Romano et al. 2019) in the
  multiplicative form ``predictraster`` applies: the interval ``m − f·(m − lo), m + f·(up − m)``
  contains y iff the score ``s = (m − y)/(m − lo)`` (y below m) or ``(y − m)/(up − m)`` (y above m) is
  ≤ f, so f is the ⌈(n + 1)·COVERAGE⌉-th smallest score of held-out samples (s = 1 + Romano's
  max((lo − y)/(m − lo), (y − up)/(up − m)), his additive score divided by the half-width on its side).
  The scores come from spatial-block cross-validation: every sample is predicted by a model that did
  not see its block (cross-conformal; the final model, trained on all samples, is used with that f).
* :func:`export_onnx` — the sklearn models converted with skl2onnx and joined into **one** ONNX graph
  with input ``features`` (float32 ``[N, F]``) and outputs ``lower``/``median``/``upper``
  (``quantile:<q>``) or ``mean``/``variance``; the model card (docs/model-card.md) is stored in the
  metadata key ``model_card``. Tree thresholds are first rounded down to float32, so the float32
  ONNX graph takes the same branches as sklearn on float32 inputs.
* Plot data (the area-based approach): FEATURES may be one vector layer of plots (e.g. ``plotmetrics``'
  output); :func:`sample_plot_data` takes its numeric fields named like ``canopymetrics`` bands (or
  ``feature_fields``) as features and ``target_field`` as the response, skipping plots without a target (or
  with a missing feature) with a count in the log. Validation: plots closer than ``block_size_m`` (0 = auto,
  :func:`auto_group_distance`: grouped only when they cluster) form groups (:func:`plot_groups`); with fewer
  than 30 groups leave-one-group-out, otherwise the groups are dealt to FOLDS folds (:func:`group_folds`);
  random CV is leave-one-out (< 30 plots) or K-fold on plots. The conformal factor comes from the grouped folds.
  The model card names the fields as the bands, so ``predictraster`` picks a ``canopymetrics`` raster's bands
  by description.
* :func:`train_model` — all of it, and an HTML report (+ JSON, PNGs) through :mod:`.report`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import vector
from ..dependencies import require
from ..errors import ForestCarbonError
from ..progress import NullProgress, Progress, check_cancel
from ..stats import z_score

MODEL_TYPES = ("quantile_gbm", "forest_ensemble")
MIN_PER_FOLD = 10  # samples per fold at least
AUTO_BLOCK_PIXELS = 10  # BLOCK_SIZE 0: 10 pixels, halved (down to 2 pixels) until there are ≥ 2·FOLDS blocks
WINDOW = 512
STRATA = 10

__all__ = ["TrainingData", "sample_training_data", "sample_plot_data", "plot_groups", "group_folds",
           "auto_group_distance", "is_vector_features", "default_feature_fields", "spatial_folds", "random_folds", "fit_quantile_gbm",
           "fit_forest_ensemble", "predict_intervals", "cross_validate", "conformal_factor", "conformal_scores",
           "export_onnx", "train_model", "MODEL_TYPES"]


# ----------------------------------------------------------------------------- sampling

@dataclass
class TrainingData:
    X: np.ndarray  # (n, F) float32
    y: np.ndarray  # (n,) float64
    x: np.ndarray  # (n,) sample coordinates (pixel centres / points / polygon centroids), grid CRS
    yc: np.ndarray
    bands: list  # feature names, in order
    grid: object  # RasterGrid of the first feature raster
    target_name: str = "prediction"
    unit: str = ""
    n_candidates: int = 0  # valid samples before the cap
    kind: str = "raster"  # raster | point | polygon | plot
    notes: list = field(default_factory=list)
    crs: object = None  # plot data (no grid): the layer's CRS as WKT
    plot_area_m2: float | None = None
    skipped: dict = field(default_factory=dict)


def _feature_sources(features):
    from ..raster.blocks import stack_bands

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
    """Features and target values of the training samples (see the module doc)."""
    progress = progress or NullProgress()
    if max_samples is not None and max_samples < 1:
        raise ForestCarbonError(f"MAX_SAMPLES must be at least 1 (got {max_samples}).")
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

    from ..raster.blocks import Readers

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
    if t_res < grid.res[0] * 0.99:
        notes.append(f"The target ({t_res:g} m pixels) was averaged (area-weighted) onto the {grid.res[0]:g} m "
                     "feature grid.")
    if n_candidates > y.size:
        notes.append(f"{y.size:,} of {n_candidates:,} valid pixels sampled (stratified by target deciles).")
    return TrainingData(X, y, np.asarray(xs, float), np.asarray(ys, float), [], grid, name, unit, n_candidates,
                        "raster", notes)


def _sample_vector_target(grid, sources, target, target_field, max_samples, seed, progress) -> TrainingData:
    from rasterio.crs import CRS
    from rasterio.windows import Window

    from ..raster.blocks import Readers
    from .validate import pixel_fractions

    ds, layer = vector.open_vector(target, "TARGET")
    field_name = vector.numeric_field(layer, target_field, "TARGET", "TARGET_FIELD")
    feats, skipped = vector.features(layer, field_name, CRS.from_user_input(grid.crs).to_wkt())
    del ds
    if not feats:
        raise ForestCarbonError(f"TARGET has no feature with a geometry and a value in '{field_name}'.")
    readers = Readers(grid)
    inv = ~grid.transform
    rows_X, ys_, xs_, yc_ = [], [], [], []
    kinds = set()
    try:
        for i, (geom, value) in enumerate(feats):
            check_cancel(progress)
            kind = vector.geometry_kind(geom)
            kinds.add(kind)
            if kind == "point":
                pt = geom if geom.GetGeometryCount() == 0 else geom.GetGeometryRef(0)
                px, py = pt.GetX(), pt.GetY()
                c, r = inv * (px, py)
                c, r = int(math.floor(c)), int(math.floor(r))
                if not (0 <= c < grid.width and 0 <= r < grid.height):
                    continue
                data, valid = _read_features(readers, sources, Window(c, r, 1, 1))
                if not valid[0, 0]:
                    continue
                rows_X.append(data[:, 0, 0])
                xs_.append(px)
                yc_.append(py)
            elif kind == "polygon":
                xmin, xmax, ymin, ymax = geom.GetEnvelope()
                cs, rs = zip(*(inv * (x, y) for x in (xmin, xmax) for y in (ymin, ymax)))
                c0, c1 = max(0, int(math.floor(min(cs)))), min(grid.width, int(math.ceil(max(cs))))
                r0, r1 = max(0, int(math.floor(min(rs)))), min(grid.height, int(math.ceil(max(rs))))
                if c1 <= c0 or r1 <= r0:
                    continue
                window = Window(c0, r0, c1 - c0, r1 - r0)
                data, valid = _read_features(readers, sources, window)
                w = pixel_fractions(geom, grid.window_transform(window), valid.shape) * valid
                if w.sum() <= 0:
                    continue
                rows_X.append((data * w).reshape(len(sources), -1).sum(axis=1) / w.sum())
                centroid = geom.Centroid()
                xs_.append(centroid.GetX())
                yc_.append(centroid.GetY())
            else:
                raise ForestCarbonError(f"TARGET holds {kind} geometries: give points or polygons.")
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
    if "polygon" in kinds:
        notes.append("Polygon targets are matched with the area-weighted mean of the features over each polygon "
                     "(weights = share of each pixel inside it) and placed at their centroid for the spatial blocks.")
    return TrainingData(X[keep], y[keep], np.asarray(xs_)[keep], np.asarray(yc_)[keep], [], grid, field_name, "",
                        y.size, "polygon" if "polygon" in kinds else "point", notes)


# ----------------------------------------------------------------------------- plot data (area-based approach)

MIN_PLOTS = 10
LOO_BELOW = 30  # fewer spatial groups than this: leave-one-group-out instead of FOLDS folds
PLOT_GBM_PARAMS = {"n_estimators": 200, "learning_rate": 0.05, "max_leaf_nodes": 3, "min_samples_leaf": 5}
CLUSTERED_R = 0.7  # Clark-Evans aggregation index below which plots are taken as clustered (BLOCK_SIZE 0)


def is_vector_features(features) -> bool:
    """True when FEATURES is one vector layer (plot data) rather than rasters."""
    paths = [features] if isinstance(features, (str, Path)) else list(features or [])
    return len(paths) == 1 and not _is_raster_source(paths[0])


def default_feature_fields(numeric_fields, target_field: str) -> list:
    """The numeric fields named like ``canopymetrics`` bands (:func:`.metrics.metric_names`, intensity metrics
    included), in the layer's order, less the target and ``n`` (a point count depends on the plot's area, which
    differs from a grid cell's)."""
    from ..lidar.metrics import metric_names

    bands = {b.lower() for b in metric_names(intensity=True)} - {"n"}
    return [f for f in numeric_fields if f.lower() in bands and f != target_field]


def sample_plot_data(features, target_field: str | None, feature_fields=None,
                     progress: Progress | None = None) -> TrainingData:
    """Features and target of each plot of a vector layer (e.g. ``plotmetrics``' output): the numeric
    ``feature_fields`` (default :func:`default_feature_fields`) and ``target_field``. Plots without a target value
    or with a missing feature are left out (counted in the notes); plots are located at their point or centroid."""
    from osgeo import ogr

    progress = progress or NullProgress()
    source = features if isinstance(features, (str, Path)) else list(features)[0]
    ds, layer = vector.open_vector(source, "FEATURES")
    defn = layer.GetLayerDefn()
    types = {defn.GetFieldDefn(i).GetName(): defn.GetFieldDefn(i).GetType() for i in range(defn.GetFieldCount())}
    numeric = [f for f, t in types.items() if t in (ogr.OFTInteger, ogr.OFTInteger64, ogr.OFTReal)]
    if not target_field:
        raise ForestCarbonError("FEATURES is a vector layer (plots): set TARGET_FIELD to its numeric field with the "
                                f"plot measurement (numeric fields: {', '.join(numeric) or 'none'}).")
    target_field = vector.numeric_field(layer, target_field, "FEATURES", "TARGET_FIELD")
    if isinstance(feature_fields, str):
        feature_fields = [f.strip() for f in feature_fields.split(",") if f.strip()]
    if feature_fields:
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
        names = list(feature_fields)
    else:
        names = default_feature_fields(numeric, target_field)
        if not names:
            raise ForestCarbonError(
                "FEATURES has no numeric field named like a 'canopymetrics' band (zmax, zmean, zq95, cover, …): "
                "compute them with forestcarbon:plotmetrics, or name the fields with FEATURE_FIELDS "
                f"(numeric fields: {', '.join(numeric) or 'none'}).")
    srs = layer.GetSpatialRef()
    crs_wkt = srs.ExportToWkt() if srs is not None else None
    rows, ys, xs, yc = [], [], [], []
    no_target = no_geometry = incomplete = 0
    areas = []
    from ..lidar.plot_metrics import AREA_FIELD

    area_field = AREA_FIELD if AREA_FIELD in numeric and AREA_FIELD not in names else None
    layer.ResetReading()
    for feature in layer:
        check_cancel(progress)
        value = feature.GetField(target_field)
        if value is None or not math.isfinite(float(value)):
            no_target += 1
            continue
        geom = feature.GetGeometryRef()
        if geom is None or geom.IsEmpty():
            no_geometry += 1
            continue
        vals = [feature.GetField(f) for f in names]
        if any(v is None or not math.isfinite(float(v)) for v in vals):
            incomplete += 1
            continue
        flat = ogr.GT_Flatten(geom.GetGeometryType())
        if flat in (ogr.wkbPoint, ogr.wkbMultiPoint):
            pt = geom if geom.GetGeometryCount() == 0 else geom.GetGeometryRef(0)
            px, py = pt.GetX(), pt.GetY()
        else:
            centroid = geom.Centroid()
            px, py = centroid.GetX(), centroid.GetY()
            if geom.GetArea() > 0 and area_field is None and not (srs is not None and srs.IsGeographic()):
                areas.append(geom.GetArea())
        if area_field is not None and feature.GetField(area_field) is not None:
            areas.append(float(feature.GetField(area_field)))
        rows.append([float(v) for v in vals])
        ys.append(float(value))
        xs.append(px)
        yc.append(py)
    del ds
    notes = []
    if no_target:
        notes.append(f"{no_target} plot(s) without a value in '{target_field}' were skipped.")
    if no_geometry:
        notes.append(f"{no_geometry} plot(s) without a geometry were skipped.")
    if incomplete:
        notes.append(f"{incomplete} plot(s) with a missing feature value (e.g. plots without LiDAR points, n = 0) "
                     "were skipped.")
    if not ys:
        raise ForestCarbonError(f"No plot of FEATURES has both a value in '{target_field}' and every feature "
                                f"({', '.join(names)}).")
    x, yy = np.asarray(xs, float), np.asarray(yc, float)
    if srs is not None and srs.IsGeographic():  # metres for the spatial groups: a local equirectangular projection
        lat0 = math.radians(float(np.mean(yy)))
        x, yy = np.radians(x) * 6_371_008.8 * math.cos(lat0), np.radians(yy) * 6_371_008.8
        notes.append("Plot coordinates are geographic: distances for the spatial groups use a local "
                     "equirectangular projection.")
    data = TrainingData(np.asarray(rows, dtype=np.float32), np.asarray(ys, dtype=np.float64), x, yy, names, None,
                        target_field, "", len(ys), "plot", notes)
    data.crs = crs_wkt
    data.plot_area_m2 = float(np.median(areas)) if areas else None
    data.skipped = {"no_target": no_target, "no_geometry": no_geometry, "incomplete": incomplete}
    return data


def plot_groups(x, y, distance_m: float) -> np.ndarray:
    """Group id of each plot: plots closer than ``distance_m`` to another plot of the group (single linkage)."""
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
    """BLOCK_SIZE 0 for plots: the Clark–Evans aggregation index R (mean nearest-neighbour distance over its
    expectation 0.5/√density for a random pattern, density over the plots' convex hull); when R < 0.7 the plots
    are clustered and are grouped at 1.5 × the median nearest-neighbour distance, otherwise each plot is its own
    group."""
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
    """Fold of each plot: leave-one-group-out when there are fewer than 30 groups (or no more than ``folds``),
    otherwise the groups shuffled (seeded) and dealt to ``folds`` folds. Returns (fold ids, number of folds)."""
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


# ----------------------------------------------------------------------------- folds

def spatial_folds(x, y, block_size_m: float, folds: int, seed: int = 0) -> np.ndarray:
    """Fold (0 … folds−1) of each sample: square blocks of ``block_size_m`` (edges at multiples of it)
    shuffled with ``seed`` and dealt to the folds in turn; every sample of a block is in one fold."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if not block_size_m > 0:
        raise ForestCarbonError(f"BLOCK_SIZE must be greater than 0 m (got {block_size_m}).")
    if folds < 2:
        raise ForestCarbonError(f"FOLDS must be at least 2 (got {folds}).")
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
    """Fold of each of ``n`` samples for ordinary random K-fold (balanced, seeded)."""
    if folds < 2:
        raise ForestCarbonError(f"FOLDS must be at least 2 (got {folds}).")
    return np.random.default_rng(seed).permutation(n) % folds


def _auto_block(x, y, res: float, folds: int) -> tuple[float, str]:
    size = AUTO_BLOCK_PIXELS * res
    while True:
        blocks = len(np.unique(np.column_stack([np.floor(x / size), np.floor(y / size)]), axis=0))
        if blocks >= 2 * folds or size <= 2 * res:
            return size, f"BLOCK_SIZE {size:g} m chosen automatically ({blocks} blocks hold samples)."
        size /= 2


# ----------------------------------------------------------------------------- models

def _floor_thresholds(values: np.ndarray) -> None:
    """In place: each float64 threshold t becomes the largest float32 ≤ t, so that ``x ≤ t`` gives the same
    answer in float64 (sklearn) and float32 (ONNX) for every float32 x."""
    t32 = values.astype(np.float32)
    up = t32.astype(np.float64) > values
    t32[up] = np.nextafter(t32[up], np.float32(-np.inf))
    values[...] = t32.astype(np.float64)


def _float32_trees(model) -> None:
    if hasattr(model, "_predictors"):  # HistGradientBoosting
        for predictors in model._predictors:
            for predictor in predictors:
                _floor_thresholds(predictor.nodes["num_threshold"])
    elif hasattr(model, "estimators_"):
        for tree in model.estimators_:
            _floor_thresholds(tree.tree_.threshold)


@dataclass
class FittedModel:
    kind: str  # quantile_gbm | forest_ensemble
    coverage: float
    models: dict  # name -> sklearn estimator
    quantiles: dict = field(default_factory=dict)  # lower/median/upper -> q


def fit_quantile_gbm(X, y, coverage: float = 0.9, seed: int = 0, n_estimators: int = 150,
                     learning_rate: float = 0.1, max_leaf_nodes: int = 15, min_samples_leaf: int = 20) -> FittedModel:
    """Three ``HistGradientBoostingRegressor(loss="quantile")`` at (1 − coverage)/2, 0.5, (1 + coverage)/2."""
    require("sklearn")
    from sklearn.ensemble import HistGradientBoostingRegressor

    quantiles = {"lower": (1 - coverage) / 2, "median": 0.5, "upper": (1 + coverage) / 2}
    models = {}
    for name, q in quantiles.items():
        model = HistGradientBoostingRegressor(loss="quantile", quantile=q, max_iter=n_estimators,
                                              learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
                                              min_samples_leaf=min(min_samples_leaf, max(1, len(y) // 10)),
                                              early_stopping=False, random_state=seed)
        model.fit(np.asarray(X, dtype=np.float32), y)
        _float32_trees(model)
        models[name] = model
    return FittedModel("quantile_gbm", coverage, models, quantiles)


def fit_forest_ensemble(X, y, coverage: float = 0.9, seed: int = 0, n_estimators: int = 100,
                        min_samples_leaf: int = 5, max_samples: float | None = 0.5,
                        variance_estimators: int | None = None) -> FittedModel:
    """A random forest for the mean and a forest on its squared out-of-bag residuals (the variance)."""
    require("sklearn")
    from sklearn.ensemble import RandomForestRegressor

    X = np.asarray(X, dtype=np.float32)
    common = dict(max_features=0.5, bootstrap=True, max_samples=max_samples, n_jobs=-1, random_state=seed)
    mean = RandomForestRegressor(n_estimators=n_estimators, min_samples_leaf=min_samples_leaf, oob_score=True,
                                 **common)
    mean.fit(X, y)
    oob = mean.oob_prediction_
    residual2 = np.square(y - np.where(np.isfinite(oob), oob, mean.predict(X)))
    variance = RandomForestRegressor(n_estimators=variance_estimators or max(10, n_estimators // 2),
                                     min_samples_leaf=max(4 * min_samples_leaf, 20), **common)
    variance.fit(X, residual2)
    _float32_trees(mean)
    _float32_trees(variance)
    return FittedModel("forest_ensemble", coverage, {"mean": mean, "variance": variance})


def _fit(kind: str, X, y, coverage, seed, params: dict) -> FittedModel:
    """Fit ``kind``; keys of ``params`` that its fit function does not take are ignored."""
    import inspect

    function = {"quantile_gbm": fit_quantile_gbm, "forest_ensemble": fit_forest_ensemble}.get(kind)
    if function is not None:
        accepted = inspect.signature(function).parameters
        return function(X, y, coverage, seed, **{k: v for k, v in params.items() if k in accepted})
    raise ForestCarbonError(f"Unknown model type '{kind}': choose {' or '.join(MODEL_TYPES)}.")


def predict_intervals(model: FittedModel, X) -> dict:
    """Uncalibrated ``prediction``, ``lower``, ``upper`` (float64) as the exported graph computes them."""
    X = np.asarray(X, dtype=np.float32)
    if model.kind == "quantile_gbm":
        raw = {k: m.predict(X) for k, m in model.models.items()}
        from .predict import quantile_interval

        lower, median, upper = quantile_interval(raw["lower"], raw["median"], raw["upper"])
        return {"prediction": median, "lower": lower, "upper": upper}

    mean = model.models["mean"].predict(X)
    var = np.maximum(model.models["variance"].predict(X), 0.0)
    half = z_score(model.coverage) * np.sqrt(var)
    return {"prediction": mean, "variance": var, "lower": mean - half, "upper": mean + half}


# ----------------------------------------------------------------------------- calibration

def conformal_scores(y, lower, median, upper) -> np.ndarray:
    """s = (m − y)/(m − lo) below the median, (y − m)/(up − m) above (0 at y = m; inf for a zero-width side
    that y falls on): y lies in ``m − f·(m − lo), m + f·(up − m)`` iff s ≤ f."""
    y, lo, m, up = (np.asarray(a, dtype=np.float64) for a in (y, lower, median, upper))
    below = y < m
    width = np.where(below, m - lo, up - m)
    gap = np.abs(y - m)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(gap == 0, 0.0, np.where(width > 0, gap / width, np.inf))
    return s


def conformal_factor(y, lower, median, upper, coverage: float = 0.9) -> float:
    """The factor f that scales the half-widths around the median so that the interval covers ``coverage`` of
    these samples with the finite-sample rule: the ⌈(n + 1)·coverage⌉-th smallest score (Romano et al.
    2019). With too few samples for that rank (n < coverage/(1 − coverage)) the largest finite score."""
    if not 0 < coverage < 1:
        raise ForestCarbonError(f"COVERAGE must lie between 0 and 1 (got {coverage}).")
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


def _metrics(y, out: dict, factor: float | None = None) -> dict:
    from .validate import interval_coverage, regression_metrics

    m = regression_metrics(out["prediction"], y)
    cov = interval_coverage(y, out["lower"], out["upper"])
    m.update(coverage_uncalibrated=cov["coverage"], mean_width_uncalibrated=cov["mean_width"])
    return m


def cross_validate(kind: str, X, y, fold_ids, coverage: float = 0.9, seed: int = 0, params: dict | None = None,
                   progress: Progress | None = None, span=(0.0, 100.0)) -> dict:
    """Out-of-fold predictions (each sample predicted by the model that did not see its fold), the metrics, the
    uncalibrated coverage and the *cross-fitted* calibrated coverage: fold k's intervals scaled by the conformal
    factor of the other folds' scores."""
    params = params or {}
    fold_ids = np.asarray(fold_ids)
    n_folds = int(fold_ids.max()) + 1
    oof = {k: np.full(len(y), np.nan) for k in ("prediction", "lower", "upper")}
    for k in range(n_folds):
        check_cancel(progress)
        test = fold_ids == k
        if not test.any() or test.all():
            continue
        model = _fit(kind, X[~test], y[~test], coverage, seed, params)
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


# ----------------------------------------------------------------------------- export

def _convert(model, n_features: int):
    skl2onnx = require("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType

    return skl2onnx.convert_sklearn(model, initial_types=[("features", FloatTensorType([None, n_features]))],
                                    target_opset={"": 17, "ai.onnx.ml": 3})


def build_onnx(model: FittedModel, n_features: int):
    """One ONNX graph (input ``features`` float32 [N, F]) computing what :func:`predict_intervals` computes."""
    onnx = require("onnx")
    from onnx import TensorProto, compose, helper

    nodes, initializers, raw, opsets = [], [], {}, {}
    ir_version = None
    for name, estimator in model.models.items():
        part = compose.add_prefix(_convert(estimator, n_features), f"{name}_")
        ir_version = max(ir_version or 0, part.ir_version)
        for op in part.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
        nodes.append(helper.make_node("Identity", ["features"], [f"{name}_features"], name=f"{name}_input"))
        nodes.extend(part.graph.node)
        initializers.extend(part.graph.initializer)
        raw[name] = part.graph.output[0].name
    if model.kind == "quantile_gbm":
        # the three quantiles sorted per sample (the rearrangement of inference.quantile_interval, so that any
        # ONNX consumer gets non-crossing quantiles): min, median of three = max(min(a, b), min(max(a, b), c)), max
        a, b, c = raw["lower"], raw["median"], raw["upper"]
        nodes += [helper.make_node("Min", [a, b], ["q_min_ab"], name="q_min_ab"),
                  helper.make_node("Max", [a, b], ["q_max_ab"], name="q_max_ab"),
                  helper.make_node("Min", ["q_min_ab", c], ["lower"], name="no_crossing_lower"),
                  helper.make_node("Min", ["q_max_ab", c], ["q_mid"], name="q_mid"),
                  helper.make_node("Max", ["q_min_ab", "q_mid"], ["median"], name="no_crossing_median"),
                  helper.make_node("Max", ["q_max_ab", c], ["upper"], name="no_crossing_upper")]
        names = ["lower", "median", "upper"]
    else:
        nodes += [helper.make_node("Identity", [raw["mean"]], ["mean"], name="mean_out"),
                  helper.make_node("Relu", [raw["variance"]], ["variance"], name="variance_out")]
        names = ["mean", "variance"]
    graph = helper.make_graph(
        nodes, "forest_carbon_" + model.kind,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 1]) for n in names], initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                                   producer_name="forest_carbon_plugin")
    onnx_model.ir_version = ir_version
    onnx.checker.check_model(onnx_model)
    return onnx_model


def model_card(model: FittedModel, bands, target_name: str, unit: str, resolution_m, factor: float,
               training: dict, href: str) -> dict:
    """The model card (docs/model-card.md) of an exported model."""
    if model.kind == "quantile_gbm":
        outputs = [{"name": k, "forest_carbon:meaning": f"quantile:{model.quantiles[k]:.6g}"}
                   for k in ("lower", "median", "upper")]
        architecture = "HistGradientBoostingRegressor (quantile loss) ×3"
    else:
        outputs = [{"name": "mean", "forest_carbon:meaning": "mean"},
                   {"name": "variance", "forest_carbon:meaning": "variance"}]
        architecture = "RandomForestRegressor (mean) + RandomForestRegressor (squared OOB residuals)"
    return {
        "mlm:name": f"{target_name}-{model.kind}",
        "mlm:architecture": architecture,
        "mlm:framework": "scikit-learn",
        "mlm:input": [{
            "name": "features",
            "bands": list(bands),
            "input": {"shape": [-1, len(bands)], "dim_order": ["batch", "bands"], "data_type": "float32"},
        }],
        "mlm:output": outputs,
        "assets": {"model": {"href": href, "roles": ["mlm:model"], "type": "application/octet-stream; application=onnx"}},
        "forest_carbon:target": target_name,
        "forest_carbon:unit": unit,
        "forest_carbon:resolution_m": resolution_m,
        "forest_carbon:calibration": {"conformal_factor": float(factor), "coverage": float(model.coverage),
                                      "method": "conformalized quantile regression (Romano et al. 2019), "
                                                "multiplicative, on spatial-block cross-validation scores"},
        "forest_carbon:training": training,
    }


def export_onnx(model: FittedModel, out_path, card: dict, n_features: int) -> Path:
    """Write the joined graph with ``card`` in the metadata key ``model_card`` (atomically)."""
    onnx = require("onnx")
    from onnx import helper

    from .card import CARD_KEY
    from ..outputs import atomic_output

    onnx_model = build_onnx(model, n_features)
    helper.set_model_props(onnx_model, {CARD_KEY: json.dumps(card, default=str)})
    out_path = Path(out_path)
    with atomic_output(out_path) as tmp:
        onnx.save(onnx_model, str(tmp))
    return out_path


# ----------------------------------------------------------------------------- the algorithm

def _check_target(y: np.ndarray, folds: int) -> None:
    n = y.size
    if n < MIN_PER_FOLD * folds:
        raise ForestCarbonError(f"Only {n} valid training sample(s): {folds} folds need at least "
                                f"{MIN_PER_FOLD * folds} ({MIN_PER_FOLD} per fold). Use a larger target, fewer "
                                "FOLDS, or check the nodata of the target and features.")
    if np.nanmax(y) - np.nanmin(y) <= 1e-12 * max(1.0, abs(float(np.nanmax(y)))):
        raise ForestCarbonError(f"The target is constant (every sample is {y[0]:g}): there is nothing to learn. "
                                "Check TARGET / TARGET_FIELD.")


def _check_plots(y: np.ndarray) -> None:
    if y.size < MIN_PLOTS:
        raise ForestCarbonError(f"Only {y.size} plot(s) with a target value and every feature: at least {MIN_PLOTS} "
                                "are needed to train and cross-validate a model.")
    if np.nanmax(y) - np.nanmin(y) <= 1e-12 * max(1.0, abs(float(np.nanmax(y)))):
        raise ForestCarbonError(f"The target is constant (every plot has {y[0]:g}): there is nothing to learn.")


def train_model(features, target, out_model, out_report, target_field: str | None = None,
                model_type: int | str = 0, block_size_m: float | None = None, folds: int = 5,
                coverage: float = 0.9, max_samples: int = 50_000, seed: int = 0, params: dict | None = None,
                unit: str | None = None, progress: Progress | None = None, parameters: dict | None = None,
                feature_fields=None) -> dict:
    """Sample, cross-validate (spatial blocks and random K-fold), calibrate, fit on all samples, export the
    ONNX model and write the report. Returns the report's document (every number)."""
    from ..outputs import provenance

    progress = progress or NullProgress()
    kind = MODEL_TYPES[model_type] if isinstance(model_type, int) else str(model_type)
    if kind not in MODEL_TYPES:
        raise ForestCarbonError(f"MODEL_TYPE must be 0 (quantile gradient boosting) or 1 (random forest), "
                                f"got {model_type}.")
    if not 0 < coverage < 1:
        raise ForestCarbonError(f"COVERAGE must lie between 0 and 1 (got {coverage}).")
    if folds < 2:
        raise ForestCarbonError(f"FOLDS must be at least 2 (got {folds}).")
    out_model, out_report = Path(out_model), Path(out_report)
    if out_model.suffix.lower() != ".onnx":
        raise ForestCarbonError(f"OUTPUT_MODEL '{out_model.name}' must end in .onnx.")
    if out_report.suffix.lower() not in (".html", ".htm"):
        raise ForestCarbonError(f"OUTPUT_REPORT '{out_report.name}' must end in .html.")
    if out_report.with_suffix(".json").resolve() == out_model.with_suffix(".json").resolve():
        raise ForestCarbonError(f"The report's JSON would be '{out_model.with_suffix('.json').name}', which "
                                "predictraster would read as the model's card: give the report another name.")
    require("sklearn", "skl2onnx", "onnx")
    params = dict(params or {})

    plots = is_vector_features(features)
    validation = {}
    if plots:
        if target is not None and str(target).strip() and str(target) != str(
                features if isinstance(features, (str, Path)) else list(features)[0]):
            raise ForestCarbonError("FEATURES is a vector layer (plots): the target is its TARGET_FIELD; leave "
                                    "TARGET empty (or give the same layer).")
        data = sample_plot_data(features, target_field, feature_fields, progress)
        for note in data.notes:
            progress.info(note)
        _check_plots(data.y)
        if block_size_m:
            block = float(block_size_m)
            progress.info(f"Plots within {block:g} m of each other are one group in cross-validation.")
        else:
            block, note = auto_group_distance(data.x, data.yc)
            progress.info(note)
            data.notes.append(note)
        groups = plot_groups(data.x, data.yc, block)
        spatial, n_spatial = group_folds(groups, folds, seed)
        n_groups = int(len(np.unique(groups)))
        if data.y.size < LOO_BELOW:
            rand, n_random = np.random.default_rng(seed).permutation(data.y.size), int(data.y.size)
        else:
            rand, n_random = random_folds(data.y.size, folds, seed), folds
        scheme = "leave-one-group-out" if n_spatial == n_groups else f"{n_spatial}-fold over groups"
        validation = {"sample_unit": "plot", "n_groups": n_groups, "group_distance_m": block,
                      "spatial_scheme": scheme, "spatial_folds": int(n_spatial),
                      "random_scheme": "leave-one-out" if n_random == data.y.size else f"{n_random}-fold",
                      "skipped": data.skipped}
        progress.info(f"{data.y.size} plots, {len(data.bands)} features ({', '.join(data.bands)}); {n_groups} "
                      f"spatial group(s), {scheme} cross-validation")
        res = None
        if kind == "quantile_gbm":  # a few dozen plots: shallow, slow-learning trees (params override)
            params = {**PLOT_GBM_PARAMS, **params}
    else:
        data = sample_training_data(features, target, target_field, max_samples, seed, progress)
        for note in data.notes:
            progress.info(note)
        _check_target(data.y, folds)
        res = float(data.grid.res[0])
        if block_size_m:
            block = float(block_size_m)
        else:
            block, note = _auto_block(data.x, data.yc, res, folds)
            progress.info(note)
        spatial = spatial_folds(data.x, data.yc, block, folds, seed)
        for k in range(folds):
            if (spatial == k).sum() < 1:
                raise ForestCarbonError(f"Spatial fold {k + 1} holds no sample: use a smaller BLOCK_SIZE or fewer "
                                        "FOLDS.")
        rand = random_folds(data.y.size, folds, seed)
        progress.info(f"{data.y.size:,} samples, {len(data.bands)} features ({', '.join(data.bands)}); "
                      f"{folds}-fold CV, {block:g} m blocks")

    import contextlib

    limits = contextlib.nullcontext()
    if plots:  # a few dozen rows: one thread is fastest, and OpenMP spin-waits crawl on a busy machine
        try:
            from threadpoolctl import threadpool_limits

            limits = threadpool_limits(limits=1)
        except ImportError:  # pragma: no cover - sklearn depends on threadpoolctl
            pass
    with limits:
        cv_spatial = cross_validate(kind, data.X, data.y, spatial, coverage, seed, params, progress, (20, 55))
        cv_random = cross_validate(kind, data.X, data.y, rand, coverage, seed, params, progress, (55, 80))
        factor = cv_spatial["factor"]
        check_cancel(progress)
        final = _fit(kind, data.X, data.y, coverage, seed, params)
    progress.set_progress(90)

    from rasterio.crs import CRS

    crs = CRS.from_user_input(data.grid.crs if data.grid is not None else data.crs) \
        if (data.grid is not None or data.crs) else None
    epsg = crs.to_epsg() if crs is not None else None
    half = (res or 0.0) / 2
    extent = [float(data.x.min() - half), float(data.yc.min() - half), float(data.x.max() + half),
              float(data.yc.max() + half)]
    cv_doc = {"spatial": cv_spatial["metrics"], "random": cv_random["metrics"]}
    training = {
        "extent": extent, "crs": (f"EPSG:{epsg}" if epsg else crs.to_wkt()) if crs is not None else None,
        "date": _dt.date.today().isoformat(), "n_samples": int(data.y.size), "n_candidates": int(data.n_candidates),
        "target_kind": data.kind, "model_type": kind, "folds": folds, "block_size_m": block, "seed": seed,
        "coverage": coverage, "uncalibrated_coverage_spatial_cv": cv_spatial["metrics"]["coverage_uncalibrated"],
        "cv": cv_doc, "params": params, **validation,
    }
    if plots:
        training["extent_note"] = "plot locations (centres or centroids) in the plots' CRS"
        if data.plot_area_m2:
            training["plot_area_m2"] = data.plot_area_m2
    unit = unit if unit is not None else data.unit
    card = model_card(final, data.bands, data.target_name, unit, res, factor, training, out_model.name)
    importances = _importances(final, data, seed)

    record = provenance("forestcarbon:trainmodel", parameters or {
        "model_type": kind, "block_size_m": block, "folds": folds, "coverage": coverage, "max_samples": max_samples,
        "seed": seed, "feature_fields": feature_fields},
        inputs=[str(p) for p in ([features] if isinstance(features, (str, Path)) else features)]
        + ([str(target)] if target is not None and str(target).strip() and not plots else []))
    doc = {"provenance": record, "model": str(out_model), "model_type": kind, "target": data.target_name,
           "unit": unit, "bands": data.bands, "n_samples": int(data.y.size), "n_candidates": int(data.n_candidates),
           "block_size_m": block, "folds": folds, "coverage": coverage, "conformal_factor": factor,
           "cv": cv_doc, "importances": importances, "notes": data.notes, "model_card": card,
           "validation": validation}
    check_cancel(progress)
    export_onnx(final, out_model, card, len(data.bands))
    sidecar = out_model.with_suffix(".json")
    if sidecar.exists():  # predictraster reads a <stem>.json before the metadata: keep it in step
        from ..outputs import write_json

        write_json(sidecar, card)
        doc["notes"] = doc["notes"] + [f"'{sidecar.name}' beside the model was replaced by this model's card."]
    report = _build_report(doc, data, cv_spatial, cv_random)
    from ..report import write_report

    doc["outputs"] = write_report(out_report, report, doc)
    doc["outputs"]["model"] = str(out_model)
    doc["fitted_model"] = final  # in memory only (not in the JSON)
    progress.set_progress(100)
    progress.info(f"Spatial CV RMSE {cv_spatial['metrics']['rmse']:.4g}, random CV RMSE "
                  f"{cv_random['metrics']['rmse']:.4g}; coverage {cv_spatial['metrics']['coverage_uncalibrated']:.3f} "
                  f"uncalibrated, conformal factor {factor:.4g}")
    return doc


def _importances(model: FittedModel, data: TrainingData, seed: int) -> list:
    """Permutation importance of the point prediction (RMSE increase) on up to 2000 samples."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(data.y.size, size=min(2000, data.y.size), replace=False)
    X, y = data.X[idx], data.y[idx]
    base = np.sqrt(np.mean((predict_intervals(model, X)["prediction"] - y) ** 2))
    out = []
    for j, name in enumerate(data.bands):
        increases = []
        for _ in range(3):
            Xp = X.copy()
            Xp[:, j] = Xp[rng.permutation(len(y)), j]
            increases.append(np.sqrt(np.mean((predict_intervals(model, Xp)["prediction"] - y) ** 2)) - base)
        out.append({"band": name, "rmse_increase": float(np.mean(increases))})
    return sorted(out, key=lambda r: -r["rmse_increase"])


def _build_report(doc, data: TrainingData, cv_spatial, cv_random):
    from ..report import Report

    rep = Report("Model training and validation")
    rep.paragraph(f"Model: {doc['model_type']} predicting {doc['target']} {('(' + doc['unit'] + ')') if doc['unit'] else ''} "
                  f"from {len(data.bands)} features; {doc['n_samples']:,} samples ({data.kind} target); "
                  f"{doc['folds']}-fold cross-validation.")
    v = doc.get("validation") or {}
    if v:
        rep.paragraph(f"Plot data: {v['n_groups']} spatial group(s) of plots (plots within "
                      f"{v['group_distance_m']:g} m of each other are one group); spatial CV: {v['spatial_scheme']}; "
                      f"random CV: {v['random_scheme']} on plots.")
    rep.heading("Cross-validation: spatial blocks against random K-fold")
    rows = []
    for label, key in ((("spatial groups" if v else "spatial blocks"), "spatial"), ("random K-fold", "random")):
        m = doc["cv"][key]
        rows.append([label, m["n"], m["rmse"], m["mae"], m["bias"], m["r2"], m["coverage_uncalibrated"],
                     m["coverage_calibrated"], m["conformal_factor"]])
    rep.table(["scheme", "n", "RMSE", "MAE", "bias", "R²", "coverage (uncalibrated)", "coverage (calibrated)",
               "conformal factor"], rows,
              caption=(f"Spatial groups of plots (closer than {doc['block_size_m']:g} m) are held out together; "
                       if v else f"Spatial blocks of {doc['block_size_m']:g} m are dealt to folds at random; ") +
                      "random K-fold "
                      "lets neighbouring, autocorrelated pixels sit on both sides of a split and so over-states "
                      "accuracy (Ploton et al. 2020). Calibrated coverage: each fold's intervals scaled by the "
                      "conformal factor of the other folds.")
    rep.paragraph(f"Conformal factor {doc['conformal_factor']:.4g} (from the spatial-block held-out scores, "
                  f"rank ⌈(n+1)·{doc['coverage']:g}⌉): the exported model's {doc['coverage']:.0%} intervals are the "
                  f"half-widths around the prediction multiplied by it. Uncalibrated coverage of the spatial CV: "
                  f"{doc['cv']['spatial']['coverage_uncalibrated']:.3f}.")
    for note in doc["notes"]:
        rep.paragraph(note)
    y = data.y
    oof = cv_spatial["oof"]
    scores = cv_spatial["scores"]

    def scatter(fig):
        ax = fig.add_subplot(111)
        ax.scatter(y, oof["prediction"], s=4, alpha=0.4, label="spatial CV")
        ax.scatter(y, cv_random["oof"]["prediction"], s=4, alpha=0.3, label="random CV")
        lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel(f"observed {doc['target']}")
        ax.set_ylabel("predicted (held out)")
        ax.legend()

    levels = np.array([0.5, 0.68, 0.8, 0.9, 0.95])

    def coverage_plot(fig):
        ax = fig.add_subplot(111)
        zc = z_score(doc["coverage"])
        finite = np.where(np.isfinite(scores), scores, np.inf)
        for label, f in (("uncalibrated", 1.0), ("calibrated", doc["conformal_factor"])):
            observed = [float(np.mean(finite <= f * z_score(level) / zc)) for level in levels]
            ax.plot(levels, observed, "o-", label=label)
        ax.plot([0.4, 1], [0.4, 1], "k--", lw=1)
        ax.set_xlabel("nominal coverage (half-widths rescaled by z(level)/z(COVERAGE))")
        ax.set_ylabel("observed coverage (spatial CV)")
        ax.legend()

    def importance_plot(fig):
        ax = fig.add_subplot(111)
        imp = doc["importances"][::-1]
        ax.barh([r["band"] for r in imp], [r["rmse_increase"] for r in imp])
        ax.set_xlabel("RMSE increase when the band is permuted")

    rep.heading("Figures")
    rep.figure("predicted_observed", scatter, "Held-out predictions against observations.")
    rep.figure("coverage", coverage_plot, "Interval coverage against nominal level, before and after calibration.")
    rep.figure("importance", importance_plot, "Permutation importance of the final model's point prediction.")
    return rep
