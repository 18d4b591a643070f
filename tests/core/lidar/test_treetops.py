"""lidar.treetops: lidR's lmf (Popescu & Wynne 2004) on points and on a CHM, against an O(n²) search of the
definition, and lidR's tree counts on MixedConifer.laz."""

import numpy as np
import pytest

from forest_carbon_plugin.core.lidar.catalog import read_tile
from forest_carbon_plugin.core.lidar.treetops import local_maxima, raster_local_maxima

from ...conftest import shared_file
from .clouds import random_cloud


def _brute_force_tops(x, y, z, ws_intercept, ws_slope, hmin):
    """Points at or above hmin with no strictly higher point within half the window diameter
    ws = intercept + slope·z (points below hmin take the smallest window, as in lidR)."""
    ws_min = ws_intercept + ws_slope * hmin
    tops = []
    for i in range(len(z)):
        if z[i] < hmin:
            continue
        radius = max(ws_intercept + ws_slope * z[i], ws_min) / 2
        near = (x - x[i]) ** 2 + (y - y[i]) ** 2 <= radius ** 2
        if not (z[near] > z[i]).any():
            tops.append(i)
    return tops


@pytest.mark.parametrize("ws_intercept, ws_slope", [(5.0, 0.0), (3.0, 0.07), (2.0, 0.2)])
def test_lmf_equals_the_definition(ws_intercept, ws_slope):
    x, y, _ = random_cloud(3000, seed=20, size=60.0)
    z = np.random.default_rng(21).permutation(3000) * 0.01  # distinct heights 0-30 m: no ties
    tops = local_maxima(x, y, z, ws_intercept=ws_intercept, ws_slope=ws_slope, hmin=2.0)
    expected = _brute_force_tops(x, y, z, ws_intercept, ws_slope, 2.0)
    assert sorted(tops.index.tolist()) == expected
    assert np.array_equal(tops.z, z[tops.index]) and np.array_equal(tops.x, x[tops.index])


def test_equal_maxima_in_each_other_s_window_give_one_top():
    x = np.array([0.0, 1.0, 10.0, 0.5])
    y = np.array([0.0, 0.0, 0.0, 2.0])
    z = np.array([20.0, 20.0, 20.0, 5.0])
    tops = local_maxima(x, y, z, ws_intercept=5.0)
    assert tops.index.tolist() == [0, 2]  # the first in point order wins the tie; the far one stands alone


def test_hmin_excludes_low_maxima():
    tops = local_maxima(np.array([0.0, 20.0]), np.array([0.0, 0.0]), np.array([1.5, 2.0]), ws_intercept=5.0, hmin=2.0)
    assert tops.index.tolist() == [1]


def test_lmf_on_a_chm_uses_the_cell_centres():
    chm = np.full((9, 9), 5.0)
    chm[2, 3] = 12.0
    chm[6, 7] = 9.0
    chm[0, 0] = np.nan
    from affine import Affine

    tops = raster_local_maxima(chm, Affine(1.0, 0.0, 100.0, 0.0, -1.0, 200.0), ws_intercept=3.0, hmin=6.0)
    assert sorted(zip(tops.x.tolist(), tops.y.tolist(), tops.z.tolist())) == [(103.5, 197.5, 12.0),
                                                                               (107.5, 193.5, 9.0)]


@pytest.mark.shared
@pytest.mark.parametrize("ws_intercept, ws_slope, trees", [(5.0, 0.0, 177), (3.0, 0.07, 205)])
def test_lidr_tree_counts_on_mixedconifer(ws_intercept, ws_slope, trees):
    """lidR's tests/testthat/test-locate_trees.R: filter_poi(mixedconifer, Z >= 0), lmf(5) gives 177 trees,
    lmf(function(x) x * 0.07 + 3) gives 205."""
    pts = read_tile(shared_file("lidar", "MixedConifer.laz"))
    keep = pts["z"] >= 0
    tops = local_maxima(pts["x"][keep], pts["y"][keep], pts["z"][keep], ws_intercept=ws_intercept,
                        ws_slope=ws_slope, hmin=2.0)
    assert len(tops) == trees
