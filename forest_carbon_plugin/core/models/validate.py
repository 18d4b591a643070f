"""Validating a prediction raster (and its uncertainty) against independent references.

:func:`validate_predictions` streams a prediction raster block by block against a raster or a
point/polygon reference and writes an HTML report with a JSON of every number (:mod:`..report`).
Exact sums over every valid pixel give the metrics and the coverages (:mod:`.accuracy`); a bounded,
deterministic random sample (``MAX_SAMPLE`` pairs, seed ``SEED``) feeds the calibration curve, the
plots and (``VARIOGRAM_POINTS`` of it) the semivariogram.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ForestCarbonError
from ..outputs import provenance
from ..progress import Progress, check_cancel
from ..raster.coverage import polygon_coverage
from ..raster.grid import Grid
from ..raster.read import Readers, overlaps, same_grid
from ..report import Report, write_report
from ..stats import z_score
from ..vector import features, geometry_kind, is_raster, numeric_field, open_vector, to_shapely
from .accuracy import LEVELS, StreamingSums, calibration_bins, exponential_model, fit_exponential, semivariogram

MAX_SAMPLE = 200_000
VARIOGRAM_POINTS = 3000
SEED = 20230
BLOCK = 512

__all__ = ["Uncertainty", "ValidationSettings", "validate_predictions"]


# ----------------------------------------------------------------------------- streaming pieces

class _Sample:
    """A uniform random sample without replacement of at most ``size`` rows, deterministic for a
    seed and a block order: every row gets a random key and the ``size`` smallest keys are kept."""

    def __init__(self, size: int = MAX_SAMPLE, seed: int = SEED):
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.keys = np.empty(0)
        self.columns: dict | None = None

    def add(self, **columns) -> None:
        n = len(next(iter(columns.values())))
        if n == 0:
            return
        keys = self.rng.random(n)
        if self.columns is None:
            self.columns = {k: np.asarray(v) for k, v in columns.items()}
            self.keys = keys
        else:
            self.columns = {k: np.concatenate([self.columns[k], np.asarray(columns[k])]) for k in self.columns}
            self.keys = np.concatenate([self.keys, keys])
        if self.keys.size > self.size:
            keep = np.argpartition(self.keys, self.size)[:self.size]
            self.keys = self.keys[keep]
            self.columns = {k: v[keep] for k, v in self.columns.items()}

    def ordered(self) -> dict:
        if self.columns is None:
            return {}
        order = np.argsort(self.keys, kind="stable")
        return {k: v[order] for k, v in self.columns.items()}


@dataclass
class _Interval:
    source: str  # "std" or "bounds"
    level: float
    rescaled: bool = False  # bounds rescaled to another level (symmetric Gaussian assumption)
    n: int = 0
    inside: int = 0
    width: float = 0.0

    def add(self, ref, lower, upper) -> None:
        ok = np.isfinite(lower) & np.isfinite(upper)
        ref, lower, upper = ref[ok], lower[ok], upper[ok]
        self.n += ref.size
        self.inside += int(np.count_nonzero((ref >= lower) & (ref <= upper)))
        self.width += float(np.sum(upper - lower, dtype=np.float64))

    def result(self) -> dict:
        return {"source": self.source, "level": self.level, "rescaled": self.rescaled, "n": int(self.n),
                "coverage": self.inside / self.n if self.n else None,
                "mean_width": self.width / self.n if self.n else None}


@dataclass
class _Accumulator:
    """Everything accumulated over valid pairs: global sums, per-stratum sums, intervals, the sample."""

    intervals: list
    sums: StreamingSums = field(default_factory=StreamingSums)
    strata: dict = field(default_factory=dict)
    sample: _Sample = field(default_factory=_Sample)

    def add(self, x, y, pred, ref, std=None, lower=None, upper=None, stratum=None, coverage=0.9) -> None:
        self.sums.add(pred, ref)
        sigma = None
        if std is not None:
            sigma = std
            for iv in self.intervals:
                if iv.source == "std":
                    half = z_score(iv.level) * std
                    iv.add(ref, pred - half, pred + half)
        if lower is not None:
            mid = 0.5 * (lower + upper)
            half = 0.5 * (upper - lower)
            zc = z_score(coverage)
            for iv in self.intervals:
                if iv.source == "bounds":
                    h = half * (z_score(iv.level) / zc)
                    iv.add(ref, mid - h, mid + h)
            if sigma is None:
                sigma = half / zc
        if stratum is not None:
            valid = np.isfinite(stratum)
            codes = stratum[valid]
            if codes.size:
                p, r = pred[valid], ref[valid]
                for code in np.unique(codes):
                    sel = codes == code
                    self.strata.setdefault(float(code), StreamingSums()).add(p[sel], r[sel])
        cols = {"x": x, "y": y, "pred": pred, "ref": ref}
        if sigma is not None:
            cols["sigma"] = sigma
        if stratum is not None:
            cols["stratum"] = stratum
        self.sample.add(**cols)


# ----------------------------------------------------------------------------- the algorithm

@dataclass(frozen=True)
class Uncertainty:
    """The uncertainty rasters of a prediction (each optional).

    ``std``: the standard deviation (Gaussian intervals at every level); ``lower``/``upper``: the bounds of a
    central interval of nominal ``coverage`` (both or neither).
    """

    std: str | None = None
    lower: str | None = None
    upper: str | None = None
    coverage: float = 0.9


@dataclass(frozen=True)
class ValidationSettings:
    """How much of the data feeds the sampled parts of the report, and how it is binned.

    ``levels``: nominal coverages checked; ``max_sample``: pairs kept (uniformly at random, ``seed``) for the
    calibration curve and the plots; ``variogram_points`` of them for the semivariogram (n² / 2 pairs);
    ``n_bins`` bins of σ; ``n_lags`` distance bins; ``embed_figures``: figures inlined in the HTML.
    """

    levels: tuple = LEVELS
    max_sample: int = MAX_SAMPLE
    variogram_points: int = VARIOGRAM_POINTS
    n_bins: int = 10
    n_lags: int = 15
    seed: int = SEED
    embed_figures: bool = False


@dataclass
class _Inputs:
    prediction: str
    std: str | None
    lower: str | None
    upper: str | None
    strata_raster: str | None
    strata_polygons: list | None  # [(geometry, code)]
    strata_labels: dict


def validate_predictions(prediction, reference, out_html, uncertainty: Uncertainty | None = None,
                         reference_field: str | None = None, strata=None, strata_field: str | None = None,
                         settings: ValidationSettings | None = None, progress: Progress | None = None,
                         parameters: dict | None = None) -> dict:
    """Compare a prediction raster with independent references and write an HTML report.

    Parameters
    ----------
    prediction : str or os.PathLike
        The prediction raster (band 1).
    reference : str or os.PathLike
        A raster, read onto the prediction grid (area average when it is finer, nearest cell when it is
        coarser), or a point/polygon vector (``path`` or ``path|layername=x``): points take the prediction
        pixel they fall in, polygons the area-weighted mean of the pixels they cover.
    out_html : str or os.PathLike
        The report (``.html``); a JSON of every number and PNG figures are written beside it.
    uncertainty : Uncertainty, optional
        σ and/or interval bounds; bounds are rescaled to other levels around their midpoint (a symmetric
        Gaussian assumption).
    reference_field : str, optional
        The numeric field of a vector reference.
    strata : str or os.PathLike, optional
        A class raster, or a polygon layer whose ``strata_field`` names each stratum.
    strata_field : str, optional
    settings : ValidationSettings, optional
    progress : Progress, optional
    parameters : dict, optional
        The parameters recorded in the provenance (default: these arguments).

    Returns
    -------
    dict
        The JSON document: ``metrics``, ``intervals``, ``calibration``, ``strata``, ``semivariogram``,
        ``sample``, ``notes``, ``provenance`` and ``outputs`` (html, json, figures).

    References
    ----------
    Lang, N. et al. (2023). A high-resolution canopy height model of the Earth. Nature Ecology & Evolution
    7:1778–1789 (calibration of σ). Gneiting, T. & Raftery, A. E. (2007), JASA 102:359–378 (coverage and width).
    """
    unc = uncertainty or Uncertainty()
    settings = settings or ValidationSettings()
    out_html = _check_arguments(prediction, unc, out_html)
    grid, crs_wkt = _prediction_grid(prediction, unc)
    intervals, notes = _intervals(unc, settings.levels)
    inputs = _Inputs(str(prediction), unc.std and str(unc.std), unc.lower and str(unc.lower),
                     unc.upper and str(unc.upper), *_read_strata(strata, strata_field, crs_wkt))
    acc = _Accumulator(intervals, sample=_Sample(settings.max_sample, settings.seed))
    ref_kind, ref_notes = _accumulate_reference(grid, inputs, (reference, reference_field, crs_wkt), acc,
                                                unc.coverage, progress)
    notes += ref_notes
    metrics = acc.sums.metrics()
    if metrics["n"] == 0:
        raise ForestCarbonError(
            "No valid pair of prediction and reference: they do not overlap, or every overlapping value is "
            "no-data. Check that both cover the same area and that their CRSs are set correctly.")
    check_cancel(progress)
    sample = acc.sample.ordered()
    document = {
        "provenance": provenance("forestcarbon:validatepredictions", parameters or {
            "PREDICTION": str(prediction), "REFERENCE": str(reference), "STD": unc.std, "LOWER": unc.lower,
            "UPPER": unc.upper, "COVERAGE": unc.coverage, "REFERENCE_FIELD": reference_field, "STRATA": strata,
            "STRATA_FIELD": strata_field},
            inputs=[p for p in (prediction, reference, unc.std, unc.lower, unc.upper, strata) if p is not None]),
        "reference_kind": ref_kind,
        "units": "units of the prediction; bias = mean(prediction − reference)",
        "metrics": metrics,
        "intervals": [iv.result() for iv in intervals],
        "interval_source": ("std" if unc.std is not None else "bounds") if intervals else None,
        "coverage_parameter": unc.coverage,
        "calibration": _calibration(sample, unc, settings.n_bins),
        "strata": _strata_metrics(acc.strata, inputs.strata_labels),
    }
    vario, sub = _residual_semivariogram(sample, settings, notes)
    document["semivariogram"] = vario
    document["sample"] = {"n_pairs_total": metrics["n"], "n_sampled": int(len(sample.get("x", []))),
                          "max_sample": int(settings.max_sample), "variogram_points": int(len(sub.get("x", []))),
                          "seed": int(settings.seed)}
    document["notes"] = notes
    document["outputs"] = write_report(out_html, _build_report(document, sample), document,
                                       embed=settings.embed_figures)
    if progress is not None:
        progress.set_progress(100.0)
    return document


def _check_arguments(prediction, unc: Uncertainty, out_html) -> Path:
    """Refuse a bad coverage, half a pair of bounds, a report not named .html, or rasters GDAL cannot open."""
    if not 0 < float(unc.coverage) < 1:
        raise ForestCarbonError(f"coverage must lie between 0 and 1 (got {unc.coverage}).")
    if (unc.lower is None) != (unc.upper is None):
        given, missing = ("LOWER", "UPPER") if unc.lower is not None else ("UPPER", "LOWER")
        raise ForestCarbonError(f"{given} was given without {missing}: interval bounds need both LOWER and UPPER "
                                "(or give STD instead).")
    out_html = Path(out_html)
    if out_html.suffix.lower() not in (".html", ".htm"):
        raise ForestCarbonError(f"The report '{out_html}' must end in .html.")
    for name, path in (("PREDICTION", prediction), ("STD", unc.std), ("LOWER", unc.lower), ("UPPER", unc.upper)):
        if path is not None and not is_raster(str(path)):
            raise ForestCarbonError(f"{name} '{path}' cannot be opened as a raster.")
    return out_html


def _prediction_grid(prediction, unc: Uncertainty):
    """The prediction's grid and CRS (WKT); the uncertainty rasters must overlap it."""
    import rasterio

    with rasterio.open(prediction) as src:
        grid = Grid.of(src)
        crs_wkt = src.crs.to_wkt() if src.crs else None
    for name, other in (("STD", unc.std), ("LOWER", unc.lower), ("UPPER", unc.upper)):
        if other is not None:
            with rasterio.open(other) as src:
                if not overlaps(grid, src):
                    raise ForestCarbonError(
                        f"{name} ('{Path(str(other)).name}') does not overlap PREDICTION "
                        f"('{Path(str(prediction)).name}'): give the uncertainty rasters predictraster wrote with it.")
    return grid, crs_wkt


def _intervals(unc: Uncertainty, levels) -> tuple[list, list]:
    """The interval counters to fill (from σ at every level, from the bounds at every level) and notes."""
    coverage = float(unc.coverage)
    every = sorted(set(float(lv) for lv in levels) | {coverage})
    intervals, notes = [], []
    if unc.std is not None:
        intervals += [_Interval("std", lv) for lv in every]
    if unc.lower is not None:
        intervals += [_Interval("bounds", lv, rescaled=not math.isclose(lv, coverage)) for lv in every]
        notes.append(f"LOWER/UPPER are taken as a {coverage:g} central interval; coverage at other levels "
                     "rescales their half-width by z(level)/z(COVERAGE) around the midpoint (a symmetric Gaussian "
                     "assumption), and σ = half-width / z(COVERAGE) for the calibration curve.")
    if not intervals:
        notes.append("Neither STD nor LOWER/UPPER was given: interval coverage and the calibration curve are "
                     "skipped.")
    return intervals, notes


def _read_strata(strata, strata_field, crs_wkt) -> tuple:
    """(class raster, [(polygon, code)], {code: label}) of ``strata``; (None, None, {}) without strata."""
    if strata is None:
        return None, None, {}
    if "|" not in str(strata) and is_raster(str(strata)):
        return str(strata), None, {}
    _, slayer = open_vector(strata, "STRATA")
    if not strata_field:
        raise ForestCarbonError("STRATA is a polygon layer: set STRATA_FIELD to the field naming each stratum.")
    defn = slayer.GetLayerDefn()
    if defn.GetFieldIndex(strata_field) < 0:
        names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
        raise ForestCarbonError(f"STRATA has no field '{strata_field}'. Fields: {', '.join(names) or 'none'}.")
    feats, _ = features(slayer, strata_field, crs_wkt)
    codes, polygons = {}, []
    for geom, value in feats:
        if geometry_kind(geom) != "polygon":
            raise ForestCarbonError("STRATA must be a class raster or a polygon layer.")
        polygons.append((geom, codes.setdefault(str(value), float(len(codes) + 1))))
    return None, polygons, {code: label for label, code in codes.items()}


def _accumulate_reference(grid, inputs, reference_spec, acc, coverage, progress) -> tuple[str, list]:
    """Feed every valid (prediction, reference) pair to ``acc``; returns the reference's kind and notes.
    ``reference_spec``: (source, numeric field, CRS WKT the vector is read in)."""
    reference, reference_field, crs_wkt = reference_spec
    if "|" not in str(reference) and is_raster(str(reference)):
        return "raster", _stream_raster_reference(grid, inputs, str(reference), acc, coverage, progress)
    _, layer = open_vector(reference, "REFERENCE")
    field_name = numeric_field(layer, reference_field, "REFERENCE", "REFERENCE_FIELD")
    feats, skipped = features(layer, field_name, crs_wkt)
    notes = []
    if layer.GetSpatialRef() is None:
        notes.append("REFERENCE has no CRS: its coordinates were taken to be in the prediction's CRS.")
    if skipped:
        notes.append(f"{skipped} reference feature(s) without a geometry or a value were left out.")
    if not feats:
        raise ForestCarbonError(
            f"REFERENCE has no feature with both a geometry and a value of '{field_name}' ({skipped} feature(s) "
            "without one): give a layer of plots whose reference field is filled in.")
    kinds = {geometry_kind(g) for g, _ in feats}
    if not kinds <= {"point", "polygon"} or len(kinds) > 1:
        raise ForestCarbonError(f"REFERENCE must hold points or polygons, one kind only (found: "
                                f"{', '.join(sorted(kinds)) or 'no features'}).")
    kind = kinds.pop() if kinds else "point"
    stream = _points_reference if kind == "point" else _polygons_reference
    return kind, notes + stream(grid, inputs, feats, acc, coverage, progress)


def _calibration(sample: dict, unc: Uncertainty, n_bins: int) -> dict | None:
    """Observed RMSE against predicted σ on the sample (σ from STD, or half-width / z(COVERAGE))."""
    if "sigma" not in sample:
        return None
    cal = calibration_bins(sample["sigma"], sample["pred"] - sample["ref"], n_bins=n_bins)
    cal["sigma_source"] = "std" if unc.std is not None else "bounds (half-width / z(COVERAGE))"
    return cal


def _strata_metrics(strata: dict, labels: dict) -> list:
    """The metrics of each stratum, in code order, named by the polygon layer's labels or by code."""
    return [dict(stratum=labels.get(code, _code_label(code)), **strata[code].metrics()) for code in sorted(strata)]


def _residual_semivariogram(sample: dict, settings: ValidationSettings, notes: list) -> tuple[dict, dict]:
    """The residuals' semivariogram and exponential fit on the first ``variogram_points`` of the sample
    (a random subset: the sample is in random-key order); a note when it shows no spatial correlation."""
    sub = {k: v[:settings.variogram_points] for k, v in sample.items()}
    vario = semivariogram(sub["x"], sub["y"], sub["pred"] - sub["ref"], n_lags=settings.n_lags)
    vario["fit"] = fit = fit_exponential(vario["lag"], vario["gamma"], vario["pairs"], vario["max_distance"])
    if fit["converged"] and fit["nugget_ratio"] is not None and vario["lag"]:
        if fit["practical_range"] < vario["lag"][0] or fit["nugget_ratio"] > 0.9:
            notes.append("The residuals show no spatial correlation at the sampled distances (the fitted range is "
                         "below the first lag or the nugget is over 90% of the sill).")
    return vario, sub


def _code_label(code: float):
    return int(code) if float(code).is_integer() else code


# ----------------------------------------------------------------------------- reference kinds

def _read_extras(readers, inputs: _Inputs, window, transform, shape):
    """std, lower, upper, stratum arrays (float64, NaN where invalid) on ``window`` of the prediction grid."""
    out = {}
    for key in ("std", "lower", "upper"):
        path = getattr(inputs, key)
        out[key] = None if path is None else _filled(readers.read(path, window))
    if inputs.strata_raster is not None:
        out["stratum"] = _filled(readers.read(inputs.strata_raster, window))
    elif inputs.strata_polygons is not None:
        out["stratum"] = _rasterize_strata(inputs.strata_polygons, transform, shape)
    else:
        out["stratum"] = None
    return out


def _filled(masked) -> np.ndarray:
    arr = np.ma.asarray(masked).astype(np.float64)
    return np.ma.filled(arr, np.nan)


def _rasterize_strata(polygons, transform, shape):
    import json as _json

    from rasterio.features import rasterize

    shapes = [(_json.loads(g.ExportToJson()), code) for g, code in polygons]
    if not shapes:
        return np.full(shape, np.nan)
    burned = rasterize(shapes, out_shape=shape, transform=transform, fill=0.0, dtype="float64")
    burned[burned == 0] = np.nan
    return burned


def _valid(pred, ref, extras):
    ok = np.isfinite(pred) & np.isfinite(ref)
    if extras["std"] is not None:
        ok &= np.isfinite(extras["std"]) & (extras["std"] >= 0)
    if extras["lower"] is not None:
        ok &= np.isfinite(extras["lower"]) & np.isfinite(extras["upper"])
    return ok


def _add(acc, x, y, pred, ref, extras, ok, coverage):
    pick = (lambda a: None if a is None else a[ok])
    acc.add(x[ok], y[ok], pred[ok], ref[ok], std=pick(extras["std"]), lower=pick(extras["lower"]),
            upper=pick(extras["upper"]), stratum=pick(extras["stratum"]), coverage=coverage)


def _stream_raster_reference(grid, inputs, reference, acc, coverage, progress) -> list:
    import rasterio
    from rasterio.enums import Resampling

    notes = []
    with rasterio.open(reference) as src:
        ref_grid = Grid.of(src)
        same_crs = src.crs is None or grid.crs is None or src.crs == grid.crs
    resampling = Resampling.nearest
    if not same_grid(ref_grid, grid):
        if same_crs and min(ref_grid.res_xy) > max(grid.res_xy) * (1 + 1e-9):
            notes.append("The reference raster is coarser than the prediction: each prediction pixel was compared "
                         "with the reference cell it lies in (nearest); n counts prediction pixels, which repeat "
                         "reference values.")
        else:
            resampling = Resampling.average
            notes.append("The reference raster is on another grid: it was averaged (area-weighted) onto the "
                         "prediction's grid.")
    with _readers(grid) as readers:
        for window in _blocks(grid, progress):
            pred = _filled(readers.read(inputs.prediction, window))
            ref = _filled(readers.read(reference, window, resampling=resampling))
            transform = grid.window_transform(window)
            extras = _read_extras(readers, inputs, window, transform, pred.shape)
            ok = _valid(pred, ref, extras)
            if ok.any():
                rows, cols = np.nonzero(ok)
                x = np.zeros(pred.shape)
                y = np.zeros(pred.shape)
                x[rows, cols] = transform.c + (cols + 0.5) * transform.a
                y[rows, cols] = transform.f + (rows + 0.5) * transform.e
                _add(acc, x, y, pred, ref, extras, ok, coverage)
    return notes


@contextlib.contextmanager
def _readers(grid):
    """Readers of every input onto the prediction grid, closed however the streaming ends."""
    readers = Readers(grid)
    try:
        yield readers
    finally:
        readers.close()


def _blocks(grid, progress):
    """The prediction grid's blocks in order, with cancel checks; progress runs to 90 % over them."""
    windows = list(grid.windows(BLOCK))
    for i, window in enumerate(windows):
        check_cancel(progress)
        yield window
        if progress is not None:
            progress.set_progress(90.0 * (i + 1) / len(windows))


def _points_reference(grid, inputs, feats, acc, coverage, progress) -> list:
    """Each point takes the prediction pixel it falls in (the other rasters: the same pixel of the
    prediction grid)."""
    xs, ys, vals = [], [], []
    for geom, value in feats:
        point = geom if geom.GetGeometryCount() == 0 else geom.GetGeometryRef(0)
        xs.append(point.GetX())
        ys.append(point.GetY())
        vals.append(float(value))
    xs, ys, vals = np.array(xs), np.array(ys), np.array(vals)
    inv = ~grid.transform
    col, row = inv * (xs, ys) if xs.size else (np.array([]), np.array([]))
    col, row = np.floor(np.asarray(col)).astype(np.int64), np.floor(np.asarray(row)).astype(np.int64)
    inside = (col >= 0) & (col < grid.width) & (row >= 0) & (row < grid.height)
    notes = []
    if (~inside).any():
        notes.append(f"{int((~inside).sum())} reference point(s) outside the prediction raster were left out.")
    with _readers(grid) as readers:
        for window in _blocks(grid, progress):
            r0, c0 = int(window.row_off), int(window.col_off)
            sel = inside & (row >= r0) & (row < r0 + window.height) & (col >= c0) & (col < c0 + window.width)
            if not sel.any():
                continue
            pred_block = _filled(readers.read(inputs.prediction, window))
            transform = grid.window_transform(window)
            extras_block = _read_extras(readers, inputs, window, transform, pred_block.shape)
            rr, cc = row[sel] - r0, col[sel] - c0
            pred = pred_block[rr, cc]
            extras = {k: None if v is None else v[rr, cc] for k, v in extras_block.items()}
            ref = vals[sel]
            _add(acc, xs[sel], ys[sel], pred, ref, extras, _valid(pred, ref, extras), coverage)
    return notes


def _polygons_reference(grid, inputs, feats, acc, coverage, progress) -> list:
    """Each polygon: area-weighted mean of the valid prediction pixels it covers (weights = covered share
    of each pixel). σ and the bounds are averaged the same way (errors taken as fully correlated inside
    a polygon, the conservative choice); the stratum is the one with most weight."""
    rows = {k: [] for k in ("x", "y", "pred", "ref", "std", "lower", "upper", "stratum")}
    outside = 0
    with _readers(grid) as readers:
        for i, (geom, value) in enumerate(feats):
            check_cancel(progress)
            means = _polygon_means(readers, grid, inputs, geom)
            if means is None:
                outside += 1
                continue
            centroid = geom.Centroid()
            for key, v in (("x", centroid.GetX()), ("y", centroid.GetY()), ("ref", float(value)), *means.items()):
                rows[key].append(v)
            if progress is not None:
                progress.set_progress(90.0 * (i + 1) / max(1, len(feats)))
    notes = [f"{outside} reference polygon(s) without a valid prediction pixel were left out."] if outside else []
    notes.append("Polygon references are compared with the area-weighted mean of the prediction over each polygon "
                 "(weights = share of each pixel inside it); σ and bounds are averaged the same way.")
    if rows["pred"]:
        arr = {k: (np.array(v, dtype=np.float64) if v else None) for k, v in rows.items()}
        if inputs.std is None:
            arr["std"] = None
        if inputs.lower is None:
            arr["lower"] = arr["upper"] = None
        ok = np.ones(arr["pred"].size, dtype=bool)
        _add(acc, arr["x"], arr["y"], arr["pred"], arr["ref"],
             {"std": arr["std"], "lower": arr["lower"], "upper": arr["upper"], "stratum": arr["stratum"]}, ok,
             coverage)
    return notes


def _polygon_means(readers, grid, inputs, geom) -> dict | None:
    """The area-weighted means of the prediction, σ and bounds over a polygon and its main stratum (the one
    with most weight; omitted without strata); None when it covers no valid prediction pixel."""
    from rasterio.windows import Window

    covered = polygon_coverage(to_shapely(geom), grid)
    if covered is None:
        return None
    r0, c0, w = covered
    window = Window(c0, r0, w.shape[1], w.shape[0])
    pred = _filled(readers.read(inputs.prediction, window))
    extras = _read_extras(readers, inputs, window, grid.window_transform(window), pred.shape)
    ok = (w > 0) & _valid(pred, np.zeros_like(pred), extras)
    if not ok.any() or w[ok].sum() <= 0:
        return None
    wk = w[ok]

    def mean(a):
        return None if a is None else float(np.sum(a[ok] * wk) / wk.sum())

    means = {"pred": mean(pred), **{key: mean(extras[key]) for key in ("std", "lower", "upper")}}
    stratum = extras["stratum"]
    if stratum is not None:
        s = stratum[ok]
        good = np.isfinite(s)
        means["stratum"] = np.nan
        if good.any():
            codes, inverse = np.unique(s[good], return_inverse=True)
            means["stratum"] = float(codes[np.argmax(np.bincount(inverse, weights=wk[good]))])
    return means


# ----------------------------------------------------------------------------- the report

def _build_report(doc: dict, sample: dict):
    m = doc["metrics"]
    rep = Report("Validation of predictions")
    rep.paragraph(f"Prediction: {doc['provenance']['inputs'][0]}. Reference ({doc['reference_kind']}): "
                  f"{doc['provenance']['inputs'][1]}.")
    rep.heading("Accuracy")
    rep.table(["n", "RMSE", "MAE", "bias (pred − ref)", "R²", "relative RMSE (%)", "mean reference",
               "mean prediction"],
              [[m["n"], m["rmse"], m["mae"], m["bias"], m["r2"], m["relative_rmse_pct"], m["mean_reference"],
                m["mean_prediction"]]],
              caption="Over every valid pair (exact sums). R² = 1 − SSres/SStot.")
    if doc["intervals"]:
        rep.heading("Interval coverage")
        rep.table(["source", "nominal level", "observed coverage", "mean width", "n", "rescaled"],
                  [[iv["source"], iv["level"], iv["coverage"], iv["mean_width"], iv["n"], iv["rescaled"]]
                   for iv in doc["intervals"]],
                  caption="Share of references inside the central interval (PICP) and its mean width (MPIW). "
                          "From STD: prediction ± z·σ (Gaussian).")
        rep.figure("coverage", lambda fig: _plot_coverage(fig, doc["intervals"]),
                   "Observed against nominal coverage; the diagonal is perfect calibration.")
    cal = doc.get("calibration")
    if cal and cal["bins"]:
        rep.heading("Calibration of σ")
        rep.table(["σ from", "σ to", "n", "mean σ", "RMS σ", "RMSE", "mean residual"],
                  [[b["std_from"], b["std_to"], b["n"], b["mean_std"], b["rms_std"], b["rmse"], b["mean_residual"]]
                   for b in cal["bins"]],
                  caption=f"Equal-width bins of predicted σ ({cal['sigma_source']}); ENCE = "
                          f"{_num(cal['ence'])}, UCE = {_num(cal['uce'])}. Computed on the random sample.")
        rep.figure("calibration", lambda fig: _plot_calibration(fig, cal["bins"]),
                   "Observed RMSE against mean predicted σ per bin (Lang et al. 2023), with the 1:1 line.")
    rep.heading("Residuals")
    rep.figure("scatter", lambda fig: _plot_scatter(fig, sample), "Prediction against reference (1:1 line).")
    rep.figure("residuals", lambda fig: _plot_residuals(fig, sample),
               "Residual (prediction − reference) against prediction.")
    if doc["strata"]:
        rep.heading("Per stratum")
        rep.table(["stratum", "n", "RMSE", "MAE", "bias", "R²", "relative RMSE (%)", "mean reference"],
                  [[s["stratum"], s["n"], s["rmse"], s["mae"], s["bias"], s["r2"], s["relative_rmse_pct"],
                    s["mean_reference"]] for s in doc["strata"]])
    vario = doc["semivariogram"]
    rep.heading("Residual semivariogram")
    fit = vario["fit"]
    rep.paragraph(f"Empirical semivariogram of the residuals of {vario['n_points']} randomly sampled "
                  f"{'pixels' if doc['reference_kind'] == 'raster' else 'references'}, fitted with an exponential "
                  f"model γ(h) = nugget + psill·(1 − exp(−3h/range)): nugget {_num(fit['nugget'])}, partial sill "
                  f"{_num(fit['partial_sill'])}, practical range {_num(fit['practical_range'])} (CRS units).")
    if vario["lag"]:
        rep.figure("semivariogram", lambda fig: _plot_variogram(fig, vario), "Residual semivariogram.")
    if doc["notes"]:
        rep.heading("Notes")
        for note in doc["notes"]:
            rep.paragraph(note)
    return rep


def _num(v):
    return "–" if v is None else f"{v:.4g}"


def _plot_coverage(fig, intervals):
    ax = fig.add_subplot(111)
    for source, marker in (("std", "o"), ("bounds", "s")):
        pts = [(iv["level"], iv["coverage"]) for iv in intervals if iv["source"] == source and iv["coverage"] is not None]
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=f"from {source}")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="1:1")
    ax.set(xlabel="nominal coverage", ylabel="observed coverage", xlim=(0, 1), ylim=(0, 1))
    ax.legend()


def _plot_calibration(fig, bins):
    ax = fig.add_subplot(111)
    s = [b["mean_std"] for b in bins]
    e = [b["rmse"] for b in bins]
    ax.plot(s, e, "o-", label="observed RMSE")
    top = max(max(s), max(e)) * 1.05
    ax.plot([0, top], [0, top], "k--", lw=1, label="1:1")
    ax.set(xlabel="mean predicted σ", ylabel="RMSE", xlim=(0, top), ylim=(0, top))
    ax.legend()


def _hexbin_or_scatter(ax, x, y):
    if x.size > 2000:
        ax.hexbin(x, y, gridsize=60, bins="log", mincnt=1, cmap="viridis")
    else:
        ax.scatter(x, y, s=6, alpha=0.6)


def _plot_scatter(fig, sample):
    ax = fig.add_subplot(111)
    x, y = sample["ref"], sample["pred"]
    _hexbin_or_scatter(ax, x, y)
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlabel="reference", ylabel="prediction")


def _plot_residuals(fig, sample):
    ax = fig.add_subplot(111)
    _hexbin_or_scatter(ax, sample["pred"], sample["pred"] - sample["ref"])
    ax.axhline(0, color="k", lw=1, ls="--")
    ax.set(xlabel="prediction", ylabel="residual (prediction − reference)")


def _plot_variogram(fig, vario):
    ax = fig.add_subplot(111)
    ax.plot(vario["lag"], vario["gamma"], "o", label="empirical")
    fit = vario["fit"]
    if fit["converged"]:
        h = np.linspace(0, vario["max_distance"], 200)
        ax.plot(h, exponential_model(h, fit["nugget"], fit["partial_sill"], fit["practical_range"]), "-",
                label="exponential fit")
    ax.set(xlabel="distance", ylabel="semivariance", xlim=(0, None), ylim=(0, None))
    ax.legend()
