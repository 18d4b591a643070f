"""The imagery chain in the graphical modeler: harmonize Sentinel-2 and Landsat (on the
Sentinel-2 grid), composite both, run from qgis_process as a .model3 file."""

from __future__ import annotations

import numpy as np
import rasterio

from scripts import qgis_env


def _model(path):
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource as Source,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
    )

    from processing_provider.compat import FileBehavior

    model = QgsProcessingModelAlgorithm("harmonize_and_composite", "forest")
    for name, label in (("sentinel2", "Sentinel-2 product"), ("landsat", "Landsat product")):
        model.addModelParameter(QgsProcessingParameterFile(name, label, FileBehavior.Folder),
                                QgsProcessingModelParameter(name))
    s2 = QgsProcessingModelChildAlgorithm("forestcarbon:harmonizescene")
    s2.setChildId("harmonize_s2")
    s2.addParameterSources("INPUT", [Source.fromModelParameter("sentinel2")])
    s2.addParameterSources("TARGET_RESOLUTION", [Source.fromStaticValue(30)])
    l8 = QgsProcessingModelChildAlgorithm("forestcarbon:harmonizescene")
    l8.setChildId("harmonize_l8")
    l8.addParameterSources("INPUT", [Source.fromModelParameter("landsat")])
    l8.addParameterSources("REFERENCE_GRID", [Source.fromChildOutput("harmonize_s2", "OUTPUT")])
    composite = QgsProcessingModelChildAlgorithm("forestcarbon:compositescenes")
    composite.setChildId("composite")
    composite.addParameterSources("INPUTS", [Source.fromChildOutput("harmonize_s2", "OUTPUT"),
                                             Source.fromChildOutput("harmonize_l8", "OUTPUT")])
    composite.addParameterSources("METHOD", [Source.fromStaticValue(0)])
    output = QgsProcessingModelOutput("composite", "Composite")
    output.setChildOutputName("OUTPUT")
    output.setChildId("composite")
    composite.setModelOutputs({"composite": output})
    for child in (s2, l8, composite):
        model.addChildAlgorithm(child)
    from scripts.make_models import child_id_output_names  # childId:output names on QGIS >= 3.26 too

    assert child_id_output_names(model).toFile(str(path))


def test_model_harmonizes_two_scenes_and_composites_them(imagery_scene, qgis_config, qgis_processing, tmp_path):
    from forest_carbon_plugin.core.imagery.harmonize import TargetGrid, harmonize_scene

    out, manifest = imagery_scene
    path = tmp_path / "chain.model3"
    _model(path)
    target = tmp_path / "composite.tif"
    proc = qgis_env.run(["run", str(path), "--", f"sentinel2={out / manifest['sentinel2']['product']}",
                         f"landsat={out / manifest['landsat']['product']}", f"composite:composite={target}"],
                        qgis_config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the same two steps with the core, and the median of two observations is their mean
    s2, l8 = tmp_path / "s2.tif", tmp_path / "l8.tif"
    harmonize_scene(out / manifest["sentinel2"]["product"], s2)
    harmonize_scene(out / manifest["landsat"]["product"], l8, TargetGrid(reference=s2))
    with rasterio.open(target) as src, rasterio.open(s2) as a, rasterio.open(l8) as b:
        names = list(src.descriptions)
        assert names == ["coastal", "blue", "green", "red", "nir", "swir1", "swir2", "valid_count"]
        red = src.read(names.index("red") + 1)
        count = src.read(names.index("valid_count") + 1)
        ra, rb = a.read(list(a.descriptions).index("red") + 1), b.read(list(b.descriptions).index("red") + 1)
    valid = np.isfinite(ra).astype(int) + np.isfinite(rb).astype(int)
    np.testing.assert_array_equal(count, valid)
    both = valid == 2
    np.testing.assert_allclose(red[both], ((ra + rb) / 2)[both], rtol=1e-6)
    only_a = np.isfinite(ra) & ~np.isfinite(rb)
    np.testing.assert_allclose(red[only_a], ra[only_a], rtol=1e-6)
    assert both.sum() > 100 and (valid == 1).sum() > 10
