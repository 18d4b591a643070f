"""forestcarbon:treetops METHOD vwf: ForestTools' variable window filter (issue 19, item 3).

The reference is ForestTools' vwf definition (andrew-plowright/ForestTools, R/vwf.R) written out
plainly here, cell by cell: the window radii are the multiples of the resolution between
winFun(min) rounded down and winFun(max) rounded up (min = MIN_HEIGHT once cells below it are
masked), radii under one cell dropped; each cell takes the radius nearest to winFun(height), the
smaller on a tie (R's which.min); the window is the cells whose centres lie within it
(raster::focalWeight type "circle"), the full 3 × 3 for a one-cell radius (minWinNeib "queen");
a cell is a top when no cell of its window is higher (so each cell of a plateau is a top).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
from affine import Affine

from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.lidar.treetops import LMF, VWF, vwf_raster
from forest_carbon_plugin.core.lidar.trees import tree_tops

from tests.conftest import shared_file


def reference_vwf(chm, res, intercept, slope, min_height):
    """ForestTools' vwf, one cell at a time; returns the set of (row, col) tops."""
    chm = np.array(chm, dtype=np.float64)
    lo, hi = np.nanmin(chm), np.nanmax(chm)
    if min_height > lo:
        chm[chm < min_height] = np.nan
        lo = min_height
    # radii in whole cells: from floor(winFun(min)/res) to ceil(winFun(max)/res), at least one cell
    ks = [k for k in range(math.floor((intercept + slope * lo) / res), math.ceil((intercept + slope * hi) / res) + 1)
          if k >= 1] or [1]
    masks = {}
    for k in ks:
        d = np.arange(-k, k + 1)
        masks[k] = np.ones((2 * k + 1, 2 * k + 1), bool) if k == 1 else (d[:, None] ** 2 + d[None, :] ** 2 <= k * k)
    nrows, ncols = chm.shape
    tops = set()
    for i in range(nrows):
        for j in range(ncols):
            v = chm[i, j]
            if np.isnan(v):
                continue
            want = (intercept + slope * v) / res
            k = min(ks, key=lambda kk: (abs(kk - want), kk))
            i0, i1, j0, j1 = max(i - k, 0), min(i + k + 1, nrows), max(j - k, 0), min(j + k + 1, ncols)
            window = chm[i0:i1, j0:j1][masks[k][i0 - i + k:i1 - i + k, j0 - j + k:j1 - j + k]]
            if np.nanmax(window) == v:
                tops.add((i, j))
    return tops


def _cells(tops, path):
    with rasterio.open(path) as src:
        t = src.transform
    return {(int(round((t.f - y) / -t.e - 0.5)), int(round((x - t.c) / t.a - 0.5))) for x, y in zip(tops.x, tops.y)}


def _write(path, data, res=1.0):
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype="float64", crs="EPSG:32611", transform=Affine(res, 0, 500000, 0, -res, 5500000),
                       nodata=-9999) as dst:
        dst.write(np.where(np.isnan(data), -9999, data), 1)
    return path


@pytest.mark.parametrize("name, intercept, slope", [
    ("kootenayCHM.tif", 0.5, 0.06),     # ForestTools' example winFun, 0.5 m CHM
    ("CHMdemo.tif", 0.8, 0.05),         # ForestTools' test winFun, 0.25 m CHM
    ("pnw_pyfor_chm.tif", 1.0, 0.04),   # tall conifers, 0.5 m: radii up to 8 cells
])
def test_vwf_equals_the_definition(name, intercept, slope):
    path = shared_file("chm", name)
    with rasterio.open(path) as src:
        chm = src.read(1, masked=True).astype(np.float64).filled(np.nan)
        res = src.res[0]
    expected = reference_vwf(chm, res, intercept, slope, 2.0)
    tops, crs, _ = vwf_raster(path, intercept, slope, 2.0)
    assert crs is not None and len(expected) > 100
    assert _cells(tops, path) == expected
    rows, cols = zip(*sorted(expected))
    assert np.array_equal(tops.z, chm[list(rows), list(cols)])  # heights of the cells, row-major order
    # in blocks much smaller than the raster: the halo of the largest window gives the same tops
    blocked, _, _ = vwf_raster(path, intercept, slope, 2.0, block=23)
    assert np.array_equal(blocked.index, tops.index)


def test_plateau_and_radius_quantization(tmp_path):
    nan = np.nan
    # ground below MIN_HEIGHT (masked: a flat background would be one big plateau of tops)
    chm = np.full((12, 12), 1.0)
    chm[0, 0] = nan
    chm[6:9, 4:9] = 3.0
    chm[2, 2] = chm[2, 3] = 9.0           # a plateau of two equal maxima: ForestTools counts both cells
    chm[7, 5] = 10.0                      # a single top, with a higher cell 2 cells east of it
    chm[7, 7] = 12.0
    path = _write(tmp_path / "tiny.tif", chm)
    # constant window radius: 1.4 m → nearest of the radii 1, 2 m is 1 (3 × 3): (7, 5) is a top
    tops, _, _ = vwf_raster(path, 1.4, 0.0, 2.0)
    assert _cells(tops, path) == {(2, 2), (2, 3), (7, 5), (7, 7)}
    # 1.5 m is as near to 1 as to 2: the smaller wins (which.min), still a top
    tops, _, _ = vwf_raster(path, 1.5, 0.0, 2.0)
    assert _cells(tops, path) == {(2, 2), (2, 3), (7, 5), (7, 7)}
    # 1.6 m → 2 m: the circle of radius 2 cells reaches (7, 7), so (7, 5) is no longer a top
    tops, _, _ = vwf_raster(path, 1.6, 0.0, 2.0)
    assert _cells(tops, path) == {(2, 2), (2, 3), (7, 7)}
    # a circle, not a square: a higher cell at (2 rows, 1 col) is √5 > 2 cells away and does not count
    chm2 = chm.copy()
    chm2[7, 7] = 3.0
    chm2[9, 6] = 12.0
    chm2[8, 6] = 4.0
    path2 = _write(tmp_path / "tiny2.tif", chm2)
    tops, _, _ = vwf_raster(path2, 1.6, 0.0, 2.0)
    assert {(7, 5), (9, 6)} <= _cells(tops, path2)
    for p, c in ((path, chm), (path2, chm2)):
        for w in (1.4, 1.5, 1.6):
            assert _cells(vwf_raster(p, w, 0.0, 2.0)[0], p) == reference_vwf(c, 1.0, w, 0.0, 2.0)
    # lmf on the same CHM keeps one top of the plateau (the first), vwf both
    lmf, _ = tree_tops(path, LMF(2.8, 0.0, 2.0))
    assert sum(1 for x, y in zip(lmf.x, lmf.y) if abs(y - (5500000 - 2.5)) < 1e-6 and x < 500004) == 1


def test_vwf_refusals(tmp_path):
    chm = np.full((20, 20), 1.0)
    chm[9:12, 9:12] = 5.0
    chm[10, 10] = 20.0
    path = _write(tmp_path / "c.tif", chm, res=0.25)
    with pytest.raises(ForestCarbonError, match="99-cell limit"):
        vwf_raster(path, 5.0, 0.5, 2.0)  # radius 15 m = 121 cells across
    with pytest.raises(ForestCarbonError, match="MIN_HEIGHT"):
        vwf_raster(path, 0.5, 0.06, 25.0)
    with pytest.raises(ForestCarbonError, match="canopy height model raster"):
        tree_tops(shared_file("lidar", "MixedConifer.laz"), VWF(0.5, 0.06, 2.0))
    # a radius under one cell rounds up to one cell, the 3 × 3 queen window
    tops, _, warning = vwf_raster(path, 0.1, 0.0, 2.0)
    assert warning is None and len(tops) == 1


def test_vwf_through_processing(forestcarbon_provider):
    import processing

    path = shared_file("chm", "kootenayCHM.tif")
    result = processing.run("forestcarbon:treetops", {
        "INPUT": str(path), "METHOD": 1, "WS_INTERCEPT": 0.5, "WS_SLOPE": 0.06, "MIN_HEIGHT": 2,
        "OUTPUT": "TEMPORARY_OUTPUT"})
    tops, _, _ = vwf_raster(path, 0.5, 0.06, 2.0)
    assert result["TREE_COUNT"] == len(tops) > 100
    assert result["OUTPUT"].crs().authid() == "EPSG:32611"
    lmf = processing.run("forestcarbon:treetops", {
        "INPUT": str(path), "WS_INTERCEPT": 1.0, "WS_SLOPE": 0.12, "MIN_HEIGHT": 2, "OUTPUT": "TEMPORARY_OUTPUT"})
    assert lmf["TREE_COUNT"] != result["TREE_COUNT"]  # METHOD defaults to lmf, whose rules differ
