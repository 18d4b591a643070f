"""forestcarbon:canopymetrics (issue 4): lidR's definitions, catalogs, bad input."""

from __future__ import annotations

import csv

import laspy
import numpy as np
import pytest
import rasterio
from qgis.core import QgsProcessingException, QgsRasterLayer
from scipy import stats

from forest_carbon_plugin.core.lidar.metrics import STDMETRICS_Z

from tests.conftest import SAMPLE_LAZ, SHARED_DATA, shared_file

REFERENCE = SHARED_DATA.parent / "notes" / "lidr_reference"


def _run(source, out, **params):
    import processing

    defaults = {"INPUT": str(source), "RESOLUTION": 20, "MIN_POINTS": 1, "MAX_WORKERS": 1, "OUTPUT": str(out)}
    defaults.update(params)
    return processing.run("forestcarbon:canopymetrics", defaults)


def _sample(path, x, y):
    with rasterio.open(path) as src:
        names = list(src.descriptions)
        values = next(src.sample([(x, y)]))
        nodata = src.nodata
    return {n: (np.nan if v == nodata else float(v)) for n, v in zip(names, values)}


def test_mixedconifer_equals_lidr(tmp_path, forestcarbon_provider):
    las = shared_file("lidar", "MixedConifer.laz")
    ref_csv = REFERENCE / "MixedConifer_stdmetrics_z_20m.csv"
    out = tmp_path / "metrics.tif"
    _run(las, out)
    with rasterio.open(out) as src:
        assert list(src.descriptions[:36]) == STDMETRICS_Z  # lidR's order
        assert src.descriptions[36:] == ("cover", "n", "point_density", "pulse_density")
        assert src.res == (20.0, 20.0) and src.crs.to_epsg() == 26912
        assert src.transform.c % 20 == 0 and src.transform.f % 20 == 0  # snapped grid
    rows = list(csv.DictReader(ref_csv.open()))
    assert len(rows) == 25
    na_cells = 0
    for row in rows:
        ours = _sample(out, float(row["x"]), float(row["y"]))
        for name in STDMETRICS_Z:
            if row[name] == "NA":
                na_cells += 1
                assert np.isnan(ours[name]), (row["x"], row["y"], name)
            else:
                assert ours[name] == pytest.approx(float(row[name]), rel=1e-6, abs=1e-9), (row["x"], row["y"], name)
    cover_rows = list(csv.DictReader((REFERENCE / "MixedConifer_cover_first_gt2m_20m.csv").open()))
    for row in cover_rows:
        ours = _sample(out, float(row["x"]), float(row["y"]))
        assert ours["cover"] == pytest.approx(100 * float(row["cover_gt2"]), rel=1e-6)


def _independent_metrics(z):
    """stdmetrics_z of one cell written from the definitions with numpy/scipy (not our code)."""
    z = np.sort(np.asarray(z, dtype=float))
    n = len(z)
    out = {"zmax": z.max(), "zmean": z.mean(), "zsd": np.std(z, ddof=1) if n > 1 else np.nan}
    out["zskew"] = stats.skew(z, bias=True) if np.ptp(z) > 0 else np.nan
    out["zkurt"] = stats.kurtosis(z, fisher=False, bias=True) if np.ptp(z) > 0 else np.nan
    if z.max() < 2 or z.min() < 0:
        out["zentropy"] = np.nan
    else:
        nbins = int(np.ceil(z.max()))
        counts = np.array([np.sum((z >= k) & (z < k + 1)) for k in range(nbins)], dtype=float)
        p = counts[counts > 0] / counts.sum()
        out["zentropy"] = -np.sum(p * np.log(p)) / np.log(nbins)
    out["pzabovezmean"] = 100 * np.mean(z > z.mean())
    out["pzabove2"] = 100 * np.mean(z > 2)
    for k in range(1, 20):
        out[f"zq{5 * k}"] = np.percentile(z, 5 * k, method="linear")
    if z.max() <= 0:
        for k in range(1, 10):
            out[f"zpcum{k}"] = 0.0
    else:
        edges = np.linspace(0, z.max(), 11)
        pos = z[(z > 0) & (z < z.max())]
        counts = np.array([np.sum((pos >= edges[k]) & (pos < edges[k + 1])) for k in range(10)], dtype=float)
        with np.errstate(invalid="ignore"):
            cum = np.cumsum(counts) / counts.sum() * 100
        for k in range(1, 10):
            out[f"zpcum{k}"] = cum[k - 1]
    return out


def test_hand_made_cloud_against_independent_numpy(tmp_path, forestcarbon_provider):
    rng = np.random.default_rng(3)
    cells = {  # cell centre -> heights (avoiding values on exact bin edges)
        (110.0, 190.0): rng.gamma(3, 4, 400) + 0.003,
        (130.0, 190.0): np.array([7.25]),  # one point: zsd NA
        (110.0, 170.0): np.full(30, 5.55),  # constant: skew/kurt NaN
        (130.0, 170.0): rng.uniform(0.01, 1.6, 50),  # low: zentropy NA (zmax < 2)
    }
    xs, ys, zs = [], [], []
    for (cx, cy), z in cells.items():
        xs.append(cx - 9.5 + rng.random(len(z)) * 19)
        ys.append(cy - 9.5 + rng.random(len(z)) * 19)
        zs.append(np.round(z, 3))
    header = laspy.LasHeader(point_format=1, version="1.2")
    header.scales = [0.001, 0.001, 0.001]
    header.offsets = [0, 0, 0]
    las = laspy.LasData(header)
    las.x, las.y, las.z = np.concatenate(xs), np.concatenate(ys), np.concatenate(zs)
    las.return_number = np.ones(len(las.x), np.uint8)
    las.number_of_returns = np.ones(len(las.x), np.uint8)
    path = tmp_path / "hand.las"
    las.write(path)
    out = tmp_path / "m.tif"
    _run(path, out, CRS="EPSG:32633", NORMALIZE=2)
    for (cx, cy), z in cells.items():
        ours = _sample(out, cx, cy)
        ref = _independent_metrics(np.round(z, 3))
        for name, value in ref.items():
            if np.isnan(value):
                assert np.isnan(ours[name]), (cx, cy, name)
            else:
                assert ours[name] == pytest.approx(value, rel=1e-5, abs=1e-5), (cx, cy, name, ours[name], value)
        assert ours["n"] == len(z)
        assert ours["point_density"] == pytest.approx(len(z) / 400)


def test_catalog_equals_merged_file(tmp_path, forestcarbon_provider, bcts_catalog):
    folder, tiles, merged_path = bcts_catalog
    _run(folder, tmp_path / "catalog.tif", NORMALIZE=2, RESOLUTION=10)
    _run(merged_path, tmp_path / "merged.tif", NORMALIZE=2, RESOLUTION=10)
    _run(folder, tmp_path / "catalog2.tif", NORMALIZE=2, RESOLUTION=10, MAX_WORKERS=2)
    with rasterio.open(tmp_path / "catalog.tif") as a, rasterio.open(tmp_path / "merged.tif") as b, \
            rasterio.open(tmp_path / "catalog2.tif") as c:
        assert a.transform == b.transform and a.shape == b.shape
        da, db, dc = a.read(), b.read(), c.read()
        names = list(a.descriptions)
    assert np.array_equal(da, db, equal_nan=True)
    assert np.array_equal(da, dc, equal_nan=True)
    n = da[names.index("n")]
    assert n[np.isfinite(n)].sum() == sum(laspy.open(t).header.point_count for t in tiles)


def test_output_loads_in_qgis(tmp_path, forestcarbon_provider):
    out = tmp_path / "sample.tif"
    _run(SAMPLE_LAZ, out, NORMALIZE=2, RESOLUTION=10)
    layer = QgsRasterLayer(str(out), "metrics", "gdal")
    assert layer.isValid() and layer.bandCount() == 40
    assert layer.bandName(1).endswith("zmax") or "zmax" in layer.bandName(1)


@pytest.mark.parametrize("case, fragment", [
    ("truncated", "truncated"), ("not_las", "not a readable LAS/LAZ file"), ("resolution", "RESOLUTION"),
    ("no_crs", "No CRS"), ("no_ground", "classifyground"), ("empty", "holds no points")])
def test_bad_input(case, fragment, tmp_path, forestcarbon_provider):
    params = {}
    if case == "truncated":
        data = SAMPLE_LAZ.read_bytes()
        source = tmp_path / "cut.laz"
        source.write_bytes(data[: len(data) // 2])
        params["NORMALIZE"] = 2
    elif case == "not_las":
        source = tmp_path / "table.laz"
        source.write_text("x,y,z\n1,2,3\n")
    elif case == "resolution":
        source, params = SAMPLE_LAZ, {"RESOLUTION": 0, "NORMALIZE": 2}
    elif case == "no_crs":
        source = shared_file("lidar", "simple.las")
    elif case == "empty":
        source = tmp_path / "empty.las"
        header = laspy.LasHeader(point_format=1, version="1.2")
        laspy.LasData(header).write(source)
    else:
        source = shared_file("lidar", "fullwave.laz")  # elevations, no class 2
    out = tmp_path / "out.tif"
    with pytest.raises(QgsProcessingException) as excinfo:
        _run(source, out, **params)
    assert fragment in str(excinfo.value)
    assert "Traceback" not in str(excinfo.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_crs_override(tmp_path, forestcarbon_provider):
    out = tmp_path / "simple.tif"
    _run(shared_file("lidar", "simple.las"), out, CRS="EPSG:2992", NORMALIZE=2)
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 2992


def test_auto_normalization_equals_normalizeheight(tmp_path, forestcarbon_provider):
    """NORMALIZE auto on elevations = canopymetrics on the output of forestcarbon:normalizeheight."""
    import processing

    processing.run("forestcarbon:normalizeheight", {"INPUT": str(SAMPLE_LAZ), "OUTPUT": str(tmp_path / "n.laz")})
    _run(SAMPLE_LAZ, tmp_path / "auto.tif", RESOLUTION=10)
    _run(tmp_path / "n.laz", tmp_path / "pre.tif", RESOLUTION=10, NORMALIZE=2)
    with rasterio.open(tmp_path / "auto.tif") as a, rasterio.open(tmp_path / "pre.tif") as b:
        da, db = a.read(), b.read()
        names = list(a.descriptions)
    # heights agree to the 1 cm quantization of the written LAZ
    zq95 = names.index("zq95")
    assert np.abs(da[zq95] - db[zq95]).max() < 0.011
    assert da[names.index("zmax")].max() < 40  # heights, not 420 m elevations


def test_cancel_stops_workers_and_writes_nothing(tmp_path, forestcarbon_provider):
    import time

    import processing
    import psutil
    from qgis.core import QgsProcessingFeedback

    folder = shared_file("lidar", "bcts")
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda _p: feedback.cancel())  # cancel after the first tile
    out = tmp_path / "cancelled.tif"
    with pytest.raises(QgsProcessingException) as excinfo:
        processing.run("forestcarbon:canopymetrics", {
            "INPUT": str(folder), "RESOLUTION": 20, "NORMALIZE": 2, "MAX_WORKERS": 2, "OUTPUT": str(out)},
            feedback=feedback)
    assert "Cancelled" in str(excinfo.value)
    assert not out.exists() and not list(tmp_path.iterdir())
    def workers():  # multiprocessing's resource tracker is a helper that lives on, not a worker
        return [p for p in psutil.Process().children(recursive=True)
                if "resource_tracker" not in " ".join(p.cmdline())]

    deadline = time.time() + 10
    while workers() and time.time() < deadline:
        time.sleep(0.2)
    assert workers() == []


def test_extent(tmp_path, forestcarbon_provider):
    import processing

    las = shared_file("lidar", "MixedConifer.laz")
    out = tmp_path / "part.tif"
    # the 40 m x 40 m south-west block of the stand
    processing.run("forestcarbon:canopymetrics", {"INPUT": str(las), "RESOLUTION": 20, "MIN_POINTS": 1,
                                                  "EXTENT": "481260,481300,3812920,3812960 [EPSG:26912]",
                                                  "OUTPUT": str(out)})
    with rasterio.open(out) as src:
        assert src.shape == (2, 2) and src.bounds.left == 481260 and src.bounds.bottom == 3812920
    full = tmp_path / "full.tif"
    _run(las, full)
    for x, y in ((481270, 3812930), (481290, 3812950)):
        assert _sample(out, x, y) == pytest.approx(_sample(full, x, y), nan_ok=True)
    with pytest.raises(QgsProcessingException) as excinfo:
        processing.run("forestcarbon:canopymetrics", {"INPUT": str(las), "EXTENT": "0,10,0,10 [EPSG:26912]",
                                                      "OUTPUT": str(tmp_path / "none.tif")})
    assert "outside the requested extent" in str(excinfo.value)
    assert not (tmp_path / "none.tif").exists()


def test_intensity_metrics_against_independent_numpy(tmp_path, forestcarbon_provider):
    """lidR's stdmetrics_i, written here from its definitions (shared/notes/lidar_metrics.md)."""
    rng = np.random.default_rng(11)
    n = 600
    header = laspy.LasHeader(point_format=1, version="1.2")
    header.scales = [0.01, 0.01, 0.01]
    header.offsets = [0, 0, 0]
    las = laspy.LasData(header)
    las.x = 100.5 + rng.random(n) * 18  # one 20 m cell: 100-120 x 180-200
    las.y = 180.5 + rng.random(n) * 18
    z = np.round(rng.gamma(2, 5, n), 2)
    las.z = z
    intensity = rng.integers(10, 3000, n)
    las.intensity = intensity.astype(np.uint16)
    cls = np.where(z < 0.5, 2, 1).astype(np.uint8)
    las.classification = cls
    las.return_number = np.ones(n, np.uint8)
    las.number_of_returns = np.ones(n, np.uint8)
    path = tmp_path / "i.las"
    las.write(path)
    out = tmp_path / "m.tif"
    _run(path, out, CRS="EPSG:32633", NORMALIZE=2, INTENSITY=True)
    ours = _sample(out, 110, 190)
    i = intensity.astype(float)
    assert ours["itot"] == pytest.approx(i.sum())
    assert ours["imax"] == i.max()
    assert ours["imean"] == pytest.approx(i.mean(), rel=1e-6)
    assert ours["isd"] == pytest.approx(i.std(ddof=1), rel=1e-6)
    assert ours["iskew"] == pytest.approx(stats.skew(i, bias=True), rel=1e-5)
    assert ours["ikurt"] == pytest.approx(stats.kurtosis(i, fisher=False, bias=True), rel=1e-5)
    assert ours["ipground"] == pytest.approx(100 * i[cls == 2].sum() / i.sum(), rel=1e-6)
    for q in (10, 30, 50, 70, 90):
        zq = np.percentile(z, q, method="linear")
        assert ours[f"ipcumzq{q}"] == pytest.approx(100 * i[z <= zq].sum() / i.sum(), rel=1e-6), q
