"""Bad inputs a user can produce, for every algorithm, through processing.run in the real QGIS.

Each case is (algorithm id, a builder of its parameters, the message it must give). The run must
raise ``QgsProcessingException`` whose message matches and holds no traceback (processing.run turns
a Python exception into a QgsProcessingException whose text is the traceback), and nothing may be
left behind: the case's folder (inputs in ``in/``, outputs in ``out/``) must hold exactly what it held
before the run, inputs byte-size unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from tests.conftest import SAMPLE_LAZ
from tests.onnx_models import affine_model, pixel_model

UTM = "EPSG:32633"
X0, Y0 = 500_000.0, 5_600_160.0  # the sample LAZ covers 500000-500080, 5600000-5600080


# -- tiny inputs ---------------------------------------------------------------------------------

def write_tif(path, data, res=10.0, x0=X0, y0=Y0, crs=UTM, nodata=-9999.0, descriptions=None, dtype="float32"):
    import rasterio
    from rasterio.transform import from_origin

    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=dtype, crs=crs, transform=from_origin(x0, y0, res, res), nodata=nodata) as dst:
        dst.write(data.astype(dtype))
        for i, name in enumerate(descriptions or []):
            dst.set_band_description(i + 1, name)
    return path


def write_layer(path, geometries, fields=None, crs_epsg=32633, geometry_type=None):
    """A GeoPackage layer with OGR: ``geometries`` as WKT, ``fields`` {name: list of values}."""
    from osgeo import ogr, osr

    fields = fields or {}
    driver = ogr.GetDriverByName("GPKG")
    ds = driver.CreateDataSource(str(path))
    srs = None
    if crs_epsg is not None:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(crs_epsg)
    kind = geometry_type or (ogr.wkbPolygon if geometries and geometries[0].startswith("POLYGON")
                             else ogr.wkbPoint)
    layer = ds.CreateLayer(path.stem, srs, kind)
    for name, values in fields.items():
        sample = next((v for v in values if v is not None), 0.0)
        layer.CreateField(ogr.FieldDefn(name, ogr.OFTString if isinstance(sample, str) else ogr.OFTReal))
    for i, wkt in enumerate(geometries):
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        for name, values in fields.items():
            if values[i] is None:
                feature.SetFieldNull(name)
            else:
                feature.SetField(name, values[i])
        layer.CreateFeature(feature)
    ds = None
    return path


LANDSAT_ID = "LC08_L2SP_190025_20200612_20200823_02_T1"


def landsat_mtl(**drop_or_set) -> str:
    """A Collection-2 Level-2 MTL (ODL text) naming the band files of :func:`landsat_product`;
    keyword arguments set a field (a string) or drop it (None)."""
    fields = {"SPACECRAFT_ID": '"LANDSAT_8"', "PROCESSING_LEVEL": '"L2SP"', "DATE_ACQUIRED": "2020-06-12",
              "SCENE_CENTER_TIME": '"09:45:12.3Z"', "SUN_ELEVATION": "58.1", "SUN_AZIMUTH": "145.2"}
    for n in range(1, 8):
        fields[f"FILE_NAME_BAND_{n}"] = f'"{LANDSAT_ID}_SR_B{n}.TIF"'
    fields.update(drop_or_set)
    lines = ["GROUP = LANDSAT_METADATA_FILE", "  GROUP = PRODUCT_CONTENTS"]
    lines += [f"    {k} = {v}" for k, v in fields.items() if v is not None]
    lines += ["  END_GROUP = PRODUCT_CONTENTS", "END_GROUP = LANDSAT_METADATA_FILE", "END"]
    return "\n".join(lines) + "\n"


def landsat_product(folder: Path, **mtl) -> Path:
    folder.mkdir(parents=True)
    for n in range(1, 8):
        write_tif(folder / f"{LANDSAT_ID}_SR_B{n}.TIF", np.full((8, 8), 10000 + 500 * n), res=30.0, x0=X0,
                  y0=Y0, nodata=0, dtype="uint16")
    (folder / f"{LANDSAT_ID}_MTL.txt").write_text(landsat_mtl(**mtl))
    return folder


def card(**extra) -> dict:
    document = {"type": "Feature", "stac_extensions": [], "properties": {},
                "assets": {"model": {"href": "model.onnx", "roles": ["mlm:model"]}},
                "mlm:input": [{"bands": ["b1", "b2", "b3"]}],
                "mlm:output": [{"name": "y", "forest_carbon:meaning": "mean"}]}
    document.update(extra)
    return document


def model_folder(root: Path, name: str, document=None, sidecar_text=None) -> Path:
    """A folder with model.onnx (3 bands in, 3 out) and a card: model.json (document or raw text)."""
    folder = root / name
    folder.mkdir()
    affine_model(folder / "model.onnx")
    if document is not None:
        (folder / "model.json").write_text(json.dumps(document))
    if sidecar_text is not None:
        (folder / "model.json").write_text(sidecar_text)
    return folder


def zip_with(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def zip_bomb(path: Path, mib: int = 64) -> Path:
    """A zip whose one member inflates to ``mib`` MiB of zeros (about a thousandth of it compressed)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("GEDI02_A_2019108080338_O01964_T05337_02_001_01.h5", "w", force_zip64=True) as member:
            chunk = bytes(1 << 20)
            for _ in range(mib):
                member.write(chunk)
    return path


def zip_lying_about_size(path: Path, size: int = 2_000_000_000) -> Path:
    """A zip whose headers claim ``size`` bytes for a 1 KiB member (the central directory and the
    local header both rewritten): only counting while extracting catches the real size."""
    zip_with(path, {"GEDI02_A_2019108080338_O01964_T05337_02_001_01.h5": b"\x89HDF\r\n\x1a\n" + bytes(1016)})
    raw = bytearray(path.read_bytes())
    local = raw.find(b"PK\x03\x04")
    central = raw.find(b"PK\x01\x02")
    struct.pack_into("<I", raw, local + 22, size)
    struct.pack_into("<I", raw, central + 24, size)
    path.write_bytes(bytes(raw))
    return path


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """The shared tiny inputs (read-only for the cases)."""
    from osgeo import ogr

    root = tmp_path_factory.mktemp("bad_inputs_kit")
    k = {"root": root, "laz": str(SAMPLE_LAZ)}
    rng = np.random.default_rng(0)
    k["feat3"] = str(write_tif(root / "feat3.tif", rng.uniform(0, 1, (3, 16, 16))))
    k["refl"] = str(write_tif(root / "refl.tif", rng.uniform(0.02, 0.4, (6, 16, 16)),
                              descriptions=["blue", "green", "red", "nir", "swir1", "swir2"]))
    k["refl_far"] = str(write_tif(root / "refl_far.tif", rng.uniform(0.02, 0.4, (6, 16, 16)), x0=X0 + 50_000,
                                  descriptions=["blue", "green", "red", "nir", "swir1", "swir2"]))
    k["agb"] = str(write_tif(root / "agb.tif", rng.uniform(50, 150, (16, 16))))
    k["std"] = str(write_tif(root / "std.tif", rng.uniform(5, 15, (16, 16))))
    k["nocrs"] = str(write_tif(root / "nocrs.tif", rng.uniform(50, 150, (16, 16)), crs=None))
    k["far"] = str(write_tif(root / "far.tif", rng.uniform(50, 150, (16, 16)), x0=X0 + 50_000))
    k["allnodata"] = str(write_tif(root / "allnodata.tif", np.full((16, 16), -9999.0)))
    k["nan"] = str(write_tif(root / "nan.tif", np.full((32, 32), np.nan), nodata=None))
    k["vv_db"] = str(write_tif(root / "vv_db.tif", -np.abs(rng.normal(12, 3, (32, 32))), nodata=None))
    k["vv"] = str(write_tif(root / "vv.tif", rng.gamma(4.4, 0.1 / 4.4, (32, 32)), nodata=None))
    k["vh_other_grid"] = str(write_tif(root / "vh.tif", rng.gamma(4.4, 0.02 / 4.4, (32, 32)), res=20.0,
                                       nodata=None))
    (root / "corrupt.tif").write_bytes(b"II*\x00this is not a GeoTIFF")
    k["corrupt_tif"] = str(root / "corrupt.tif")
    (root / "corrupt.laz").write_bytes(b"LASF" + bytes(40) + b"truncated")
    k["corrupt_laz"] = str(root / "corrupt.laz")
    (root / "notes.txt").write_text("not a point cloud\n")
    k["text"] = str(root / "notes.txt")
    (root / "empty_folder").mkdir()
    k["empty_folder"] = str(root / "empty_folder")
    inside = [f"POINT ({X0 + 20 + 25 * i} {Y0 - 30 - 20 * i})" for i in range(5)]
    k["points"] = str(write_layer(root / "points.gpkg", inside, {"agb": [80.0, 90.0, 100.0, 110.0, 120.0],
                                                                   "empty": [None] * 5,
                                                                   "name": ["a", "b", "c", "d", "e"]}))
    k["points_empty"] = str(write_layer(root / "points_empty.gpkg", [], {"agb": []}))
    k["points_far"] = str(write_layer(root / "points_far.gpkg", [f"POINT ({X0 + 90_000} {Y0 + 90_000})"] * 3,
                                      {"agb": [1.0, 2.0, 3.0]}))
    square = f"POLYGON (({X0} {Y0}, {X0 + 160} {Y0}, {X0 + 160} {Y0 - 160}, {X0} {Y0 - 160}, {X0} {Y0}))"
    k["projects"] = str(write_layer(root / "projects.gpkg", [square], {"name": ["A"]}))
    k["projects_empty"] = str(write_layer(root / "projects_empty.gpkg", [], {"name": []},
                                          geometry_type=ogr.wkbPolygon))
    k["lines"] = str(write_layer(root / "lines.gpkg", [f"LINESTRING ({X0 + 10} {Y0 - 10}, {X0 + 70} {Y0 - 70})"],
                                 {"v": [1.0]}, geometry_type=ogr.wkbLineString))
    k["model"] = str(affine_model(root / "affine.onnx"))
    k["pixel_model"] = str(pixel_model(root / "pixel.onnx", [0.5, 0.2]))  # 2 features
    k["not_onnx"] = str(root / "fake.onnx")
    Path(k["not_onnx"]).write_bytes(b"this is not protobuf at all")
    k["landsat"] = str(landsat_product(root / "landsat"))
    return k


def copy_landsat(tmp: Path, **mtl) -> Path:
    return landsat_product(tmp / "in" / "landsat", **mtl)


# -- the table -----------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    algorithm: str
    build: Callable  # (kit, tmp, out) -> parameters
    match: str


def folder_at(out: Path) -> str:
    """An output path that is an existing folder."""
    folder = out / "a_folder.tif"
    folder.mkdir()
    return str(folder)


def landsat_run(**mtl):
    """harmonizescene on a copy of the tiny Landsat product whose MTL has ``mtl`` set or dropped."""
    return lambda k, t, o: {"INPUT": str(copy_landsat(t, **mtl)), "OUTPUT": str(o / "h.tif")}


def text_as_zip(tmp: Path) -> Path:
    path = tmp / "granules.zip"
    path.write_text("these are not the granules you are looking for\n")
    return path


# builders: each returns (kit, tmp, out) -> parameters; a value "@name" is the kit's input of that name
def _resolve(value, k):
    if isinstance(value, str) and value.startswith("@"):
        return k[value[1:]]
    if isinstance(value, list):
        return [_resolve(v, k) for v in value]
    return value


def run_with(outputs: dict, **fixed):
    """Parameters ``fixed`` (with "@input" references) plus ``outputs`` {name: file name in out/}."""
    def build(k, t, o):
        return {**{n: _resolve(v, k) for n, v in fixed.items()}, **{n: str(o / f) for n, f in outputs.items()}}
    return build


def lidar(**fixed):
    return run_with({"OUTPUT": fixed.pop("out", "out.tif")}, MAX_WORKERS=1, **fixed)


def info(**fixed):
    return run_with({"OUTPUT_HTML": "i.html", "OUTPUT_JSON": "i.json", "OUTPUT_FOOTPRINTS": "f.gpkg"}, **fixed)


def predict(**fixed):
    return run_with({"OUTPUT": "p.tif"}, **{"INPUT": ["@feat3"], "MODEL": "@model", **fixed})


def validate(reference, field):
    return run_with({"OUTPUT_REPORT": "v.html"}, PREDICTION="@agb", REFERENCE=reference, REFERENCE_FIELD=field)


def train(**fixed):
    return run_with({"OUTPUT_MODEL": "m.onnx", "OUTPUT_REPORT": "r.html"}, **fixed)


def carbon(**fixed):
    return run_with({"OUTPUT": "c.gpkg", "OUTPUT_REPORT": "c.html"}, **{"PROJECTS": "@projects", "ROOT_SHOOT": 0,
                                                                         **fixed})


def gedi(make_zip, **fixed):
    return lambda k, t, o: {"INPUT": [str(make_zip(t))], "OUTPUT": str(o / "g.gpkg"), **fixed}


def card_model(document=None, sidecar_text=None, name="model.json"):
    """predictraster on feat3 with a model folder holding ``document`` (or raw ``sidecar_text``)."""
    return lambda k, t, o: {"INPUT": [k["feat3"]], "OUTPUT": str(o / "p.tif"),
                            "MODEL": str(model_folder(t, "m", document, sidecar_text) / name)}


TOO_LARGE = r"A raster of [\d,]+ × [\d,]+ cells at a resolution of {res} would be too large .* Use a resolution of " \
            r"at least {fits} "
FOLDER_OUTPUT = r"{name}: '.*a_folder\.tif' is a folder; give a file name for the output"
QGIS_REFUSED = r"^Unable to execute algorithm\n{name} \(.*\): "
NOT_LAS = r"'corrupt\.laz' is not a readable LAS/LAZ file .* Check that it is a complete LAS or LAZ file"
NO_TILES = r"The folder '.*empty_folder' holds no \.las or \.laz file: choose a folder of LiDAR tiles or one file"
OUTSIDE_PRODUCT = r"The metadata file names '{name}', which lies outside the product folder '.*landsat' " \
                  r"\(through '\.\.' or a link\): the files of a product must be inside its folder"
ZIP_PATH = r"The zip '{zip}' holds a member named '{member}', a path outside the folder it would be unpacked into"

C = Case
CASES = [
    # --- lidarinfo
    C("lidarinfo-missing-file", "lidarinfo", lambda k, t, o: info(INPUT=str(t / "nowhere.laz"))(k, t, o),
      r"'.*nowhere\.laz' does not exist: give a LAS/LAZ file or a folder of them"),
    C("lidarinfo-corrupt-laz", "lidarinfo", info(INPUT="@corrupt_laz"), NOT_LAS),
    C("lidarinfo-empty-folder", "lidarinfo", info(INPUT="@empty_folder"), NO_TILES),
    C("lidarinfo-output-is-folder", "lidarinfo", lambda k, t, o: {**info(INPUT="@laz")(k, t, o),
                                                                  "OUTPUT_HTML": folder_at(o)},
      FOLDER_OUTPUT.format(name="OUTPUT_HTML")),
    # --- classifyground
    C("classifyground-corrupt-laz", "classifyground", lidar(INPUT="@corrupt_laz", out="g.laz"), NOT_LAS),
    C("classifyground-cell-zero", "classifyground", lidar(INPUT="@laz", CELL=0, out="g.laz"),
      r"Every SMRF parameter must be positive \(cell_m = 0\): give values above 0"),
    C("classifyground-window-huge", "classifyground", lidar(INPUT="@laz", WINDOW=1e9, out="g.laz"),
      r"WINDOW 1e\+09 m is larger than any object SMRF must remove .* give at most 1000 m"),
    C("classifyground-csf-rigidness", "classifyground", lidar(INPUT="@laz", METHOD=1, RIGIDNESS=1e9, out="g.laz"),
      r"RIGIDNESS must be 1, 2 or 3 \(got 1e\+09\)"),
    C("classifyground-output-is-input", "classifyground", lambda k, t, o: {
        "INPUT": str(shutil.copy(k["laz"], t / "in.laz")), "OUTPUT": str(t / "in.laz"), "MAX_WORKERS": 1},
      r"OUTPUT '.*in\.laz' is the input INPUT .*: the output would overwrite it"),
    C("classifyground-output-tif", "classifyground", lidar(INPUT="@laz", out="g.tif"),
      r"OUTPUT must end in \.laz or \.las"),
    # --- normalizeheight
    C("normalizeheight-text-file", "normalizeheight", lidar(INPUT="@text", out="n.laz"),
      QGIS_REFUSED.format(name="INPUT") + r"'.*notes\.txt' is not a file ending in \.las or \.laz( or \.vpc)? or a folder"),
    C("normalizeheight-dtm-resolution-zero", "normalizeheight",
      run_with({"OUTPUT": "n.laz", "OUTPUT_DTM": "dtm.tif"}, INPUT="@laz", DTM_RESOLUTION=0, MAX_WORKERS=1),
      r"DTM_RESOLUTION must be positive \(got 0\.0\)"),
    C("normalizeheight-dtm-grid-too-large", "normalizeheight",
      run_with({"OUTPUT": "n.laz", "OUTPUT_DTM": "dtm.tif"}, INPUT="@laz", DTM_RESOLUTION=1e-5, MAX_WORKERS=1),
      TOO_LARGE.format(res="1e-05", fits=r"0\.005")),
    C("normalizeheight-truncated-laz", "normalizeheight", lambda k, t, o: {
        "INPUT": str(truncated_laz(t)), "OUTPUT": str(o / "n.laz"), "MAX_WORKERS": 1},
      r"'truncated\.laz' is truncated or corrupt: it could not be read .*Re-download or re-export the file"),
    # --- canopymetrics
    C("canopymetrics-resolution-zero", "canopymetrics", lidar(INPUT="@laz", RESOLUTION=0),
      r"The resolution \(RESOLUTION\) must be positive \(got 0\.0 m\)"),
    C("canopymetrics-grid-too-large", "canopymetrics", lidar(INPUT="@laz", RESOLUTION=1e-6),
      TOO_LARGE.format(res="1e-06", fits=r"0\.005")),
    C("canopymetrics-extent-outside", "canopymetrics",
      lidar(INPUT="@laz", EXTENT=f"{X0 + 9000},{X0 + 9100},{Y0 + 9000},{Y0 + 9100} [{UTM}]"),
      r"The point cloud .* lies outside the requested extent .*: choose an extent that overlaps it"),
    C("canopymetrics-min-points-zero", "canopymetrics", lidar(INPUT="@laz", MIN_POINTS=0),
      QGIS_REFUSED.format(name="MIN_POINTS") + r"0 is not accepted: give a number at least 1"),
    C("canopymetrics-las-without-crs", "canopymetrics", lambda k, t, o: lidar(INPUT=str(las_without_crs(t)))(k, t, o),
      r"No CRS in nocrs\.las: set the CRS parameter"),
    C("canopymetrics-truncated-laz-in-workers", "canopymetrics", lambda k, t, o: {
        "INPUT": str(truncated_laz(t)), "OUTPUT": str(o / "m.tif"), "MAX_WORKERS": 2},
      r"'truncated\.laz' is truncated or corrupt: it could not be read .*Re-download or re-export the file"),
    # --- canopyheightmodel
    C("canopyheightmodel-resolution-zero", "canopyheightmodel", lidar(INPUT="@laz", RESOLUTION=0),
      r"The resolution \(RESOLUTION\) must be positive \(got 0\.0 m\)"),
    C("canopyheightmodel-grid-too-large", "canopyheightmodel", lidar(INPUT="@laz", RESOLUTION=1e-5),
      TOO_LARGE.format(res="1e-05", fits=r"0\.005")),
    C("canopyheightmodel-folder-without-tiles", "canopyheightmodel", lidar(INPUT="@empty_folder"), NO_TILES),
    C("canopyheightmodel-output-is-folder", "canopyheightmodel",
      lambda k, t, o: {"INPUT": k["laz"], "OUTPUT": folder_at(o), "MAX_WORKERS": 1},
      FOLDER_OUTPUT.format(name="OUTPUT")),
    C("canopyheightmodel-scheduler-garbage", "canopyheightmodel",
      lidar(INPUT="@laz", EXECUTION=1, SCHEDULER="no such scheduler!"),
      r"Cannot connect to the Dask scheduler at .*no such scheduler!.*: check the address and port"),
    # --- treetops
    C("treetops-window-zero", "treetops", lidar(INPUT="@laz", WS_INTERCEPT=0, WS_SLOPE=0, out="t.gpkg"),
      r"The window must have a positive size: set WS_INTERCEPT or WS_SLOPE above 0"),
    C("treetops-corrupt-laz", "treetops", lidar(INPUT="@corrupt_laz", out="t.gpkg"), NOT_LAS),
    C("treetops-folder-without-tiles", "treetops", lidar(INPUT="@empty_folder", out="t.gpkg"), NO_TILES),
    # --- plotmetrics
    C("plotmetrics-empty-plots", "plotmetrics", run_with({"OUTPUT": "p.gpkg"}, INPUT="@laz", PLOTS="@points_empty"),
      r"The plot layer has no plot with a geometry \(0 features\): give a layer of plot centres"),
    C("plotmetrics-radius-zero", "plotmetrics",
      run_with({"OUTPUT": "p.gpkg"}, INPUT="@laz", PLOTS="@points", RADIUS=0),
      r"The plot radius must be greater than 0 m \(got 0\.0\): set RADIUS"),
    C("plotmetrics-plots-outside", "plotmetrics",
      run_with({"OUTPUT": "p.gpkg"}, INPUT="@laz", PLOTS="@points_far"),
      r"None of the 3 plots overlaps the point cloud .*: check that the plots and the cloud cover the same area"),
    C("plotmetrics-plots-crs-wrong", "plotmetrics", lambda k, t, o: {
        "INPUT": k["laz"], "PLOTS": str(write_layer(t / "in" / "p.gpkg", [f"POINT ({X0 + 20} {Y0 - 130})"], {"a": [1.0]},
                                                   crs_epsg=4326)), "OUTPUT": str(o / "p.gpkg")},
      r"Plot \d+ cannot be reprojected from EPSG:4326 to the cloud's EPSG:32633 .*Set the layer's correct CRS"),
    C("plotmetrics-lines", "plotmetrics", lambda k, t, o: {
        "INPUT": k["laz"], "PLOTS": k["lines"], "OUTPUT": str(o / "p.gpkg")},
      r"Plot \d+ is neither a point nor a polygon \(LineString .*PLOTS must hold plot centres"),
    # --- modelinfo
    C("modelinfo-not-onnx", "modelinfo", run_with({"OUTPUT_JSON": "m.json"}, INPUT="@not_onnx"),
      r"'fake\.onnx' is not a valid ONNX model .*Export the model again"),
    C("modelinfo-empty-file", "modelinfo",
      lambda k, t, o: {"INPUT": str(empty_file(t / "empty.onnx")), "OUTPUT_JSON": str(o / "m.json")},
      r"'empty\.onnx' is not a valid ONNX model .*Export the model again"),
    C("modelinfo-missing-external-data", "modelinfo",
      lambda k, t, o: {"INPUT": str(model_without_its_data(t)), "OUTPUT_JSON": str(o / "m.json")},
      r"'model\.onnx' is not a valid ONNX model .*External data path does not exist"),
    C("modelinfo-output-is-folder", "modelinfo", lambda k, t, o: {"INPUT": k["model"], "OUTPUT_JSON": folder_at(o)},
      FOLDER_OUTPUT.format(name="OUTPUT_JSON")),
    # --- predictraster
    C("predictraster-bands-garbage", "predictraster", predict(BANDS="garbage"),
      r"BANDS 'garbage' is not a list of band numbers: write the 1-based numbers"),
    C("predictraster-bands-out-of-range", "predictraster", predict(BANDS="1,2,9"),
      r"BANDS \[1, 2, 9\] asks for bands outside 1-3 .*: give band numbers from 1 to 3"),
    C("predictraster-wrong-band-count", "predictraster", predict(MODEL="@pixel_model"),
      r"The model takes 2 bands but 3 were given .*: add the missing rasters to INPUT or pick bands with BANDS"),
    C("predictraster-corrupt-raster", "predictraster", predict(INPUT=["@corrupt_tif"]),
      QGIS_REFUSED.format(name="INPUT") + r".*corrupt\.tif'\] holds an item that cannot be opened"),
    C("predictraster-not-onnx", "predictraster", predict(MODEL="@not_onnx"),
      r"'fake\.onnx' is not a valid ONNX model: .*Export it again"),
    C("predictraster-no-overlap", "predictraster", predict(INPUT=["@feat3", "@far"], BANDS="1,4",
                                                           MODEL="@pixel_model"),
      r"The input raster 'far\.tif' does not overlap the first one, 'feat3\.tif'.*Give rasters of the same area"),
    C("predictraster-card-without-href", "predictraster",
      card_model(card(assets={"model": {"roles": ["mlm:model"]}})),
      r"The model card 'model\.json' has a model asset 'model' without an href: set its href"),
    C("predictraster-card-unknown-meaning", "predictraster",
      card_model(card(**{"mlm:output": [{"name": "y", "forest_carbon:meaning": "quantile:high"}]})),
      r"Output 'y' has meaning 'quantile:high': use mean, variance, log_variance, std or quantile:<q>"),
    C("predictraster-card-output-without-name", "predictraster",
      card_model(card(**{"mlm:output": [{"forest_carbon:meaning": "mean"}]})),
      r"The model card 'model\.json' is malformed \(missing key 'name'\): follow the STAC"),
    C("predictraster-broken-sidecar", "predictraster", card_model(sidecar_text='{"assets": {', name="model.onnx"),
      r"The model card 'model\.json' is not valid JSON .*: fix it, or move it away"),
    C("predictraster-card-href-outside", "predictraster",
      card_model(card(assets={"model": {"href": "../affine.onnx", "roles": ["mlm:model"]}})),
      r"The model card points outside its folder \('\.\./affine\.onnx'\): keep the \.onnx files beside the card"),
    C("predictraster-deepness-metadata-garbage", "predictraster",
      lambda k, t, o: {"INPUT": [k["feat3"]], "OUTPUT": str(o / "p.tif"), "MODEL": str(affine_model(
          t / "in" / "deepness.onnx", metadata={"model_type": "Regressor", "standardization_mean": "[0.1, oops]"}))},
      r"The model card 'deepness\.onnx' is malformed \(could not convert string to float.*give Deepness's metadata keys"),
    C("predictraster-tile-size-huge", "predictraster", predict(TILE_SIZE=1_000_000),
      r"TILE_SIZE 1000000 is too large: tiles of at most 8192 pixels fit in memory"),
    C("predictraster-overlap-not-below-tile", "predictraster", predict(TILE_SIZE=64, OVERLAP=64),
      r"OVERLAP must be between 0 and the tile size 64 \(got 64\): give a smaller OVERLAP"),
    C("predictraster-batch-size-huge", "predictraster", predict(BATCH_SIZE=10_000_000),
      r"BATCH_SIZE 10000000 with TILE_SIZE 256 would need [\d,.]+ GiB per batch, more than 2 GiB: give BATCH_SIZE 0"),
    # --- simulatescene
    C("simulatescene-output-is-file", "simulatescene",
      lambda k, t, o: {"SIZE": 60, "OUTPUT_FOLDER": str(shutil.copy(k["text"], o / "scene"))},
      r"OUTPUT_FOLDER: '.*scene' is a file; give a folder for the output"),
    C("simulatescene-size-too-small", "simulatescene", run_with({"OUTPUT_FOLDER": "scene"}, SIZE=5),
      QGIS_REFUSED.format(name="SIZE") + r"5 is not accepted: give a number at least 30 and at most 20000"),
    C("simulatescene-density-too-high", "simulatescene",
      run_with({"OUTPUT_FOLDER": "scene"}, SIZE=60, PULSE_DENSITY=1e6),
      QGIS_REFUSED.format(name="PULSE_DENSITY") + r"1000000\.0 is not accepted: give a number at least 0\.1"),
    # --- harmonizescene
    C("harmonizescene-mtl-without-date", "harmonizescene", landsat_run(DATE_ACQUIRED=None),
      r"The MTL '.*_MTL\.txt' has no valid DATE_ACQUIRED \(got 'nothing'; expected YYYY-MM-DD\).*Download"),
    C("harmonizescene-mtl-without-sun-angles", "harmonizescene", landsat_run(SUN_ELEVATION=None),
      r"The MTL '.*_MTL\.txt' has no valid SUN_ELEVATION \(got 'nothing'\).*Download the product's MTL again"),
    C("harmonizescene-mtl-garbage-date", "harmonizescene", landsat_run(DATE_ACQUIRED="yesterday"),
      r"has no valid DATE_ACQUIRED \(got 'yesterday'; expected YYYY-MM-DD\)"),
    C("harmonizescene-mtl-sun-below-horizon", "harmonizescene", landsat_run(SUN_ELEVATION="-12.5"),
      r"gives SUN_ELEVATION -12\.5°: reflectance needs the sun above the horizon"),
    C("harmonizescene-mtl-escapes-folder", "harmonizescene",
      lambda k, t, o: {"INPUT": str(escaping_landsat(t)), "OUTPUT": str(o / "h.tif")},
      OUTSIDE_PRODUCT.format(name=r"\.\./stolen_SR_B4\.TIF")),
    C("harmonizescene-band-symlink-outside", "harmonizescene",
      lambda k, t, o: {"INPUT": str(symlinked_landsat(t)), "OUTPUT": str(o / "h.tif")},
      OUTSIDE_PRODUCT.format(name=f"{LANDSAT_ID}_SR_B4\\.TIF")),
    C("harmonizescene-s2-band-symlink-outside", "harmonizescene",
      lambda k, t, o: {"INPUT": str(symlinked_s2(t)), "OUTPUT": str(o / "h.tif")},
      r"The product's file 'T33UUU_20200612T100031_B04\.tif', which lies outside the product folder '.*T33UUU'"),
    C("harmonizescene-reference-grid-without-crs", "harmonizescene",
      run_with({"OUTPUT": "h.tif"}, INPUT="@landsat", REFERENCE_GRID="@nocrs"),
      r"The reference grid '.*nocrs\.tif' has no CRS: assign its CRS .*or leave REFERENCE_GRID empty"),
    C("harmonizescene-resolution-zero", "harmonizescene",
      run_with({"OUTPUT": "h.tif"}, INPUT="@landsat", TARGET_RESOLUTION=0),
      r"TARGET_RESOLUTION must be greater than 0 \(got 0\.0\)"),
    C("harmonizescene-grid-too-large", "harmonizescene",
      run_with({"OUTPUT": "h.tif"}, INPUT="@landsat", TARGET_RESOLUTION=1e-5),
      TOO_LARGE.format(res="1e-05", fits=r"0\.002")),
    C("harmonizescene-broken-s2-metadata", "harmonizescene",
      lambda k, t, o: {"INPUT": str(broken_s2(t)), "OUTPUT": str(o / "h.tif")},
      r"The metadata file '.*MTD_MSIL2A\.xml' cannot be read .*Download the product again"),
    C("harmonizescene-empty-folder", "harmonizescene", run_with({"OUTPUT": "h.tif"}, INPUT="@empty_folder"),
      r"No Landsat MTL or Sentinel-2 metadata or band files found in '.*empty_folder'\. Give a Landsat"),
    # --- harmonizehighres
    C("harmonizehighres-no-overlap", "harmonizehighres",
      run_with({"OUTPUT": "h.tif"}, INPUT="@refl", REFERENCE="@refl_far"),
      r"Only 0 valid pixels overlap between the image and the reference.*Give a reference that covers the image"),
    C("harmonizehighres-band-names-garbage", "harmonizehighres",
      run_with({"OUTPUT": "h.tif"}, INPUT="@refl", REFERENCE="@refl", BAND_NAMES=",,garbage"),
      r"BAND_NAMES names 3 bands but the image has 6: give 6 comma-separated names"),
    C("harmonizehighres-corrupt-reference", "harmonizehighres",
      run_with({"OUTPUT": "h.tif"}, INPUT="@refl", REFERENCE="@corrupt_tif"),
      QGIS_REFUSED.format(name="REFERENCE") + r"'.*corrupt\.tif' cannot be opened as a raster layer"),
    C("harmonizehighres-no-crs", "harmonizehighres", run_with({"OUTPUT": "h.tif"}, INPUT="@nocrs", REFERENCE="@refl"),
      r"Both the image and the reference need a coordinate reference system: assign the missing one"),
    # --- sarfeatures
    C("sarfeatures-window-even", "sarfeatures",
      run_with({"OUTPUT": "s.tif"}, INPUT_VV="@vv", INPUT_VH="@vv", WINDOW=8),
      r"WINDOW must be an odd whole number of pixels, 3 or more \(got 8\)"),
    C("sarfeatures-window-huge", "sarfeatures",
      run_with({"OUTPUT": "s.tif"}, INPUT_VV="@vv", INPUT_VH="@vv", WINDOW=100_001),
      r"WINDOW 100001 is too large: .*give an odd number up to 25"),
    C("sarfeatures-looks-zero", "sarfeatures", run_with({"OUTPUT": "s.tif"}, INPUT_VV="@vv", INPUT_VH="@vv", LOOKS=0),
      r"LOOKS \(the equivalent number of looks\) must be a number greater than 0 \(got 0\.0\)"),
    C("sarfeatures-grids-differ", "sarfeatures",
      run_with({"OUTPUT": "s.tif"}, INPUT_VV="@vv", INPUT_VH="@vh_other_grid"),
      r"INPUT_VV and INPUT_VH are not on the same grid .*resample one onto the other's grid"),
    C("sarfeatures-missing-file", "sarfeatures",
      lambda k, t, o: {"INPUT_VV": str(t / "vv_missing.tif"), "INPUT_VH": k["vv"], "OUTPUT": str(o / "s.tif")},
      QGIS_REFUSED.format(name="INPUT_VV") + r"'.*vv_missing\.tif' does not exist"),
    C("sarfeatures-db-values", "sarfeatures", lambda k, t, o: {
        "INPUT_VV": k["vv_db"], "INPUT_VH": k["vv"], "OUTPUT": str(o / "s.tif")},
      r"INPUT_VV \('vv_db\.tif'\): 100% of its pixels are ≤ 0, as dB values are; .*Convert it first"),
    C("sarfeatures-all-nan", "sarfeatures", run_with({"OUTPUT": "s.tif"}, INPUT_VV="@vv", INPUT_VH="@nan"),
      r"INPUT_VH \('nan\.tif'\) has no valid pixel"),
    # --- spectralindices
    C("spectralindices-indices-garbage", "spectralindices",
      run_with({"OUTPUT": "i.tif"}, INPUT="@refl", INDICES="garbage"),
      r"Unknown index GARBAGE: choose among NDVI, EVI"),
    C("spectralindices-band-map-garbage", "spectralindices",
      run_with({"OUTPUT": "i.tif"}, INPUT="@refl", INDICES="NDVI", BAND_MAP="garbage"),
      r"BAND_MAP item 'garbage' is not name=number: write e\.g\. 'red=3,nir=8'"),
    C("spectralindices-unnamed-bands", "spectralindices", run_with({"OUTPUT": "i.tif"}, INPUT="@feat3", INDICES="NDVI"),
      r"NDVI needs the nir .* Give its 1-based band number with BAND_MAP"),
    C("spectralindices-band-map-out-of-range", "spectralindices",
      run_with({"OUTPUT": "i.tif"}, INPUT="@refl", INDICES="NDVI", BAND_MAP="red=3,nir=40"),
      r"BAND_MAP nir=40: the raster has bands 1 to 6"),
    C("spectralindices-all-nodata", "spectralindices",
      run_with({"OUTPUT": "i.tif"}, INPUT="@allnodata", INDICES="NDVI", BAND_MAP="red=1,nir=1"),
      r"No pixel of 'allnodata\.tif' gives a valid index: the bands used \(band 1\) are no-data everywhere"),
    # --- compositescenes
    C("compositescenes-no-overlap", "compositescenes",
      run_with({"OUTPUT": "c.tif"}, INPUTS=["@refl", "@refl_far"]),
      r"The scene 'refl_far\.tif' does not overlap the first scene, 'refl\.tif'.*Give scenes of one area"),
    C("compositescenes-band-names-differ", "compositescenes", run_with({"OUTPUT": "c.tif"}, INPUTS=["@refl", "@feat3"]),
      r"The scenes have no band in common .*Harmonize the scenes first"),
    C("compositescenes-text-file", "compositescenes", run_with({"OUTPUT": "c.tif"}, INPUTS=["@text"]),
      QGIS_REFUSED.format(name="INPUTS") + r".*notes\.txt'\] holds an item that cannot be opened"),
    # --- validatepredictions
    C("validatepredictions-missing-field", "validatepredictions", validate("@points", "nope"),
      r"REFERENCE has no field 'nope'\. Fields: agb, empty, name"),
    C("validatepredictions-null-field", "validatepredictions", validate("@points", "empty"),
      r"REFERENCE has no feature with both a geometry and a value of 'empty' \(5 feature\(s\) without one\)"),
    C("validatepredictions-empty-reference", "validatepredictions", validate("@points_empty", "agb"),
      r"REFERENCE has no feature with both a geometry and a value of 'agb' \(0 feature\(s\) without one\)"),
    C("validatepredictions-text-field", "validatepredictions", validate("@points", "name"),
      r"The field 'name' of REFERENCE is not numeric \(String\)\. Choose a numeric field: agb, empty"),
    C("validatepredictions-no-overlap", "validatepredictions", validate("@points_far", "agb"),
      r"No valid pair of prediction and reference: they do not overlap.*Check that both cover the same area"),
    C("validatepredictions-std-outside", "validatepredictions",
      run_with({"OUTPUT_REPORT": "v.html"}, PREDICTION="@agb", STD="@far", REFERENCE="@points",
               REFERENCE_FIELD="agb"),
      r"STD \('far\.tif'\) does not overlap PREDICTION \('agb\.tif'\): give the uncertainty rasters"),
    # --- trainmodel
    C("trainmodel-missing-target-field", "trainmodel", train(FEATURES=["@refl"], TARGET="@points", TARGET_FIELD="nope"),
      r"TARGET has no field 'nope'\. Fields: agb, empty, name"),
    C("trainmodel-empty-target", "trainmodel", train(FEATURES=["@refl"], TARGET="@points_empty", TARGET_FIELD="agb"),
      r"TARGET has no feature with a geometry and a value in 'agb'"),
    C("trainmodel-null-target", "trainmodel", train(FEATURES=["@refl"], TARGET="@points", TARGET_FIELD="empty"),
      r"TARGET has no feature with a geometry and a value in 'empty'"),
    C("trainmodel-no-target", "trainmodel", train(FEATURES=["@refl"]),
      r"TARGET '' cannot be loaded as a layer: feature rasters need a TARGET raster or point/polygon layer"),
    C("trainmodel-feature-fields-garbage", "trainmodel",
      train(FEATURES=["@points"], TARGET_FIELD="agb", FEATURE_FIELDS="garbage"),
      r"FEATURE_FIELDS names field\(s\) FEATURES lacks: garbage\. Numeric fields: agb, empty"),
    # --- carbonstock
    C("carbonstock-no-agb-or-height", "carbonstock", carbon(),
      r"Give either AGB \(a biomass raster, Mg/ha\) or HEIGHT with ALLOMETRY, not both and not neither"),
    C("carbonstock-empty-projects", "carbonstock", carbon(AGB="@agb", PROJECTS="@projects_empty"),
      r"PROJECTS has no features: give a polygon layer"),
    C("carbonstock-agb-without-crs", "carbonstock", carbon(AGB="@nocrs"),
      r"The raster '.*nocrs\.tif' has no CRS\. Assign one"),
    C("carbonstock-custom-allometry-without-a", "carbonstock", carbon(HEIGHT="@agb", ALLOMETRY=0),
      r"The custom allometry AGB = a·H\^b needs ALLOMETRY_A and ALLOMETRY_B"),
    C("carbonstock-all-nodata", "carbonstock", carbon(AGB="@allnodata"),
      r"None of the 1 project polygons holds a valid pixel of 'allnodata\.tif'.*Check that they cover the same"),
    C("carbonstock-std-outside", "carbonstock", carbon(AGB="@agb", AGB_STD="@far"),
      r"AGB_STD \('far\.tif'\) does not overlap 'agb\.tif': the uncertainty rasters must cover the map"),
    C("carbonstock-points-as-projects", "carbonstock", carbon(AGB="@agb", PROJECTS="@points"),
      r"PROJECTS holds no polygon \(5 features without a polygon geometry"),
    # --- aggregatetogrid
    C("aggregatetogrid-statistics-garbage", "aggregatetogrid",
      run_with({"OUTPUT": "a.tif"}, INPUT="@agb", RESOLUTION=30, STATISTICS="garbage"),
      r"Unknown statistic 'garbage'\. Use a comma-separated list of mean, min"),
    C("aggregatetogrid-percentile-out-of-range", "aggregatetogrid",
      run_with({"OUTPUT": "a.tif"}, INPUT="@agb", RESOLUTION=30, STATISTICS="p150"),
      r"Unknown statistic 'p150': percentiles go from p0 to p100"),
    C("aggregatetogrid-no-grid", "aggregatetogrid", run_with({"OUTPUT": "a.tif"}, INPUT="@agb"),
      r"Give either a reference grid .* or a resolution in metres"),
    C("aggregatetogrid-grid-too-large", "aggregatetogrid", run_with({"OUTPUT": "a.tif"}, INPUT="@agb", RESOLUTION=1e-6),
      TOO_LARGE.format(res="1e-06", fits=r"0\.002")),
    C("aggregatetogrid-no-crs", "aggregatetogrid", run_with({"OUTPUT": "a.tif"}, INPUT="@nocrs", RESOLUTION=30),
      r"'.*nocrs\.tif' has no coordinate reference system, so a resolution in metres has no meaning\. Assign"),
    C("aggregatetogrid-output-is-input", "aggregatetogrid", lambda k, t, o: {
        "INPUT": str(shutil.copy(k["agb"], t / "agb.tif")), "RESOLUTION": 30, "OUTPUT": str(t / "agb.tif")},
      r"OUTPUT '.*agb\.tif' is the input INPUT .*: the output would overwrite it"),
    # --- importgedi
    C("importgedi-zip-bomb", "importgedi", gedi(lambda t: zip_bomb(t / "bomb.zip")),
      r"The zip 'bomb\.zip' member '.*\.h5' would inflate [\d,]+ bytes into 67,108,864 \(more than 100 times\): "
      r"that is a zip bomb"),
    C("importgedi-zip-lies-about-size", "importgedi", gedi(lambda t: zip_lying_about_size(t / "lying.zip", 1 << 31)),
      r"The zip 'lying\.zip' member '.*\.h5' would inflate 1\d bytes into 2,147,483,648"),
    C("importgedi-zip-path-traversal", "importgedi",
      gedi(lambda t: zip_with(t / "evil.zip", {"../../evil.h5": b"\x89HDF"})),
      ZIP_PATH.format(zip=r"evil\.zip", member=r"\.\./\.\./evil\.h5")),
    C("importgedi-zip-absolute-path", "importgedi",
      gedi(lambda t: zip_with(t / "abs.zip", {"/tmp/abs.h5": b"\x89HDF"})),
      ZIP_PATH.format(zip=r"abs\.zip", member=r"/tmp/abs\.h5")),
    C("importgedi-zip-too-many-members", "importgedi",
      gedi(lambda t: zip_with(t / "many.zip", {f"f{i}.h5": b"" for i in range(5000)})),
      r"The zip 'many\.zip' holds 5,000 members, more than the 1,000"),
    C("importgedi-not-a-zip", "importgedi", gedi(text_as_zip),
      r"'.*granules\.zip' is not a valid zip file .*: download it again"),
    C("importgedi-beams-garbage", "importgedi", gedi(lambda t: zip_with(t / "one.zip", {"x.h5": b"\x89HDF"}),
                                                     BEAMS="garbage"),
      r"Unknown GEDI beam 'garbage'\. Use beam names"),
]


def escaping_landsat(tmp: Path) -> Path:
    """A product whose MTL names a band file one folder up (a real raster there: it must not be read)."""
    folder = copy_landsat(tmp, FILE_NAME_BAND_4='"../stolen_SR_B4.TIF"')
    shutil.copy(folder / f"{LANDSAT_ID}_SR_B4.TIF", folder.parent / "stolen_SR_B4.TIF")
    (folder / f"{LANDSAT_ID}_SR_B4.TIF").unlink()
    return folder


def truncated_laz(tmp: Path) -> Path:
    """The first half of the sample LAZ: an interrupted download."""
    data = SAMPLE_LAZ.read_bytes()
    path = tmp / "in" / "truncated.laz"
    path.write_bytes(data[: len(data) // 2])
    return path


def las_without_crs(tmp: Path) -> Path:
    """The sample stand's first 20,000 points in a LAS file without any CRS record."""
    import laspy

    source = laspy.read(SAMPLE_LAZ)
    header = laspy.LasHeader(point_format=source.header.point_format.id, version=source.header.version)
    header.offsets, header.scales = source.header.offsets, source.header.scales
    out = laspy.LasData(header)
    out.points = source.points[:20_000].copy()
    path = tmp / "in" / "nocrs.las"
    out.write(path)
    return path


def symlinked_landsat(tmp: Path) -> Path:
    """A product whose red band is a link to a raster outside its folder."""
    folder = copy_landsat(tmp)
    band = folder / f"{LANDSAT_ID}_SR_B4.TIF"
    outside = tmp / "in" / "elsewhere.TIF"
    band.rename(outside)
    band.symlink_to(outside)
    return folder


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def model_without_its_data(tmp: Path) -> Path:
    """An ONNX model keeping its weights in 'external.bin', which is missing."""
    import onnx

    folder = tmp / "in" / "external"
    folder.mkdir(parents=True)
    model = onnx.load(str(affine_model(folder / "tmp.onnx")))
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, location="external.bin",
                    size_threshold=0)
    (folder / "tmp.onnx").unlink()
    (folder / "external.bin").unlink()
    return folder / "model.onnx"


def symlinked_s2(tmp: Path) -> Path:
    """A folder of Sentinel-2 band files (no metadata: the date is in their names) whose red band is a
    link to a raster outside it."""
    folder = tmp / "in" / "T33UUU"
    folder.mkdir(parents=True)
    for band in ("B02", "B03", "B08"):
        write_tif(folder / f"T33UUU_20200612T100031_{band}.tif", np.full((8, 8), 1500), nodata=0, dtype="uint16")
    outside = write_tif(tmp / "in" / "red.tif", np.full((8, 8), 900), nodata=0, dtype="uint16")
    (folder / "T33UUU_20200612T100031_B04.tif").symlink_to(outside)
    return folder


def broken_s2(tmp: Path) -> Path:
    folder = tmp / "in" / "S2A_MSIL2A_20200612T100031_N0214_R122_T33UUU_20200612T111111.SAFE"
    folder.mkdir(parents=True)
    (folder / "MTD_MSIL2A.xml").write_text("<?xml version='1.0'?><n1:Level-2A_User_Product xmlns:n1='x'><General")
    return folder


def test_the_table_covers_every_algorithm():
    from processing_provider.provider import ALGORITHMS

    names = {cls._name for cls in ALGORITHMS}
    assert len(names) == 20
    covered = {case.algorithm for case in CASES}
    assert covered == names, names - covered
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_processing_exception(case, kit, tmp_path, forestcarbon_provider):
    import processing
    from qgis.core import QgsProcessingException

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "in").mkdir()
    parameters = case.build(kit, tmp_path, out)
    parameters = {k: (str(v) if isinstance(v, Path) else v) for k, v in parameters.items()}
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    inputs = {p: p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()}
    try:
        processing.run(f"forestcarbon:{case.algorithm}", parameters)
    except QgsProcessingException as exc:
        message = str(exc)
    except Exception as exc:  # noqa: BLE001 - any other type is the defect this test exists for
        pytest.fail(f"{type(exc).__name__} instead of QgsProcessingException: {exc}")
    else:
        pytest.fail("the run succeeded")
    if os.environ.get("BAD_INPUTS_SHOW"):
        print(f"\n[{case.id}] {message}")
    import re

    assert re.search(case.match, message), f"message {message!r} does not match {case.match!r}"
    assert "Traceback" not in message
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before, f"left behind: {sorted(set(after) - set(before))}"
    for path, size in inputs.items():
        assert path.stat().st_size == size, f"input {path} changed"


# -- the limits themselves, in the core ----------------------------------------------------------

def test_zip_refused_on_declared_size_leaves_nothing(tmp_path):
    from forest_carbon_plugin.core.archives import extract_members
    from forest_carbon_plugin.core.errors import ForestCarbonError

    rng = np.random.default_rng(1)
    archive = zip_with(tmp_path / "three.zip", {f"g{i}.h5": rng.bytes(1 << 20) for i in range(3)})
    with pytest.raises(ForestCarbonError, match=r"would unpack to 3\.0 MiB, more than the limit of 2\.0 MiB"):
        extract_members(archive, tmp_path / "dest", max_total=2 << 20)
    assert not (tmp_path / "dest").exists()


def test_zip_with_a_damaged_member_leaves_nothing(tmp_path):
    """The first member is written, the second fails its CRC: the folder goes, with the first."""
    from forest_carbon_plugin.core.archives import extract_members
    from forest_carbon_plugin.core.errors import ForestCarbonError

    rng = np.random.default_rng(2)
    first, second = rng.bytes(300_000), rng.bytes(300_000)
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.h5", first)
        archive.writestr("b.h5", second)
    raw = bytearray(path.read_bytes())
    at = raw.find(second[:64])
    raw[at + 1000] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ForestCarbonError, match="two.zip' is damaged"):
        extract_members(path, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_zip_within_the_limits_is_unpacked_byte_for_byte(tmp_path):
    from forest_carbon_plugin.core.archives import extract_members

    rng = np.random.default_rng(3)
    members = {"sub/GEDI02_A_x.h5": rng.bytes(200_000), "GEDI02_B_x.h5": rng.bytes(100_000), "readme.txt": b"x"}
    archive = zip_with(tmp_path / "ok.zip", members)
    out = extract_members(archive, tmp_path / "dest", wanted=lambda name: name.endswith(".h5"))
    assert [p.name for p in out] == ["GEDI02_A_x.h5", "GEDI02_B_x.h5"]
    assert out[0].read_bytes() == members["sub/GEDI02_A_x.h5"] and out[1].read_bytes() == members["GEDI02_B_x.h5"]
    assert all(tmp_path / "dest" in p.parents for p in out)


def test_importgedi_removes_its_temporary_folder(tmp_path, monkeypatch, forestcarbon_provider):
    import tempfile

    import processing
    from qgis.core import QgsProcessingException

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    archive = zip_with(tmp_path / "notgedi.zip", {"granule.h5": b"not HDF5 at all"})
    with pytest.raises(QgsProcessingException, match="'granule.h5' is not an HDF5 file"):
        processing.run("forestcarbon:importgedi", {"INPUT": [str(archive)], "OUTPUT": str(tmp_path / "g.gpkg")})
    assert list(scratch.iterdir()) == []
    assert not (tmp_path / "g.gpkg").exists()


def test_grid_limit_names_the_finest_resolution_that_fits():
    """1 km × 1 km at 1 cm is 10¹⁰ cells; 400 M cells fit at 1 cm × √(10¹⁰/4·10⁸) = 5 cm."""
    from forest_carbon_plugin.core.errors import ForestCarbonError
    from forest_carbon_plugin.core.raster.grid import MAX_MEMORY_CELLS, Grid

    with pytest.raises(ForestCarbonError, match=r"100,000 × 100,000 cells .* at least 0\.05 "):
        Grid.covering(0.0, 0.0, 1000.0, 1000.0, 0.01)
    fits = Grid.covering(0.0, 0.0, 1000.0, 1000.0, 0.05)
    assert fits.size == 20_000 ** 2 <= MAX_MEMORY_CELLS


MEMORY_SCRIPT = r"""
import os, resource, sys
sys.path[:0] = [sys.argv[1], "/usr/share/qgis/python/plugins"]
from qgis.core import QgsApplication, QgsProcessingException
app = QgsApplication([], False)
app.initQgis()
from processing.core.Processing import Processing
Processing.initialize()
import processing
from processing_provider.provider import ForestCarbonProvider
provider = ForestCarbonProvider()  # kept referenced: the registry does not own a Python provider
assert QgsApplication.processingRegistry().addProvider(provider)
with open("/proc/self/status") as status:
    vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
resource.setrlimit(resource.RLIMIT_AS, (vm + (700 << 20) if hard == resource.RLIM_INFINITY
                                        else min(vm + (700 << 20), hard), hard))
try:
    processing.run("forestcarbon:canopyheightmodel", {"INPUT": sys.argv[2], "RESOLUTION": 0.01, "METHOD": 1,
                                                      "MAX_WORKERS": 1, "OUTPUT": sys.argv[3]})
    print("SUCCEEDED")
except QgsProcessingException as exc:
    print("MESSAGE:", str(exc).replace(chr(10), " "))
sys.stdout.flush()
os._exit(0)
"""


def test_memory_the_machine_lacks_is_a_message(tmp_path):
    """A pit-free CHM at 1 cm (64 M cells, within the grid limit) in a process allowed 700 MiB more than it
    holds: numpy's MemoryError becomes a message, not a traceback, and nothing is written."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "chm.tif"
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(ROOT), str(SAMPLE_LAZ), str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(("MESSAGE:", "SUCCEEDED"))),
                proc.stderr[-2000:])
    assert line.startswith("MESSAGE: Not enough memory for this run"), line
    assert "Traceback" not in line
    assert list(tmp_path.iterdir()) == []
