"""The QGIS-free science core.

Every module here imports only numpy, rasterio, laspy, onnxruntime, geopandas, scipy,
dask and the standard library, and heavy dependencies lazily where a module has more
than one use, so that a missing optional package fails the function that needs it, with
a message naming the pip command, and not the whole plugin.
"""
