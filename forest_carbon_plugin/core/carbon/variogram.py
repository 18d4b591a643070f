"""The error-correlation range that ``carbonstock`` (and the uncertainty dock's polygon total) use.

One function, :func:`resolve_correlation_range`, decides the practical range of the exponential error
correlation ``ρ(d) = exp(−3d / range)`` from what the user gave:

1. an explicit range (metres; 0 = independent pixel errors, allowed but warned about);
2. otherwise a ``validatepredictions`` report (its HTML or the JSON beside it): the empirical semivariogram of
   the validation residuals it holds is refitted here with an exponential model by weighted least squares
   (Cressie 1985, weights N(h)/γ(h)²), after merging neighbouring distance classes until each holds at least
   :data:`MIN_PAIRS` pairs (Journel & Huijbregts 1978, *Mining Geostatistics*, p. 194: at least 30-50 pairs per
   class; classes with a handful of pairs otherwise dominate Cressie's weights through a tiny γ);
3. otherwise no range: the errors are taken as fully correlated inside each polygon (``math.inf``). For
   non-negative pixel contributions the variance of a total, Σᵢⱼ uᵢuⱼρᵢⱼ with 0 ≤ ρ ≤ 1, is largest when every
   ρ = 1, so this is the widest interval any exponential range can give: conservative, never overconfident.

Cressie N. (1985) Fitting variogram models by weighted least squares. Mathematical Geology 17(5):563-586.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..dependencies import require
from ..errors import ForestCarbonError
from ..models.accuracy import fit_exponential
from ..outputs import PROVENANCE_KEY
from ..vector import open_vector, parse_source, source_path

__all__ = ["MIN_PAIRS", "merge_lag_classes", "report_json", "range_from_report", "resolve_correlation_range",
           "record_error_model", "recorded_error_model", "HOW_TO_CHOOSE"]

MIN_PAIRS = 30  #: fewest point pairs per distance class before fitting (Journel & Huijbregts 1978)

HOW_TO_CHOOSE = (
    "To choose it: give VALIDATION_REPORT (the report validatepredictions wrote for this map: its residual "
    "semivariogram is fitted), or read the practical range off that report's semivariogram, or use a "
    "conservative distance such as the block size of the model's spatial cross-validation or several times the "
    "stand size. 0 assumes independent pixel errors, which makes the interval of a total far too narrow when "
    "the map's errors are spatially correlated (they usually are).")


def merge_lag_classes(lag, gamma, pairs, min_pairs: int = MIN_PAIRS):
    """Merge neighbouring distance classes until each holds enough pairs.

    Parameters
    ----------
    lag, gamma, pairs : array_like
        Mean distance (m), semivariance and number of point pairs of each class, in order of distance.
    min_pairs : int
        Fewest pairs per merged class (Journel & Huijbregts 1978: 30-50).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray, numpy.ndarray)
        Lag, γ (pair-weighted means) and pairs of the merged classes; a short last class joins the one before it.
    """
    lag, gamma, pairs = (np.asarray(a, dtype=np.float64) for a in (lag, gamma, pairs))
    out = []
    n = sl = sg = 0.0
    for h, g, k in zip(lag, gamma, pairs):
        n, sl, sg = n + k, sl + k * h, sg + k * g
        if n >= min_pairs:
            out.append([sl / n, sg / n, n])
            n = sl = sg = 0.0
    if n > 0:
        if out:
            m = out[-1][2]
            out[-1] = [(out[-1][0] * m + sl) / (m + n), (out[-1][1] * m + sg) / (m + n), m + n]
        else:
            out.append([sl / n, sg / n, n])
    arr = np.array(out, dtype=np.float64).reshape(-1, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def report_json(path, argument: str = "validation_report") -> Path:
    """The JSON of a ``validatepredictions`` report given by its .html or its .json.

    Parameters
    ----------
    path : str or os.PathLike
        The report's .html (its .json lies beside it) or the .json.
    argument : str
        Names the setting that gave the path (a core argument, or an adapter's parameter), so that the error
        tells the user what to change.

    Returns
    -------
    pathlib.Path
        The JSON file; a ForestCarbonError when there is none.
    """
    p = Path(str(path))
    if p.suffix.lower() in (".html", ".htm"):
        p = p.with_suffix(".json")
    if not p.is_file():
        raise ForestCarbonError(
            f"{argument}: '{path}' has no JSON beside it ({p.name}). Give the report validatepredictions "
            "wrote (its .html or the .json beside it).")
    return p


def range_from_report(path) -> dict:
    """Refit the residual semivariogram of a ``validatepredictions`` report.

    Parameters
    ----------
    path : str or os.PathLike
        The report's .html or the .json beside it.

    Returns
    -------
    dict
        The exponential fit (weighted least squares, Cressie 1985) with ``lag``, ``gamma``, ``pairs`` (merged
        classes), ``n_points``, ``n_pairs``, ``nugget``, ``sill``, ``practical_range`` (m; None when no fit) and
        ``converged``.
    """
    p = report_json(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ForestCarbonError(f"validation_report: '{p}' cannot be read as JSON ({exc}).") from exc
    vario = doc.get("semivariogram") if isinstance(doc, dict) else None
    if not vario or "lag" not in vario or "gamma" not in vario:
        raise ForestCarbonError(f"validation_report: '{p.name}' is not a validatepredictions report (it has no "
                                "residual semivariogram).")
    lag, gamma, pairs = merge_lag_classes(vario["lag"], vario["gamma"], vario.get("pairs") or [1] * len(vario["lag"]))
    result = {"report": str(p), "n_points": vario.get("n_points"), "n_pairs": int(pairs.sum()) if pairs.size else 0,
              "classes": int(lag.size), "lag": lag.tolist(), "gamma": gamma.tolist(), "pairs": pairs.astype(int).tolist(),
              "min_pairs": MIN_PAIRS, "max_distance": vario.get("max_distance")}
    fit = fit_exponential(lag, gamma, pairs, vario.get("max_distance")) if lag.size >= 3 else \
        {"converged": False, "practical_range": None}
    result.update({k: fit.get(k) for k in ("nugget", "partial_sill", "sill", "practical_range", "nugget_ratio",
                                           "converged")})
    return result


def _given_range(correlation_range_m, fit, warn, note) -> dict:
    r = float(correlation_range_m)
    if not (r >= 0) or math.isnan(r):
        raise ForestCarbonError("correlation_range_m must be 0 (independent pixels) or a positive distance in "
                                f"metres (got {correlation_range_m}); leave it None to fit it from "
                                "validation_report. " + HOW_TO_CHOOSE)
    if r == 0:
        warn("A correlation range of 0 assumes independent pixel errors: the interval of a total is then only as "
             "wide as pixel noise averaging out allows, far too narrow when the map's errors are spatially "
             "correlated. " + HOW_TO_CHOOSE)
    msg = f"Error correlation: practical range {r:g} m, as set (correlation_range_m)."
    if fit is not None and fit.get("practical_range"):
        msg += f" (The validation report's semivariogram would give {fit['practical_range']:.4g} m.)"
    note(msg)
    return {"range_m": r, "source": "parameter", "variogram": fit, "message": msg}


def _fitted_range(fit, warn, note) -> dict:
    if not (fit.get("converged") and fit.get("practical_range")):
        msg = (f"The validation report's semivariogram could not be fitted ({fit['n_pairs']} pairs in "
               f"{fit['classes']} classes of ≥ {MIN_PAIRS} pairs; at least 3 classes are needed): the pixel errors "
               "are taken as FULLY CORRELATED inside each polygon (the widest interval). " + HOW_TO_CHOOSE)
        warn(msg)
        return {"range_m": math.inf, "source": "conservative (report not fittable)", "variogram": fit, "message": msg}
    r = float(fit["practical_range"])
    first = fit["lag"][0]
    detail = (f"exponential semivariogram fitted by weighted least squares (Cressie 1985) to the residuals of "
              f"{fit['n_points']} validation points ({fit['n_pairs']} pairs in {fit['classes']} distance classes "
              f"of ≥ {MIN_PAIRS} pairs): nugget {fit['nugget']:.4g}, sill {fit['sill']:.4g}, practical range "
              f"{r:.4g} m")
    if r < first or (fit.get("nugget_ratio") or 0) > 0.9:
        # a semivariogram flat from its first class on says the plots see no correlation at their
        # spacing; it does not say there is none: a stand-scale error whose variance is a tenth of the
        # sill (a 16 % bias over a 63 ha project of the demo's seed 5) hides in the noise of a few dozen
        # plots, and it is what a project's total feels. Taking the shortest class distance as the range
        # missed that project; so the fully correlated (widest) interval is kept until plots show a range.
        msg = (f"Error correlation from the validation report: {detail}; the semivariogram is flat from its "
               f"first class ({first:.4g} m): the validation plots show no range, which does not rule out a "
               "stand-scale correlated error. The pixel errors are taken as FULLY CORRELATED inside each "
               "polygon (the widest interval). " + HOW_TO_CHOOSE)
        warn(msg)
        return {"range_m": math.inf, "source": "conservative (no range in the report's semivariogram)",
                "variogram": fit, "message": msg}
    msg = f"Error correlation from the validation report: {detail}."
    note(msg)
    return {"range_m": r, "source": "validation_report", "variogram": fit, "message": msg}


def resolve_correlation_range(correlation_range_m=None, validation_report=None, warn=None, note=None) -> dict:
    """The error-correlation range to simulate with, and why.

    Parameters
    ----------
    correlation_range_m : float or None
        A practical range set by the user (m; 0 = independent pixel errors, warned about).
    validation_report : str, os.PathLike or None
        A ``validatepredictions`` report whose residual semivariogram is refitted (:func:`range_from_report`)
        when no range is set.
    warn, note : callable or None
        Receive the messages for the run's log.

    Returns
    -------
    dict
        ``range_m`` (m; ``math.inf`` = fully correlated inside each polygon, the conservative choice when neither
        input gives a range), ``source``, ``variogram`` (the fit or None) and ``message``.
    """
    warn = warn or (lambda _m: None)
    note = note or (lambda _m: None)
    fit = range_from_report(validation_report) if validation_report else None
    if correlation_range_m is not None:
        return _given_range(correlation_range_m, fit, warn, note)
    if fit is not None:
        return _fitted_range(fit, warn, note)
    msg = ("No correlation range and no validation report (correlation_range_m, validation_report): the pixel errors "
           "are taken as FULLY CORRELATED inside each polygon, the conservative choice (the widest interval any "
           "correlation range gives; never overconfident). " + HOW_TO_CHOOSE)
    warn(msg)
    return {"range_m": math.inf, "source": "conservative (not set)", "variogram": None, "message": msg}


def _same_file(a, b) -> bool:
    if not a or not b:
        return False
    try:
        return source_path(a).resolve() == source_path(b).resolve()
    except OSError:
        return False


def _json_documents(folder: Path, limit: int = 200):
    """The JSON documents of ``folder`` (newest first; reports are small, and a folder is read at most once per
    choice of layer in the dock)."""
    try:
        paths = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[:limit]
    except OSError:
        return
    for path in paths:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            yield path, doc


#: the settings of a carbonstock run that the uncertainty dock repeats
ERROR_MODEL_SETTINGS = ("correlation_range_m", "correlation_source", "seed", "simulations", "root_shoot", "confidence")


def record_error_model(layer_source, document: dict) -> bool:
    """Write a ``carbonstock`` run's provenance and error model into its output layer's metadata.

    Parameters
    ----------
    layer_source : str or os.PathLike
        The output layer (``path`` or ``path|layername=name``); a GeoPackage keeps the record in its
        ``gpkg_metadata`` table (OGR layer metadata item :data:`core.outputs.PROVENANCE_KEY`).
    document : dict
        What :func:`.stock.carbon_stock` returned (its ``provenance`` and ``settings``).

    Returns
    -------
    bool
        Whether the layer could be opened for update and the record set (a format without layer metadata, such
        as a shapefile, drops it silently: the JSON beside the report remains).
    """
    gdal = require("osgeo.gdal")
    vec = parse_source(layer_source)
    try:
        ds = gdal.OpenEx(vec.path, gdal.OF_VECTOR | gdal.OF_UPDATE)
    except RuntimeError:
        return False
    layer = None if ds is None else (ds.GetLayerByName(vec.layer) if vec.layer else ds.GetLayer(0))
    if layer is None:
        return False
    settings = document.get("settings") or {}
    record = dict(document.get("provenance") or {"algorithm": document.get("algorithm")},
                  settings={k: settings.get(k) for k in ERROR_MODEL_SETTINGS})
    layer.SetMetadataItem(PROVENANCE_KEY, json.dumps(record, sort_keys=True, default=str))
    ds = None  # closing writes the metadata
    return True


def _layer_record(layer_source) -> dict | None:
    """The provenance record in a layer's metadata, or None (no record, not a vector layer, no GDAL)."""
    try:
        _ds, layer = open_vector(layer_source, "carbon output")
        text = layer.GetMetadataItem(PROVENANCE_KEY)
        record = json.loads(text) if text else None
    except (ForestCarbonError, RuntimeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _carbonstock_model(settings: dict, where: str) -> dict:
    r = settings.get("correlation_range_m")
    return {"range_m": math.inf if r is None else float(r),
            "source": f"the carbonstock run that wrote this layer ({settings.get('correlation_source')}{where})",
            "seed": settings.get("seed"), "simulations": settings.get("simulations"),
            "root_shoot": settings.get("root_shoot")}


def _recorded_run(carbon_output) -> dict | None:
    record = _layer_record(carbon_output)
    if record is not None and record.get("algorithm") == "carbonstock":
        return _carbonstock_model(record.get("settings") or {}, "; recorded in the layer's metadata")
    # outputs written before the layer carried its record: the run's JSON in the layer's folder
    for _path, doc in _json_documents(source_path(carbon_output).parent):
        params = doc.get("parameters") or {}
        if doc.get("algorithm") == "carbonstock" and _same_file(params.get("OUTPUT"), carbon_output):
            return _carbonstock_model(doc.get("settings") or {}, "")
    return None


def recorded_error_model(carbon_output=None, prediction=None) -> dict | None:
    """The error model the uncertainty dock starts from, so that its polygon total repeats carbonstock's.

    Parameters
    ----------
    carbon_output : str or None
        A ``carbonstock`` output layer: its metadata record (:func:`record_error_model`) is read first, then the
        JSON of the run that wrote it is looked for beside it.
    prediction : str or None
        The AGB raster: failing the above, a ``validatepredictions`` report of it found beside it is fitted.

    Returns
    -------
    dict or None
        ``{"range_m": float (math.inf = fully correlated), "source": text, "seed", "simulations",
        "root_shoot"}``, or None when nothing is recorded.
    """
    if carbon_output:
        model = _recorded_run(carbon_output)
        if model is not None:
            return model
    if prediction:
        for path, doc in _json_documents(Path(str(prediction)).parent):
            params = (doc.get("provenance") or {}).get("parameters") or {}
            if "semivariogram" in doc and _same_file(params.get("PREDICTION"), prediction):
                resolved = resolve_correlation_range(None, path)
                return {"range_m": resolved["range_m"], "source": f"the validation report {path.name}",
                        "seed": None, "simulations": None, "root_shoot": None}
    return None
