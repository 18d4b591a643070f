"""ESPA-style Landsat scene folders: one GeoTIFF per band, named after the scene.

USGS ESPA (and the eo-box sample time series) deliver a Landsat scene as a folder of
single-band files, ``<SCENE_ID>_b3.tif`` (or ``_sr_band3.tif``) and a CFmask file
``<SCENE_ID>_fmask.tif`` (or ``_cfmask.tif``). Surface reflectance is int16 scaled by
10 000 with no-data −9999.

Band numbers are the sensor's: TM/ETM+ (scene ids ``LT4``, ``LT5``, ``LE7``; also
``LT04``/``LT05``/``LE07``) b1 blue, b2 green, b3 red, b4 nir, b5 swir1, b7 swir2;
OLI (``LC8``/``LO8``/``LC08``/``LC09``) b1 coastal, b2 blue, b3 green, b4 red, b5 nir,
b6 swir1, b7 swir2. Names follow HLS's common bands, the OLI convention (Claverie et al. 2018).
Thermal and other bands are left out. The CFmask band is returned as ``fmask`` with
no-data 255 (the files claim −9999, which a Byte band cannot hold; 255 is CFmask's fill).

Nothing here imports QGIS; :func:`read_espa_scene` only reads file headers.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ForestCarbonError

TM_ETM_BANDS = {1: "blue", 2: "green", 3: "red", 4: "nir", 5: "swir1", 7: "swir2"}
OLI_BANDS = {1: "coastal", 2: "blue", 3: "green", 4: "red", 5: "nir", 6: "swir1", 7: "swir2"}
SR_SCALE = 1e-4
SR_NODATA = -9999.0
FMASK_FILL = 255

_BAND_FILE = re.compile(r"_(?:sr_)?b(?:and)?(\d{1,2})\.tiff?$", re.IGNORECASE)
_LANDSAT_ID = re.compile(r"^L[CTEOM]0?\d", re.IGNORECASE)
_MASK_FILE = re.compile(r"_c?fmask\.tiff?$", re.IGNORECASE)


@dataclass(frozen=True)
class EspaBand:
    """One band file: physical value = DN × scale + offset; DN == nodata is no data."""

    path: Path
    name: str
    scale: float
    offset: float
    nodata: float | None


@dataclass(frozen=True)
class EspaScene:
    folder: Path
    scene_id: str
    sensor: str  # "TM/ETM+" or "OLI"
    date: _dt.date | None
    bands: tuple[EspaBand, ...]  # reflectance bands, in band-number order
    mask: EspaBand | None  # the CFmask band ("fmask"), if the folder has one


def is_espa_folder(path) -> bool:
    """Whether ``path`` is an ESPA scene folder: at least one ``<Landsat id>…_b<N>.tif`` /
    ``…_sr_band<N>.tif`` file (the Landsat id keeps Sentinel-2 band files saved as ``…_B04.tif`` out).

    Parameters
    ----------
    path : str or Path
        A folder (anything else gives False).

    Returns
    -------
    bool
    """
    folder = Path(path)
    return folder.is_dir() and any(_BAND_FILE.search(p.name) and _LANDSAT_ID.match(p.name) for p in folder.iterdir())


def scene_date(scene_id: str) -> _dt.date | None:
    """Acquisition date of a Landsat scene id.

    Parameters
    ----------
    scene_id : str
        A pre-collection id (``LE70350322012177EDC00``: 2012, day 177) or a Collection id
        (``LC08_L2SP_035032_20200612_...``).

    Returns
    -------
    datetime.date or None
        None when the id has neither form.
    """
    match = re.match(r"^L[CTEOM]\d{7}(\d{4})(\d{3})", scene_id)
    if match:
        return _dt.date(int(match.group(1)), 1, 1) + _dt.timedelta(days=int(match.group(2)) - 1)
    match = re.match(r"^L[CTEOM]\d{2}_\w{4}_\d{6}_(\d{8})", scene_id)
    if match:
        return _dt.datetime.strptime(match.group(1), "%Y%m%d").date()
    return None


def _sensor(scene_id: str) -> str:
    sid = scene_id.upper()
    if re.match(r"^L[CO]0?[89]", sid):
        return "OLI"
    if re.match(r"^L[TE]0?[457]", sid):
        return "TM/ETM+"
    raise ForestCarbonError(
        f"Cannot tell the sensor of the ESPA scene {scene_id!r}: its name should start with a Landsat id "
        "(LT5…, LE7…, LC8…) so that band numbers can be named. Rename the folder's files or stack the bands "
        "into one GeoTIFF with band descriptions (red, nir, …).")


def read_espa_scene(folder) -> EspaScene:
    """The bands of an ESPA scene folder (headers only).

    Parameters
    ----------
    folder : str or Path
        A folder of ``<scene>_b<N>.tif`` or ``<scene>_sr_band<N>.tif`` files and, optionally, a CFmask file.

    Returns
    -------
    EspaScene
        Scene id, sensor, date, the reflectance bands (DN × 1e-4, the file's no-data or −9999) in band-number
        order and the CFmask band (no-data 255), if any.
    """
    import rasterio

    folder = Path(folder)
    if not folder.is_dir():
        raise ForestCarbonError(f"{folder} is not a folder: an ESPA scene is a folder of *_b<N>.tif files.")
    numbered, mask_path = {}, None
    for path in sorted(folder.iterdir()):
        match = _BAND_FILE.search(path.name)
        if match:
            numbered[int(match.group(1))] = path
        elif _MASK_FILE.search(path.name):
            mask_path = path
    if not numbered:
        raise ForestCarbonError(
            f"{folder} holds no band files named like <scene>_b3.tif or <scene>_sr_band3.tif: it is not an "
            "ESPA scene folder. Give the scene's raster files, or a folder from USGS ESPA.")
    scene_id = _BAND_FILE.split(next(iter(numbered.values())).name)[0]
    sensor = _sensor(scene_id)
    names = OLI_BANDS if sensor == "OLI" else TM_ETM_BANDS
    bands = []
    for number in sorted(numbered):
        if number not in names:
            continue  # thermal, panchromatic, cirrus
        with rasterio.open(numbered[number]) as src:
            nodata = src.nodata if src.nodata is not None else SR_NODATA
        bands.append(EspaBand(numbered[number], names[number], SR_SCALE, 0.0, nodata))
    if not bands:
        raise ForestCarbonError(f"{folder} has no reflectance band files ({sensor} bands "
                                f"{', '.join(f'b{n}' for n in names)}).")
    mask = EspaBand(mask_path, "fmask", 1.0, 0.0, float(FMASK_FILL)) if mask_path is not None else None
    return EspaScene(folder, scene_id, sensor, scene_date(scene_id), tuple(bands), mask)
