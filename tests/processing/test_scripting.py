"""Scripts name only the outputs they want (issue 19, item 16), and the README's standalone script runs as
written with Debian's Python and the plugin installed in the default profile of a throwaway home."""

from __future__ import annotations

import json
import math
import re
import subprocess
import zipfile
from pathlib import Path

import laspy
import numpy as np
import pytest
import rasterio

from scripts import qgis_env

from tests.conftest import ROOT, SAMPLE_LAZ
from tests.onnx_models import affine_model


def _readme_script() -> str:
    section = (ROOT / "README.md").read_text().split("### Scripting", 1)
    assert len(section) == 2, "README.md has no '### Scripting' section"
    found = re.search(r"```python\n(.*?)```", section[1], re.S)
    assert found, "the Scripting section has no python code block"
    return found.group(1)


def test_readme_script_runs_as_written(tmp_path, plugin_zip):
    home = tmp_path / "home"
    plugins = home / ".local/share/QGIS/QGIS3/profiles/default/python/plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as archive:  # what `make deploy` / Install from ZIP leave there
        archive.extractall(plugins)
    script = tmp_path / "forest_carbon_script.py"
    script.write_text(_readme_script())
    env = qgis_env.environment(tmp_path / "config")
    env["HOME"] = str(home)
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.run(["/usr/bin/python3", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]

    header = laspy.open(SAMPLE_LAZ).header
    points = re.search(r"points: (\d+) report: (\S+)", proc.stdout)
    assert points and int(points.group(1)) == header.point_count, log
    report = Path(points.group(2))
    assert json.loads(report.read_text())  # the one output the script named
    # and nothing else of lidarinfo's: no HTML report, no footprint layer
    assert sorted(p.name for p in report.parent.iterdir() if not p.name.startswith("metrics")) == ["info.json"]

    cells = re.search(r"cells: (\d+) x (\d+), highest return: ([\d.]+) m", proc.stdout)
    assert cells, log
    width = math.ceil((header.maxs[0] - header.mins[0]) / 10.0)
    height = math.ceil((header.maxs[1] - header.mins[1]) / 10.0)
    assert (int(cells.group(1)), int(cells.group(2))) == (width, height)
    metrics = Path(re.search(r"metrics: (\S+)", proc.stdout).group(1))
    with rasterio.open(metrics) as src:
        zmax = src.read(list(src.descriptions).index("zmax") + 1, masked=True)
    # heights above ground (normalized on the fly), not the file's 420-464 m elevations
    assert float(cells.group(3)) == pytest.approx(float(zmax.max()), abs=0.005)
    assert 10.0 < float(zmax.max()) < header.maxs[2] - header.mins[2]


def _multi_output_algorithms(provider):
    return [alg for alg in provider.algorithms() if len(alg.destinationParameterDefinitions()) > 1]


def test_every_output_but_the_first_may_be_left_out(forestcarbon_provider, qgis_processing):
    from qgis.core import QgsProcessingContext

    context = QgsProcessingContext()
    algorithms = _multi_output_algorithms(forestcarbon_provider)
    # the algorithms with several outputs today; a new one joins this check by itself
    assert {"lidarinfo", "carbonstock", "trainmodel", "predictraster", "modelinfo", "normalizeheight",
            "treetops", "harmonizehighres"} <= {alg.name() for alg in algorithms}
    refused = [f"{alg.name()}:{param.name()}" for alg in algorithms
               for param in alg.destinationParameterDefinitions()[1:]
               if not param.checkValueIsAcceptable(None, context)]
    assert refused == []
    # lidarinfo's first output may be left out too: a script may want only the footprints or the counts
    lidarinfo = forestcarbon_provider.algorithm("lidarinfo")
    ok, message = lidarinfo.checkParameterValues({"INPUT": str(SAMPLE_LAZ)}, context)
    assert ok, message


@pytest.mark.parametrize("named", ["OUTPUT_HTML", "OUTPUT_JSON", "OUTPUT_FOOTPRINTS", None])
def test_lidarinfo_writes_only_the_named_output(tmp_path, forestcarbon_provider, named):
    import processing

    paths = {"OUTPUT_HTML": tmp_path / "info.html", "OUTPUT_JSON": tmp_path / "info.json",
             "OUTPUT_FOOTPRINTS": tmp_path / "footprints.gpkg"}
    parameters = {"INPUT": str(SAMPLE_LAZ)}
    if named:
        parameters[named] = str(paths[named])
    result = processing.run("forestcarbon:lidarinfo", parameters)
    assert result["POINT_COUNT"] == laspy.open(SAMPLE_LAZ).header.point_count
    assert result["FILE_COUNT"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ([paths[named].name] if named else [])
    assert set(result) == {"POINT_COUNT", "FILE_COUNT"} | ({named} if named else set())
    if named == "OUTPUT_FOOTPRINTS":
        from osgeo import ogr

        source = ogr.Open(str(paths[named]))
        (feature,) = list(source.GetLayer(0))
        xmin, xmax, ymin, ymax = feature.GetGeometryRef().GetEnvelope()
        header = laspy.open(SAMPLE_LAZ).header
        np.testing.assert_allclose([xmin, ymin, xmax, ymax], [*header.mins[:2], *header.maxs[:2]])


def test_modelinfo_with_its_first_output_only(tmp_path, forestcarbon_provider):
    import processing

    model = affine_model(tmp_path / "affine.onnx")
    result = processing.run("forestcarbon:modelinfo", {"INPUT": str(model), "OUTPUT_JSON": str(tmp_path / "m.json")})
    assert [t["name"] for t in json.loads((tmp_path / "m.json").read_text())["model"]["inputs"]] == ["x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["affine.onnx", "m.json"]
    assert "OUTPUT_HTML" not in result or not result["OUTPUT_HTML"]


def test_carbonstock_and_trainmodel_with_their_first_output_only(tmp_path, forestcarbon_provider):
    """The report the caller left out is written to a temporary file (the numbers' JSON lies beside it); nothing
    is written beside the named output but what it always was."""
    import processing

    from tests.processing.carbon.test_carbon import scene_files
    from tests.processing.models.test_train import _smooth, _write

    agb, _, projects = scene_files(tmp_path)
    out = tmp_path / "named" / "carbon.gpkg"
    out.parent.mkdir()
    carbon = processing.run("forestcarbon:carbonstock", {"AGB": agb, "PROJECTS": projects, "ECOZONE": 10,
                                                         "OUTPUT": str(out)})
    assert carbon["OUTPUT"] == str(out) and sorted(p.name for p in out.parent.iterdir()) == ["carbon.gpkg"]
    assert json.loads(Path(carbon["OUTPUT_JSON"]).read_text())["records"][0]["co2e_total_t"] > 0

    rng = np.random.default_rng(3)
    fields = np.stack([_smooth(rng, (40, 40), 3) for _ in range(2)])
    features = _write(tmp_path / "features.tif", fields, descriptions=["a", "b"])
    target = _write(tmp_path / "target.tif", 10 + 4 * fields[0] + rng.normal(0, 0.5, (40, 40)), nodata=-9999)
    model = tmp_path / "named" / "model.onnx"
    trained = processing.run("forestcarbon:trainmodel", {"FEATURES": [str(features)], "TARGET": str(target),
                                                         "MODEL_TYPE": 1, "FOLDS": 2, "MAX_SAMPLES": 300,
                                                         "OUTPUT_MODEL": str(model)})
    assert trained["OUTPUT_MODEL"] == str(model) and model.stat().st_size > 0
    assert sorted(p.name for p in model.parent.iterdir()) == ["carbon.gpkg", "model.onnx"]
    assert json.loads(Path(trained["OUTPUT_JSON"]).read_text())
