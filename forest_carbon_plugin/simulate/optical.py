"""Optical observations of the simulated world: Sentinel-2 L2A-like, Landsat 8 C2 L2-like
and a NAIP-like 1 m image.

Surface reflectance is mixed on a 1 m grid from four components (sunlit / shaded crown,
sunlit / shaded background) with per-band endmember spectra, and averaged to each
sensor's grid. Crown fraction is the nadir interception probability of the crowns
(1 − gap fraction); shading comes from casting the canopy surface along the sun
direction; terrain modulates the direct part by cos(i)/cos(θs). The spectra are defined
in OLI bands at the reference geometry (nadir view, sun at ``reference_sun_zenith_deg``).

The sensors differ as real ones do (HLS v2.0 User Guide; Claverie et al. 2018, RSE 219:145-161):
* both see the surface through the Ross-Thick/Li-Sparse BRDF with HLS's fixed coefficients
  (Roy et al. 2016) at their own sun and view angles;
* Sentinel-2 MSI values are the OLI values passed through the inverse of HLS's bandpass
  adjustment (Claverie et al. 2018), so applying the published adjustment gives OLI back;
* independent noise, different clouds (and their shadows) per date.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import numpy as np
from affine import Affine

from ..core.imagery import hls, solar
from ..core.raster.aggregate import block_mean
from ..core.raster.write import write_raster
from ..core.outputs import atomic_output
from .world import EPSG, SceneConfig, rng_for

BANDS = ("coastal", "blue", "green", "red", "re1", "re2", "re3", "nir_broad", "nir", "swir1", "swir2")

#: Endmember reflectance (0-1) per band, in the order of BANDS. Illustrative values in the
#: range of published spectral libraries (e.g. USGS splib07), not a fit to one of them.
ENDMEMBERS = {
    "conifer": (0.020, 0.025, 0.050, 0.030, 0.090, 0.200, 0.250, 0.270, 0.280, 0.130, 0.060),
    "broadleaf": (0.025, 0.030, 0.070, 0.035, 0.130, 0.300, 0.380, 0.400, 0.420, 0.200, 0.090),
    "grass": (0.040, 0.050, 0.090, 0.060, 0.160, 0.280, 0.320, 0.340, 0.350, 0.250, 0.140),
    "litter": (0.040, 0.050, 0.070, 0.080, 0.120, 0.170, 0.190, 0.210, 0.220, 0.280, 0.200),
    "soil": (0.080, 0.100, 0.140, 0.180, 0.210, 0.230, 0.240, 0.250, 0.260, 0.330, 0.280),
    "water": (0.060, 0.060, 0.050, 0.030, 0.020, 0.015, 0.010, 0.010, 0.010, 0.005, 0.003),
    "cloud": (0.450, 0.450, 0.460, 0.470, 0.480, 0.480, 0.490, 0.490, 0.490, 0.400, 0.300),
}
SHADE_FACTOR = 0.2  # diffuse skylight share in shade
DIFFUSE_SHARE = 0.2
CLOUD_HEIGHT_M = 800.0
NOISE_SD = 0.002  # per pixel at the native resolution

S2_BANDS = {  # MSI band: (common name, resolution m)
    "B01": ("coastal", 60), "B02": ("blue", 10), "B03": ("green", 10), "B04": ("red", 10),
    "B05": ("re1", 20), "B06": ("re2", 20), "B07": ("re3", 20), "B08": ("nir_broad", 10),
    "B8A": ("nir", 20), "B11": ("swir1", 20), "B12": ("swir2", 20),
}
OLI_BANDS = {1: "coastal", 2: "blue", 3: "green", 4: "red", 5: "nir", 6: "swir1", 7: "swir2"}
S2_QUANTIFICATION = 10000
S2_BOA_ADD_OFFSET = -1000
L2_SR_MULT, L2_SR_ADD = 2.75e-5, -0.2


def reference_sun_zenith(config: SceneConfig) -> float:
    """Sun zenith of the geometry at which the spectra are defined (nadir view).

    Parameters
    ----------
    config : SceneConfig
        ``reference_sun_zenith_deg`` if set; else the scene's centre and acquisition date.

    Returns
    -------
    float
        Degrees: the configured value, or HLS's NBAR zenith at the scene centre on the acquisition day.
    """
    if config.reference_sun_zenith_deg is not None:
        return float(config.reference_sun_zenith_deg)
    from rasterio.warp import transform

    xs, ys = transform(f"EPSG:{EPSG}", "EPSG:4326", [(config.xmin + config.xmax) / 2],
                       [(config.ymin + config.ymax) / 2])
    return solar.nbar_solar_zenith_deg(ys[0], _dt.date.fromisoformat(config.acquisition_date), xs[0])


def cast_shadow(height: np.ndarray, base: np.ndarray, sun_zenith_deg: float, sun_azimuth_deg: float,
                res_m: float = 1.0) -> np.ndarray:
    """True where the surface ``height`` blocks the sun over a point at height ``base``.

    Parameters
    ----------
    height, base : numpy.ndarray
        Surface and point heights, m, on one grid.
    sun_zenith_deg, sun_azimuth_deg : float
        Sun position, degrees.
    res_m : float
        Cell side, m.

    Returns
    -------
    numpy.ndarray of bool
    """
    tan_e = math.tan(math.radians(90 - sun_zenith_deg))
    az = math.radians(sun_azimuth_deg)
    ux, uy = math.sin(az), math.cos(az)  # towards the sun, x east, y north
    steps = int(math.ceil(float(height.max()) / tan_e / res_m)) + 1 if height.size else 0
    shaded = np.zeros(height.shape, dtype=bool)
    rows, cols = height.shape
    for step in range(1, steps + 1):
        d = step * res_m
        dc, dr = int(round(d * ux / res_m)), int(round(-d * uy / res_m))
        if abs(dc) >= cols or abs(dr) >= rows:
            break
        src = height[max(0, dr):rows + min(0, dr), max(0, dc):cols + min(0, dc)]
        tgt = (slice(max(0, -dr), rows + min(0, -dr)), slice(max(0, -dc), cols + min(0, -dc)))
        shaded[tgt] |= src > base[tgt] + d * tan_e
    return shaded


class SurfaceModel:
    """The 1 m inputs of the reflectance mixture, shared by all sensors."""

    def __init__(self, config: SceneConfig, chm, p_crown, gymnosperm_top, background, slope_x, slope_y):
        self.config = config
        self.chm = chm
        self.p_crown = p_crown
        self.gym = gymnosperm_top
        self.background = background  # array of endmember names per 1 m cell (object-free: codes)
        self.slope_x, self.slope_y = slope_x, slope_y

    def reflectance_1m(self, band: str, sun_zenith: float, sun_azimuth: float, shadows) -> np.ndarray:
        b = BANDS.index(band)
        crown_sun_shade, ground_shade = shadows
        crown = np.where(self.gym, ENDMEMBERS["conifer"][b], ENDMEMBERS["broadleaf"][b])
        bg_codes = np.array([ENDMEMBERS[name][b] for name in BACKGROUNDS])
        bg = bg_codes[self.background]
        crown = crown * np.where(crown_sun_shade, SHADE_FACTOR, 1.0)
        bg = bg * np.where(ground_shade, SHADE_FACTOR, 1.0)
        rho = self.p_crown * crown + (1 - self.p_crown) * bg
        return rho * self.illumination(sun_zenith, sun_azimuth)

    def illumination(self, sun_zenith: float, sun_azimuth: float) -> np.ndarray:
        ts, az = math.radians(sun_zenith), math.radians(sun_azimuth)
        # unit normal of z = f(x, y): (−fx, −fy, 1)/norm; sun vector (sin ts sin az, sin ts cos az, cos ts)
        norm = np.sqrt(1 + self.slope_x ** 2 + self.slope_y ** 2)
        cos_i = (-self.slope_x * math.sin(ts) * math.sin(az) - self.slope_y * math.sin(ts) * math.cos(az)
                 + math.cos(ts)) / norm
        return (1 - DIFFUSE_SHARE) * np.clip(cos_i, 0, None) / math.cos(ts) + DIFFUSE_SHARE

    def shadows(self, sun_zenith: float, sun_azimuth: float):
        crown = cast_shadow(self.chm, self.chm, sun_zenith, sun_azimuth)
        ground = cast_shadow(self.chm, np.zeros_like(self.chm), sun_zenith, sun_azimuth)
        return crown, ground


BACKGROUNDS = ("litter", "grass", "soil", "water")


def clouds(config: SceneConfig, stream: int, res_m: float, sun_zenith: float, sun_azimuth: float):
    """Cloud opacity and cloud-shadow opacity on a ``res_m`` grid (analytic Gaussian blobs).

    Parameters
    ----------
    config : SceneConfig
    stream : int
        The random stream (one per sensor).
    res_m : float
        Cell side, m.
    sun_zenith, sun_azimuth : float
        Degrees; the shadows are the clouds shifted along the sun's direction.

    Returns
    -------
    tuple of numpy.ndarray
        (cloud opacity, shadow opacity), 0-1.
    """
    rng = rng_for(config, 300, stream)
    size = config.size
    offset = CLOUD_HEIGHT_M * math.tan(math.radians(sun_zenith))
    az = math.radians(sun_azimuth)
    ox, oy = offset * math.sin(az), offset * math.cos(az)  # shadow at p comes from cloud at p + (ox, oy)
    pad = offset + 400
    area = (size + 2 * pad) ** 2
    mean_sigma = 90.0
    n_blobs = rng.poisson(config.cloud_fraction * area / (2.2 * math.pi * mean_sigma ** 2)) if config.cloud_fraction > 0 else 0
    cx = rng.uniform(-pad, size + pad, n_blobs)
    cy = rng.uniform(-pad, size + pad, n_blobs)
    sig = rng.uniform(40, 140, n_blobs)
    n = int(round(size / res_m))
    xs = (np.arange(n) + 0.5) * res_m
    ys = size - (np.arange(n) + 0.5) * res_m
    X, Y = np.meshgrid(xs, ys)

    def opacity(px, py):
        field = np.zeros_like(px)
        for x, y, s in zip(cx, cy, sig):
            field += np.exp(-((px - x) ** 2 + (py - y) ** 2) / (2 * s * s))
        return np.clip(4.0 * (field - 0.45), 0, 1)  # opaque cores, short soft edges

    return opacity(X, Y), opacity(X + ox, Y + oy)


def _mix_clouds(rho, alpha, shadow_alpha, band):
    b = BANDS.index(band)
    surface = rho * (1 - 0.7 * shadow_alpha)
    return (1 - alpha) * surface + alpha * ENDMEMBERS["cloud"][b]


def _transform(config: SceneConfig, res: float) -> Affine:
    return Affine(res, 0, config.xmin, 0, -res, config.ymax)


def _land_class(surface: SurfaceModel, factor: int):
    """Majority cover class per output pixel: 0 vegetation, 1 soil, 2 water."""
    veg = block_mean(((surface.p_crown > 0.3) | (surface.background == BACKGROUNDS.index("grass"))
                      | (surface.background == BACKGROUNDS.index("litter"))).astype(np.float32), factor)
    water = block_mean((surface.background == BACKGROUNDS.index("water")).astype(np.float32), factor)
    return np.where(water > 0.5, 2, np.where(veg >= 0.5, 0, 1))


def write_sentinel2(config: SceneConfig, surface: SurfaceModel, out_dir: Path, provenance: dict) -> dict:
    """A Sentinel-2 L2A-like product (processing baseline 05.09, GeoTIFF instead of JP2).

    Parameters
    ----------
    config : SceneConfig
    surface : SurfaceModel
    out_dir : Path
    provenance : dict
        Stored in every raster.

    Returns
    -------
    dict
        The ``.SAFE`` folder, its files and the sun/view angles, degrees.
    """
    date = _dt.date.fromisoformat(config.acquisition_date)
    stamp = date.strftime("%Y%m%d") + "T100031"
    tile = "T33UUU"
    safe = out_dir / f"S2A_MSIL2A_{stamp}_N0509_R122_{tile}_{date.strftime('%Y%m%d')}T140000.SAFE"
    granule = safe / "GRANULE" / f"L2A_{tile}_A042000_{stamp}"
    img = granule / "IMG_DATA"
    sza, saa = config.s2_sun_zenith_deg, config.s2_sun_azimuth_deg
    vza, vaa = config.s2_view_zenith_deg, config.s2_view_azimuth_deg
    shadows = surface.shadows(sza, saa)
    rng = rng_for(config, 400)
    files = {}
    cloud_cache = {}
    for band, (name, res) in S2_BANDS.items():
        factor = int(res)
        rho_ref = block_mean(surface.reflectance_1m(name, sza, saa, shadows), factor)
        brdf = hls.brdf_model(name, sza, vza, vaa - saa) / hls.brdf_model(name, reference_sun_zenith(config), 0, 0)
        rho = rho_ref * brdf
        if band in hls.MSI_COMMON_NAMES:
            rho = hls.bandpass_oli_to_msi(rho, band, "S2A")
        if res not in cloud_cache:
            cloud_cache[res] = clouds(config, 1, res, sza, saa)
        alpha, shadow_alpha = cloud_cache[res]
        rho = _mix_clouds(rho, alpha, shadow_alpha, name) + rng.normal(0, NOISE_SD, rho.shape)
        dn = np.clip(np.round(rho * S2_QUANTIFICATION - S2_BOA_ADD_OFFSET), 1, 65535).astype(np.uint16)
        path = img / f"R{res}m" / f"{tile}_{stamp}_{band}_{res}m.tif"
        write_raster(path, dn, _transform(config, res), f"EPSG:{EPSG}", nodata=0, descriptions=[band],
                     tags={"BAND": band, "QUANTIFICATION_VALUE": S2_QUANTIFICATION,
                           "BOA_ADD_OFFSET": S2_BOA_ADD_OFFSET}, provenance=provenance)
        files[band] = str(path)
    # scene classification at 20 m
    alpha, shadow_alpha = cloud_cache.get(20) or clouds(config, 1, 20, sza, saa)
    land = _land_class(surface, 20)
    # Flags are generous at the edges (any cloud or shadow contribution is flagged): "clear"
    # pixels are truly clear, so tests on them measure sensor differences, not haze.
    # (class 7, "unclassified", is left unused: users usually keep it, so it must not hide haze)
    scl = np.select([alpha > 0.6, alpha > 0, shadow_alpha > 0.01, land == 2, land == 1],
                    [9, 8, 3, 6, 5], default=4).astype(np.uint8)
    path = img / "R20m" / f"{tile}_{stamp}_SCL_20m.tif"
    write_raster(path, scl, _transform(config, 20), f"EPSG:{EPSG}", nodata=0, descriptions=["SCL"],
                 provenance=provenance)
    files["SCL"] = str(path)
    _write_s2_metadata(config, safe, granule, date, stamp)
    files["MTD_MSIL2A"] = str(safe / "MTD_MSIL2A.xml")
    files["MTD_TL"] = str(granule / "MTD_TL.xml")
    return {"product": str(safe), "files": files, "sun_zenith_deg": sza, "sun_azimuth_deg": saa,
            "view_zenith_deg": vza, "view_azimuth_deg": vaa}


def _write_s2_metadata(config, safe: Path, granule: Path, date, stamp):
    """MTD_MSIL2A.xml and the granule's MTD_TL.xml, with the elements the ESA Sentinel-2 Products
    Specification Document defines and the plugin reads."""
    product = _s2_product_xml(granule, date, stamp)
    tile = _s2_tile_xml(config, date, stamp)
    for path, text in ((safe / "MTD_MSIL2A.xml", product), (granule / "MTD_TL.xml", tile)):
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path, "w") as handle:
            handle.write(text)


def _s2_product_xml(granule: Path, date, stamp) -> str:
    """The product metadata: start time, baseline, unit, granule files, quantification and offsets."""
    physical = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    offsets = "\n".join(f'          <BOA_ADD_OFFSET band_id="{i}">{S2_BOA_ADD_OFFSET}</BOA_ADD_OFFSET>'
                        for i in range(len(physical)))
    images = "\n".join(f"            <IMAGE_FILE>GRANULE/{granule.name}/IMG_DATA/R{res}m/T33UUU_{stamp}_{b}_{res}m</IMAGE_FILE>"
                       for b, (_, res) in S2_BANDS.items())
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{date.isoformat()}T10:00:31.024Z</PRODUCT_START_TIME>
      <PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE>
      <PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>
      <PROCESSING_BASELINE>05.09</PROCESSING_BASELINE>
      <Datatake datatakeIdentifier="GS2A_{stamp}_042000_N05.09">
        <SPACECRAFT_NAME>Sentinel-2A</SPACECRAFT_NAME>
        <DATATAKE_SENSING_START>{date.isoformat()}T10:00:31.024Z</DATATAKE_SENSING_START>
      </Datatake>
      <Product_Organisation>
        <Granule_List>
          <Granule datastripIdentifier="SIMULATED" granuleIdentifier="{granule.name}" imageFormat="GeoTIFF">
{images}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <QUANTIFICATION_VALUES_LIST>
        <BOA_QUANTIFICATION_VALUE unit="none">{S2_QUANTIFICATION}</BOA_QUANTIFICATION_VALUE>
        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>
        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>
      </QUANTIFICATION_VALUES_LIST>
      <BOA_ADD_OFFSET_VALUES_LIST>
{offsets}
      </BOA_ADD_OFFSET_VALUES_LIST>
      <Spectral_Information_List>
{chr(10).join(f'        <Spectral_Information bandId="{i}" physicalBand="{b}"/>' for i, b in enumerate(physical))}
      </Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-2A_User_Product>
"""


def _s2_tile_xml(config, date, stamp) -> str:
    """The tile metadata: sensing time, geocoding and the (constant) sun and view angle grids."""
    sza, saa = config.s2_sun_zenith_deg, config.s2_sun_azimuth_deg
    vza, vaa = config.s2_view_zenith_deg, config.s2_view_azimuth_deg
    sizes = "\n".join(
        f'        <Size resolution="{r}"><NROWS>{int(config.size // r)}</NROWS><NCOLS>{int(config.size // r)}</NCOLS></Size>'
        for r in (10, 20, 60))
    positions = "\n".join(
        f'        <Geoposition resolution="{r}"><ULX>{config.xmin:.0f}</ULX><ULY>{config.ymax:.0f}</ULY>'
        f'<XDIM>{r}</XDIM><YDIM>-{r}</YDIM></Geoposition>' for r in (10, 20, 60))
    views = "\n".join(
        f'          <Mean_Viewing_Incidence_Angle bandId="{i}"><ZENITH_ANGLE unit="deg">{vza}</ZENITH_ANGLE>'
        f'<AZIMUTH_ANGLE unit="deg">{vaa}</AZIMUTH_ANGLE></Mean_Viewing_Incidence_Angle>' for i in range(13))
    n_nodes = int(math.ceil(config.size / 5000)) + 1  # the 5 km angle grids cover the tile
    # the simulated geometry is constant over the scene, and so are its grids
    sun_grid = _s2_angle_block("Sun_Angles_Grid", sza, saa, n_nodes)
    view_grids = "\n".join(_s2_angle_block("Viewing_Incidence_Angles_Grids", vza, vaa, n_nodes,
                                            f' bandId="{i}" detectorId="1"')
                           for i in range(13))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-2A_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-2A_Tile_Metadata.xsd">
  <n1:General_Info>
    <TILE_ID>S2A_OPER_MSI_L2A_TL_SIMULATED_{stamp}_A042000_T33UUU_N05.09</TILE_ID>
    <SENSING_TIME>{date.isoformat()}T10:00:31.024Z</SENSING_TIME>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding metadataLevel="Brief">
      <HORIZONTAL_CS_NAME>WGS84 / UTM zone 33N</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>EPSG:{EPSG}</HORIZONTAL_CS_CODE>
{sizes}
{positions}
    </Tile_Geocoding>
    <Tile_Angles>
{sun_grid}
      <Mean_Sun_Angle>
        <ZENITH_ANGLE unit="deg">{sza}</ZENITH_ANGLE>
        <AZIMUTH_ANGLE unit="deg">{saa}</AZIMUTH_ANGLE>
      </Mean_Sun_Angle>
      <Mean_Viewing_Incidence_Angle_List>
{views}
      </Mean_Viewing_Incidence_Angle_List>
{view_grids}
    </Tile_Angles>
  </n1:Geometric_Info>
</n1:Level-2A_Tile_ID>
"""


def _s2_angle_block(tag: str, zenith, azimuth, n_nodes: int, attrs: str = "") -> str:
    """One angle grid element: zenith and azimuth values on ``n_nodes`` × ``n_nodes`` nodes 5 km apart."""
    def grid(value):
        row = " ".join(f"{value}" for _ in range(n_nodes))
        return "\n".join(f"              <VALUES>{row}</VALUES>" for _ in range(n_nodes))

    return (f"        <{tag}{attrs}>\n"
            f"          <Zenith><COL_STEP unit=\"m\">5000</COL_STEP><ROW_STEP unit=\"m\">5000</ROW_STEP>\n"
            f"            <Values_List>\n{grid(zenith)}\n            </Values_List></Zenith>\n"
            f"          <Azimuth><COL_STEP unit=\"m\">5000</COL_STEP><ROW_STEP unit=\"m\">5000</ROW_STEP>\n"
            f"            <Values_List>\n{grid(azimuth)}\n            </Values_List></Azimuth>\n"
            f"        </{tag}>")


def write_landsat(config: SceneConfig, surface: SurfaceModel, out_dir: Path, provenance: dict) -> dict:
    """A Landsat 8 Collection 2 Level-2-like product: SR_B1-B7, QA_PIXEL, MTL.txt.

    Parameters
    ----------
    config : SceneConfig
    surface : SurfaceModel
    out_dir : Path
        The product folder is created in it.
    provenance : dict

    Returns
    -------
    dict
        Folder, files, sun and view angles (degrees).
    """
    date = _dt.date.fromisoformat(config.landsat_date)
    name = f"LC08_L2SP_190025_{date.strftime('%Y%m%d')}_{(date + _dt.timedelta(days=9)).strftime('%Y%m%d')}_02_T1"
    folder = out_dir / name
    sza, saa = config.landsat_sun_zenith_deg, config.landsat_sun_azimuth_deg
    vza, vaa = config.landsat_view_zenith_deg, config.landsat_view_azimuth_deg
    shadows = surface.shadows(sza, saa)
    rng = rng_for(config, 500)
    alpha, shadow_alpha = clouds(config, 2, 30, sza, saa)
    files = {}
    for number, band in OLI_BANDS.items():
        rho_ref = block_mean(surface.reflectance_1m(band, sza, saa, shadows), 30)
        brdf = hls.brdf_model(band, sza, vza, vaa - saa) / hls.brdf_model(band, reference_sun_zenith(config), 0, 0)
        rho = _mix_clouds(rho_ref * brdf, alpha, shadow_alpha, band) + rng.normal(0, NOISE_SD, rho_ref.shape)
        dn = np.clip(np.round((rho - L2_SR_ADD) / L2_SR_MULT), 1, 65535).astype(np.uint16)
        path = folder / f"{name}_SR_B{number}.TIF"
        write_raster(path, dn, _transform(config, 30), f"EPSG:{EPSG}", nodata=0, descriptions=[f"SR_B{number}"],
                     provenance=provenance)
        files[f"SR_B{number}"] = str(path)
    land = _land_class(surface, 30)
    cloud = alpha > 0.3
    from scipy.ndimage import binary_dilation

    # the dilated-cloud bit covers the cloud's one-pixel rim and every thinner cloud edge
    dilated = (binary_dilation(cloud, iterations=1) | (alpha > 0)) & ~cloud
    shadow = (shadow_alpha > 0.01) & ~cloud
    water = land == 2
    conf = np.where(alpha > 0.6, 3, np.where(alpha > 0.3, 2, 1)).astype(np.uint16)  # 1 = low, as on clear land
    qa = (dilated.astype(np.uint16) << 1) | (cloud.astype(np.uint16) << 3) | (shadow.astype(np.uint16) << 4) \
        | ((~cloud & ~dilated).astype(np.uint16) << 6) | (water.astype(np.uint16) << 7) | (conf << 8) \
        | (np.where(shadow, 3, 1).astype(np.uint16) << 10) | (np.uint16(1) << 12) | (np.uint16(1) << 14)
    path = folder / f"{name}_QA_PIXEL.TIF"
    write_raster(path, qa.astype(np.uint16), _transform(config, 30), f"EPSG:{EPSG}", nodata=1,
                 descriptions=["QA_PIXEL"], provenance=provenance)
    files["QA_PIXEL"] = str(path)
    # per-pixel angle bands as in Collection-2 bundles: int16 hundredths of a degree, azimuths
    # in (−180°, 180°] as USGS stores them (330° would overflow int16)
    for kind, value in (("SZA", sza), ("SAA", _signed_azimuth(saa)), ("VZA", vza), ("VAA", _signed_azimuth(vaa))):
        path = folder / f"{name}_{kind}.TIF"
        angle = np.full(qa.shape, int(round(value * 100)), dtype=np.int16)
        write_raster(path, angle, _transform(config, 30), f"EPSG:{EPSG}", nodata=-32768, descriptions=[kind],
                     provenance=provenance)
        files[kind] = str(path)
    mtl = folder / f"{name}_MTL.txt"
    with atomic_output(mtl, "w") as handle:
        handle.write(_landsat_mtl(config, name, date, sza, saa))
    files["MTL"] = str(mtl)
    return {"product": str(folder), "files": files, "sun_zenith_deg": sza, "sun_azimuth_deg": saa,
            "view_zenith_deg": vza, "view_azimuth_deg": vaa}


def _signed_azimuth(azimuth_deg: float) -> float:
    return (azimuth_deg + 180.0) % 360.0 - 180.0 if azimuth_deg != 180.0 else 180.0


def _landsat_mtl(config, name, date, sza, saa) -> str:
    n = int(config.size // 30)
    lines = ["GROUP = LANDSAT_METADATA_FILE", "  GROUP = PRODUCT_CONTENTS",
             '    ORIGIN = "Simulated by forest_carbon_plugin.simulate"',
             f'    LANDSAT_PRODUCT_ID = "{name}"', '    PROCESSING_LEVEL = "L2SP"', "    COLLECTION_NUMBER = 02",
             '    COLLECTION_CATEGORY = "T1"']
    lines += [f'    FILE_NAME_BAND_{b} = "{name}_SR_B{b}.TIF"' for b in OLI_BANDS]
    lines += [f'    FILE_NAME_QUALITY_L1_PIXEL = "{name}_QA_PIXEL.TIF"', f'    FILE_NAME_METADATA_ODL = "{name}_MTL.txt"',
              "  END_GROUP = PRODUCT_CONTENTS", "  GROUP = IMAGE_ATTRIBUTES", '    SPACECRAFT_ID = "LANDSAT_8"',
              '    SENSOR_ID = "OLI_TIRS"', "    WRS_PATH = 190", "    WRS_ROW = 25",
              f"    DATE_ACQUIRED = {date.isoformat()}", '    SCENE_CENTER_TIME = "09:52:11.0000000Z"',
              f"    CLOUD_COVER = {100 * config.cloud_fraction:.2f}",
              f"    SUN_AZIMUTH = {saa:.8f}", f"    SUN_ELEVATION = {90 - sza:.8f}",
              "  END_GROUP = IMAGE_ATTRIBUTES", "  GROUP = PROJECTION_ATTRIBUTES", '    MAP_PROJECTION = "UTM"',
              '    DATUM = "WGS84"', '    ELLIPSOID = "WGS84"', "    UTM_ZONE = 33", "    GRID_CELL_SIZE_REFLECTIVE = 30.00",
              f"    REFLECTIVE_LINES = {n}", f"    REFLECTIVE_SAMPLES = {n}",
              f"    CORNER_UL_PROJECTION_X_PRODUCT = {config.xmin + 15:.3f}",
              f"    CORNER_UL_PROJECTION_Y_PRODUCT = {config.ymax - 15:.3f}",
              f"    CORNER_LR_PROJECTION_X_PRODUCT = {config.xmax - 15:.3f}",
              f"    CORNER_LR_PROJECTION_Y_PRODUCT = {config.ymin + 15:.3f}",
              "  END_GROUP = PROJECTION_ATTRIBUTES", "  GROUP = LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"]
    for b in OLI_BANDS:
        lines += [f"    REFLECTANCE_MAXIMUM_BAND_{b} = 1.602213", f"    REFLECTANCE_MINIMUM_BAND_{b} = -0.199972"]
    for b in OLI_BANDS:
        lines += [f"    REFLECTANCE_MULT_BAND_{b} = 2.75E-05", f"    REFLECTANCE_ADD_BAND_{b} = -0.200000"]
    lines += ["  END_GROUP = LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", "END_GROUP = LANDSAT_METADATA_FILE", "END", ""]
    return "\n".join(lines)


def write_naip(config: SceneConfig, surface: SurfaceModel, out_dir: Path, provenance: dict) -> dict:
    """NAIP-like 1 m R, G, B, NIR (uint8) with an unknown per-band gain and offset.

    Parameters
    ----------
    config, surface : SceneConfig, SurfaceModel
        The scene and its surface reflectance model.
    out_dir : Path
    provenance : dict

    Returns
    -------
    dict
        The file, its band names and the true gains and offsets (DN per unit reflectance, DN).
    """
    rng = rng_for(config, 600)
    sza, saa = config.s2_sun_zenith_deg, config.s2_sun_azimuth_deg
    shadows = surface.shadows(sza, saa)
    bands = ("red", "green", "blue", "nir")
    gains = rng.uniform(350, 700, 4)
    offsets = rng.uniform(0, 25, 4)
    layers = []
    for band, gain, offset in zip(bands, gains, offsets):
        rho = surface.reflectance_1m(band, sza, saa, shadows)
        dn = gain * rho + offset + rng.normal(0, 1.5, rho.shape)
        layers.append(np.clip(np.round(dn), 1, 255).astype(np.uint8))  # 0 is kept for nodata
    path = out_dir / "naip_1m.tif"
    write_raster(path, np.stack(layers), _transform(config, 1), f"EPSG:{EPSG}", nodata=0,
                 descriptions=["red", "green", "blue", "nir"], provenance=provenance)
    return {"file": str(path), "gain": [float(g) for g in gains], "offset": [float(o) for o in offsets],
            "bands": list(bands)}


def write_sentinel1(config: SceneConfig, agb_10m: np.ndarray, water_10m: np.ndarray, out_dir: Path,
                    provenance: dict) -> dict:
    """Sentinel-1-like gamma0 VV and VH (linear) from a water-cloud model of AGB (Mg/ha).

    Water-cloud model (Attema & Ulaby 1978, Radio Science 13:357-364) with biomass as the
    vegetation descriptor: σ0 = A·V·cosθ·(1 − τ²) + τ²·σ0_soil, τ² = exp(−2B·V/cosθ);
    γ0 = σ0 / cosθ. Multiplicative speckle: Gamma(L, 1/L) for L looks. Coefficients are
    illustrative (C-band saturates near 100-150 Mg/ha, as observed).

    Parameters
    ----------
    config : SceneConfig
        Incidence angle (degrees) and looks.
    agb_10m : numpy.ndarray
        AGB density on the 10 m grid, Mg/ha.
    water_10m : numpy.ndarray of bool
        Water on that grid (specular: dark in both polarizations).
    out_dir : Path
    provenance : dict

    Returns
    -------
    dict
        The VV and VH files, the incidence angle (degrees) and the looks.
    """
    rng = rng_for(config, 700)
    theta = math.radians(config.s1_incidence_deg)
    params = {"VV": (0.0011, 0.012, 0.08), "VH": (0.00028, 0.010, 0.012)}  # A (per Mg/ha), B, soil
    files = {}
    date = _dt.date.fromisoformat(config.acquisition_date) - _dt.timedelta(days=1)
    for pol, (a, b, soil) in params.items():
        tau2 = np.exp(-2 * b * agb_10m / math.cos(theta))
        sigma0 = a * agb_10m * math.cos(theta) * (1 - tau2) + tau2 * soil
        gamma0 = sigma0 / math.cos(theta)
        gamma0 = np.where(water_10m, 0.002 if pol == "VV" else 0.0005, gamma0)
        speckled = gamma0 * rng.gamma(config.s1_looks, 1 / config.s1_looks, gamma0.shape)
        path = out_dir / f"S1A_IW_GRDH_1SDV_{date.strftime('%Y%m%d')}T050412_gamma0_{pol}.tif"
        write_raster(path, speckled.astype(np.float32), _transform(config, 10), f"EPSG:{EPSG}",
                     nodata=float("nan"), descriptions=[f"gamma0_{pol} (linear)"],
                     tags={"POLARISATION": pol, "INCIDENCE_ANGLE_DEG": config.s1_incidence_deg,
                           "LOOKS": config.s1_looks}, provenance=provenance)
        files[pol] = str(path)
    return {"files": files, "incidence_deg": config.s1_incidence_deg, "looks": config.s1_looks}
