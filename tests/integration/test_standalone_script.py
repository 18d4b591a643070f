"""A scientist's standalone PyQGIS script — top-level code, no ``if __name__ == "__main__"`` guard, the
plugin loaded from its zip as a user installs it — with a foreign ``python3`` first on PATH: every LiDAR
algorithm with worker processes (MAX_WORKERS 2 and the default) gives the MAX_WORKERS 1 output bit for
bit, and the script exits 0 in time. Also ``qgis_process`` (QGIS's embedded Python, whose
``sys.executable`` is then that ``python3``) with the same PATH."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import laspy
import numpy as np
import pytest
import rasterio

from scripts import qgis_env
from tests import sample_catalogs

PYENV_PYTHON = Path("/root/.pyenv/versions/3.11.7/bin/python3")
ALGORITHMS = ("classifyground", "normalizeheight", "canopyheightmodel", "canopymetrics", "treetops", "plotmetrics")

SCRIPT = textwrap.dedent('''\
    import sys
    import time

    from qgis.core import (QgsApplication, QgsFeature, QgsGeometry, QgsPointXY, QgsProcessingFeedback,
                           QgsVectorLayer)

    sys.path.append("/usr/share/qgis/python/plugins")
    app = QgsApplication([], False)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    import processing
    import qgis.utils

    plugins, tiles, heights, out = sys.argv[1:5]
    qgis.utils.plugin_paths = [plugins]
    sys.path.insert(0, plugins)
    qgis.utils.updateAvailablePlugins()
    assert qgis.utils.loadPlugin("forest_carbon_plugin")
    assert qgis.utils.startProcessingPlugin("forest_carbon_plugin")


    class Feedback(QgsProcessingFeedback):
        def reportError(self, error, fatalError=False):
            print("WARNING:", error, flush=True)


    plots = QgsVectorLayer("Point?crs=EPSG:32633&field=plot:integer", "plots", "memory")
    for i, (x, y) in enumerate([(500040.0, 5600040.0), (500020.0, 5600060.0), (500065.0, 5600015.0)]):
        feature = QgsFeature(plots.fields())
        feature.setGeometry(QgsGeometry.fromPointXY(QgsPointXY(x, y)))
        feature.setAttributes([i])
        plots.dataProvider().addFeature(feature)

    for tag, workers in (("w1", {"MAX_WORKERS": 1}), ("w2", {"MAX_WORKERS": 2}), ("default", {})):
        runs = {
            "classifyground": {"INPUT": tiles, "METHOD": 0, "OUTPUT": f"{out}/ground_{tag}.laz"},
            "normalizeheight": {"INPUT": tiles, "OUTPUT": f"{out}/norm_{tag}.laz",
                                "OUTPUT_DTM": f"{out}/dtm_{tag}.tif"},
            "canopyheightmodel": {"INPUT": heights, "METHOD": 1, "RESOLUTION": 1.0, "OUTPUT": f"{out}/chm_{tag}.tif"},
            "canopymetrics": {"INPUT": tiles, "RESOLUTION": 10.0, "OUTPUT": f"{out}/metrics_{tag}.tif"},
            "treetops": {"INPUT": heights, "OUTPUT": f"{out}/tops_{tag}.gpkg", "OUTPUT_CROWNS": f"{out}/crowns_{tag}.gpkg"},
            "plotmetrics": {"INPUT": tiles, "PLOTS": plots, "RADIUS": 11.28, "OUTPUT": f"{out}/plots_{tag}.gpkg"},
        }
        for name, parameters in runs.items():
            start = time.monotonic()
            processing.run(f"forestcarbon:{name}", {**parameters, **workers}, feedback=Feedback())
            print(f"DONE {name} {tag} in {time.monotonic() - start:.1f} s", flush=True)
    app.exitQgis()
    print("SCRIPT END", flush=True)
''')


@pytest.fixture(scope="module")
def four_tiles(tmp_path_factory):
    """The sample stand cut into 4 tiles of 40 m, as elevations and as heights above ground."""
    return sample_catalogs.write_catalogs(tmp_path_factory.mktemp("four_tiles"), sample_catalogs.quarters)


def foreign_python3(folder: Path) -> Path:
    """A folder whose ``python3`` (and ``python``) is another interpreter, as pyenv/conda/venv shims are."""
    folder.mkdir()
    body = f'exec {PYENV_PYTHON} "$@"' if PYENV_PYTHON.exists() else "echo 'not the Python you want' >&2; exit 1"
    for name in ("python3", "python"):
        shim = folder / name
        shim.write_text(f"#!/bin/sh\n{body}\n")
        shim.chmod(0o755)
    return folder


def _raster(path):
    with rasterio.open(path) as src:
        return src.read(), src.transform, src.crs


def _cloud(path):
    las = laspy.read(path)
    return las.points.array.tobytes(), tuple(las.header.scales), tuple(las.header.offsets), las.header.point_count


def _features(path):
    from osgeo import ogr

    source = ogr.Open(str(path))
    layer = source.GetLayer(0)
    rows = [(feature.items(), feature.GetGeometryRef().ExportToWkb()) for feature in layer]
    return rows


def test_standalone_script_without_main_guard(tmp_path, qgis_config, four_tiles):
    plugins = qgis_config / "profiles" / "default" / "python" / "plugins"
    script = tmp_path / "my_analysis.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = qgis_env.environment(tmp_path / "profile")
    env["PATH"] = os.pathsep.join([str(foreign_python3(tmp_path / "shims")), env["PATH"]])
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(script), str(plugins), *map(str, four_tiles), str(out)], env=env,
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    elapsed = time.monotonic() - start
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert "SCRIPT END" in proc.stdout, log[-5000:]
    # the script ran once: its top-level code was not re-run by workers (a second run would print it again)
    for name in ALGORITHMS:
        for tag in ("w1", "w2", "default"):
            assert proc.stdout.count(f"DONE {name} {tag} in ") == 1, log[-5000:]
    # the workers started and ran the tiles: no fallback to this process, no worker lost
    assert "could not start" not in log and "No Python" not in log and "stopped unexpectedly" not in log, log
    for tag in ("w2", "default"):
        for stem in ("dtm", "chm", "metrics"):
            a, b = _raster(out / f"{stem}_w1.tif"), _raster(out / f"{stem}_{tag}.tif")
            assert np.array_equal(a[0], b[0], equal_nan=True) and a[1:] == b[1:], (stem, tag)
        for stem in ("ground", "norm"):
            assert _cloud(out / f"{stem}_w1.laz") == _cloud(out / f"{stem}_{tag}.laz"), (stem, tag)
        for stem in ("tops", "crowns", "plots"):
            assert _features(out / f"{stem}_{tag}.gpkg") == _features(out / f"{stem}_w1.gpkg"), (stem, tag)
    # the outputs are not trivially equal: they hold the stand
    assert len(_features(out / "tops_w1.gpkg")) > 20 and len(_features(out / "crowns_w1.gpkg")) > 20
    assert len(_features(out / "plots_w1.gpkg")) == 3
    assert (laspy.read(out / "ground_w1.laz").classification == 2).sum() > 1000
    print(f"standalone script: 18 runs in {elapsed:.1f} s\n" + "".join(ln + "\n" for ln in proc.stdout.splitlines() if "DONE" in ln))


def test_qgis_process_with_a_foreign_python3_first_on_path(tmp_path, qgis_config, four_tiles, monkeypatch):
    """QGIS's embedded Python takes ``sys.executable`` from the first ``python3`` on PATH: the workers
    must still start with QGIS's own Python."""
    monkeypatch.setenv("PATH", os.pathsep.join([str(foreign_python3(tmp_path / "shims")), os.environ["PATH"]]))
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"chm_{workers}.tif"
        proc, results = qgis_env.run_algorithm("forestcarbon:canopyheightmodel", {
            "INPUT": four_tiles[1], "METHOD": 1, "RESOLUTION": 1, "MAX_WORKERS": workers, "OUTPUT": out}, qgis_config)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log
        assert "could not start" not in log and "No Python" not in log, log
        outputs[workers] = _raster(out)
    assert np.array_equal(outputs[1][0], outputs[2][0], equal_nan=True) and (outputs[1][0] > 5).sum() > 1000
