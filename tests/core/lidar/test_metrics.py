"""lidar.metrics: lidR's stdmetrics_z (R/metrics_stdmetrics.R) and FUSION's cover, every cell at once,
against the definitions written per cell with numpy: zsd with n − 1, biased skewness, Pearson (not excess)
kurtosis, quantiles of R's type 7 (numpy's linear), pzabove2 and cover with a strict >."""

import numpy as np
import pytest

from forest_carbon_plugin.core.lidar.metrics import STDMETRICS_Z, cover_and_density, metric_names, stdmetrics_z


def _definitions(z):
    z = np.asarray(z, float)
    m, n = z.mean(), len(z)
    d = z - m
    out = {"zmax": z.max(), "zmean": m, "zsd": z.std(ddof=1) if n > 1 else np.nan,
           "zskew": (np.sum(d ** 3) / n) / (np.sum(d ** 2) / n) ** 1.5,
           "zkurt": n * np.sum(d ** 4) / np.sum(d ** 2) ** 2,
           "pzabovezmean": 100 * np.mean(z > m), "pzabove2": 100 * np.mean(z > 2)}
    for k in range(1, 20):
        out[f"zq{5 * k}"] = np.quantile(z, 0.05 * k)
    if z.max() >= 2 and z.min() >= 0:  # entropy over 1 m bins from 0 (lidR's dz = 1)
        nbins = int(np.ceil(z.max()))
        counts = np.array([np.sum((z >= k) & (z < k + 1)) for k in range(nbins)], float)
        p = counts[counts > 0] / counts.sum()
        out["zentropy"] = -np.sum(p * np.log(p)) / np.log(nbins)
    return out


@pytest.fixture(scope="module")
def cells():
    """Five cells of different shapes (heights avoid the 1 m bin edges and 2 m), one cell empty."""
    rng = np.random.default_rng(30)
    z = [rng.gamma(3, 4, 400), rng.uniform(0, 30, 250), 25 - rng.exponential(3, 120).clip(0, 24),
         rng.normal(10, 2, 60).clip(0.1), rng.uniform(0.1, 1.9, 40)]
    z = [np.round(v, 2) + 0.003 for v in z]
    cell = np.concatenate([np.full(len(v), k) for k, v in enumerate(z) if k != 3] + [np.full(len(z[3]), 5)])
    return z[:3] + [None, z[4], z[3]], rng.permutation(len(cell)), cell


def test_stdmetrics_z_equals_the_definitions(cells):
    z_by_cell, order, cell = cells
    z = np.concatenate([v for v in z_by_cell if v is not None])[order]
    cell = cell[order]
    ours = stdmetrics_z(z, cell, 6)
    assert set(STDMETRICS_Z) <= set(ours)
    for k, values in enumerate(z_by_cell):
        if values is None:
            assert all(np.isnan(ours[name][k]) for name in STDMETRICS_Z)
            continue
        for name, expected in _definitions(values).items():
            assert ours[name][k] == pytest.approx(expected, rel=1e-10, abs=1e-12), (k, name)
    assert np.isnan(ours["zentropy"][4])  # zmax < 2 dz: lidR gives NA


def test_one_point_and_a_constant_cell():
    ours = stdmetrics_z(np.array([7.25, 5.5, 5.5, 5.5]), np.array([0, 1, 1, 1]), 2)
    assert ours["zmax"][0] == 7.25 and np.isnan(ours["zsd"][0])
    assert ours["zsd"][1] == 0 and ours["zq50"][1] == 5.5 and ours["pzabovezmean"][1] == 0


def test_pzabove2_and_cover_use_a_strict_threshold():
    z = np.array([2.0, 2.0, 2.01, 0.5, 3.0, 2.0])
    first = np.array([True, True, True, True, False, False])
    cell = np.zeros(6, dtype=np.int64)
    assert stdmetrics_z(z, cell, 1, th=2.0)["pzabove2"][0] == pytest.approx(100 * 2 / 6)
    cover = cover_and_density(z, first, cell, 1, cell_area=400.0, height_break=2.0)
    assert cover["cover"][0] == pytest.approx(100 * 1 / 4)  # first returns above 2 m over all first returns
    assert cover["n"][0] == 6 and cover["point_density"][0] == 6 / 400 and cover["pulse_density"][0] == 4 / 400


def test_the_band_names():
    assert metric_names()[:8] == ["zmax", "zmean", "zsd", "zskew", "zkurt", "zentropy", "pzabovezmean", "pzabove2"]
    assert metric_names()[36:] == ["cover", "n", "point_density", "pulse_density"]
    assert metric_names(intensity=True)[40] == "itot"
