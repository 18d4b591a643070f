"""The raster core without QGIS."""
