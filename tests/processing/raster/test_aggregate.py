"""aggregatetogrid: exact area weights by hand, against brute-force supersampling, on the
simulated scene's truth rasters, bad input, and through QGIS."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine

from forest_carbon_plugin.core.raster import aggregate
from forest_carbon_plugin.core.raster.aggregate import aggregate_to_grid, parse_statistics
from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.outputs import PROVENANCE_KEY

CRS = "EPSG:32633"
NODATA = -9999.0


def _write(path, array, transform, crs=CRS, nodata=NODATA):
    array = np.asarray(array, dtype=np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[1], height=array.shape[0], count=1,
                       dtype="float32", crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(array, 1)
    return path


def _read(path):
    with rasterio.open(path) as src:
        return list(src.descriptions), src.read().astype(np.float64), src.transform, src.tags(), src.nodata


# -- (1) by hand ---------------------------------------------------------------------------------

@pytest.fixture
def three_by_three(tmp_path):
    """1 m pixels, values 0..7 and one no-data pixel (bottom right); a 2 m grid shifted by half a
    fine pixel (origin 0.5, 2.5), so each coarse cell holds quarter, half and whole fine pixels."""
    values = np.array([[0, 1, 2], [3, 4, 5], [6, 7, NODATA]])
    fine = _write(tmp_path / "fine.tif", values, Affine(1, 0, 0, 0, -1, 3))
    ref = _write(tmp_path / "ref.tif", np.zeros((2, 2)), Affine(2, 0, 0.5, 0, -2, 2.5))
    return fine, ref


def test_hand_computed_area_weights(three_by_three, tmp_path):
    fine, ref = three_by_three
    out = aggregate_to_grid(fine, tmp_path / "agg.tif", "mean,max,min,cover3,p50,sum", reference_grid=ref)
    names, data, transform, tags, nodata = _read(out)
    assert names == ["mean", "max", "min", "cover3", "p50", "sum", "valid_fraction"]
    assert transform == Affine(2, 0, 0.5, 0, -2, 2.5) and np.isnan(nodata)
    band = dict(zip(names, data))
    # cell (0, 0): weights (of the 4 m² cell) 1/16 at corners, 1/8 on edges, 1/4 in the centre;
    # the corner (2, 2) is no-data: valid 15/16, Σ w·v = (0+2+6)/16 + (1+3+5+7)/8 + 4/4 = 3.5
    assert band["valid_fraction"][0, 0] == pytest.approx(0.9375)
    assert band["mean"][0, 0] == pytest.approx(3.5 / 0.9375, rel=1e-6)
    assert band["max"][0, 0] == 7 and band["min"][0, 0] == 0
    assert band["cover3"][0, 0] == pytest.approx((0.25 + 0.125 + 0.0625 + 0.125) / 0.9375, rel=1e-6)  # 4,5,6,7
    assert band["p50"][0, 0] == 4  # cumulative 0.0625 .. 0.375 (≤3), 0.625 at 4 ≥ 0.46875
    assert band["sum"][0, 0] == pytest.approx(3.5 * 4, rel=1e-6)  # Σ v × overlapping share of each pixel
    # cell (0, 1): half of column 2 → pixels 2 (1/16) and 5 (1/8)
    assert band["valid_fraction"][0, 1] == pytest.approx(0.1875)
    assert band["mean"][0, 1] == pytest.approx((2 / 16 + 5 / 8) / 0.1875, rel=1e-6)
    assert band["max"][0, 1] == 5 and band["cover3"][0, 1] == pytest.approx(2 / 3, rel=1e-6)
    # cell (1, 0): half of row 2 → pixels 6 (1/16) and 7 (1/8)
    assert band["mean"][1, 0] == pytest.approx((6 / 16 + 7 / 8) / 0.1875, rel=1e-6)
    assert band["cover3"][1, 0] == 1 and band["min"][1, 0] == 6
    # cell (1, 1): only the no-data pixel → NaN, valid_fraction 0
    assert band["valid_fraction"][1, 1] == 0
    assert all(np.isnan(band[n][1, 1]) for n in names[:-1])
    record = json.loads(tags[PROVENANCE_KEY])
    assert record["algorithm"] == "forestcarbon:aggregatetogrid" and "inverted CDF" in record["percentile_definition"]


def test_resolution_grid_is_snapped(three_by_three, tmp_path):
    fine, _ = three_by_three
    names, data, transform, _, _ = _read(aggregate_to_grid(fine, tmp_path / "r.tif", resolution_m=2))
    assert transform == Affine(2, 0, 0, 0, -2, 4) and data.shape == (2, 2, 2)
    # cell (0, 0) covers x 0-2, y 2-4: fine row 0 (y 2-3), columns 0-1 → half the cell, values 0 and 1
    assert data[0, 0, 0] == pytest.approx(0.5) and data[1, 0, 0] == pytest.approx(0.5)


# -- (2) brute force -------------------------------------------------------------------------------

def _brute_force(values, valid, fine_origin, coarse_origin, coarse_shape, lattice, fine_units, coarse_units):
    """Supersample both grids on a lattice of ``lattice`` m (fine pixel = ``fine_units`` lattice
    steps, coarse = ``coarse_units``) and take plain statistics of the subsamples of each cell."""
    nI, nJ = coarse_shape
    ny, nx = nI * coarse_units, nJ * coarse_units
    # lattice cell centres → fine pixel indices
    xs = coarse_origin[0] + (np.arange(nx) + 0.5) * lattice
    ys = coarse_origin[1] - (np.arange(ny) + 0.5) * lattice
    col = np.floor((xs - fine_origin[0]) / (fine_units * lattice)).astype(int)
    row = np.floor((fine_origin[1] - ys) / (fine_units * lattice)).astype(int)
    inside = (row[:, None] >= 0) & (row[:, None] < values.shape[0]) & (col[None, :] >= 0) & (col[None, :] < values.shape[1])
    r = np.clip(row, 0, values.shape[0] - 1)
    c = np.clip(col, 0, values.shape[1] - 1)
    sv = values[r[:, None], c[None, :]].astype(np.float64)
    ok = inside & valid[r[:, None], c[None, :]]
    sv = sv.reshape(nI, coarse_units, nJ, coarse_units).transpose(0, 2, 1, 3).reshape(nI, nJ, -1)
    ok = ok.reshape(nI, coarse_units, nJ, coarse_units).transpose(0, 2, 1, 3).reshape(nI, nJ, -1)
    out = {k: np.full((nI, nJ), np.nan) for k in ("mean", "std", "min", "max", "cover12", "p90", "p25")}
    out["valid_fraction"] = ok.mean(axis=2)
    for i in range(nI):
        for j in range(nJ):
            x = sv[i, j][ok[i, j]]
            if x.size == 0:
                continue
            out["mean"][i, j], out["std"][i, j] = x.mean(), x.std()
            out["min"][i, j], out["max"][i, j] = x.min(), x.max()
            out["cover12"][i, j] = (x > 12).mean()
            out["p90"][i, j] = np.percentile(x, 90, method="inverted_cdf")
            out["p25"][i, j] = np.percentile(x, 25, method="inverted_cdf")
    return out


def test_matches_brute_force_supersampling(tmp_path, monkeypatch):
    """1 m pixels, a 3.7 m grid offset by (0.4, 0.3) m and reaching past the raster; 0.1 m lattice.
    Small blocks and chunks, so that blocks and in-block chunks meet inside the raster."""
    rng = np.random.default_rng(3)
    values = rng.uniform(0, 30, (130, 150)).astype(np.float32)
    valid = rng.random(values.shape) > 0.1
    valid[40:60, 20:70] = False  # a hole bigger than a coarse cell
    fine_origin = (500000.0, 4000130.0)
    fine = _write(tmp_path / "fine.tif", np.where(valid, values, NODATA), Affine(1, 0, fine_origin[0], 0, -1, fine_origin[1]))
    coarse_origin = (fine_origin[0] - 3.7 + 0.4, fine_origin[1] + 3.7 - 0.3)
    shape = (37, 42)  # 136.9 × 155.4 m: past the raster on every side
    ref = _write(tmp_path / "ref.tif", np.zeros(shape), Affine(3.7, 0, coarse_origin[0], 0, -3.7, coarse_origin[1]))
    monkeypatch.setattr(aggregate, "FINE_PIXELS_PER_CHUNK", 2000)
    stats = ["mean", "std", "min", "max", "cover12", "p90", "p25"]
    out = aggregate_to_grid(fine, tmp_path / "agg.tif", ",".join(stats), reference_grid=ref, block_size=16, max_workers=3)
    names, data, _, _, _ = _read(out)
    assert names == [*stats, "valid_fraction"]
    expected = _brute_force(values, valid, fine_origin, coarse_origin, shape, 0.1, 10, 37)
    for k, name in enumerate(names):
        got, ref_values = data[k], expected[name]
        assert np.array_equal(np.isnan(got), np.isnan(ref_values)), name
        ok = ~np.isnan(got)
        np.testing.assert_allclose(got[ok], ref_values[ok], rtol=1e-5, atol=1e-5, err_msg=name)
    vf = data[-1]
    assert vf.min() == 0 and 0 < np.median(vf) < 1 and np.nanmax(vf) == pytest.approx(1.0)


# -- (3) simulated scene ---------------------------------------------------------------------------

def test_simulated_chm_to_30m(imagery_scene, tmp_path):
    """The 1 m CHM aligns with the 30 m truth grid, so plain 30 × 30 block statistics are exact."""
    out, manifest = imagery_scene
    chm_path = out / manifest["truth"]["chm_1m"]
    cover_path = out / manifest["truth"]["cover_30m"]
    result = aggregate_to_grid(chm_path, tmp_path / "chm30.tif", "mean,max,p95,cover2,std", reference_grid=cover_path)
    names, data, _, _, _ = _read(result)
    with rasterio.open(chm_path) as src:
        chm = src.read(1).astype(np.float64)
    with rasterio.open(cover_path) as src:
        truth_cover = src.read(1).astype(np.float64)
    n = chm.shape[0] // 30
    blocks = chm.reshape(n, 30, n, 30).transpose(0, 2, 1, 3).reshape(n, n, 900)
    band = dict(zip(names, data))
    np.testing.assert_allclose(band["mean"], blocks.mean(axis=2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(band["std"], blocks.std(axis=2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(band["max"], blocks.max(axis=2), rtol=1e-6)
    np.testing.assert_allclose(band["p95"], np.percentile(blocks, 95, axis=2, method="inverted_cdf"), rtol=1e-6)
    np.testing.assert_allclose(band["cover2"], (blocks > 2).mean(axis=2), atol=1e-6)
    assert (band["valid_fraction"] == 1).all()
    # the simulator's cover_30m is the mean gap-fraction cover above 2 m (1 − exp(−Σ k·L) of the
    # crowns' paths above 2 m), not the share of CHM pixels above 2 m: never more than it, and close
    diff = band["cover2"] - truth_cover
    assert diff.min() >= -1e-6
    assert 0 < diff.mean() < 0.06
    assert np.corrcoef(band["cover2"].ravel(), truth_cover.ravel())[0, 1] > 0.99


# -- (4) bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [("p101", "p0 to p100"), ("foo", "Unknown statistic 'foo'"),
                                           ("mean,cover", "Unknown statistic 'cover'")])
def test_unknown_statistics(three_by_three, tmp_path, text, message):
    fine, ref = three_by_three
    with pytest.raises(ForestCarbonError, match=message):
        aggregate_to_grid(fine, tmp_path / "x.tif", text, reference_grid=ref)
    assert not (tmp_path / "x.tif").exists()


def test_parse_statistics():
    assert parse_statistics("Mean, max;p97.5 cover2,mean") == ["mean", "max", "p97.5", "cover2"]
    assert parse_statistics("") == ["mean"]


def test_bad_grids(three_by_three, tmp_path):
    fine, _ = three_by_three
    target = tmp_path / "x.tif"
    with pytest.raises(ForestCarbonError, match="either a reference grid"):
        aggregate_to_grid(fine, target)
    with pytest.raises(ForestCarbonError, match="greater than 0"):
        aggregate_to_grid(fine, target, resolution_m=0)
    far = _write(tmp_path / "far.tif", np.zeros((2, 2)), Affine(2, 0, 1000, 0, -2, 1000))
    with pytest.raises(ForestCarbonError, match="do not overlap"):
        aggregate_to_grid(fine, target, reference_grid=far)
    other = _write(tmp_path / "other.tif", np.zeros((2, 2)), Affine(2, 0, 0, 0, -2, 3), crs="EPSG:32634")
    with pytest.raises(ForestCarbonError, match="different coordinate reference systems.*Warp"):
        aggregate_to_grid(fine, target, reference_grid=other)
    (tmp_path / "not_a_raster.tif").write_text("hello")
    with pytest.raises(ForestCarbonError, match="Cannot open"):
        aggregate_to_grid(tmp_path / "not_a_raster.tif", target, resolution_m=2)
    assert not target.exists()


def test_cancel_leaves_nothing(tmp_path):
    from forest_carbon_plugin.core.progress import NullProgress

    class CancelAfterFirst(NullProgress):
        calls = 0

        def set_progress(self, percent):
            self.calls += 1

        def is_canceled(self):
            return self.calls >= 1

    fine = _write(tmp_path / "fine.tif", np.ones((64, 64)), Affine(1, 0, 0, 0, -1, 64))
    target = tmp_path / "cancelled.tif"
    with pytest.raises(ForestCarbonError, match="Cancelled"):
        aggregate_to_grid(fine, target, "mean,p50", resolution_m=2, block_size=16, max_workers=1,
                          progress=CancelAfterFirst())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fine.tif"]


# -- QGIS ------------------------------------------------------------------------------------------------

def test_processing_run(three_by_three, tmp_path, forestcarbon_provider):
    import processing

    fine, ref = three_by_three
    target = tmp_path / "qgis.tif"
    result = processing.run("forestcarbon:aggregatetogrid", {
        "INPUT": str(fine), "REFERENCE_GRID": str(ref), "STATISTICS": "mean,cover3", "OUTPUT": str(target)})
    assert result["OUTPUT"] == str(target)
    names, data, _, _, _ = _read(target)
    assert names == ["mean", "cover3", "valid_fraction"]
    assert data[0, 0, 0] == pytest.approx(3.5 / 0.9375, rel=1e-6)
    alg = forestcarbon_provider.algorithm("aggregatetogrid")
    assert alg.group() == "Models" and alg.groupId() == "models"


@pytest.mark.parametrize("params, message", [({}, "either a reference grid"),
                                             ({"RESOLUTION": 2, "STATISTICS": "p101"}, "p0 to p100")])
def test_processing_run_bad_parameters(three_by_three, tmp_path, forestcarbon_provider, params, message):
    import processing
    from qgis.core import QgsProcessingException

    fine, _ = three_by_three
    target = tmp_path / "bad.tif"
    with pytest.raises(QgsProcessingException, match=message):
        processing.run("forestcarbon:aggregatetogrid", {"INPUT": str(fine), "OUTPUT": str(target), **params})
    assert not target.exists()


def test_qgis_process(three_by_three, qgis_config, tmp_path):
    from scripts import qgis_env

    fine, _ = three_by_three
    target = tmp_path / "qp.tif"
    proc, results = qgis_env.run_algorithm("forestcarbon:aggregatetogrid", {
        "INPUT": fine, "RESOLUTION": 2, "STATISTICS": "mean,max", "OUTPUT": target}, qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names, data, transform, _, _ = _read(target)
    assert names == ["mean", "max", "valid_fraction"] and transform.a == 2
