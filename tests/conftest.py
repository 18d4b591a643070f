"""Shared fixtures: a real headless QGIS (pytest-qgis), the provider, the sample files."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("PROJ_DATA", "/usr/share/proj")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
QGIS_PLUGINS = "/usr/share/qgis/python/plugins"  # Processing lives here on Debian
if QGIS_PLUGINS not in sys.path:
    sys.path.append(QGIS_PLUGINS)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLE_LAZ = ROOT / "resources" / "sample_data" / "sample_stand.laz"


def shared_file(*parts: str) -> Path:
    """A file of ../shared/data, or a skip saying what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests read the real sample files of ../shared/data/ "
                    "(clone the project with its shared/ folder beside it)")
    return path


@pytest.fixture(scope="session")
def plugin_zip():
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    proc = subprocess.run(["make", "--no-print-directory", "package"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.strip().endswith(".zip")]
    path = ROOT / line.strip()
    assert path.is_file()
    return path


@pytest.fixture(scope="session")
def qgis_config(plugin_zip, tmp_path_factory):
    config = tmp_path_factory.mktemp("qgis_config")
    profile = config / "profiles" / "default"
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(plugins)
    from scripts import qgis_env

    # enable it the way a user's `qgis_process plugins enable` does
    proc = qgis_env.run(["plugins", "enable", "forest_carbon_plugin"], config)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return config


@pytest.fixture
def forestcarbon_provider(qgis_processing):
    """The Forest Carbon provider registered in the running QGIS for one test."""
    from qgis.core import QgsApplication

    from processing_provider.provider import ForestCarbonProvider

    registry = QgsApplication.processingRegistry()
    existing = registry.providerById("forestcarbon")
    if existing is not None:
        registry.removeProvider(existing)
    provider = ForestCarbonProvider()
    assert registry.addProvider(provider)
    yield provider
    if registry.providerById("forestcarbon") is not None:
        registry.removeProvider(provider)


@pytest.fixture(scope="session")
def bcts_catalog(tmp_path_factory):
    """The 4 BCTS tiles as a folder, and the same points merged into one LAZ file."""
    import laspy

    folder = shared_file("lidar", "bcts")
    tiles = sorted(folder.glob("*.laz"))
    merged = tmp_path_factory.mktemp("bcts") / "merged.laz"
    first = laspy.read(tiles[0])
    with laspy.open(merged, mode="w", header=first.header) as writer:
        for t in tiles:
            writer.write_points(laspy.read(t).points)
    return folder, tiles, merged


@pytest.fixture(scope="session")
def imagery_scene(tmp_path_factory):
    """A 600 m simulated scene (with clouds) for the imagery tests: (folder, manifest)."""
    from forest_carbon_plugin.simulate import SceneConfig, simulate_scene

    out = tmp_path_factory.mktemp("imagery_scene") / "scene"
    manifest = simulate_scene(out, SceneConfig(size_m=600, seed=5, cloud_fraction=0.15))
    return out, manifest
