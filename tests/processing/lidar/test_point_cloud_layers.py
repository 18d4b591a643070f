"""Point clouds the QGIS way (issue 19, item 15): INPUT of the LiDAR algorithms takes a point-cloud layer of the
project, a LAS/LAZ file, a folder of tiles, a QGIS virtual point cloud (.vpc) and COPC, with the same numbers."""

from __future__ import annotations

import json
import os

import laspy
import numpy as np
import pytest
import rasterio
from qgis.core import QgsProcessingException

from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.lidar.info import las_files

from tests import sample_catalogs
from tests.conftest import SAMPLE_LAZ, shared_file


def write_vpc(path, tiles, absolute=False, href=None):
    """A virtual point cloud as QGIS/PDAL wrench write it: STAC 1.0 items with the pointcloud and projection
    extensions, one per tile, hrefs relative to the .vpc's folder (written here, not by the code under test)."""
    features = []
    for tile in tiles:
        header = laspy.open(tile).header
        (x0, y0, z0), (x1, y1, z1) = header.mins, header.maxs
        features.append({
            "type": "Feature", "stac_version": "1.0.0", "id": tile.stem,
            "stac_extensions": ["https://stac-extensions.github.io/pointcloud/v1.0.0/schema.json",
                                "https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
            "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
            "bbox": [x0, y0, z0, x1, y1, z1],
            "properties": {"datetime": "0-01-01T00:00:00Z", "pc:count": header.point_count, "pc:type": "lidar",
                           "pc:encoding": "?", "pc:schemas": [], "proj:bbox": [x0, y0, z0, x1, y1, z1],
                           "proj:epsg": 32633},
            "links": [],
            "assets": {"data": {"href": href or (str(tile) if absolute else "./" + os.path.relpath(tile, path.parent)),
                                "roles": ["data"]}},
        })
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.fixture(scope="module")
def quarter_tiles(tmp_path_factory):
    """The sample stand's elevations cut into 4 tiles of 40 m, and a .vpc of them in another folder."""
    root = tmp_path_factory.mktemp("vpc")
    tiles = root / "tiles"
    tiles.mkdir()
    paths = []
    for name, tile in sample_catalogs.quarters(SAMPLE_LAZ):
        paths.append(tiles / f"tile_{name}.laz")
        tile.write(paths[-1])
    (root / "vpcs").mkdir()
    return tiles, paths, write_vpc(root / "vpcs" / "stand.vpc", paths)


def _metrics(tmp_path, source, name, resolution=10.0):
    import processing

    out = tmp_path / f"{name}.tif"
    # NORMALIZE never: a catalog equals the merged file bit for bit only without the ground TIN's edge effects
    processing.run("forestcarbon:canopymetrics", {"INPUT": source, "RESOLUTION": resolution, "MAX_WORKERS": 1,
                                                  "NORMALIZE": 2, "OUTPUT": str(out)})
    with rasterio.open(out) as src:
        return src.read(), src.transform, src.descriptions


def _same(a, b):
    assert a[1:] == b[1:]
    np.testing.assert_array_equal(a[0], b[0])


def test_vpc_lists_its_tiles(quarter_tiles, tmp_path):
    folder, paths, vpc = quarter_tiles
    assert las_files(vpc) == paths  # relative hrefs resolved against the .vpc's folder, in the .vpc's order
    assert las_files(write_vpc(tmp_path / "abs.vpc", paths, absolute=True)) == paths
    for href, message in (("https://example.org/tile.laz", "remote file"), ("./nowhere.laz", "does not exist"),
                          ("./tiles.tif", "not a LAS/LAZ/COPC file")):
        with pytest.raises(ForestCarbonError, match=message):
            las_files(write_vpc(tmp_path / "bad.vpc", paths[:1], href=href))
    (tmp_path / "junk.vpc").write_text("{not json")
    with pytest.raises(ForestCarbonError, match="not a readable virtual point cloud"):
        las_files(tmp_path / "junk.vpc")


def test_canopymetrics_on_a_vpc_is_the_folder_and_the_merged_file(quarter_tiles, tmp_path, forestcarbon_provider):
    folder, paths, vpc = quarter_tiles
    from_vpc = _metrics(tmp_path, str(vpc), "vpc")
    _same(from_vpc, _metrics(tmp_path, str(folder), "folder"))
    _same(from_vpc, _metrics(tmp_path, str(SAMPLE_LAZ), "merged"))
    zmax = from_vpc[0][list(from_vpc[2]).index("zmax")]
    assert np.nanmax(zmax) == pytest.approx(float(laspy.read(SAMPLE_LAZ).z.max()), abs=1e-3)


def test_copc_gives_the_metrics_of_the_same_points_in_laz(tmp_path, forestcarbon_provider):
    copc = shared_file("lidar", "simple.copc.laz")  # a true COPC (copc info VLR, LAZ 1.4, PF 7) from laspy's tests
    las = laspy.read(copc)
    assert any(v.user_id == "copc" for v in las.header.vlrs)
    plain = laspy.LasData(laspy.LasHeader(version="1.4", point_format=las.header.point_format.id))
    plain.header.scales, plain.header.offsets = las.header.scales, las.header.offsets
    plain.header.add_crs(las.header.parse_crs())
    plain.points = las.points
    plain.write(tmp_path / "plain.laz")
    assert not any(v.user_id == "copc" for v in laspy.open(tmp_path / "plain.laz").header.vlrs)
    a = _metrics(tmp_path, str(copc), "copc", 250.0)  # 1,065 points over 3.4 x 4.6 km
    _same(a, _metrics(tmp_path, str(tmp_path / "plain.laz"), "plain", 250.0))
    assert np.isfinite(a[0]).any()


@pytest.mark.parametrize("kind, provider", [("laz", "pdal"), ("copc", "copc"), ("vpc", "vpc")])
def test_canopymetrics_through_a_point_cloud_layer(kind, provider, quarter_tiles, tmp_path, forestcarbon_provider):
    from qgis.core import Qgis, QgsPointCloudLayer, QgsProject, QgsProviderRegistry

    if provider not in QgsProviderRegistry.instance().providerList():
        pytest.skip(f"QGIS {Qgis.QGIS_VERSION} has no '{provider}' point-cloud provider: a {kind} file cannot be "
                    "loaded as a layer here (the path is tested above)")
    from processing_provider.inputs import point_cloud_layers_available

    assert point_cloud_layers_available()
    algorithm = forestcarbon_provider.algorithm("canopymetrics")
    assert algorithm.parameterDefinition("INPUT").type() == "pointcloud"
    # the dialog's file picker offers the files read here, not only those QGIS's providers load
    assert "*.laz" in algorithm.parameterDefinition("INPUT").createFileFilter().split(";;")[0]
    source = {"laz": str(SAMPLE_LAZ), "vpc": str(quarter_tiles[2]),
              "copc": str(shared_file("lidar", "simple.copc.laz"))}[kind]
    resolution = 250.0 if kind == "copc" else 10.0
    layer = QgsPointCloudLayer(source, f"cloud_{kind}", provider)
    assert layer.isValid(), layer.error().summary()
    QgsProject.instance().addMapLayer(layer)
    try:
        from_file = _metrics(tmp_path, source, "file", resolution)
        _same(_metrics(tmp_path, layer, "layer", resolution), from_file)
        _same(_metrics(tmp_path, layer.id(), "layer_id", resolution), from_file)
    finally:
        QgsProject.instance().removeMapLayer(layer.id())


def test_a_name_that_is_neither_a_file_nor_a_layer(tmp_path, forestcarbon_provider):
    import processing

    with pytest.raises(QgsProcessingException, match="INPUT"):
        processing.run("forestcarbon:canopymetrics", {"INPUT": "no_such_layer", "OUTPUT": str(tmp_path / "m.tif")})
    assert not (tmp_path / "m.tif").exists()


def test_a_layer_value_is_read_as_the_layer_s_file(tmp_path, forestcarbon_provider):
    """How INPUT reads a layer (the object, its id or its name) on every QGIS, including one without point-cloud
    providers: with a raster layer, which treetops takes in INPUT as a CHM."""
    from qgis.core import QgsProcessingContext, QgsProject, QgsRasterLayer

    from processing_provider.inputs import point_cloud_source

    chm = shared_file("chm", sorted(os.listdir(shared_file("chm")))[0])
    layer = QgsRasterLayer(str(chm), "my chm")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    algorithm = forestcarbon_provider.algorithm("treetops")
    try:
        for value in (layer, layer.id(), "my chm", str(chm)):
            assert point_cloud_source(algorithm, {"INPUT": value}, context) == str(chm)
        with pytest.raises(QgsProcessingException, match="neither an existing file or folder nor a layer"):
            point_cloud_source(algorithm, {"INPUT": "my other chm"}, context)
        with pytest.raises(QgsProcessingException, match="no point cloud given"):
            point_cloud_source(algorithm, {}, context)
    finally:
        QgsProject.instance().removeMapLayer(layer.id())


def test_toolbox_dialog_takes_a_layer_a_file_or_a_folder(quarter_tiles, qgis_iface, forestcarbon_provider,
                                                         monkeypatch):
    """The dialog's INPUT: the project's point-cloud layers in a dropdown where a file or folder path can be typed,
    as QGIS's own layer widget cannot; the model designer keeps QGIS's widget (model inputs, child outputs)."""
    from qgis.core import (QgsApplication, QgsPointCloudLayer, QgsProcessingContext, QgsProcessingModelAlgorithm,
                           QgsProcessingModelChildAlgorithm, QgsProject)
    from qgis.gui import QgsProcessingModelerParameterWidget

    from processing_provider.inputs import cloud_widget_wrapper_class, point_cloud_layers_available

    if not point_cloud_layers_available():
        pytest.skip("this QGIS loads no LAS/LAZ/COPC/.vpc layer: INPUT is the file-or-folder box (test_bad_inputs)")
    import processing.gui.AlgorithmDialog
    import processing.gui.ParametersPanel
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    from processing.modeler.ModelerParametersDialog import ModelerParametersDialog

    # pytest-qgis's stub iface hands MagicMocks (browserModel) to C++ on 3.44: the dialogs as in a standalone script
    for module in (processing.gui.AlgorithmDialog, processing.gui.ParametersPanel):
        monkeypatch.setattr(module, "iface", None, raising=False)

    folder, paths, vpc = quarter_tiles
    layer = QgsPointCloudLayer(str(vpc), "stand tiles", "vpc")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    context = QgsProcessingContext()
    try:
        dialog = AlgorithmDialog(QgsApplication.processingRegistry().createAlgorithmById("forestcarbon:canopymetrics"),
                                 False, None)
        wrapper = dialog.mainWidget().wrappers["INPUT"]
        assert isinstance(wrapper, cloud_widget_wrapper_class()) and wrapper.combo.isEditable()
        assert dialog.createProcessingParameters()["INPUT"] == layer.id()  # the project's layer, preselected
        for value in (str(folder), str(paths[0])):
            wrapper.setWidgetValue(value, context)
            assert dialog.createProcessingParameters()["INPUT"] == value
        wrapper.combo.setEditText(str(folder))  # typed or pasted
        assert dialog.createProcessingParameters()["INPUT"] == str(folder)
        wrapper.setWidgetValue(layer, context)
        assert dialog.createProcessingParameters()["INPUT"] == layer.id()
        dialog.deleteLater()

        model = QgsProcessingModelAlgorithm("m", "g")
        child = QgsProcessingModelChildAlgorithm("forestcarbon:canopymetrics")
        child.setChildId("metrics")
        model.addChildAlgorithm(child)
        designer = ModelerParametersDialog(model.childAlgorithm("metrics").algorithm(), model, "metrics")
        assert isinstance(designer.widget.widget.wrappers["INPUT"], QgsProcessingModelerParameterWidget)
        designer.deleteLater()
        from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog

        batch = BatchAlgorithmDialog(QgsApplication.processingRegistry().createAlgorithmById("forestcarbon:canopymetrics"))
        batch.deleteLater()  # QGIS's batch widgets: built without error
    finally:
        QgsProject.instance().removeMapLayer(layer.id())


def test_an_output_onto_a_tile_of_the_vpc_is_refused(quarter_tiles, tmp_path, forestcarbon_provider):
    import processing

    folder, paths, vpc = quarter_tiles
    before = paths[0].read_bytes()
    with pytest.raises(QgsProcessingException, match="would overwrite it"):
        processing.run("forestcarbon:normalizeheight", {"INPUT": str(vpc), "OUTPUT": str(paths[0])})
    assert paths[0].read_bytes() == before
