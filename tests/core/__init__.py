"""Tests of the QGIS-free core: no qgis, no Processing; they also run in .venv-worker (make test-core)."""
