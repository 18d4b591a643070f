"""Forest Carbon for QGIS.

The package holds two things that must stay apart:

* ``forest_carbon_plugin.core``: the science, free of QGIS (numpy, rasterio, laspy,
  onnxruntime, geopandas). It runs in QGIS, in ``qgis_process``, in tests and on a
  Dask worker that has no QGIS installed. Importing this package never imports QGIS.
* ``forest_carbon_plugin.plugin``, ``forest_carbon_plugin.settings`` and ``forest_carbon_plugin.gui``:
  the QGIS side, imported only by :func:`classFactory` and the Processing adapters.
"""

__version__ = "0.1.0"


def classFactory(iface):  # noqa: N802 (QGIS's name)
    """Entry point QGIS calls to load the plugin."""
    from .plugin import ForestCarbonPlugin

    return ForestCarbonPlugin(iface)
