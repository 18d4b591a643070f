"""Acceptance 3: the plugin loads through classFactory into a real QGIS and unloads cleanly."""

import configparser

from qgis.core import QgsApplication
from qgis.PyQt.QtWidgets import QDockWidget

import forest_carbon_plugin
from forest_carbon_plugin.paths import ICON_PNG, ICON_SVG, METADATA_FILE
from processing_provider.compat import QAction


def _ours(widgets):
    return [w for w in widgets if w.objectName().startswith("forestcarbon")]


def test_init_gui_and_unload_twice(qgis_app, qgis_iface, qgis_processing):
    registry = QgsApplication.processingRegistry()
    stale = registry.providerById("forestcarbon")
    if stale is not None:
        registry.removeProvider(stale)
    main_window = qgis_iface.mainWindow()
    for _ in range(2):
        plugin = forest_carbon_plugin.classFactory(qgis_iface)
        plugin.initGui()
        provider = registry.providerById("forestcarbon")
        assert provider is not None
        assert provider.name() == "Forest Carbon"
        ids = {alg.id() for alg in provider.algorithms()}
        assert {"forestcarbon:lidarinfo", "forestcarbon:modelinfo", "forestcarbon:simulatescene"} <= ids
        assert registry.algorithmById("forestcarbon:lidarinfo") is not None
        names = [a.objectName() for a in _ours(main_window.findChildren(QAction))]
        assert {"forestcarbon_lidarinfo", "forestcarbon_modelinfo", "forestcarbon_show_uncertainty_dock",
                "forestcarbon_show_jobs_dock", "forestcarbon_install_dependencies"} <= set(names)
        assert len(names) == len(set(names))  # each once, though loaded twice
        plugin.initProcessing()  # QGIS may call it again: must not register twice
        assert [p.id() for p in registry.providers()].count("forestcarbon") == 1

        plugin.unload()
        assert registry.providerById("forestcarbon") is None
        assert registry.algorithmById("forestcarbon:lidarinfo") is None
        assert _ours(main_window.findChildren(QAction)) == []
        assert _ours(main_window.findChildren(QDockWidget)) == []
        assert plugin.actions == []


def test_metadata_is_complete_for_the_plugin_repository():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(METADATA_FILE, encoding="utf-8")
    general = parser["general"]
    required = ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email",
                "repository", "tracker", "homepage", "category", "tags", "icon",
                "hasProcessingProvider", "experimental", "changelog")
    for key in required:
        assert general.get(key, "").strip(), f"metadata.txt lacks {key}"
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["hasProcessingProvider"] == "yes"
    assert general["version"] == forest_carbon_plugin.__version__
    assert (METADATA_FILE.parent / general["icon"]).is_file()
    assert ICON_PNG.is_file() and ICON_SVG.is_file()
