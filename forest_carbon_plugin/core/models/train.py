"""Training forest-structure models: the recipe of ``forestcarbon:trainmodel`` as plain functions (no QGIS).

:func:`train_model` samples the training data (:mod:`.sampling`: pixels of feature rasters against a raster,
point or polygon target, or one layer of field plots), cross-validates the learner (:mod:`.fit`) on spatial
blocks or groups of plots and on random folds (:mod:`.folds`), calibrates its intervals by conformalized
quantile regression on the spatial held-out predictions (:mod:`.conformal`), fits it on all samples, exports
one ONNX graph with its model card (:mod:`.export`) and writes an HTML report (+ JSON, PNGs) through
:mod:`..report`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..dependencies import require
from ..errors import ForestCarbonError
from ..outputs import provenance, write_json
from ..progress import NullProgress, Progress, check_cancel
from ..report import Report, write_report
from ..stats import z_score
from .export import export_onnx, model_card
from .fit import PLOT_GBM, FittedModel, Learner, QuantileGBM, predict_intervals
from .folds import (LOO_BELOW, auto_block_size, auto_group_distance, cross_validate, group_folds, plot_groups,
                    random_folds, spatial_folds)
from .sampling import TrainingData, is_vector_features, sample_plot_data, sample_training_data

MIN_PER_FOLD = 10  # samples per fold at least
MIN_PLOTS = 10

__all__ = ["TrainSettings", "train_model"]


@dataclass(frozen=True)
class TrainSettings:
    """How a model is trained and validated.

    Parameters
    ----------
    learner : QuantileGBM or RandomForest, optional
        None: ``QuantileGBM()`` on rasters, :data:`.fit.PLOT_GBM` (shallow, slow-learning trees) on plots.
    block_size_m : float, optional
        Side of the spatial CV blocks, or for plots the distance under which plots form one group; None:
        automatic (:func:`.folds.auto_block_size`, :func:`.folds.auto_group_distance`).
    folds : int
        Number of folds (at least 2).
    coverage : float
        Nominal coverage of the intervals (0-1).
    max_samples : int
        Pixels sampled at most (stratified by target deciles); not applied to plots.
    seed : int
        Seed of the sampling, the folds and the learners.
    unit : str, optional
        Unit of the target written in the card (None: the target raster's unit).
    """

    learner: Learner | None = None
    block_size_m: float | None = None
    folds: int = 5
    coverage: float = 0.9
    max_samples: int = 50_000
    seed: int = 0
    unit: str | None = None


@dataclass
class _Design:
    """The samples and how they are split for validation."""

    data: TrainingData
    spatial: np.ndarray  # fold of each sample, spatial blocks or groups
    random: np.ndarray  # fold of each sample, random
    block: float
    res: float | None  # feature pixel size (m); None for plots
    validation: dict  # plots: groups and schemes


def train_model(features, target, out_model, out_report, target_field: str | None = None, feature_fields=None,
                settings: TrainSettings | None = None, progress: Progress | None = None,
                parameters: dict | None = None) -> dict:
    """Sample, cross-validate, calibrate, fit on all samples, export the ONNX model and write the report.

    Parameters
    ----------
    features : str, os.PathLike or sequence of them
        Feature rasters (bands stacked in order, warped onto the first raster's grid), or one vector layer of
        plots whose numeric fields are the features.
    target : str or os.PathLike or None
        A raster, or a point/polygon layer with a numeric ``target_field``; None (or the plots layer) for plots.
    out_model : str or os.PathLike
        The ONNX file (``.onnx``); a ``<model>.json`` beside it is replaced by the card.
    out_report : str or os.PathLike
        The HTML report (``.html``); its JSON and PNG figures are written beside it.
    target_field : str, optional
        The target's numeric field (vector targets, plots).
    feature_fields : str or sequence of str, optional
        The plots' feature fields (default: those named like ``canopymetrics`` bands).
    settings : TrainSettings, optional
    progress : Progress, optional
    parameters : dict, optional
        The parameters recorded in the provenance (default: the settings).

    Returns
    -------
    dict
        The report's document (every number: ``cv``, ``conformal_factor``, ``importances``, ``model_card``…),
        ``outputs`` (model, html, json, figures) and ``fitted_model`` (in memory only).

    References
    ----------
    Roberts, D. R. et al. (2017), Ecography 40:913–929; Ploton, P. et al. (2020), Nature Communications 11:4540
    (spatial cross-validation); Romano, Y., Patterson, E. & Candès, E. (2019), NeurIPS 32 (conformalized quantile
    regression).
    """
    progress = progress or NullProgress()
    settings = settings or TrainSettings()
    out_model, out_report = _check_arguments(settings, out_model, out_report)
    require("sklearn", "skl2onnx", "onnx")
    plots = is_vector_features(features)
    if plots:
        design = _plot_design(features, target, target_field, feature_fields, settings, progress)
    else:
        design = _pixel_design(features, target, target_field, settings, progress)
    learner = settings.learner or (PLOT_GBM if plots else QuantileGBM())
    cv_spatial, cv_random, final = _fit_and_validate(learner, design, settings, plots, progress)
    progress.set_progress(90)
    data, factor = design.data, cv_spatial["factor"]
    cv_doc = {"spatial": cv_spatial["metrics"], "random": cv_random["metrics"]}
    training = _training_record(design, learner, settings, cv_doc)
    unit = settings.unit if settings.unit is not None else data.unit
    card = model_card(final, data.bands, data.target_name, unit, design.res, factor, training, out_model.name)
    record = provenance("forestcarbon:trainmodel", parameters or {
        "model_type": learner.name, "learner": asdict(learner), "block_size_m": design.block,
        "folds": settings.folds, "coverage": settings.coverage, "max_samples": settings.max_samples,
        "seed": settings.seed, "feature_fields": feature_fields},
        inputs=[str(p) for p in ([features] if isinstance(features, (str, Path)) else features)]
        + ([str(target)] if target is not None and str(target).strip() and not plots else []))
    doc = {"provenance": record, "model": str(out_model), "model_type": learner.name, "target": data.target_name,
           "unit": unit, "bands": data.bands, "n_samples": int(data.y.size), "n_candidates": int(data.n_candidates),
           "block_size_m": design.block, "folds": settings.folds, "coverage": settings.coverage,
           "conformal_factor": factor, "cv": cv_doc, "importances": _importances(final, data, settings.seed),
           "notes": data.notes, "model_card": card, "validation": design.validation}
    check_cancel(progress)
    export_onnx(final, out_model, card, len(data.bands))
    _replace_sidecar(out_model, card, doc)
    doc["outputs"] = write_report(out_report, _build_report(doc, data, cv_spatial, cv_random), doc)
    doc["outputs"]["model"] = str(out_model)
    doc["fitted_model"] = final  # in memory only (not in the JSON)
    progress.set_progress(100)
    progress.info(f"Spatial CV RMSE {cv_spatial['metrics']['rmse']:.4g}, random CV RMSE "
                  f"{cv_random['metrics']['rmse']:.4g}; coverage {cv_spatial['metrics']['coverage_uncalibrated']:.3f} "
                  f"uncalibrated, conformal factor {factor:.4g}")
    return doc


def _check_arguments(settings: TrainSettings, out_model, out_report) -> tuple[Path, Path]:
    """Refuse a bad coverage or fold count and output names that would clash, before any work."""
    if not 0 < settings.coverage < 1:
        raise ForestCarbonError(f"coverage must lie between 0 and 1 (got {settings.coverage}).")
    if settings.folds < 2:
        raise ForestCarbonError(f"folds must be at least 2 (got {settings.folds}).")
    out_model, out_report = Path(out_model), Path(out_report)
    if out_model.suffix.lower() != ".onnx":
        raise ForestCarbonError(f"The model '{out_model.name}' (out_model) must end in .onnx.")
    if out_report.suffix.lower() not in (".html", ".htm"):
        raise ForestCarbonError(f"The report '{out_report.name}' (out_report) must end in .html.")
    if out_report.with_suffix(".json").resolve() == out_model.with_suffix(".json").resolve():
        raise ForestCarbonError(f"The report's JSON would be '{out_model.with_suffix('.json').name}', which "
                                "predictraster would read as the model's card: give the report another name.")
    return out_model, out_report


def _plot_design(features, target, target_field, feature_fields, settings: TrainSettings, progress) -> _Design:
    """Plots and their folds: groups of nearby plots held out together, leave-one-out or K-fold at random."""
    first = features if isinstance(features, (str, Path)) else list(features)[0]
    if target is not None and str(target).strip() and str(target) != str(first):
        raise ForestCarbonError("FEATURES is a vector layer (plots): the target is its TARGET_FIELD; leave "
                                "TARGET empty (or give the same layer).")
    data = sample_plot_data(features, target_field, feature_fields, progress)
    for note in data.notes:
        progress.info(note)
    _check_plots(data.y)
    if settings.block_size_m:
        block = float(settings.block_size_m)
        progress.info(f"Plots within {block:g} m of each other are one group in cross-validation.")
    else:
        block, note = auto_group_distance(data.x, data.yc)
        progress.info(note)
        data.notes.append(note)
    groups = plot_groups(data.x, data.yc, block)
    spatial, n_spatial = group_folds(groups, settings.folds, settings.seed)
    n_groups = int(len(np.unique(groups)))
    if data.y.size < LOO_BELOW:
        rand, n_random = np.random.default_rng(settings.seed).permutation(data.y.size), int(data.y.size)
    else:
        rand, n_random = random_folds(data.y.size, settings.folds, settings.seed), settings.folds
    scheme = "leave-one-group-out" if n_spatial == n_groups else f"{n_spatial}-fold over groups"
    validation = {"sample_unit": "plot", "n_groups": n_groups, "group_distance_m": block,
                  "spatial_scheme": scheme, "spatial_folds": int(n_spatial),
                  "random_scheme": "leave-one-out" if n_random == data.y.size else f"{n_random}-fold",
                  "skipped": data.skipped}
    progress.info(f"{data.y.size} plots, {len(data.bands)} features ({', '.join(data.bands)}); {n_groups} "
                  f"spatial group(s), {scheme} cross-validation")
    return _Design(data, spatial, rand, block, None, validation)


def _pixel_design(features, target, target_field, settings: TrainSettings, progress) -> _Design:
    """Sampled pixels and their folds: spatial blocks dealt to the folds, and random K-fold."""
    data = sample_training_data(features, target, target_field, settings.max_samples, settings.seed, progress)
    for note in data.notes:
        progress.info(note)
    folds = settings.folds
    _check_target(data.y, folds)
    res = float(data.grid.res)
    if settings.block_size_m:
        block = float(settings.block_size_m)
    else:
        block, note = auto_block_size(data.x, data.yc, res, folds)
        progress.info(note)
    spatial = spatial_folds(data.x, data.yc, block, folds, settings.seed)
    for k in range(folds):
        if (spatial == k).sum() < 1:
            raise ForestCarbonError(f"Spatial fold {k + 1} holds no sample: use a smaller BLOCK_SIZE or fewer "
                                    "FOLDS.")
    progress.info(f"{data.y.size:,} samples, {len(data.bands)} features ({', '.join(data.bands)}); "
                  f"{folds}-fold CV, {block:g} m blocks")
    return _Design(data, spatial, random_folds(data.y.size, folds, settings.seed), block, res, {})


def _fit_and_validate(learner: Learner, design: _Design, settings: TrainSettings, plots: bool, progress):
    """Spatial and random cross-validation, then the final model on every sample."""
    limits = contextlib.nullcontext()
    if plots:  # a few dozen rows: one thread is fastest, and OpenMP spin-waits crawl on a busy machine
        try:
            from threadpoolctl import threadpool_limits

            limits = threadpool_limits(limits=1)
        except ImportError:  # pragma: no cover - sklearn depends on threadpoolctl
            pass
    X, y, coverage, seed = design.data.X, design.data.y, settings.coverage, settings.seed
    with limits:
        cv_spatial = cross_validate(learner, X, y, design.spatial, coverage, seed, progress, (20, 55))
        cv_random = cross_validate(learner, X, y, design.random, coverage, seed, progress, (55, 80))
        check_cancel(progress)
        final = learner.fit(X, y, coverage, seed)
    return cv_spatial, cv_random, final


def _training_record(design: _Design, learner: Learner, settings: TrainSettings, cv_doc: dict) -> dict:
    """The card's ``forest_carbon:training``: extent, CRS, date, samples, learner, folds and CV results."""
    from rasterio.crs import CRS

    data = design.data
    crs = CRS.from_user_input(data.grid.crs if data.grid is not None else data.crs) \
        if (data.grid is not None or data.crs) else None
    epsg = crs.to_epsg() if crs is not None else None
    half = (design.res or 0.0) / 2
    extent = [float(data.x.min() - half), float(data.yc.min() - half), float(data.x.max() + half),
              float(data.yc.max() + half)]
    training = {
        "extent": extent, "crs": (f"EPSG:{epsg}" if epsg else crs.to_wkt()) if crs is not None else None,
        "date": _dt.date.today().isoformat(), "n_samples": int(data.y.size), "n_candidates": int(data.n_candidates),
        "target_kind": data.kind, "model_type": learner.name, "folds": settings.folds,
        "block_size_m": design.block, "seed": settings.seed, "coverage": settings.coverage,
        "uncalibrated_coverage_spatial_cv": cv_doc["spatial"]["coverage_uncalibrated"],
        "cv": cv_doc, "params": asdict(learner), **design.validation,
    }
    if data.kind == "plot":
        training["extent_note"] = "plot locations (centres or centroids) in the plots' CRS"
        if data.plot_area_m2:
            training["plot_area_m2"] = data.plot_area_m2
    return training


def _replace_sidecar(out_model: Path, card: dict, doc: dict) -> None:
    """predictraster reads a ``<model>.json`` before the metadata: keep one beside the model in step."""
    sidecar = out_model.with_suffix(".json")
    if sidecar.exists():
        write_json(sidecar, card)
        doc["notes"] = doc["notes"] + [f"'{sidecar.name}' beside the model was replaced by this model's card."]


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
