"""Outputs never overwrite inputs, every run is all-or-nothing, and an all-nodata result is a failure.

Every algorithm goes through processing.run in the real QGIS on small real files (the sample LAZ, GeoTIFFs and
GeoPackages written here, ONNX graphs of tests/onnx_models.py). A refused or failed run must leave the folder it
was given exactly as it was: no new file, no removed file, and every file byte for byte as before.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SAMPLE_LAZ
from tests.onnx_models import affine_model

UTM = "EPSG:32633"
X0, Y0 = 500_000.0, 5_600_160.0  # the sample LAZ covers 500000-500080, 5600000-5600080
BANDS6 = ["blue", "green", "red", "nir", "swir1", "swir2"]


def tif(path, data, res=10.0, x0=X0, y0=Y0, nodata=-9999.0, names=None):
    import rasterio
    from rasterio.transform import from_origin

    data = np.asarray(data, dtype="float32")
    data = data[None] if data.ndim == 2 else data
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype="float32", crs=UTM, transform=from_origin(x0, y0, res, res), nodata=nodata) as dst:
        dst.write(data)
        for i, name in enumerate(names or []):
            dst.set_band_description(i + 1, name)
    return str(path)


def gpkg(path, wkts, fields):
    """A GeoPackage layer (OGR) of WKT geometries with real-valued ``fields`` {name: values}."""
    from osgeo import ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer(Path(path).stem, srs, ogr.wkbPolygon if wkts[0].startswith("POLYGON") else ogr.wkbPoint)
    for name in fields:
        layer.CreateField(ogr.FieldDefn(name, ogr.OFTReal))
    for i, wkt in enumerate(wkts):
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        for name, values in fields.items():
            feature.SetField(name, values[i])
        layer.CreateFeature(feature)
    ds = None
    return str(path)


def laz(folder: Path, name="cloud.laz") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    return str(shutil.copy(SAMPLE_LAZ, folder / name))


def catalog(tmp: Path) -> str:
    for name in ("tile_a.laz", "tile_b.laz"):
        laz(tmp / "tiles", name)
    return str(tmp / "tiles")


def refl(tmp: Path, name="refl.tif", x0=X0, seed=0) -> str:
    rng = np.random.default_rng(seed)
    return tif(tmp / name, rng.uniform(0.02, 0.4, (6, 16, 16)), x0=x0, names=BANDS6)


def agb(tmp: Path, name="agb.tif") -> str:
    return tif(tmp / name, np.random.default_rng(1).uniform(50, 150, (16, 16)))


def points(tmp: Path, name="plots.gpkg") -> str:
    wkts = [f"POINT ({X0 + 20 + 25 * i} {Y0 - 30 - 20 * i})" for i in range(5)]
    return gpkg(tmp / name, wkts, {"agb": [80.0, 90.0, 100.0, 110.0, 120.0]})


def projects(tmp: Path, name="projects.gpkg", fields=None) -> str:
    square = f"POLYGON (({X0} {Y0}, {X0 + 160} {Y0}, {X0 + 160} {Y0 - 160}, {X0} {Y0 - 160}, {X0} {Y0}))"
    return gpkg(tmp / name, [square], fields or {"id": [1.0]})


def landsat_like(tmp: Path) -> str:
    """A product folder with a band file in it (read only by the run, which is refused before reading)."""
    folder = tmp / "LC08_L2SP_190025_20200612_20200823_02_T1"
    folder.mkdir()
    tif(folder / "LC08_L2SP_190025_20200612_20200823_02_T1_SR_B4.TIF", np.full((8, 8), 0.1), res=30.0)
    (folder / "LC08_L2SP_190025_20200612_20200823_02_T1_MTL.txt").write_text("GROUP = LANDSAT_METADATA_FILE\n")
    return str(folder)


# Each case: algorithm -> build(tmp, out) giving (parameters, output parameter, input parameter, the input file
# the output would have replaced).
def _lidarinfo(t, o):
    cloud = laz(t)
    return {"INPUT": cloud, "OUTPUT_HTML": str(o / "i.html"), "OUTPUT_JSON": cloud,
            "OUTPUT_FOOTPRINTS": str(o / "f.gpkg")}, "OUTPUT_JSON", "INPUT", cloud


def _cloud_onto_itself(t, o):  # classifyground, normalizeheight, treetops
    cloud = laz(t)
    return {"INPUT": cloud, "OUTPUT": cloud, "MAX_WORKERS": 1}, "OUTPUT", "INPUT", cloud


def _canopymetrics(t, o):
    cloud = laz(t)
    return {"INPUT": cloud, "RESOLUTION": 20, "OUTPUT": cloud, "MAX_WORKERS": 1}, "OUTPUT", "INPUT", cloud


def _canopyheightmodel(t, o):  # a tile inside the input catalog
    folder = catalog(t)
    tile = os.path.join(folder, "tile_b.laz")
    return {"INPUT": folder, "OUTPUT": tile, "MAX_WORKERS": 1}, "OUTPUT", "INPUT", tile


def _plotmetrics(t, o):
    plots = points(t)
    return {"INPUT": laz(t), "PLOTS": plots, "RADIUS": 10, "OUTPUT": plots}, "OUTPUT", "PLOTS", plots


def _modelinfo(t, o):
    model = str(affine_model(t / "model.onnx"))
    return {"INPUT": model, "OUTPUT_JSON": str(o / "m.json"), "OUTPUT_HTML": model}, "OUTPUT_HTML", "INPUT", model


def _predictraster(t, o):
    feat = tif(t / "feat.tif", np.random.default_rng(2).uniform(0, 1, (3, 16, 16)))
    return {"INPUT": [feat], "MODEL": str(affine_model(t / "model.onnx")), "OUTPUT": feat}, "OUTPUT", "INPUT", feat


def _simulatescene(t, o):  # no input: the output folder that is a file is refused, the file kept
    blocker = t / "scene"
    blocker.write_text("a file, not a folder\n")
    return {"SIZE": 60, "OUTPUT_FOLDER": str(blocker)}, "OUTPUT_FOLDER", None, str(blocker)


def _harmonizescene(t, o):  # a file inside the input product folder
    folder = landsat_like(t)
    band = os.path.join(folder, "LC08_L2SP_190025_20200612_20200823_02_T1_SR_B4.TIF")
    return {"INPUT": folder, "OUTPUT": band}, "OUTPUT", "INPUT", band


def _harmonizehighres(t, o):
    image, reference = refl(t, "image.tif"), refl(t, "reference.tif", seed=3)
    return {"INPUT": image, "REFERENCE": reference, "OUTPUT": reference,
            "OUTPUT_TABLE": str(o / "table.gpkg")}, "OUTPUT", "REFERENCE", reference


def _sarfeatures(t, o):
    rng = np.random.default_rng(4)
    vv = tif(t / "vv.tif", rng.gamma(4.4, 0.1 / 4.4, (32, 32)), nodata=None)
    vh = tif(t / "vh.tif", rng.gamma(4.4, 0.02 / 4.4, (32, 32)), nodata=None)
    return {"INPUT_VV": vv, "INPUT_VH": vh, "OUTPUT": vh}, "OUTPUT", "INPUT_VH", vh


def _spectralindices(t, o):
    image = refl(t)
    return {"INPUT": image, "INDICES": "NDVI", "OUTPUT": image}, "OUTPUT", "INPUT", image


def _compositescenes(t, o):
    a, b = refl(t, "a.tif"), refl(t, "b.tif", seed=5)
    return {"INPUTS": [a, b], "OUTPUT": b}, "OUTPUT", "INPUTS", b


def _validatepredictions(t, o):
    prediction = agb(t)
    return {"PREDICTION": prediction, "REFERENCE": points(t), "REFERENCE_FIELD": "agb",
            "OUTPUT_REPORT": prediction}, "OUTPUT_REPORT", "PREDICTION", prediction


def _trainmodel(t, o):
    target = agb(t)
    return {"FEATURES": [refl(t)], "TARGET": target, "OUTPUT_MODEL": target,
            "OUTPUT_REPORT": str(o / "r.html")}, "OUTPUT_MODEL", "TARGET", target


def _carbonstock(t, o):
    polygons = projects(t)
    return {"AGB": agb(t), "PROJECTS": polygons, "ROOT_SHOOT": 0, "OUTPUT": polygons,
            "OUTPUT_REPORT": str(o / "c.html")}, "OUTPUT", "PROJECTS", polygons


def _aggregatetogrid(t, o):
    fine = agb(t)
    return {"INPUT": fine, "RESOLUTION": 40, "OUTPUT": fine}, "OUTPUT", "INPUT", fine


def _importgedi(t, o):
    granule = t / "GEDI02_A_2019108080338_O01964_T05337_02_001_01.h5"
    granule.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(1016))
    return {"INPUT": [str(granule)], "OUTPUT": str(granule)}, "OUTPUT", "INPUT", str(granule)


CASES = {name[1:]: builder for name, builder in list(globals().items())
         if name.startswith("_") and callable(builder) and name[1:].isalpha() and name[1:].islower()}
CASES.update(classifyground=_cloud_onto_itself, normalizeheight=_cloud_onto_itself, treetops=_cloud_onto_itself)


def _snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder`` with its content hash (folders: None)."""
    return {p.relative_to(folder): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _refused(algorithm, parameters):
    """The message of the QgsProcessingException the run raises (any other outcome fails the test)."""
    import processing
    from qgis.core import QgsProcessingException

    try:
        processing.run(f"forestcarbon:{algorithm}", parameters)
    except QgsProcessingException as exc:
        assert "Traceback" not in str(exc)
        return str(exc)
    pytest.fail(f"{algorithm} ran with {parameters}")


def test_the_cases_cover_every_algorithm_that_writes_files():
    from processing_provider.provider import ALGORITHMS

    assert set(CASES) == {cls._name for cls in ALGORITHMS}
    assert len(CASES) == 20


@pytest.mark.parametrize("algorithm", sorted(CASES))
def test_output_on_an_input_is_refused_and_the_input_kept(algorithm, tmp_path, forestcarbon_provider):
    out = tmp_path / "out"
    out.mkdir()
    parameters, out_name, in_name, victim = CASES[algorithm](tmp_path, out)
    before = _snapshot(tmp_path)
    message = _refused(algorithm, parameters)
    assert out_name in message and victim in message
    if in_name is not None:
        assert f"input {in_name}" in message or f"input folder {in_name}" in message \
            or f"input folder of tiles {in_name}" in message, message
    else:
        assert "is a file" in message
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("how", ["relative", "symlink", "new tile in the catalog"])
def test_the_same_file_by_another_name_is_refused(how, tmp_path, forestcarbon_provider, monkeypatch):
    cloud = laz(tmp_path / "in")
    if how == "relative":
        monkeypatch.chdir(tmp_path / "in")
        output = os.path.join("..", "in", "cloud.laz")
    elif how == "symlink":
        os.symlink(tmp_path / "in", tmp_path / "link")
        output = str(tmp_path / "link" / "cloud.laz")
    else:  # a LAS/LAZ output inside the folder of tiles would be read as a tile by the next run
        cloud = str(tmp_path / "in")
        output = str(tmp_path / "in" / "normalized.laz")
    before = _snapshot(tmp_path)
    message = _refused("normalizeheight", {"INPUT": cloud, "OUTPUT": output, "MAX_WORKERS": 1})
    assert "OUTPUT" in message and "INPUT" in message
    if how == "new tile in the catalog":
        assert "read as one of its tiles" in message
    else:
        assert "would overwrite it" in message
    assert _snapshot(tmp_path) == before


def test_an_earlier_raster_inside_the_folder_of_tiles_may_be_replaced(tmp_path, forestcarbon_provider):
    """Only the LAS/LAZ files of a folder of tiles are read: a raster of an earlier run there is not an input."""
    import processing
    import rasterio

    folder = catalog(tmp_path)
    earlier = Path(folder) / "chm.tif"
    earlier.write_bytes(OLD)
    processing.run("forestcarbon:canopyheightmodel", {"INPUT": folder, "RESOLUTION": 2, "OUTPUT": str(earlier),
                                                      "MAX_WORKERS": 1})
    with rasterio.open(earlier) as src:
        assert src.read(1).shape == (40, 40)  # the sample covers 80 m x 80 m
    assert sorted(p.name for p in Path(folder).iterdir()) == ["chm.tif", "tile_a.laz", "tile_b.laz"]


@pytest.mark.parametrize("algorithm,parameters,names", [
    ("lidarinfo", lambda t: {"INPUT": laz(t / "in"), "OUTPUT_HTML": str(t / "out" / "r"),
                             "OUTPUT_JSON": str(t / "out" / "r.html"), "OUTPUT_FOOTPRINTS": str(t / "out" / "f.gpkg")},
     ("OUTPUT_HTML", "OUTPUT_JSON")),
    ("predictraster", lambda t: {"INPUT": [tif(t / "in" / "f.tif", np.ones((3, 8, 8)))],
                                 "MODEL": str(affine_model(t / "in" / "m.onnx")), "OUTPUT": str(t / "out" / "p.tif"),
                                 "OUTPUT_STD": str(t / "out" / "p.tif")}, ("OUTPUT", "OUTPUT_STD")),
    ("treetops", lambda t: {"INPUT": laz(t / "in"), "OUTPUT": str(t / "out" / "t.gpkg"),
                            "OUTPUT_CROWNS": str(t / "out" / ".." / "out" / "t.gpkg"), "MAX_WORKERS": 1},
     ("OUTPUT", "OUTPUT_CROWNS")),
])
def test_two_outputs_on_one_path_are_refused(algorithm, parameters, names, tmp_path, forestcarbon_provider):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    params = parameters(tmp_path)
    before = _snapshot(tmp_path)
    message = _refused(algorithm, params)
    assert all(name in message for name in names) and "the same path" in message
    assert _snapshot(tmp_path) == before


OLD = b"the previous run's output\n"


def _later_failure(algorithm, t, o):
    """(parameters, the output paths) of a run whose last output fails after the others were written; the
    first outputs already hold a previous run's files, which must survive the failure."""
    if algorithm == "trainmodel":  # the report's JSON is written after the model and the figures
        (o / "r.json").mkdir()
        params = {"FEATURES": [refl(t)], "TARGET": agb(t), "MODEL_TYPE": 1, "FOLDS": 2,
                  "OUTPUT_MODEL": str(o / "m.onnx"), "OUTPUT_REPORT": str(o / "r.html")}
        old = ["m.onnx", "r.html"]
    elif algorithm == "carbonstock":  # the projects already carry a result field: refused after the report
        params = {"AGB": agb(t), "PROJECTS": projects(t, fields={"co2e_total_t": [1.0]}), "ROOT_SHOOT": 0,
                  "SIMULATIONS": 10, "OUTPUT": str(o / "c.gpkg"), "OUTPUT_REPORT": str(o / "c.html")}
        old = ["c.html"]
    elif algorithm == "lidarinfo":  # GPX holds no polygons: the footprints fail after both reports
        params = {"INPUT": laz(t), "OUTPUT_HTML": str(o / "i.html"), "OUTPUT_JSON": str(o / "i.json"),
                  "OUTPUT_FOOTPRINTS": str(o / "f.gpx")}
        old = ["i.html", "i.json"]
    elif algorithm == "treetops":  # the tops' GeoPackage is created and open when the crowns' GPX fails
        params = {"INPUT": laz(t), "OUTPUT": str(o / "t.gpkg"), "OUTPUT_CROWNS": str(o / "crowns.gpx"),
                  "MAX_WORKERS": 1}
        old = ["t.gpkg"]
    else:  # harmonizehighres: GPX holds no table: the table fails after the image
        params = {"INPUT": refl(t, "image.tif"), "REFERENCE": refl(t, "reference.tif", seed=3),
                  "OUTPUT": str(o / "h.tif"), "OUTPUT_TABLE": str(o / "h_table.gpx")}
        old = ["h.tif"]
    for name in old:
        (o / name).write_bytes(OLD)
    return params


CAUSES = {"trainmodel": "r.json' (Is a directory)", "carbonstock": "already has the field(s) co2e_total_t",
          "lidarinfo": "f.gpx", "harmonizehighres": "h_table.gpx", "treetops": "crowns.gpx"}


@pytest.mark.parametrize("algorithm", sorted(CAUSES))
def test_a_failing_later_output_leaves_the_outputs_as_they_were(algorithm, tmp_path, forestcarbon_provider):
    out = tmp_path / "out"
    out.mkdir()
    parameters = _later_failure(algorithm, tmp_path, out)
    before = _snapshot(tmp_path)
    message = _refused(algorithm, parameters)
    assert CAUSES[algorithm] in message
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("algorithm,parameters", [
    ("trainmodel", lambda t, o: {"FEATURES": [refl(t)], "TARGET": agb(t), "OUTPUT_MODEL": str(o / "m.onnx"),
                                 "OUTPUT_REPORT": str(o / "r.html")}),
    ("carbonstock", lambda t, o: {"AGB": agb(t), "PROJECTS": projects(t), "ROOT_SHOOT": 0,
                                  "OUTPUT": str(o / "c.gpkg"), "OUTPUT_REPORT": str(o / "c.html")}),
    ("lidarinfo", lambda t, o: {"INPUT": laz(t), "OUTPUT_HTML": str(o / "i.html"), "OUTPUT_JSON": str(o / "i.json"),
                                "OUTPUT_FOOTPRINTS": str(o / "f.gpkg")}),
    ("harmonizehighres", lambda t, o: {"INPUT": refl(t, "image.tif"), "REFERENCE": refl(t, "reference.tif", seed=3),
                                       "OUTPUT": str(o / "h.tif"), "OUTPUT_TABLE": str(o / "h_table.gpkg")}),
])
def test_a_later_output_that_is_a_folder_is_refused_before_any_work(algorithm, parameters, tmp_path,
                                                                    forestcarbon_provider):
    out = tmp_path / "out"
    out.mkdir()
    params = parameters(tmp_path, out)
    last = [name for name in params if name.startswith("OUTPUT")][-1]
    Path(params[last]).mkdir()
    for name in params:
        if name.startswith("OUTPUT") and name != last:
            Path(params[name]).write_bytes(OLD)
    before = _snapshot(tmp_path)
    message = _refused(algorithm, params)
    assert last in message and "is a folder" in message
    assert _snapshot(tmp_path) == before


def _cancel_at(feedback, percent):
    feedback.progressChanged.connect(lambda value: feedback.cancel() if value >= percent else None)
    return feedback


@pytest.mark.parametrize("algorithm,percent", [("trainmodel", 100), ("normalizeheight", 50)])
def test_cancel_leaves_nothing_and_removes_the_folders_the_run_made(algorithm, percent, tmp_path,
                                                                    forestcarbon_provider):
    """trainmodel cancelled at 100 %, when every output is written; normalizeheight half-way, its LAZ
    being written."""
    import processing
    from qgis.core import QgsProcessingException, QgsProcessingFeedback

    new = tmp_path / "out" / "new" / "deeper"
    if algorithm == "trainmodel":
        parameters = {"FEATURES": [refl(tmp_path)], "TARGET": agb(tmp_path), "MODEL_TYPE": 1, "FOLDS": 2,
                      "OUTPUT_MODEL": str(new / "m.onnx"), "OUTPUT_REPORT": str(new / "r.html")}
    else:
        parameters = {"INPUT": catalog(tmp_path), "OUTPUT": str(new / "n.laz"), "OUTPUT_DTM": str(new / "dtm.tif"),
                      "MAX_WORKERS": 1}
    (tmp_path / "out").mkdir()
    before = _snapshot(tmp_path)
    feedback = _cancel_at(QgsProcessingFeedback(), percent)
    with pytest.raises(QgsProcessingException, match="(?i)cancel"):
        processing.run(f"forestcarbon:{algorithm}", parameters, feedback=feedback)
    assert feedback.isCanceled()
    assert _snapshot(tmp_path) == before


def test_outputs_in_new_folders_stay_when_the_run_succeeds(tmp_path, forestcarbon_provider):
    import processing

    new = tmp_path / "new" / "deeper"
    result = processing.run("forestcarbon:lidarinfo", {
        "INPUT": laz(tmp_path / "in"), "OUTPUT_HTML": str(new / "i.html"), "OUTPUT_JSON": str(new / "i.json"),
        "OUTPUT_FOOTPRINTS": str(new / "f.gpkg")})
    assert result["POINT_COUNT"] > 0
    assert sorted(p.name for p in new.iterdir()) == ["f.gpkg", "i.html", "i.json"]  # no undo folder left


# -- results that would be no-data everywhere ------------------------------------------------------

def _feat(tmp: Path, name="feat.tif", **kw) -> str:
    return tif(tmp / name, np.random.default_rng(6).uniform(0, 1, (3, 16, 16)), **kw)


@pytest.mark.parametrize("case,cause", [
    ("model returns NaN", "returned NaN or infinity for every pixel"),
    ("inputs no-data everywhere", "No pixel has data in every input band"),
    ("inputs do not overlap", "overlap"),
])
def test_prediction_that_would_be_nodata_everywhere_fails(case, cause, tmp_path, forestcarbon_provider):
    model = str(affine_model(tmp_path / "model.onnx", scale=float("nan") if case == "model returns NaN" else 2.0))
    if case == "model returns NaN":
        inputs, bands = [_feat(tmp_path)], None
    elif case == "inputs no-data everywhere":
        inputs, bands = [tif(tmp_path / "empty.tif", np.full((3, 16, 16), -9999.0))], None
    else:  # two bands here, the third from a raster 50 km away
        inputs, bands = [_feat(tmp_path), _feat(tmp_path, "far.tif", x0=X0 + 50_000)], "1,2,4"
    out = tmp_path / "out"
    out.mkdir()
    (out / "p.tif").write_bytes(OLD)  # a previous prediction stays as it was
    before = _snapshot(tmp_path)
    parameters = {"INPUT": inputs, "MODEL": model, "OUTPUT": str(out / "p.tif"), "MAX_WORKERS": 1}
    if bands:
        parameters["BANDS"] = bands
    message = _refused("predictraster", parameters)
    assert cause in message
    assert _snapshot(tmp_path) == before


def test_the_nan_model_does_return_nan(tmp_path):
    """The independent check of the case above: ONNX Runtime itself gives NaN for this model."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(affine_model(tmp_path / "m.onnx", scale=float("nan"))),
                                   providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": np.ones((1, 3, 8, 8), dtype=np.float32)})[0]
    assert np.isnan(y).all()


@pytest.mark.parametrize("case,cause", [
    ("scenes do not overlap", "does not overlap the first scene"),
    ("clouds everywhere", "has a valid observation in any of the 2 scene(s)"),
])
def test_composite_that_would_be_nodata_everywhere_fails(case, cause, tmp_path, forestcarbon_provider):
    rng = np.random.default_rng(7)
    if case == "scenes do not overlap":
        scenes = [refl(tmp_path, "a.tif"), refl(tmp_path, "b.tif", x0=X0 + 50_000, seed=8)]
    else:  # CFmask class 4 (cloud) at every pixel of both scenes
        scenes = [tif(tmp_path / f"{n}.tif", np.concatenate([rng.uniform(0.02, 0.4, (6, 16, 16)),
                                                             np.full((1, 16, 16), 4.0)]), names=BANDS6 + ["fmask"])
                  for n in ("a", "b")]
    out = tmp_path / "out"
    out.mkdir()
    (out / "c.tif").write_bytes(OLD)
    before = _snapshot(tmp_path)
    message = _refused("compositescenes", {"INPUTS": scenes, "OUTPUT": str(out / "c.tif")})
    assert cause in message
    assert _snapshot(tmp_path) == before
