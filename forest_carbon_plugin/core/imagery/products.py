"""Optical products as users download them: find the bands, their scaling, QA and angles.

:func:`open_product` takes a product folder or its metadata file and returns a
:class:`Product`: which sensor, which level (surface or top-of-atmosphere reflectance),
each band's file with the linear scaling ``reflectance = DN·scale + offset``, the QA
source for masks, and the sun/view geometry. Supported:

* Landsat 4-9 with an MTL in its ``.txt`` (ODL), ``.json`` or ``.xml`` form: Collection-2
  Level-2 surface reflectance (``SR = DN·2.75e-5 − 0.2`` or the MTL's own values), and
  Level-1 (Collection 1/2 and pre-collection MTLs) as TOA reflectance: from the MTL's
  ``REFLECTANCE_MULT/ADD`` with the sun elevation (``ρ = (M·Q + A)/sin(θ_SE)``), or, for
  MTLs with radiance only (TM/ETM+), ``ρ = π·L·d²/(ESUN·cos θs)`` with the solar irradiances
  of Chander, Markham & Helder (2009, RSE 113:893-903, Table 11).
* Sentinel-2 L2A/L1C: a ``.SAFE`` folder, its ``MTD_MSIL2A.xml``/``MTD_MSIL1C.xml``, or a
  folder of band files with the tile metadata ``MTD_TL.xml`` (and SCL): reflectance =
  (DN + BOA/RADIO_ADD_OFFSET)/QUANTIFICATION_VALUE read from the product metadata (offset 0
  before processing baseline 04.00). Per-pixel sun and view angles from the tile metadata's
  5 km angle grids.

References: USGS Landsat 8-9 Collection 2 Level-2 Science Product Guide (LSDS-1619) and Level-1 Data
Format Control Book (LSDS-1328); ESA Sentinel-2 Products Specification Document (S2-PDGS-TAS-DI-PSD),
with the radiometric offset of processing baseline 04.00 (ESA, January 2022).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import solar
from ..errors import ForestCarbonError
from .espa import is_espa_folder

#: Band order of the harmonized output (OLI common names, then MSI-only bands).
OUTPUT_ORDER = ("coastal", "blue", "green", "red", "nir", "swir1", "swir2", "re1", "re2", "re3", "nir_broad")

#: Landsat band number → common name, per sensor family.
LANDSAT_BANDS = {
    "OLI": {1: "coastal", 2: "blue", 3: "green", 4: "red", 5: "nir", 6: "swir1", 7: "swir2"},
    "TM": {1: "blue", 2: "green", 3: "red", 4: "nir", 5: "swir1", 7: "swir2"},
    "ETM+": {1: "blue", 2: "green", 3: "red", 4: "nir", 5: "swir1", 7: "swir2"},
}
#: Mean exoatmospheric solar irradiance ESUN (W m⁻² µm⁻¹), Chander et al. 2009, Table 11.
ESUN = {
    "LANDSAT_4": {1: 1983.0, 2: 1795.0, 3: 1539.0, 4: 1028.0, 5: 219.8, 7: 83.49},
    "LANDSAT_5": {1: 1983.0, 2: 1796.0, 3: 1536.0, 4: 1031.0, 5: 220.0, 7: 83.44},
    "LANDSAT_7": {1: 1997.0, 2: 1812.0, 3: 1533.0, 4: 1039.0, 5: 230.8, 7: 84.90},
}
SENSOR_OF = {"LANDSAT_4": "TM", "LANDSAT_5": "TM", "LANDSAT_7": "ETM+", "LANDSAT_8": "OLI", "LANDSAT_9": "OLI"}
#: MSI band → (common name, native resolution m); B09/B10 (atmospheric) are not used.
MSI_BANDS = {"B01": ("coastal", 60), "B02": ("blue", 10), "B03": ("green", 10), "B04": ("red", 10),
             "B05": ("re1", 20), "B06": ("re2", 20), "B07": ("re3", 20), "B08": ("nir_broad", 10),
             "B8A": ("nir", 20), "B11": ("swir1", 20), "B12": ("swir2", 20)}
MSI_PHYSICAL = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
S2_BASELINE_04_START = _dt.date(2022, 1, 25)
S2B_LAUNCH = _dt.date(2017, 3, 7)
L2_SR_MULT, L2_SR_ADD = 2.75e-5, -0.2
LANDSAT_FILL = 0.0  # DN of fill in Landsat Level-1 and Collection-2 Level-2 bands
MSI_NODATA = 0.0  # Sentinel-2 NODATA special value (L1C and L2A)
#: the product layouts the plugin reads, as the messages name them
LAYOUTS = {
    "landsat": "a Landsat 4-9 Level-1 or Collection-2 Level-2 folder with its *_MTL.txt/.json/.xml",
    "sentinel2": "a Sentinel-2 L1C/L2A .SAFE folder (or its MTD_MSIL1C/MTD_MSIL2A.xml, or band files with "
                 "MTD_TL.xml)",
    "espa": "an ESPA surface-reflectance folder (<scene id>_sr_band3.tif or _b3.tif, with _cfmask.tif)",
}


@dataclass
class BandSource:
    name: str  # common name (OUTPUT_ORDER)
    band_id: str  # the product's own id: "B04", "SR_B4", "B3"
    path: Path
    scale: float  # reflectance = DN·scale + offset
    offset: float
    nodata: float | None  # the product's fill DN (Landsat and Sentinel-2: 0), excluded when resampling
    res_m: float
    #: the band file's own no-data value where it differs from the product's fill (masked as well): e.g. the 255
    #: some tools tag on 8-bit TM bands, where DN 0 is still the Level-1 fill
    file_nodata: float | None = None


@dataclass
class AngleGrids:
    """Angles (degrees) on a coarse grid of the product CRS: values[kind] is 2-D, the first
    sample at (x0, y0) (pixel corner, as in Sentinel-2's tile metadata), steps dx, dy (dy < 0)."""

    x0: float
    y0: float
    dx: float
    dy: float
    values: dict  # "sza", "saa", "vza", "vaa" -> ndarray


@dataclass
class Product:
    sensor: str  # "OLI", "TM", "ETM+", "MSI"
    platform: str  # "LANDSAT_8", "S2A", ...
    level: str  # "SR" or "TOA"
    acquired: _dt.datetime
    crs: object
    bounds: tuple
    bands: dict  # common name -> BandSource, in OUTPUT_ORDER
    metadata_path: Path | None
    qa_kind: str | None = None  # "qa_pixel", "scl", "fmask"
    qa_path: Path | None = None
    radsat_path: Path | None = None
    sun_zenith_deg: float | None = None
    sun_azimuth_deg: float | None = None
    view_zenith_deg: float | None = None
    view_azimuth_deg: float | None = None
    angle_files: dict = field(default_factory=dict)  # "sza"... -> (path, scale)
    angle_grids: AngleGrids | None = None
    angle_source: str = "scene"
    warnings: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)

    @property
    def center_lonlat(self) -> tuple[float, float]:
        from rasterio.warp import transform

        xmin, ymin, xmax, ymax = self.bounds
        xs, ys = transform(self.crs, "EPSG:4326", [(xmin + xmax) / 2], [(ymin + ymax) / 2])
        return xs[0], ys[0]


_MTL_FILE = re.compile(r"_MTL\.(txt|json|xml)$", re.I)


def _other_nodata(file_nodata, fill: float) -> float | None:
    return None if file_nodata is None or file_nodata == fill else float(file_nodata)


# --------------------------------------------------------------------------- entry point

def product_layout(path) -> str | None:
    """Which product layout ``path`` is: the one detection behind harmonizescene and compositescenes.

    Landsat's MTL comes first: a Collection-2 Level-2 folder also holds ``*_SR_B4.TIF`` files, which
    look like ESPA's band names to a pattern.

    Parameters
    ----------
    path : str or Path
        A folder or a metadata file.

    Returns
    -------
    str or None
        A key of :data:`LAYOUTS` (``"landsat"``, ``"sentinel2"``, ``"espa"``), or None.
    """
    path = Path(path)
    if path.is_file():
        name = path.name.upper()
        if "_MTL" in name or name.startswith("MTL"):
            return "landsat"
        if name.startswith("MTD_MSIL") or name == "MTD_TL.XML":
            return "sentinel2"
        return None
    if not path.is_dir():
        return None
    if any(p.is_file() and _MTL_FILE.search(p.name) for p in path.iterdir()):
        return "landsat"
    if any((path / name).is_file() for name in ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml")):
        return "sentinel2"
    if is_espa_folder(path):
        return "espa"
    if _find_msi_bands(path):
        return "sentinel2"
    return None


def open_product(path) -> Product:
    """A Landsat or Sentinel-2 product, from its folder or metadata file (module docstring).

    Parameters
    ----------
    path : str or Path
        The product folder (a ``.SAFE``, a Landsat scene folder, a folder of band files) or its MTL,
        MTD_MSIL2A/MTD_MSIL1C or MTD_TL file.

    Returns
    -------
    Product
        Sensor, level, each band's file and scaling, QA source and sun/view geometry; every file the
        product reads lies inside its folder (:func:`confined`).
    """
    path = Path(path)
    if not path.exists():
        raise ForestCarbonError(f"'{path}' does not exist: give a product folder or its metadata file "
                                "(Landsat *_MTL.txt/.json/.xml, Sentinel-2 MTD_MSIL2A.xml/MTD_MSIL1C.xml).")
    layout = product_layout(path)
    if layout == "espa":
        raise ForestCarbonError(
            f"'{path}' is an ESPA surface-reflectance folder: it has no MTL or sun/view angles to harmonize with. "
            "Composite it as it is (forestcarbon:compositescenes reads ESPA folders), or harmonize the scene's "
            "Collection-2 product with its MTL.")
    if layout is None and path.is_file():
        raise ForestCarbonError(f"'{path.name}' is not a product metadata file the plugin knows: give a "
                                "Landsat MTL (.txt, .json, .xml), a Sentinel-2 MTD_MSIL2A.xml/MTD_MSIL1C.xml "
                                "or MTD_TL.xml, or the product folder.")
    if layout is None:
        raise ForestCarbonError(
            f"No Landsat MTL or Sentinel-2 metadata or band files found in '{path}'. Give a Landsat Collection-2 "
            "product folder (with its *_MTL.txt/.json/.xml), a Sentinel-2 .SAFE folder, or a folder of Sentinel-2 "
            "band files (…_B04.jp2 or .tif) with MTD_TL.xml.")
    if path.is_file():
        if layout == "landsat":
            return _open_landsat(path)
        return _open_sentinel2(path.parent, path if path.name.upper().startswith("MTD_MSIL") else None)
    if layout == "landsat":
        mtls = sorted(p for p in path.iterdir() if p.is_file() and _MTL_FILE.search(p.name))
        # one product, several forms of its MTL: prefer the text form, the most complete
        return _open_landsat(sorted(mtls, key=lambda p: {".txt": 0, ".json": 1, ".xml": 2}[p.suffix.lower()])[0])
    metadata = next((path / n for n in ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml") if (path / n).is_file()), None)
    return _open_sentinel2(path, metadata)


# --------------------------------------------------------------------------- Landsat

def read_mtl(path) -> dict:
    """A Landsat MTL in any of its forms (ODL ``.txt``, ``.json``, ``.xml``) as nested dictionaries.

    Parameters
    ----------
    path : str or Path
        The MTL file.

    Returns
    -------
    dict
        {group: {key: value}}, nested groups flattened by name (USGS LSDS-1328 field names).
    """
    path = Path(path)
    try:
        raw = path.read_bytes().replace(b"\x00", b"").decode("utf-8", errors="replace")
    except OSError as exc:
        raise ForestCarbonError(f"Cannot read the metadata file '{path}': {exc}.") from exc
    groups: dict = {}
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            _flatten_json(json.loads(raw), groups, "ROOT")
        elif suffix == ".xml":
            _flatten_xml(ET.fromstring(raw.strip()), groups)
        else:
            _parse_odl(raw, groups)
    except (ValueError, ET.ParseError) as exc:
        raise ForestCarbonError(f"The metadata file '{path.name}' cannot be parsed ({exc}); it may be truncated. "
                                "Download the product's MTL again.") from exc
    if not any(groups.values()):
        raise ForestCarbonError(f"The metadata file '{path.name}' holds no MTL fields: it is empty or not an MTL.")
    return groups


def _parse_odl(text: str, groups: dict) -> None:
    stack = ["ROOT"]
    for line in text.splitlines():
        line = line.strip()
        if not line or line == "END" or "=" not in line:
            continue
        key, value = (s.strip() for s in line.split("=", 1))
        if key == "GROUP":
            stack.append(value)
        elif key == "END_GROUP":
            if len(stack) > 1:
                stack.pop()
        else:
            groups.setdefault(stack[-1], {})[key] = value.strip('"')


def _flatten_json(node, groups: dict, name: str) -> None:
    for key, value in node.items():
        if isinstance(value, dict):
            _flatten_json(value, groups, key)
        else:
            groups.setdefault(name, {})[key] = value if not isinstance(value, str) else value.strip('"')


def _flatten_xml(element, groups: dict) -> None:
    for child in element:
        if len(child):
            _flatten_xml(child, groups)
        else:
            groups.setdefault(element.tag, {})[child.tag] = (child.text or "").strip()


def _get(groups: dict, key: str, *preferred: str, default=None):
    for group in preferred:
        if key in groups.get(group, {}):
            return groups[group][key]
    for values in groups.values():
        if key in values:
            return values[key]
    return default


def _open_landsat(mtl_path: Path) -> Product:
    groups = read_mtl(mtl_path)
    folder = mtl_path.parent
    spacecraft = _landsat_spacecraft(groups, mtl_path)
    sensor = SENSOR_OF[spacecraft]
    level_text = str(_get(groups, "PROCESSING_LEVEL", default=_get(groups, "DATA_TYPE", default="L1"))).upper()
    is_sr = level_text.startswith("L2")
    acquired = _landsat_acquired(groups, mtl_path)
    sun_elev, sun_az = _landsat_sun(groups, mtl_path)
    warnings: list[str] = []
    notes: dict = {}
    scaling = _LandsatScaling(groups, mtl_path, spacecraft, is_sr, sun_elev, acquired.date(), notes)
    bands: dict = {}
    for number, name in LANDSAT_BANDS[sensor].items():
        file_name = _get(groups, f"FILE_NAME_BAND_{number}", "PRODUCT_CONTENTS", "LEVEL2_PROCESSING_RECORD",
                         "PRODUCT_METADATA")
        band_path = _resolve_band_file(folder, file_name, number, is_sr)
        if band_path is None:
            continue
        scale, offset = scaling.of_band(number)
        file_nodata, res = _band_profile(band_path)
        # DN 0 is fill in every Landsat product, Level-1 (outside the footprint) and Collection-2 Level-2 (USGS
        # LSDS-1619 Landsat 8-9 C2 L2 Science Product Guide, SR fill value 0), whatever no-data the file carries
        bands[name] = BandSource(name, f"B{number}", band_path, scale, offset, LANDSAT_FILL, res,
                                 _other_nodata(file_nodata, LANDSAT_FILL))
    _check_bands(bands, LANDSAT_BANDS[sensor].values(), mtl_path, warnings)
    crs, bounds = _common_grid_info(bands)
    qa_kind, qa_path, radsat_path = _landsat_qa(groups, folder)
    product = Product(sensor=sensor, platform=spacecraft, level="SR" if is_sr else "TOA", acquired=acquired,
                      crs=crs, bounds=bounds, bands=bands, metadata_path=mtl_path, qa_kind=qa_kind,
                      qa_path=qa_path, radsat_path=radsat_path, sun_zenith_deg=90.0 - sun_elev,
                      sun_azimuth_deg=sun_az, warnings=warnings, notes=notes)
    angle_files = _landsat_angle_files(folder, mtl_path)
    if angle_files:
        product.angle_files = angle_files
        product.angle_source = "per-pixel angle bands"
    else:
        product.view_zenith_deg, product.view_azimuth_deg = 0.0, 0.0
        product.angle_source = "scene sun angles of the MTL, nadir view"
    return _confine_product(product, folder)


def _landsat_spacecraft(groups: dict, mtl_path: Path) -> str:
    spacecraft = str(_get(groups, "SPACECRAFT_ID", default="")).upper().replace('"', "")
    if spacecraft not in SENSOR_OF:
        raise ForestCarbonError(
            f"Unknown or unsupported sensor '{spacecraft or 'none given'}' in '{mtl_path.name}': harmonization "
            "supports Landsat 4/5 TM, 7 ETM+, 8/9 OLI and Sentinel-2 MSI.")
    return spacecraft


def _landsat_acquired(groups: dict, mtl_path: Path) -> _dt.datetime:
    """DATE_ACQUIRED and SCENE_CENTER_TIME (UTC; noon when the MTL has no time)."""
    date_text = str(_get(groups, "DATE_ACQUIRED", default="")).strip('"')
    try:
        date = _dt.date.fromisoformat(date_text)
    except ValueError:
        raise ForestCarbonError(
            f"The MTL '{mtl_path.name}' has no valid DATE_ACQUIRED (got '{date_text or 'nothing'}'; expected "
            "YYYY-MM-DD): it is incomplete or not a Landsat MTL. Download the product's MTL again.") from None
    time_text = str(_get(groups, "SCENE_CENTER_TIME", default="12:00:00")).strip('"Z')
    try:
        hh, mm, ss = (time_text.split(":") + ["0", "0"])[:3]
        return _dt.datetime(date.year, date.month, date.day, int(hh), int(mm), int(float(ss)),
                            tzinfo=_dt.timezone.utc)
    except ValueError:
        raise ForestCarbonError(
            f"The MTL '{mtl_path.name}' has an invalid SCENE_CENTER_TIME '{time_text}' (expected HH:MM:SS): "
            "download the product's MTL again.") from None


def _landsat_sun(groups: dict, mtl_path: Path) -> tuple[float, float]:
    """(sun elevation, sun azimuth) in degrees; a sun below the horizon is refused."""
    sun_elev = _mtl_number(groups, "SUN_ELEVATION", mtl_path)
    sun_az = _mtl_number(groups, "SUN_AZIMUTH", mtl_path)
    if not 0 < sun_elev <= 90:
        raise ForestCarbonError(
            f"The MTL '{mtl_path.name}' gives SUN_ELEVATION {sun_elev:g}°: reflectance needs the sun above the "
            "horizon (0-90°). A night or polar-winter scene cannot be harmonized.")
    return sun_elev, sun_az


def _landsat_qa(groups: dict, folder: Path):
    """(QA kind, QA file, QA_RADSAT file): QA_PIXEL where there is one, else an Fmask band."""
    qa_name = _get(groups, "FILE_NAME_QUALITY_L1_PIXEL", default=None)
    qa_path = _existing(folder, qa_name) if qa_name else None
    if qa_path is None:
        qa_path = next(iter(sorted(folder.glob("*QA_PIXEL.TIF")) + sorted(folder.glob("*QA_PIXEL.tif"))), None)
    radsat_name = _get(groups, "FILE_NAME_QUALITY_L1_RADIOMETRIC_SATURATION", default=None)
    radsat_path = _existing(folder, radsat_name) if radsat_name else None
    fmask = next(iter(sorted(folder.glob("*[Ff]mask*.tif")) + sorted(folder.glob("*[Ff]mask*.TIF"))), None)
    qa_kind = "qa_pixel" if qa_path else ("fmask" if fmask else None)
    return qa_kind, qa_path or fmask, radsat_path


@dataclass
class _LandsatScaling:
    """DN → reflectance of each band from one MTL: Level-2 SR, Level-1 TOA from the reflectance rescaling,
    or from radiance and ESUN for MTLs without it (USGS LSDS-1619 and LSDS-1328; Chander et al. 2009).
    Records the formula used in ``notes``."""

    groups: dict
    mtl_path: Path
    spacecraft: str
    is_sr: bool
    sun_elevation_deg: float
    date: _dt.date
    notes: dict

    def of_band(self, number: int) -> tuple[float, float]:
        """(scale, offset) of band ``number``."""
        groups, mtl_path = self.groups, self.mtl_path
        if self.is_sr:
            sr_group = ("LEVEL2_SURFACE_REFLECTANCE_PARAMETERS",)
            if sr_group[0] not in groups:
                return L2_SR_MULT, L2_SR_ADD  # only L1 rescaling in this MTL form: C2 L2 values
            return (_mtl_number(groups, f"REFLECTANCE_MULT_BAND_{number}", mtl_path, *sr_group, default=L2_SR_MULT),
                    _mtl_number(groups, f"REFLECTANCE_ADD_BAND_{number}", mtl_path, *sr_group, default=L2_SR_ADD))
        l1_groups = ("LEVEL1_RADIOMETRIC_RESCALING", "RADIOMETRIC_RESCALING")
        if _get(groups, f"REFLECTANCE_MULT_BAND_{number}", *l1_groups) not in (None, ""):
            sin_e = math.sin(math.radians(self.sun_elevation_deg))
            self.notes["toa_formula"] = "(REFLECTANCE_MULT·Q + REFLECTANCE_ADD)/sin(SUN_ELEVATION)"
            return (_mtl_number(groups, f"REFLECTANCE_MULT_BAND_{number}", mtl_path, *l1_groups) / sin_e,
                    _mtl_number(groups, f"REFLECTANCE_ADD_BAND_{number}", mtl_path, *l1_groups) / sin_e)
        lmult, ladd = _radiance_rescaling(groups, number, mtl_path)
        d_au = self.earth_sun_distance_au()
        cos_sza = math.cos(math.radians(90.0 - self.sun_elevation_deg))
        k = math.pi * d_au ** 2 / (ESUN[self.spacecraft][number] * cos_sza)
        self.notes["toa_formula"] = ("π·(RADIANCE_MULT·Q + RADIANCE_ADD)·d²/(ESUN·cos θs), "
                                     "ESUN: Chander et al. 2009")
        self.notes["earth_sun_distance_au"] = d_au
        return lmult * k, ladd * k

    def earth_sun_distance_au(self) -> float:
        if _get(self.groups, "EARTH_SUN_DISTANCE") in (None, ""):
            return solar.earth_sun_distance_au(self.date)
        return _mtl_number(self.groups, "EARTH_SUN_DISTANCE", self.mtl_path)


def _mtl_number(groups: dict, key: str, mtl_path: Path, *preferred: str, default=None) -> float:
    """A numeric MTL field; a missing or non-numeric one is a message naming the field."""
    value = _get(groups, key, *preferred, default=default)
    try:
        number = float(str(value).strip('"')) if value not in (None, "") else None
    except ValueError:
        number = None
    if number is None or not math.isfinite(number):
        raise ForestCarbonError(
            f"The MTL '{mtl_path.name}' has no valid {key} (got '{value if value not in (None, '') else 'nothing'}'): "
            "it is incomplete or not a Landsat MTL. Download the product's MTL again.")
    return number


def _radiance_rescaling(groups, number, mtl_path):
    mult = _get(groups, f"RADIANCE_MULT_BAND_{number}")
    if mult not in (None, ""):
        return (_mtl_number(groups, f"RADIANCE_MULT_BAND_{number}", mtl_path),
                _mtl_number(groups, f"RADIANCE_ADD_BAND_{number}", mtl_path))
    # oldest MTLs: LMAX/LMIN and QCALMAX/QCALMIN (Chander et al. 2009, Eq. 1)
    lmax = _get(groups, f"LMAX_BAND{number}", default=_get(groups, f"RADIANCE_MAXIMUM_BAND_{number}"))
    lmin = _get(groups, f"LMIN_BAND{number}", default=_get(groups, f"RADIANCE_MINIMUM_BAND_{number}"))
    qmax = _get(groups, f"QCALMAX_BAND{number}", default=_get(groups, f"QUANTIZE_CAL_MAX_BAND_{number}"))
    qmin = _get(groups, f"QCALMIN_BAND{number}", default=_get(groups, f"QUANTIZE_CAL_MIN_BAND_{number}"))
    if None in (lmax, lmin, qmax, qmin):
        raise ForestCarbonError(f"The MTL gives no radiometric rescaling for band {number}: it cannot be "
                                "converted to reflectance.")
    try:
        lmax, lmin, qmax, qmin = (float(str(v).strip('"')) for v in (lmax, lmin, qmax, qmin))
    except ValueError:
        raise ForestCarbonError(f"The MTL '{mtl_path.name}' gives a non-numeric radiance range for band {number}: "
                                "download the product's MTL again.") from None
    if qmax == qmin:
        raise ForestCarbonError(f"The MTL '{mtl_path.name}' gives QCALMAX = QCALMIN for band {number}: its "
                                "radiometric rescaling is broken. Download the product's MTL again.")
    mult = (lmax - lmin) / (qmax - qmin)
    return mult, lmin - mult * qmin


def _resolve_band_file(folder: Path, file_name, number: int, is_sr: bool) -> Path | None:
    if file_name:
        found = _existing(folder, str(file_name))
        if found is not None:
            return found
    patterns = [f"*_SR_B{number}.TIF"] if is_sr else [f"*_B{number}.TIF"]
    for pattern in patterns:
        for candidate in sorted(folder.iterdir()):
            if candidate.is_file() and re.fullmatch(pattern.replace("*", ".*").replace(".TIF", r"\.tiff?"),
                                                    candidate.name, re.I):
                return confined(folder, candidate, "The product's file")
    return None


def confined(folder: Path, path: Path, named_by: str = "The metadata file names") -> Path:
    """``path`` if it lies inside ``folder`` once links and ``..`` are resolved; else a refusal.

    File names come from metadata that anyone can edit: a product must not make the plugin read
    (or reveal the existence of) files elsewhere on the disk.

    Parameters
    ----------
    folder : Path
        The product folder.
    path : Path
        A file the metadata names.
    named_by : str
        How the refusal introduces the file.

    Returns
    -------
    Path
        ``path``, unchanged.
    """
    folder, path = Path(folder), Path(path)
    root = folder.resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise ForestCarbonError(
            f"{named_by} '{path.relative_to(folder) if path.is_relative_to(folder) else path}', which lies "
            f"outside the product folder '{folder}' (through '..' or a link): the files of a product must be inside "
            "its folder. Fix the metadata file, or copy the product's files (not links to them) into one folder.")
    return path


def _confine_product(product: Product, folder: Path) -> Product:
    """Every file the product will read (bands, QA, saturation, angle bands) inside ``folder``."""
    paths = [b.path for b in product.bands.values()] + [product.qa_path, product.radsat_path]
    paths += [entry[0] for entry in product.angle_files.values()]
    for path in paths:
        if path is not None:
            confined(folder, path, "The product's file")
    return product


def _existing(folder: Path, name: str, named_by: str = "The metadata file names") -> Path | None:
    name = str(name).strip('"')
    if Path(name).is_absolute() or ".." in Path(name).parts:
        confined(folder, folder / name, named_by)  # refuses; a name with ../ that stays inside is fine
    direct = folder / name
    if direct.is_file():
        return confined(folder, direct, named_by)
    lower = name.lower()
    for candidate in sorted(folder.iterdir()):  # renamed copies (e.g. prefixed) and case changes
        if candidate.is_file() and candidate.name.lower().endswith(lower):
            return confined(folder, candidate, named_by)
    return None


def _landsat_angle_files(folder: Path, mtl_path: Path) -> dict:
    """Collection-2 per-pixel angle bands (*_SZA.TIF …, int16 hundredths of a degree)."""
    stem = re.sub(r"_MTL$", "", mtl_path.stem, flags=re.I)
    key = "_".join(stem.split("_")[2:]) if stem.count("_") >= 3 else stem  # path/row/dates: shared by L1 and L2
    found = {}
    for kind in ("sza", "saa", "vza", "vaa"):
        matches = [p for p in folder.glob(f"*_{kind.upper()}.TIF") if key in p.name] or \
                  [p for p in folder.glob(f"*_{kind.upper()}.tif") if key in p.name]
        if matches:
            found[kind] = (sorted(matches)[0], 0.01)
    return found if len(found) == 4 else {}


# --------------------------------------------------------------------------- Sentinel-2

def _find_msi_bands(folder: Path) -> dict:
    """MSI band id → {resolution: path} for band files under ``folder`` (GRANULE/IMG_DATA too)."""
    found: dict = {}
    pattern = re.compile(r"_(B(?:0[1-9]|1[0-2]|8A))(?:_(\d{2})m)?\.(?:jp2|tif|tiff)$", re.I)
    for candidate in sorted(folder.rglob("*")):
        m = pattern.search(candidate.name)
        if m and candidate.is_file():
            res = int(m.group(2)) if m.group(2) else MSI_BANDS.get(m.group(1).upper(), ("", 60))[1]
            found.setdefault(m.group(1).upper(), {})[res] = candidate
    return found


@dataclass
class _S2Metadata:
    """What the product metadata (MTD_MSIL2A/MTD_MSIL1C.xml) and the tile metadata (MTD_TL.xml) give;
    None where neither does (ESA Sentinel-2 Products Specification Document, S2-PDGS-TAS-DI-PSD)."""

    level: str | None = None
    quantification: float | None = None
    offsets: dict = field(default_factory=dict)
    platform: str | None = None
    acquired: _dt.datetime | None = None
    baseline: str | None = None


def _open_sentinel2(folder: Path, product_xml: Path | None) -> Product:
    warnings: list[str] = []
    files = _find_msi_bands(folder)
    tile_xml = next(iter(sorted(folder.rglob("MTD_TL.xml"))), None)
    meta = _s2_product_metadata(product_xml) if product_xml is not None else _S2Metadata()
    tile_root = _parse_xml(tile_xml) if tile_xml is not None else None
    if tile_root is not None:
        _s2_tile_metadata(tile_root, tile_xml, meta)
    if not files:
        raise ForestCarbonError(f"No Sentinel-2 band files (…_B02.jp2 or .tif) found under '{folder}'.")
    if meta.level is None:
        meta.level = "SR" if any(folder.rglob("*_SCL*")) else "TOA"
    if meta.acquired is None:
        meta.acquired = _s2_time_from_names(folder, files)
    _s2_defaults(meta, warnings)
    bands = _s2_bands(folder, files, meta)
    _check_bands(bands, [v[0] for v in MSI_BANDS.values()], folder, warnings)
    crs, bounds = _common_grid_info(bands)
    scl = next(iter(sorted(p for p in folder.rglob("*_SCL*") if p.suffix.lower() in (".jp2", ".tif", ".tiff"))), None)
    fmask = next(iter(sorted(p for p in folder.rglob("*[Ff]mask*") if p.suffix.lower() in (".tif", ".tiff"))), None)
    notes = {"processing_baseline": meta.baseline} if meta.baseline else {}
    product = Product(sensor="MSI", platform=meta.platform, level=meta.level, acquired=meta.acquired, crs=crs,
                      bounds=bounds, bands=bands, metadata_path=product_xml or tile_xml,
                      qa_kind="scl" if scl else ("fmask" if fmask else None), qa_path=scl or fmask,
                      warnings=warnings, notes=notes)
    if tile_root is not None:
        _s2_angles(tile_root, product)
    else:
        lon, lat = product.center_lonlat
        product.sun_zenith_deg, product.sun_azimuth_deg = solar.sun_position(meta.acquired, lat, lon)
        product.view_zenith_deg, product.view_azimuth_deg = 0.0, 0.0
        product.angle_source = "sun position computed from the sensing time, nadir view (no MTD_TL.xml)"
    return _confine_product(product, folder)


def _s2_product_metadata(product_xml: Path) -> _S2Metadata:
    """Level, quantification value, per-band offsets, unit, start time and baseline of the product metadata."""
    root = _parse_xml(product_xml)
    meta = _S2Metadata(level="SR" if "L2A" in product_xml.name.upper() else "TOA")
    meta.quantification = _xml_float(root, "BOA_QUANTIFICATION_VALUE" if meta.level == "SR"
                                     else "QUANTIFICATION_VALUE")
    tag = "BOA_ADD_OFFSET" if meta.level == "SR" else "RADIO_ADD_OFFSET"
    for element in root.iter():
        if _local(element.tag) == tag:
            try:
                meta.offsets[MSI_PHYSICAL[int(element.get("band_id"))]] = float(element.text)
            except (TypeError, ValueError, IndexError):
                raise ForestCarbonError(
                    f"'{product_xml.name}' has an invalid {tag} (band_id {element.get('band_id')!r}, value "
                    f"{element.text!r}): the product metadata is damaged. Download the product again.") from None
    spacecraft = _xml_text(root, "SPACECRAFT_NAME") or ""
    meta.platform = {"Sentinel-2A": "S2A", "Sentinel-2B": "S2B", "Sentinel-2C": "S2C"}.get(spacecraft.strip())
    start = _xml_text(root, "PRODUCT_START_TIME")
    meta.acquired = _parse_time(start, product_xml, "PRODUCT_START_TIME") if start else None
    meta.baseline = _xml_text(root, "PROCESSING_BASELINE")
    return meta


def _s2_tile_metadata(tile_root, tile_xml: Path, meta: _S2Metadata) -> None:
    """The sensing time and unit from MTD_TL.xml where the product metadata gave none."""
    if meta.acquired is None:
        sensing = _xml_text(tile_root, "SENSING_TIME")
        meta.acquired = _parse_time(sensing, tile_xml, "SENSING_TIME") if sensing else None
    if meta.platform is None:
        tile_id = _xml_text(tile_root, "TILE_ID") or ""
        meta.platform = tile_id[:3] if tile_id[:3] in ("S2A", "S2B", "S2C") else None


def _s2_time_from_names(folder: Path, files: dict) -> _dt.datetime:
    """The sensing time in the band files' names (…_20200612T100031_B04…), for bands without metadata."""
    stamp = next((re.search(r"(\d{8}T\d{6})", p.name) for res in files.values() for p in res.values()), None)
    if stamp is None:
        raise ForestCarbonError(
            f"The Sentinel-2 bands in '{folder}' come without metadata and without a date in their names: "
            "put the product's MTD_MSIL2A.xml/MTD_MSIL1C.xml or MTD_TL.xml beside them.")
    try:
        return _dt.datetime.strptime(stamp.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        raise ForestCarbonError(f"The Sentinel-2 band names in '{folder}' carry '{stamp.group(1)}', not a valid "
                                "sensing time: put the product's MTD_MSIL2A.xml/MTD_MSIL1C.xml beside them.") \
            from None


def _s2_defaults(meta: _S2Metadata, warnings: list) -> None:
    """The quantification, offsets and unit the metadata leave out, from the sensing date (offsets of
    processing baseline 04.00 on, 25 January 2022; none before), with a warning for each guess."""
    if meta.quantification is None:
        meta.quantification = 10000.0
        default_offset = -1000.0 if meta.acquired.date() >= S2_BASELINE_04_START else 0.0
        meta.offsets = {b: default_offset for b in MSI_PHYSICAL}
        warnings.append(f"No product metadata (MTD_MSIL2A/MTD_MSIL1C.xml): assumed QUANTIFICATION_VALUE 10000 and "
                        f"offset {default_offset:g} (processing baseline {'≥' if default_offset else '<'} 04.00 "
                        "by the sensing date). Put the metadata beside the bands to use the product's values.")
    if meta.platform is None:
        meta.platform = "S2A"
        if meta.acquired.date() >= S2B_LAUNCH:
            warnings.append("The Sentinel-2 unit (2A/2B/2C) is not in the metadata: the S2A bandpass "
                            "coefficients are used (they differ from S2B/S2C by < 1.5%).")
    try:
        baseline_number = float(meta.baseline) if meta.baseline else None
    except ValueError:
        raise ForestCarbonError(f"The product metadata gives PROCESSING_BASELINE '{meta.baseline}', not a number "
                                "like 04.00: it is damaged. Download the product again.") from None
    if baseline_number is not None and meta.level == "SR" and baseline_number < 4.0:
        meta.offsets = {b: 0.0 for b in MSI_PHYSICAL}


def _s2_bands(folder: Path, files: dict, meta: _S2Metadata) -> dict:
    """Common name → :class:`BandSource` at each band's native resolution, in :data:`OUTPUT_ORDER`."""
    bands = {}
    for band_id, (name, native) in MSI_BANDS.items():
        if band_id not in files:
            continue
        path = confined(folder, files[band_id].get(native) or files[band_id][min(files[band_id])],
                        "The product's file")
        file_nodata, res = _band_profile(path)
        # DN 0 is NODATA in L1C and L2A alike (the product metadata's Special_Values), before BOA/RADIO_ADD_OFFSET:
        # checked on the DN, never on the reflectance
        quant = meta.quantification
        bands[name] = BandSource(name, band_id, path, 1.0 / quant, meta.offsets.get(band_id, 0.0) / quant,
                                 MSI_NODATA, res, _other_nodata(file_nodata, MSI_NODATA))
    return {k: bands[k] for k in OUTPUT_ORDER if k in bands}


def _s2_angles(root, product: Product) -> None:
    sun = _first(root, "Mean_Sun_Angle")
    if sun is not None:
        product.sun_zenith_deg = _xml_float(sun, "ZENITH_ANGLE")
        product.sun_azimuth_deg = _xml_float(sun, "AZIMUTH_ANGLE")
    views = [(_xml_float(v, "ZENITH_ANGLE"), _xml_float(v, "AZIMUTH_ANGLE"))
             for v in root.iter() if _local(v.tag) == "Mean_Viewing_Incidence_Angle"]
    views = [v for v in views if v[0] is not None]
    if views:
        product.view_zenith_deg = float(np.mean([v[0] for v in views]))
        product.view_azimuth_deg = _mean_azimuth([v[1] for v in views])
    product.angle_source = "scene mean angles of MTD_TL.xml"
    grid = _s2_angle_grids(root)
    if grid is not None:
        product.angle_grids = grid
        product.angle_source = "per-pixel angles interpolated from the 5 km grids of MTD_TL.xml"
    if product.sun_zenith_deg is None:
        raise ForestCarbonError("MTD_TL.xml gives no sun angles: the tile metadata is incomplete.")
    if product.view_zenith_deg is None:
        product.view_zenith_deg, product.view_azimuth_deg = 0.0, 0.0
        product.warnings.append("MTD_TL.xml gives no viewing angles: a nadir view is assumed.")


def _s2_angle_grids(root) -> AngleGrids | None:
    sun_grid = _first(root, "Sun_Angles_Grid")
    if sun_grid is None:
        return None
    x0 = y0 = None
    for position in root.iter():
        if _local(position.tag) == "Geoposition" and position.get("resolution") == "10":
            x0, y0 = _xml_float(position, "ULX"), _xml_float(position, "ULY")
    if x0 is None:
        return None

    def grid_values(node, kind):
        part = _first(node, kind)
        step_x = _xml_float(part, "COL_STEP")
        step_y = _xml_float(part, "ROW_STEP")
        rows = [[float(v) for v in (r.text or "").split()] for r in part.iter() if _local(r.tag) == "VALUES"]
        return np.array(rows, dtype=float), step_x, step_y

    sza, dx, dy = grid_values(sun_grid, "Zenith")
    saa, _, _ = grid_values(sun_grid, "Azimuth")
    vz, va = [], []
    for node in root.iter():
        if _local(node.tag) == "Viewing_Incidence_Angles_Grids":
            vz.append(grid_values(node, "Zenith")[0])
            va.append(grid_values(node, "Azimuth")[0])
    if not vz:
        return None
    with np.errstate(invalid="ignore"):
        vza = np.nanmean(np.stack(vz), axis=0)  # detectors and bands merged: HLS uses one view geometry
        vaa = np.degrees(np.arctan2(np.nanmean(np.sin(np.radians(np.stack(va))), axis=0),
                                    np.nanmean(np.cos(np.radians(np.stack(va))), axis=0))) % 360
    vza, vaa = _fill_nearest(vza), _fill_nearest(vaa)
    return AngleGrids(x0, y0, dx, -dy, {"sza": sza, "saa": saa, "vza": vza, "vaa": vaa})


def _fill_nearest(values: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(values)
    if not bad.any() or bad.all():
        return values
    from scipy.ndimage import distance_transform_edt

    idx = distance_transform_edt(bad, return_distances=False, return_indices=True)
    return values[tuple(idx)]


def _mean_azimuth(values) -> float:
    rad = np.radians(values)
    return float(np.degrees(np.arctan2(np.sin(rad).mean(), np.cos(rad).mean())) % 360)


def _parse_xml(path: Path):
    try:
        return ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise ForestCarbonError(f"The metadata file '{path}' cannot be read ({exc}): it may be truncated or not "
                                "XML. Download the product again.") from exc


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _first(root, name: str):
    return next((e for e in root.iter() if _local(e.tag) == name), None)


def _xml_text(root, name: str) -> str | None:
    element = _first(root, name)
    return element.text.strip() if element is not None and element.text else None


def _xml_float(root, name: str) -> float | None:
    text = _xml_text(root, name)
    if text in (None, ""):
        return None
    try:
        return float(text)
    except ValueError:
        raise ForestCarbonError(f"The product metadata gives {name} = '{text[:40]}', not a number: it is damaged. "
                                "Download the product again.") from None


def _parse_time(text: str, where: Path | None = None, name: str = "time") -> _dt.datetime:
    text = text.strip().rstrip("Z")
    try:
        when = _dt.datetime.fromisoformat(text[:26])
    except ValueError:
        raise ForestCarbonError(f"'{where.name if where else 'The metadata'}' gives {name} '{text[:40]}', not a date "
                                "and time (YYYY-MM-DDTHH:MM:SS): it is damaged. Download the product again.") from None
    return when.replace(tzinfo=_dt.timezone.utc)


# --------------------------------------------------------------------------- shared checks

def _band_profile(path: Path):
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as src:
            return src.nodata, abs(src.transform.a)
    except RasterioIOError as exc:
        raise ForestCarbonError(f"The band file '{path}' cannot be read ({exc}): it is damaged or not a raster.") \
            from exc


def _check_bands(bands: dict, expected, where, warnings: list) -> None:
    if not bands:
        raise ForestCarbonError(f"No usable reflective band found for '{where}': the band files named by the "
                                "metadata are missing. Keep the band files beside the metadata file.")
    missing = [name for name in expected if name not in bands]
    if missing:
        warnings.append(f"Bands not found, output without them: {', '.join(missing)}.")


def _common_grid_info(bands: dict):
    import rasterio
    from rasterio.coords import BoundingBox

    crs_seen, bounds = None, None
    for band in bands.values():
        with rasterio.open(band.path) as src:
            if src.crs is None:
                raise ForestCarbonError(f"'{band.path.name}' has no CRS: the product's band files must be georeferenced.")
            if crs_seen is None:
                crs_seen = src.crs
            elif src.crs != crs_seen:
                raise ForestCarbonError(
                    f"The band files mix coordinate systems ({crs_seen.to_string()} and {src.crs.to_string()} in "
                    f"'{band.path.name}'): one product has one CRS. Reproject the odd band or give one product.")
            b = src.bounds
            bounds = b if bounds is None else BoundingBox(min(bounds.left, b.left), min(bounds.bottom, b.bottom),
                                                          max(bounds.right, b.right), max(bounds.top, b.top))
    return crs_seen, tuple(bounds)
