"""QGIS virtual point clouds (``.vpc``): the files they list, read as a catalog of tiles.

A ``.vpc`` (QGIS >= 3.32 *Build virtual point cloud*, PDAL wrench ``build_vpc``) is a GeoJSON
FeatureCollection of STAC Items (STAC 1.0 with the Point Cloud and Projection extensions), one per file:
``assets.data.href`` names the file, relative to the ``.vpc``'s folder or absolute; ``bbox``/``proj:bbox``
and ``pc:count`` describe it. Bounds, counts and CRS are read again from the files' own headers, which
the catalog trusts over any copy of them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import ForestCarbonError

VPC_SUFFIX = ".vpc"
_READABLE = (".las", ".laz")  # .copc.laz included: COPC is LAZ 1.4 with a spatial index


def is_vpc(path) -> bool:
    """Whether ``path`` names a QGIS virtual point cloud (by its suffix)."""
    return str(path).lower().endswith(VPC_SUFFIX)


def vpc_files(path) -> list[Path]:
    """The LAS/LAZ files listed by the virtual point cloud ``path``, in its order.

    Parameters
    ----------
    path : str or Path
        A .vpc: the GeoJSON FeatureCollection of STAC items QGIS's "Build virtual point cloud" writes.

    Returns
    -------
    list of Path
        The files, relative references resolved against the .vpc's folder.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ForestCarbonError(
            f"'{path.name}' is not a readable virtual point cloud ({type(exc).__name__}: {exc}): a .vpc is the JSON "
            "that QGIS's 'Build virtual point cloud' writes. Rebuild it, or give the folder of tiles.") from exc
    features = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(features, list) or (isinstance(doc, dict) and doc.get("type") != "FeatureCollection"):
        raise ForestCarbonError(
            f"'{path.name}' is not a virtual point cloud: it holds no FeatureCollection of STAC items with "
            "'features'. Rebuild it with QGIS's 'Build virtual point cloud', or give the folder of tiles.")
    files = []
    for i, feature in enumerate(features):
        assets = feature.get("assets") if isinstance(feature, dict) else None
        asset = (assets or {}).get("data") or next(iter((assets or {}).values()), None)
        href = asset.get("href") if isinstance(asset, dict) else None
        if not isinstance(href, str) or not href:
            raise ForestCarbonError(f"'{path.name}': item {i + 1} names no file (no assets.data.href).")
        files.append(_local_file(path, href))
    if not files:
        raise ForestCarbonError(f"'{path.name}' lists no file: it is an empty virtual point cloud.")
    return files


def _local_file(vpc: Path, href: str) -> Path:
    parsed = urlparse(href)
    if parsed.scheme == "file":
        href = unquote(parsed.path)
    elif len(parsed.scheme) > 1:  # one letter is a Windows drive (C:/…)
        raise ForestCarbonError(
            f"'{vpc.name}' lists '{href}', a remote file ({parsed.scheme}://): only local files are read. "
            "Download the tiles and build the virtual point cloud from the local copies.")
    file = Path(href) if os.path.isabs(href) else (vpc.parent / href)
    file = Path(os.path.normpath(file))
    if not file.name.lower().endswith(_READABLE):
        raise ForestCarbonError(
            f"'{vpc.name}' lists '{href}', which is not a LAS/LAZ/COPC file: only those are read (convert it to "
            "LAZ first).")
    if not file.is_file():
        raise ForestCarbonError(
            f"'{vpc.name}' lists '{href}', which does not exist ({file}): a relative path is read from the .vpc's "
            "folder; move the .vpc back beside its tiles or rebuild it.")
    return file
