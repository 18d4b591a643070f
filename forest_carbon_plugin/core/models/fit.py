"""The learners of ``trainmodel``: quantile gradient boosting and a random forest with a variance forest.

* :class:`QuantileGBM` — three histogram gradient-boosting regressors with the pinball loss at
  (1 − coverage)/2, 0.5 and (1 + coverage)/2 (crossing is removed: lower ≤ median ≤ upper; Chernozhukov,
  Fernández-Val & Galichon 2010).
* :class:`RandomForest` — a random forest for the mean and a second forest fitted on the squared out-of-bag
  residuals of the first (a local estimate of the residual *variance*, non-negative by construction; in the
  spirit of Meinshausen 2006, "Quantile regression forests", JMLR 7:983–999, the forest's leaves describe
  the conditional distribution, here its second moment); its interval is mean ± z·σ.

Tree thresholds are rounded down to float32 after fitting, so that the float32 ONNX graph
(:mod:`.export`) takes the same branches as sklearn on float32 inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar, Union

import numpy as np

from ..dependencies import require
from ..stats import z_score
from .intervals import quantile_interval

__all__ = ["QuantileGBM", "RandomForest", "Learner", "FittedModel", "PLOT_GBM", "fit_quantile_gbm",
           "fit_forest_ensemble", "predict_intervals"]


@dataclass(frozen=True)
class QuantileGBM:
    """Quantile gradient boosting (sklearn's ``HistGradientBoostingRegressor``, ``loss="quantile"``).

    Parameters
    ----------
    n_estimators : int
        Boosting iterations of each of the three models.
    learning_rate : float
    max_leaf_nodes : int
        Leaves per tree.
    min_samples_leaf : int
        Samples per leaf at least (capped at a tenth of the samples).
    """

    n_estimators: int = 150
    learning_rate: float = 0.1
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 20
    name: ClassVar[str] = "quantile_gbm"

    def fit(self, X, y, coverage: float = 0.9, seed: int = 0) -> FittedModel:
        return fit_quantile_gbm(X, y, coverage, seed, **asdict(self))


@dataclass(frozen=True)
class RandomForest:
    """A random forest for the mean and a forest on its squared out-of-bag residuals for the variance.

    Parameters
    ----------
    n_estimators : int
        Trees of the mean forest.
    min_samples_leaf : int
        Samples per leaf of the mean forest (the variance forest: four times as many, at least 20).
    max_samples : float or None
        Share of the samples each tree is grown on (None: all, bootstrapped).
    variance_estimators : int or None
        Trees of the variance forest (None: half of ``n_estimators``, at least 10).
    """

    n_estimators: int = 100
    min_samples_leaf: int = 5
    max_samples: float | None = 0.5
    variance_estimators: int | None = None
    name: ClassVar[str] = "forest_ensemble"

    def fit(self, X, y, coverage: float = 0.9, seed: int = 0) -> FittedModel:
        return fit_forest_ensemble(X, y, coverage, seed, **asdict(self))


Learner = Union[QuantileGBM, RandomForest]

#: a few dozen plots: shallow, slow-learning trees
PLOT_GBM = QuantileGBM(n_estimators=200, learning_rate=0.05, max_leaf_nodes=3, min_samples_leaf=5)


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
    """The fitted sklearn estimators of a learner (``kind``: its name) and the coverage of its intervals."""

    kind: str  # quantile_gbm | forest_ensemble
    coverage: float
    models: dict  # name -> sklearn estimator
    quantiles: dict = field(default_factory=dict)  # lower/median/upper -> q


def fit_quantile_gbm(X, y, coverage: float = 0.9, seed: int = 0, n_estimators: int = 150,
                     learning_rate: float = 0.1, max_leaf_nodes: int = 15, min_samples_leaf: int = 20) -> FittedModel:
    """Three quantile gradient-boosting models: the lower and upper bounds and the median.

    Parameters
    ----------
    X : array_like
        (n, F) features (read as float32).
    y : array_like
        (n,) target.
    coverage : float
        The bounds are the (1 − coverage)/2 and (1 + coverage)/2 quantiles.
    seed : int
    n_estimators, learning_rate, max_leaf_nodes, min_samples_leaf
        As :class:`QuantileGBM`.

    Returns
    -------
    FittedModel
        ``kind`` ``"quantile_gbm"``, models ``lower``/``median``/``upper`` with float32-exact thresholds.
    """
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
    """A random forest for the mean and a forest on its squared out-of-bag residuals (the variance).

    Parameters
    ----------
    X, y : array_like
        (n, F) features (read as float32) and (n,) target.
    coverage : float
        Coverage of the Gaussian intervals mean ± z·σ.
    seed : int
        Seed of the bootstrap and of the feature draws.
    n_estimators, min_samples_leaf, max_samples, variance_estimators
        As :class:`RandomForest`.

    Returns
    -------
    FittedModel
        ``kind`` ``"forest_ensemble"``, models ``mean`` and ``variance`` with float32-exact thresholds.
    """
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


def predict_intervals(model: FittedModel, X) -> dict:
    """Uncalibrated prediction and interval, as the exported graph computes them.

    Parameters
    ----------
    model : FittedModel
    X : array_like
        (n, F) features (read as float32).

    Returns
    -------
    dict
        float64 ``prediction``, ``lower``, ``upper`` (and ``variance`` for a forest ensemble).
    """
    X = np.asarray(X, dtype=np.float32)
    if model.kind == "quantile_gbm":
        raw = {k: m.predict(X) for k, m in model.models.items()}
        lower, median, upper = quantile_interval(raw["lower"], raw["median"], raw["upper"])
        return {"prediction": median, "lower": lower, "upper": upper}

    mean = model.models["mean"].predict(X)
    var = np.maximum(model.models["variance"].predict(X), 0.0)
    half = z_score(model.coverage) * np.sqrt(var)
    return {"prediction": mean, "variance": var, "lower": mean - half, "upper": mean + half}
