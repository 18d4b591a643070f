"""Carbon stock of project areas with a Monte Carlo confidence interval.

Plain functions:

- :func:`pixel_weights` — the exact share of each pixel inside a polygon (interior pixels by
  rasterization, pixels along the boundary by their exact intersection area), never by centroid.
- :func:`equal_area_ha` — the ellipsoidal area of a geometry (pyproj ``Geod``) whatever its CRS.
- :func:`correlated_field` — realizations of a unit-variance Gaussian random field with the exponential
  correlation ``ρ(d) = exp(−3d / range)`` (``range`` = practical range, where ρ = 0.05, as fitted by
  ``validatepredictions``), by circulant embedding and FFT, in memory-bounded batches.
- :func:`carbon_stock` — per polygon: area, mean and total AGB, biomass with roots, carbon, CO2e, the Monte
  Carlo interval of the total (correlated pixel errors + allometry parameter draws), the two analytic bounds
  (independent and fully correlated pixel errors), the uncertainty deduction, and an HTML/JSON report.

Units: AGB in Mg (dry matter) per ha, areas in ha, totals in Mg = t.
Conversions: biomass = AGB·(1 + R); carbon = biomass·CF; CO2e = carbon·44/12.

Pixel errors are additive and Gaussian with standard deviation σ per pixel (from a σ raster, or from
the bounds of a central interval: σ = (upper − lower) / (2·z(coverage))). The error of a polygon's total
is Σ wᵢ·aᵢ·σᵢ·εᵢ (w = share of the pixel inside, a = pixel area in ha) with ε the correlated field. The
field is simulated on the polygon's window of pixels; for windows larger than ``MAX_SIM_SIDE`` pixels a side it
is simulated on coarser cells (the sums of w·a·σ inside them) and rescaled to the exact variance
``uᵀΣu`` computed by FFT on the full grid (a linear functional of a Gaussian field is Gaussian, so the
rescaled draws have exactly the right distribution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ForestCarbonError
from ..progress import NullProgress, Progress, check_cancel
from ..stats import sigma_from_bounds, z_score

__all__ = ["ALLOMETRIES", "ECOZONES", "CO2_PER_C", "pixel_weights", "equal_area_ha", "correlated_field",
           "root_shoot_ratio", "carbon_stock", "OUTPUT_FIELDS"]

CO2_PER_C = 44.0 / 12.0
DEFAULT_CARBON_FRACTION = 0.47
DEFAULT_ALLOWED_UNCERTAINTY = 10.0
#: ART-TREES v2.0 (2021) §8 asks for Monte Carlo with 10,000 iterations and 90 % confidence intervals
DEFAULT_SIMULATIONS = 10_000
MAX_SIM_SIDE = 128  #: largest window side (pixels) simulated pixel by pixel; larger windows are coarsened
MAX_BATCH_BYTES = 128 * 2 ** 20  #: memory of one batch of FFT fields

OUTPUT_FIELDS = ("area_ha", "agb_mean_mg_ha", "agb_total_mg", "biomass_total_mg", "carbon_total_t",
                 "co2e_total_t", "co2e_ci_low_t", "co2e_ci_high_t", "uncertainty_pct", "deduction_pct",
                 "co2e_creditable_t")


# ----------------------------------------------------------------------------- reference tables

@dataclass(frozen=True)
class Allometry:
    key: str
    label: str
    citation: str
    verified: bool
    #: AGB (Mg/ha) = a · H^b; ``needs`` lists extra inputs that fix a
    a: float | None = None
    b: float | None = None
    a_se: float = 0.0
    b_se: float = 0.0
    needs: tuple = ()


ALLOMETRIES = {
    "custom": Allometry(
        "custom", "Custom: AGB = ALLOMETRY_A · H^ALLOMETRY_B",
        "user-supplied coefficients (and their standard errors ALLOMETRY_A_SE, ALLOMETRY_B_SE)", True),
    "asner_mascaro_2014": Allometry(
        "asner_mascaro_2014",
        "Asner & Mascaro 2014 general model: ACD = 3.8358·TCH^0.2807·BA^0.9721·WD^1.3763",
        "Asner G.P. & Mascaro J. (2014) Mapping tropical forest carbon: calibrating plot estimates to a simple LiDAR "
        "metric. Remote Sensing of Environment 140:614-624. The coefficients were not checked against the paper: "
        "compare them with its general model before relying on them. ACD (Mg C/ha) is turned into AGB by dividing "
        "by CARBON_FRACTION, so that the carbon output equals the model's ACD. Needs the regional basal area BA (m²/ha) and wood density WD (g/cm³).",
        False, a=3.8358, b=0.2807, needs=("basal_area", "wood_density")),
}

# IPCC 2006 GL Vol. 4 Ch. 4 Table 4.4, p. 4.49 ("Ratio of below-ground biomass to above-ground biomass (R)"; the
# values are the rounded medians of Mokany, Raison & Prokushkin 2006, Global Change Biology 12:84-96):
# [(upper AGB bound in t d.m./ha, R), ...]. Status: checked against the unrounded Mokany et al. values that
# third-party code uses (boreal 0.392/0.239, temperate oak 0.295, eucalypt 0.437, tropical moist deciduous
# 0.205/0.235); the primary PDF could not be opened from the development machine. The 2019 Refinement's revised
# Table 4.4 (by origin and continent) is not used: it needs inputs this tool does not take.
ECOZONES = {
    "tropical_rainforest": ("Tropical rainforest", [(math.inf, 0.37)]),
    "tropical_moist_deciduous": ("Tropical moist deciduous forest", [(125, 0.20), (math.inf, 0.24)]),
    "tropical_dry": ("Tropical dry forest", [(20, 0.56), (math.inf, 0.28)]),
    "tropical_shrubland": ("Tropical shrubland", [(math.inf, 0.40)]),
    "tropical_mountain": ("Tropical mountain systems", [(math.inf, 0.27)]),
    "temperate_conifer": ("Temperate conifer forest", [(50, 0.40), (150, 0.29), (math.inf, 0.20)]),
    "temperate_oak": ("Temperate oak forest (table gives AGB > 70 only)", [(math.inf, 0.30)]),
    "temperate_eucalypt": ("Temperate eucalyptus forest", [(50, 0.44), (150, 0.28), (math.inf, 0.20)]),
    "temperate_other_broadleaf": ("Other temperate broadleaf forest", [(75, 0.46), (150, 0.23), (math.inf, 0.24)]),
    "boreal_conifer": ("Boreal coniferous forest", [(75, 0.39), (math.inf, 0.24)]),
    "boreal_broadleaf": ("Boreal broadleaf forest", [(math.inf, 0.24)]),
}
ECOZONE_CITATION = ("IPCC 2006 Guidelines for National GHG Inventories, Vol. 4, Ch. 4, Table 4.4, p. 4.49 "
                    "(root-to-shoot ratios by ecological zone and above-ground biomass class, from Mokany et al. "
                    "2006); set ROOT_SHOOT to use another value")
# IPCC 2006 GL Vol. 4 Ch. 4 Table 4.3, p. 4.48: default carbon fraction 0.47 (tropical/subtropical 0.47,
# temperate/boreal 0.47; broad-leaved 0.48, conifers 0.51 are the finer rows). Same status as Table 4.4 above.
CARBON_FRACTION_CITATION = ("0.47: IPCC 2006 Guidelines Vol. 4, Ch. 4, Table 4.3, p. 4.48, default carbon fraction "
                            "of dry matter")
DEDUCTION_CITATION = (
    "deduction = max(0, U − ALLOWED_UNCERTAINTY), U = half-width of the CONFIDENCE interval of the total as a % of "
    "the total; creditable = total × (1 − deduction/100). Default 10% at 90% confidence in the style of Verra "
    "VM0047 §8.4; VMD0017 uses 15% at 95%: set ALLOWED_UNCERTAINTY and CONFIDENCE to your standard's edition. "
    "Apply this deduction before any buffer deduction, not summed with it.")


def root_shoot_ratio(ecozone: str, agb_mg_ha: float) -> float:
    """IPCC Table 4.4 root-to-shoot ratio of ``ecozone`` for a stand of ``agb_mg_ha`` (t d.m./ha)."""
    if ecozone not in ECOZONES:
        raise ForestCarbonError(f"Unknown ecozone '{ecozone}'. Choose one of: {', '.join(ECOZONES)}.")
    for upper, ratio in ECOZONES[ecozone][1]:
        if agb_mg_ha <= upper:
            return ratio
    return ECOZONES[ecozone][1][-1][1]


# ----------------------------------------------------------------------------- geometry

def _shapely():
    from ..dependencies import require

    return require("shapely.geometry")


def _to_crs(crs):
    from pyproj import CRS

    return CRS.from_user_input(crs)


def _geod(crs):
    from pyproj import Geod

    ellipsoid = _to_crs(crs).ellipsoid
    if ellipsoid is None:
        return Geod(ellps="WGS84")
    return Geod(a=ellipsoid.semi_major_metre, b=ellipsoid.semi_minor_metre)


def equal_area_ha(geometry, crs) -> float:
    """The ellipsoidal area (ha) of a shapely polygon or multipolygon given in ``crs``.

    The vertices are taken to longitude/latitude on the CRS's own datum and the area is computed on its
    ellipsoid (pyproj ``Geod.geometry_area_perimeter``, Karney's algorithm), so the result does not depend on
    the projection's scale distortion.
    """
    from pyproj import Transformer
    from shapely.ops import transform

    crs = _to_crs(crs)
    if crs.is_geographic:
        lonlat = transform(_lonlat_order(crs), geometry)
    else:
        t = Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
        lonlat = transform(t.transform, geometry)
    # Geod signs each ring by its orientation: exteriors counter-clockwise, holes clockwise
    from shapely.geometry import MultiPolygon, Polygon
    from shapely.geometry.polygon import orient

    if isinstance(lonlat, Polygon):
        lonlat = orient(lonlat, 1.0)
    elif isinstance(lonlat, MultiPolygon):
        lonlat = MultiPolygon([orient(p, 1.0) for p in lonlat.geoms])
    area, _ = _geod(crs).geometry_area_perimeter(lonlat)
    return abs(area) / 10_000.0


def _lonlat_order(crs):
    """Identity for x = longitude; shapely geometries from GDAL/QGIS are always x = lon, y = lat."""
    return lambda x, y, z=None: (x, y)


def pixel_weights(polygon, grid):
    """The share (0-1) of each pixel of ``grid`` inside ``polygon`` (shapely, in the grid's CRS).

    Returns ``(row0, col0, fractions)`` for the window of the grid covering the polygon's bounds, or None
    when the polygon misses the grid. Pixels whose square is crossed by the boundary get their exact
    intersection area (shapely); the others are 1 inside, 0 outside (rasterization).
    """
    from rasterio.features import rasterize
    from scipy.ndimage import binary_dilation
    from shapely.geometry import box, mapping

    t = grid.transform
    if t.b != 0 or t.d != 0:
        raise ForestCarbonError("The raster is rotated; warp it to a north-up grid first (gdalwarp).")
    xmin, ymin, xmax, ymax = polygon.bounds
    inv = ~t
    cols = [c for c, _ in (inv * (xmin, ymin), inv * (xmax, ymax))]
    rows = [r for _, r in (inv * (xmin, ymin), inv * (xmax, ymax))]
    c0 = max(0, int(math.floor(min(cols))))
    c1 = min(grid.width, int(math.ceil(max(cols))))
    r0 = max(0, int(math.floor(min(rows))))
    r1 = min(grid.height, int(math.ceil(max(rows))))
    if c1 <= c0 or r1 <= r0:
        return None
    shape = (r1 - r0, c1 - c0)
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    wt = window_transform(Window(c0, r0, shape[1], shape[0]), t)
    inside = rasterize([(mapping(polygon), 1)], out_shape=shape, transform=wt, fill=0, all_touched=False,
                       dtype="uint8").astype(bool)
    edge = rasterize([(mapping(polygon.boundary), 1)], out_shape=shape, transform=wt, fill=0, all_touched=True,
                     dtype="uint8").astype(bool)
    edge = binary_dilation(edge)
    frac = (inside & ~edge).astype(np.float64)
    pixel_area = abs(t.a * t.e)
    from shapely.prepared import prep

    prepared = prep(polygon)
    for r, c in zip(*np.nonzero(edge)):
        x0, y0 = wt * (c, r)
        x1, y1 = wt * (c + 1, r + 1)
        cell = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        if not prepared.intersects(cell):
            frac[r, c] = 0.0
        elif prepared.contains(cell):
            frac[r, c] = 1.0
        else:
            frac[r, c] = cell.intersection(polygon).area / pixel_area
    return r0, c0, np.clip(frac, 0.0, 1.0)


def _cell_area_ha(grid, r0, nrows) -> np.ndarray:
    """Area (ha) of one cell in each row ``r0 .. r0+nrows`` (a column vector)."""
    from pyproj import CRS

    crs = CRS.from_user_input(grid.crs)
    t = grid.transform
    if not crs.is_geographic:
        return np.full((nrows, 1), abs(t.a * t.e) / 10_000.0)
    geod = _geod(crs)
    out = np.empty((nrows, 1))
    for i in range(nrows):
        lat_top = t.f + t.e * (r0 + i)
        lat_bot = lat_top + t.e
        lons = [t.c, t.c + t.a, t.c + t.a, t.c]
        lats = [lat_top, lat_top, lat_bot, lat_bot]
        area, _ = geod.polygon_area_perimeter(lons, lats)
        out[i, 0] = abs(area) / 10_000.0
    return out


# ----------------------------------------------------------------------------- Gaussian random fields

def _practical(range_m: float) -> float:
    """The e-folding distance of ``exp(−3d/range)``."""
    return range_m / 3.0


def _embedding(shape, res, corr_range):
    """Eigenvalues (real FFT of the first row) of the circulant embedding of the exponential covariance on
    a grid of ``shape`` cells of size ``res`` (m); returns (λ, embedded shape)."""
    from scipy import fft

    rows, cols = shape
    if corr_range <= 0:
        return None, shape
    m = (fft.next_fast_len(2 * rows), fft.next_fast_len(2 * cols))
    i = np.arange(m[0])
    j = np.arange(m[1])
    di = np.minimum(i, m[0] - i) * res[1]
    dj = np.minimum(j, m[1] - j) * res[0]
    d = np.hypot(di[:, None], dj[None, :])
    c = np.exp(-d / _practical(corr_range))
    lam = fft.fft2(c, workers=-1).real
    return lam, m


def _field_batches(shape, res, corr_range, n, rng, max_bytes=MAX_BATCH_BYTES):
    """Yield batches (k, rows, cols) of unit-variance fields, ``n`` in all."""
    from scipy import fft

    rows, cols = shape
    if math.isinf(corr_range):
        # fully correlated: one standard normal per realization, the same at every pixel
        per = max(1, int(max_bytes // (8 * rows * cols)))
        done = 0
        while done < n:
            k = min(per, n - done)
            yield np.broadcast_to(rng.standard_normal((k, 1, 1)).astype(np.float32), (k, rows, cols))
            done += k
        return
    if corr_range <= 0:
        per = max(1, int(max_bytes // (8 * rows * cols)))
        done = 0
        while done < n:
            k = min(per, n - done)
            yield rng.standard_normal((k, rows, cols), dtype=np.float32)
            done += k
        return
    lam, m = _embedding(shape, res, corr_range)
    scale = np.sqrt(np.clip(lam, 0.0, None) / (m[0] * m[1])).astype(np.float32)
    per = max(1, int(max_bytes // (8 * m[0] * m[1])))
    done = 0
    while done < n:
        pairs = min(per, (n - done + 1) // 2)
        # single precision: the fields are summed against float64 weights; 2 fields per complex FFT
        z = np.empty((pairs, *m), dtype=np.complex64)
        z.real = rng.standard_normal((pairs, *m), dtype=np.float32)
        z.imag = rng.standard_normal((pairs, *m), dtype=np.float32)
        z *= scale
        w = fft.fft2(z, workers=-1, overwrite_x=True)[:, :rows, :cols]
        fields = np.concatenate([w.real, w.imag], axis=0)[: n - done]
        done += len(fields)
        yield fields


def correlated_field(shape, res, corr_range: float, n: int = 1, seed=None) -> np.ndarray:
    """``n`` realizations (n, rows, cols) of a zero-mean, unit-variance Gaussian random field with the
    exponential correlation ``exp(−3d/corr_range)`` (d in metres, ``res`` = (x, y) cell size in metres or a
    number). ``corr_range`` 0 gives independent pixels. Circulant embedding (Dietrich & Newsam 1997) on a
    grid at least twice the window; the (rare, small) negative eigenvalues are set to 0."""
    res = (float(res), float(res)) if np.isscalar(res) else tuple(float(r) for r in res)
    rng = np.random.default_rng(seed)
    return np.concatenate(list(_field_batches(tuple(shape), res, float(corr_range), int(n), rng)), axis=0)


def _exact_variance(u, res, corr_range) -> float:
    """uᵀΣu for the exponential correlation on the grid of ``u`` (FFT convolution, exact)."""
    from scipy import fft

    if corr_range <= 0:
        return float(np.sum(u * u))
    if math.isinf(corr_range):
        return float(np.sum(u)) ** 2
    lam, m = _embedding(u.shape, res, corr_range)
    padded = np.zeros(m)
    padded[: u.shape[0], : u.shape[1]] = u
    cu = fft.ifft2(fft.fft2(padded, workers=-1) * lam, workers=-1).real[: u.shape[0], : u.shape[1]]
    return float(np.sum(u * cu))


def _coarsen(u, factor):
    rows, cols = u.shape
    pr, pc = (-rows) % factor, (-cols) % factor
    padded = np.pad(u, ((0, pr), (0, pc)))
    return padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).sum(axis=(1, 3))


def simulate_error_totals(u, res, corr_range, n, rng, progress=None) -> tuple[np.ndarray, dict]:
    """``n`` Monte Carlo draws of Σ uᵢ εᵢ (ε the correlated unit field) and how they were made."""
    res = tuple(res)
    if math.isinf(corr_range):
        # every pixel shares one ε: the total's error is Σu·ε exactly, no field needed
        return float(np.sum(u)) * rng.standard_normal(n), {"coarsening": None, "fully_correlated": True}
    factor = max(1, int(math.ceil(max(u.shape) / MAX_SIM_SIDE)))
    info = {"coarsening": factor}
    if factor == 1:
        grid_u, grid_res = u, res
    else:
        grid_u, grid_res = _coarsen(u, factor), (res[0] * factor, res[1] * factor)
    totals = np.empty(n)
    done = 0
    for batch in _field_batches(grid_u.shape, grid_res, corr_range, n, rng):
        check_cancel(progress)
        k = len(batch)
        totals[done:done + k] = np.tensordot(batch, grid_u, axes=([1, 2], [0, 1]))
        done += k
    if factor > 1:
        exact = _exact_variance(u, res, corr_range)
        coarse = _exact_variance(grid_u, grid_res, corr_range)
        ratio = math.sqrt(exact / coarse) if coarse > 0 else 0.0
        totals *= ratio
        info["rescale"] = ratio
    return totals, info


# ----------------------------------------------------------------------------- reading

def _read_projects(projects, projects_crs, progress):
    """[(shapely geometry, crs wkt or None)] from a path (OGR) or a sequence of shapely geometries."""
    sg = _shapely()
    if isinstance(projects, (str, bytes)) or hasattr(projects, "__fspath__"):
        from ..dependencies import require

        gdal, ogr = require("osgeo.gdal", "osgeo.ogr")
        gdal.UseExceptions()
        text = str(projects)
        path, layer_name = text, None
        if "|" in text:
            path, *options = text.split("|")
            for option in options:
                if option.startswith("layername="):
                    layer_name = option.split("=", 1)[1]
        try:
            ds = gdal.OpenEx(path, gdal.OF_VECTOR)
        except RuntimeError:
            ds = None
        if ds is None or ds.GetLayerCount() == 0:
            raise ForestCarbonError(f"PROJECTS '{projects}' cannot be opened as a vector layer. Give a GeoPackage or "
                                    "shapefile of polygons.")
        layer = ds.GetLayerByName(layer_name) if layer_name else ds.GetLayer(0)
        if layer is None:
            raise ForestCarbonError(f"PROJECTS: '{path}' has no layer '{layer_name}'.")
        srs = layer.GetSpatialRef()
        crs = srs.ExportToWkt() if srs is not None else None
        from shapely import wkb

        geoms = []
        for feature in layer:
            g = feature.GetGeometryRef()
            geoms.append(None if g is None or g.IsEmpty() else wkb.loads(bytes(g.ExportToIsoWkb())))
        return geoms, crs
    geoms = [g if g is None or isinstance(g, sg.base.BaseGeometry) else sg.shape(g) for g in projects]
    return geoms, projects_crs


def _repair(geom):
    """(valid polygonal geometry or None, details) by ``shapely.make_valid`` (GEOS MakeValid, "linework"): a
    self-intersecting ring becomes the polygons it encloses, every lobe kept, unlike ``buffer(0)``, which keeps
    only the lobes of one orientation. Lines and points that MakeValid may return are dropped."""
    from shapely.validation import explain_validity, make_valid

    repaired = _polygonal(make_valid(geom))
    details = {"reason": explain_validity(geom)}
    if repaired is None or repaired == "not polygonal" or repaired.area <= 0:
        return None, details
    return repaired, details


def _polygonal(geom):
    sg = _shapely()
    if geom is None or geom.is_empty:
        return None
    if isinstance(geom, (sg.Polygon, sg.MultiPolygon)):
        return geom
    if isinstance(geom, sg.GeometryCollection):
        parts = [g for g in geom.geoms if isinstance(g, (sg.Polygon, sg.MultiPolygon))]
        if parts:
            from shapely.ops import unary_union

            return unary_union(parts)
    return "not polygonal"


# ----------------------------------------------------------------------------- the algorithm

def carbon_stock(projects, out_html=None, agb=None, agb_std=None, agb_lower=None, agb_upper=None,
                 coverage: float = 0.9, height=None, allometry: str = "custom", allometry_a=None, allometry_b=None,
                 allometry_a_se: float = 0.0, allometry_b_se: float = 0.0, basal_area=None, wood_density=None,
                 root_shoot=None, ecozone=None, carbon_fraction: float = DEFAULT_CARBON_FRACTION,
                 confidence: float = 0.9, correlation_range: float | None = None, simulations: int = DEFAULT_SIMULATIONS,
                 seed: int = 0, allowed_uncertainty: float = DEFAULT_ALLOWED_UNCERTAINTY, projects_crs=None,
                 validation_report=None,
                 progress: Progress | None = None, parameters: dict | None = None, keep_simulations: bool = False,
                 embed_figures: bool = False) -> dict:
    """Carbon stock and its Monte Carlo interval for each polygon of ``projects``.

    ``projects``: a vector path (OGR; ``path|layername=x`` accepted) or a sequence of shapely geometries in
    ``projects_crs``. ``agb``: AGB raster (Mg/ha); or ``height`` with ``allometry`` (a key of
    :data:`ALLOMETRIES`). Pixel errors: ``agb_std`` (Mg/ha), or ``agb_lower`` and ``agb_upper`` at
    ``coverage``; in HEIGHT mode they describe the AGB derived from the heights. ``correlation_range`` (m),
    ``validation_report`` and their absence are resolved by :func:`variogram.resolve_correlation_range` (the
    uncertainty dock calls this same function, so both give the same interval). Returns a document with one
    record per input feature (``records``, keys :data:`OUTPUT_FIELDS`, None where undefined), ``notes``,
    ``warnings`` and ``outputs`` (when ``out_html`` is given).
    """
    import time

    import rasterio
    from shapely.ops import transform as shp_transform

    from ..raster.grid import RasterGrid
    from ..raster.read import overlaps, Readers

    progress = progress or NullProgress()
    started = time.perf_counter()
    notes, warnings_ = [], []

    def warn(message):
        warnings_.append(message)
        progress.warning(message)

    def note(message):
        notes.append(message)
        progress.info(message)

    # -- parameters ------------------------------------------------------------------------
    if (agb is None) == (height is None):
        raise ForestCarbonError("Give either AGB (a biomass raster, Mg/ha) or HEIGHT with ALLOMETRY, not both and "
                                "not neither.")
    if not 0 < carbon_fraction <= 1:
        raise ForestCarbonError(f"CARBON_FRACTION must lie in (0, 1] (got {carbon_fraction}).")
    z_conf = z_score(confidence)
    simulations = int(simulations)
    if simulations < 10:
        raise ForestCarbonError(f"SIMULATIONS must be at least 10 (got {simulations}); 1000 or more is advised.")
    if not 0 < confidence < 1:
        raise ForestCarbonError(f"CONFIDENCE must lie in (0, 1) (got {confidence}).")
    from .variogram import resolve_correlation_range

    correlation = resolve_correlation_range(correlation_range, validation_report, warn=warn, note=note)
    corr_m = correlation["range_m"]
    if allowed_uncertainty is None or allowed_uncertainty < 0:
        raise ForestCarbonError("ALLOWED_UNCERTAINTY must be a percentage ≥ 0.")
    if root_shoot is not None:
        if root_shoot < 0:
            raise ForestCarbonError(f"ROOT_SHOOT must be ≥ 0 (got {root_shoot}).")
    elif ecozone:
        root_shoot_ratio(ecozone, 0.0)  # validates the key
    else:
        # no zone known: roots are left out, which can only understate the stock (conservative for crediting)
        root_shoot = 0.0
        warn("Neither ROOT_SHOOT nor ECOZONE is set: root-to-shoot ratio 0, i.e. ABOVE-GROUND carbon only (below-ground "
             "biomass is left out, which understates the stock). Set ECOZONE for the IPCC default ratio of your "
             "ecological zone, or ROOT_SHOOT for your own.")
    if (agb_lower is None) != (agb_upper is None):
        raise ForestCarbonError("AGB_LOWER and AGB_UPPER go together: give both (with COVERAGE), or AGB_STD.")
    if agb_std is not None and agb_lower is not None:
        raise ForestCarbonError("Give AGB_STD or AGB_LOWER/AGB_UPPER, not both.")
    interval_source = "std" if agb_std is not None else ("bounds" if agb_lower is not None else None)
    if interval_source == "bounds":
        z_score(coverage)  # a bad COVERAGE fails before any pixel is read

    allo = None
    if height is not None:
        if allometry not in ALLOMETRIES:
            raise ForestCarbonError(f"Unknown ALLOMETRY '{allometry}'. Choose one of: {', '.join(ALLOMETRIES)}.")
        allo = ALLOMETRIES[allometry]
        if allo.key == "custom":
            if allometry_a is None or allometry_b is None:
                raise ForestCarbonError("The custom allometry AGB = a·H^b needs ALLOMETRY_A and ALLOMETRY_B.")
            a, b = float(allometry_a), float(allometry_b)
            a_se, b_se = float(allometry_a_se or 0.0), float(allometry_b_se or 0.0)
        else:
            if basal_area is None or wood_density is None:
                raise ForestCarbonError(f"{allo.label} needs ALLOMETRY_BA (basal area, m²/ha) and ALLOMETRY_WD "
                                        "(wood density, g/cm³).")
            a = allo.a * float(basal_area) ** 0.9721 * float(wood_density) ** 1.3763 / carbon_fraction
            b = allo.b
            a_se, b_se = float(allometry_a_se or 0.0), float(allometry_b_se or 0.0)
            warn(f"{allo.key}: coefficients not checked against the paper (see the help); ACD converted to AGB with CARBON_FRACTION.")
        if a <= 0:
            raise ForestCarbonError(f"The allometry's coefficient a must be > 0 (got {a}).")
        if a_se < 0 or b_se < 0:
            raise ForestCarbonError("The allometry's standard errors must be ≥ 0.")
        if a_se == 0 and b_se == 0:
            note("The allometry's parameters are taken as exact (standard errors 0): the interval covers the map "
                 "errors only.")
        else:
            note(f"Allometry AGB = {a:.6g}·H^{b:.6g}; a ~ N({a:.4g}, {a_se:.4g}²) and b ~ N({b:.4g}, {b_se:.4g}²) "
                 "drawn independently in each simulation (their covariance is not used).")
    main = agb if agb is not None else height

    with rasterio.open(main) as src:
        grid = RasterGrid.of(src)
        if src.crs is None:
            raise ForestCarbonError(f"The raster '{main}' has no CRS. Assign one (gdal_edit.py -a_srs) and run again.")
        raster_crs = src.crs.to_wkt()
        res = (abs(src.transform.a), abs(src.transform.e))
    for name, other in (("AGB_STD", agb_std), ("AGB_LOWER", agb_lower), ("AGB_UPPER", agb_upper)):
        if other is not None:
            with rasterio.open(other) as src:
                if not overlaps(grid, src):
                    raise ForestCarbonError(
                        f"{name} ('{Path(str(other)).name}') does not overlap '{Path(str(main)).name}': the "
                        "uncertainty rasters must cover the map they describe. Give the ones predictraster wrote "
                        "with it.")
    from pyproj import CRS

    rcrs = CRS.from_user_input(raster_crs)
    if rcrs.is_geographic:
        # metres per pixel at the raster's centre, for the correlation distances
        lat = math.radians((grid.bounds[1] + grid.bounds[3]) / 2)
        a_e = rcrs.ellipsoid.semi_major_metre
        res_m = (math.radians(res[0]) * a_e * math.cos(lat), math.radians(res[1]) * a_e)
    else:
        unit = rcrs.axis_info[0].unit_conversion_factor if rcrs.axis_info else 1.0
        res_m = (res[0] * unit, res[1] * unit)

    geoms, pcrs = _read_projects(projects, projects_crs, progress)
    if not geoms:
        raise ForestCarbonError("PROJECTS has no features: give a polygon layer with one polygon per project area.")
    if pcrs is None:
        warn("PROJECTS has no CRS: taken to be the raster's CRS.")
        pcrs = raster_crs
    reproject = not CRS.from_user_input(pcrs).equals(rcrs)
    if reproject:
        from pyproj import Transformer

        tr = Transformer.from_crs(CRS.from_user_input(pcrs), rcrs, always_xy=True)
        note(f"PROJECTS ({CRS.from_user_input(pcrs).name}) reprojected to the raster's CRS ({rcrs.name}) for the "
             "pixel weights; areas are computed on the ellipsoid from the original geometries.")

    readers = Readers(grid)
    # one child stream per polygon: a polygon's draws do not depend on the other polygons
    streams = [np.random.default_rng(child) for child in np.random.SeedSequence(int(seed)).spawn(len(geoms))]
    records, details, sims_out = [], [], []
    nodata_warned = {"neg": 0, "neg_mg": 0.0}
    try:
        for index, geom0 in enumerate(geoms):
            check_cancel(progress)
            rec = dict.fromkeys(OUTPUT_FIELDS)
            det = {"feature": index, "status": "ok"}
            records.append(rec)
            details.append(det)
            sims_out.append(None)
            geom = _polygonal(geom0)
            if geom is None or geom == "not polygonal":
                det["status"] = "no polygon geometry"
                warn(f"Feature {index}: {'no geometry' if geom is None else 'not a polygon'}; its fields are NULL.")
                continue
            if not geom.is_valid:
                drawn = geom
                geom, repair = _repair(geom)
                det["repair"] = repair
                if geom is None:
                    det["status"] = "invalid polygon, not repairable"
                    warn(f"Feature {index}: invalid polygon ({repair['reason']}) that make_valid turns into no area; "
                         "its fields are NULL. Fix it (QGIS: Fix geometries, Check validity) and run again.")
                    continue
                try:
                    as_drawn = equal_area_ha(drawn, pcrs)
                except Exception:  # noqa: BLE001 - an area of invalid rings is only informative
                    as_drawn = float("nan")
                repair["area_as_drawn_ha"] = as_drawn
                repair["area_repaired_ha"] = equal_area_ha(geom, pcrs)
                warn(f"Feature {index}: invalid polygon ({repair['reason']}) repaired with make_valid, keeping every "
                     f"polygonal part: area {repair['area_repaired_ha']:.6g} ha after repair (the shoelace area of the "
                     f"rings as drawn, where crossing lobes cancel, is {as_drawn:.6g} ha). Check the polygon.")
            rec["area_ha"] = equal_area_ha(geom, pcrs)
            g_r = shp_transform(tr.transform, geom) if reproject else geom
            weights = pixel_weights(g_r, grid)
            if weights is None or not np.any(weights[2] > 0):
                det["status"] = "outside the raster"
                warn(f"Feature {index} lies outside the raster: only its area is reported.")
                continue
            r0, c0, frac = weights
            cell_ha = _cell_area_ha(grid, r0, frac.shape[0])
            w_ha = frac * cell_ha
            if not rcrs.is_geographic:
                planar_ha = g_r.area * (res_m[0] / res[0]) ** 2 / 10_000.0
                # projection scale: pixel areas on the ellipsoid (same factor over a project)
                w_ha = w_ha * (rec["area_ha"] / planar_ha)
            from rasterio.windows import Window

            window = Window(c0, r0, frac.shape[1], frac.shape[0])
            sel = w_ha > 0
            raw = readers.read(main, window, dtype="float64")
            valid = sel & ~np.ma.getmaskarray(raw) & np.isfinite(np.ma.getdata(raw))
            values = np.where(valid, np.ma.getdata(raw), 0.0)
            if height is not None:
                neg = valid & (values < 0)
                if neg.any():
                    warn(f"Feature {index}: {int(neg.sum())} negative heights set to 0.")
                values = np.clip(values, 0.0, None)
                with np.errstate(divide="ignore"):
                    log_h = np.where(values > 0, np.log(np.where(values > 0, values, 1.0)), -np.inf)
                agb_px = np.where(values > 0, a * np.exp(b * log_h), 0.0)
            else:
                neg = valid & (values < 0)
                if neg.any():
                    added = float(-np.sum(values[neg] * w_ha[neg]))
                    nodata_warned["neg"] += int(neg.sum())
                    nodata_warned["neg_mg"] += added
                    warn(f"Feature {index}: {int(neg.sum())} pixels of negative AGB set to 0 (adds {added:.4g} Mg "
                         "to the total).")
                agb_px = np.clip(values, 0.0, None)
            covered = float(np.sum(w_ha[valid]))
            if covered <= 0:
                det["status"] = "no valid pixels"
                warn(f"Feature {index}: no valid raster pixel inside; only its area is reported.")
                continue
            share = covered / rec["area_ha"]
            det["covered_share"] = share
            if share < 0.999:
                warn(f"Feature {index}: only {100 * share:.1f}% of the polygon is covered by valid pixels (outside the "
                     "raster or nodata): totals are for the covered part only (no extrapolation).")
            total_agb = float(np.sum(agb_px * w_ha))
            mean_agb = total_agb / covered
            rec["agb_mean_mg_ha"] = mean_agb
            rec["agb_total_mg"] = total_agb
            r = float(root_shoot) if root_shoot is not None else root_shoot_ratio(ecozone, mean_agb)
            det["root_shoot"] = r
            factor = (1.0 + r) * carbon_fraction * CO2_PER_C
            rec["biomass_total_mg"] = total_agb * (1.0 + r)
            rec["carbon_total_t"] = rec["biomass_total_mg"] * carbon_fraction
            rec["co2e_total_t"] = rec["carbon_total_t"] * CO2_PER_C
            det["pixels"] = int(valid.sum())
            det["window"] = [int(r0), int(c0), int(frac.shape[0]), int(frac.shape[1])]

            # -- uncertainty ---------------------------------------------------------------
            if interval_source is None:
                det["status"] = "no interval: no AGB_STD or AGB_LOWER/AGB_UPPER"
                continue
            if interval_source == "std":
                s_raw = readers.read(agb_std, window, dtype="float64")
                s_ok = ~np.ma.getmaskarray(s_raw) & np.isfinite(np.ma.getdata(s_raw))
                sigma = np.ma.getdata(s_raw)
            else:
                lo = readers.read(agb_lower, window, dtype="float64")
                hi = readers.read(agb_upper, window, dtype="float64")
                s_ok = ~np.ma.getmaskarray(lo) & ~np.ma.getmaskarray(hi)
                sigma = sigma_from_bounds(np.ma.getdata(lo), np.ma.getdata(hi), coverage)
                s_ok &= np.isfinite(sigma)
            missing = valid & ~s_ok
            if missing.any():
                det["status"] = "no interval: uncertainty missing on valid pixels"
                warn(f"Feature {index}: {int(missing.sum())} valid AGB pixels have no uncertainty value (nodata in "
                     "the uncertainty raster): its interval is not computed.")
                continue
            sigma = np.where(valid, sigma, 0.0)
            if np.any(sigma < 0):
                raise ForestCarbonError(f"Feature {index}: the uncertainty raster has negative standard deviations "
                                        "(or AGB_UPPER < AGB_LOWER). Check the inputs.")
            u = w_ha * sigma  # Mg per unit of ε
            err, sim_info = simulate_error_totals(u, res_m, corr_m, simulations, streams[index], progress)
            det["simulation"] = sim_info
            if height is not None and (a_se > 0 or b_se > 0):
                a_k = streams[index].normal(a, a_se, simulations)
                b_k = streams[index].normal(b, b_se, simulations)
                pos = values > 0
                lh = log_h[pos]
                wp = w_ha[pos]
                sums = np.empty(simulations)
                step = max(1, int(2e7 // max(1, lh.size)))
                for k0 in range(0, simulations, step):
                    bk = b_k[k0:k0 + step]
                    sums[k0:k0 + step] = np.exp(np.outer(bk, lh)) @ wp
                agb_sims = a_k * sums + err
            else:
                agb_sims = total_agb + err
            co2_sims = agb_sims * factor
            negative = int(np.count_nonzero(co2_sims < 0))
            if negative:
                # a stock cannot be negative: the Gaussian model's draws below 0 are censored at 0
                det["negative_draws"] = negative
                warn(f"Feature {index}: {negative} of {simulations} simulated totals were negative (errors large "
                     "against the biomass) and count as 0: the lower bound is censored at 0.")
                co2_sims = np.maximum(co2_sims, 0.0)
            lo_q, hi_q = np.quantile(co2_sims, [(1 - confidence) / 2, (1 + confidence) / 2])
            rec["co2e_ci_low_t"] = float(lo_q)
            rec["co2e_ci_high_t"] = float(hi_q)
            total = rec["co2e_total_t"]
            if total > 0:
                rec["uncertainty_pct"] = float(100.0 * (hi_q - lo_q) / 2.0 / total)
                rec["deduction_pct"] = max(0.0, rec["uncertainty_pct"] - allowed_uncertainty)
                rec["co2e_creditable_t"] = float(total * (1.0 - min(100.0, rec["deduction_pct"]) / 100.0))
            else:
                det["status"] = "zero total: no relative uncertainty"
            det["mc_mean_co2e_t"] = float(np.mean(co2_sims))
            det["mc_sd_co2e_t"] = float(np.std(co2_sims, ddof=1))
            det["halfwidth_mc_t"] = float((hi_q - lo_q) / 2.0)
            det["halfwidth_independent_t"] = z_conf * math.sqrt(float(np.sum(u * u))) * factor
            det["halfwidth_correlated_t"] = z_conf * float(np.sum(u)) * factor
            det["halfwidth_gaussian_t"] = z_conf * math.sqrt(max(0.0, _exact_variance(u, res_m, corr_m))) * factor
            sims_out[-1] = co2_sims
            progress.set_progress(100.0 * (index + 1) / len(geoms))
    finally:
        readers.close()

    if all(d["status"] == "no polygon geometry" for d in details):
        raise ForestCarbonError(f"PROJECTS holds no polygon ({len(geoms)} features without a polygon geometry: "
                                "points, lines or empty): give a polygon layer with one polygon per project area.")
    if not any(d["status"] not in ("no valid pixels", "no polygon geometry") for d in details):
        raise ForestCarbonError(
            f"None of the {len(geoms)} project polygons holds a valid pixel of '{Path(str(main)).name}': the projects "
            "lie outside the raster, or the raster is no-data there. Check that they cover the same area and that "
            "both CRSs are set correctly.")
    if interval_source is None:
        warn("No AGB_STD or AGB_LOWER/AGB_UPPER given: the interval, uncertainty, deduction and creditable fields "
             "are NULL (an interval needs the per-pixel error of the map).")
    if root_shoot is None:
        note(f"Root-to-shoot ratio from ECOZONE '{ecozone}' at each polygon's mean AGB ({ECOZONE_CITATION})")
    doc = {
        "algorithm": "carbonstock",
        "parameters": parameters or {},
        "inputs": {"agb": agb, "height": height, "agb_std": agb_std, "agb_lower": agb_lower, "agb_upper": agb_upper},
        "settings": {"carbon_fraction": carbon_fraction, "co2_per_c": CO2_PER_C, "root_shoot": root_shoot,
                     "ecozone": ecozone, "confidence": confidence,
                     "correlation_range_m": None if math.isinf(corr_m) else corr_m,
                     "correlation_model": ("fully correlated inside each polygon" if math.isinf(corr_m) else
                                           "exp(-3 d / range) (practical range)"),
                     "correlation_source": correlation["source"], "correlation_note": correlation["message"],
                     "variogram": correlation["variogram"], "validation_report": validation_report,
                     "negative_draws": "simulated totals below 0 are censored at 0", "simulations": simulations,
                     "seed": seed, "allowed_uncertainty_pct": allowed_uncertainty, "interval_source": interval_source,
                     "coverage": coverage if interval_source == "bounds" else None,
                     "allometry": None if allo is None else {"key": allo.key, "a": a, "b": b, "a_se": a_se,
                                                             "b_se": b_se, "citation": allo.citation,
                                                             "verified": allo.verified},
                     "pixel_size_m": list(res_m), "raster_crs": rcrs.name, "projects_reprojected": reproject},
        "citations": {"carbon_fraction": CARBON_FRACTION_CITATION, "root_shoot": ECOZONE_CITATION,
                      "deduction": DEDUCTION_CITATION, "co2": "CO2/C = 44/12 (molar masses, as the standards use)."},
        "records": records, "details": details, "notes": notes, "warnings": warnings_,
        "seconds": time.perf_counter() - started,
    }
    if keep_simulations:
        doc["simulations"] = sims_out
    if out_html:
        from ..outputs import provenance
        from ..report import write_report

        doc["provenance"] = provenance("carbonstock", parameters, inputs=[p for p in (agb, height) if p])
        report = _build_report(doc, sims_out, geoms, pcrs, main, grid, tr if reproject else None)
        doc["outputs"] = write_report(out_html, report, doc, embed=embed_figures)
    return doc


# ----------------------------------------------------------------------------- report

def _build_report(doc, sims, geoms, pcrs, raster, grid, transformer):
    from ..report import Report

    rep = Report("Forest Carbon — project carbon stock")
    s = doc["settings"]
    rep.paragraph(f"Carbon fraction {s['carbon_fraction']}, CO2/C = 44/12, root-to-shoot "
                  f"{s['root_shoot'] if s['root_shoot'] is not None else 'IPCC default for ' + str(s['ecozone'])}, "
                  f"{100 * s['confidence']:.0f}% intervals from {s['simulations']} Monte Carlo simulations "
                  f"(seed {s['seed']}), error correlation: {s['correlation_note']} Allowed uncertainty "
                  f"{s['allowed_uncertainty_pct']}%.")
    headers = ["feature", "area (ha)", "AGB mean (Mg/ha)", "CO2e (t)", "CI low", "CI high", "U (%)", "deduction (%)",
               "creditable CO2e (t)"]
    rows = [[i, r["area_ha"], r["agb_mean_mg_ha"], r["co2e_total_t"], r["co2e_ci_low_t"], r["co2e_ci_high_t"],
             r["uncertainty_pct"], r["deduction_pct"], r["co2e_creditable_t"]] for i, r in enumerate(doc["records"])]
    rep.table(headers, rows, caption="Per polygon (feature = order in the input layer)")
    brow = [[d["feature"], d.get("halfwidth_independent_t"), d.get("halfwidth_gaussian_t"), d.get("halfwidth_mc_t"),
             d.get("halfwidth_correlated_t"), d["status"]] for d in doc["details"]]
    rep.table(["feature", "independent bound", "Gaussian (given range)", "Monte Carlo", "fully correlated bound",
               "status"], brow, caption="Half-widths of the CO2e interval (t): the Monte Carlo value lies between the "
                                        "independent-pixel and the fully-correlated bound (map error only)")
    rep.heading("Rules and sources")
    for text in doc["citations"].values():
        rep.paragraph(text)
    for text in doc["notes"]:
        rep.paragraph(text)
    if doc["warnings"]:
        rep.heading("Warnings")
        for text in doc["warnings"]:
            rep.paragraph(text)

    def draw_map(fig):
        _draw_map(fig, geoms, pcrs, raster, grid, transformer)

    rep.figure("map", draw_map, "Project polygons over the biomass (or height) raster")
    if any(x is not None for x in sims):
        def draw_hist(fig):
            _draw_histograms(fig, doc, sims)

        rep.figure("totals", draw_hist, "Distribution of the simulated CO2e totals per polygon, with the interval")
    return rep


def _draw_map(fig, geoms, pcrs, raster, grid, transformer):
    import rasterio
    from rasterio.windows import from_bounds
    from shapely.ops import transform as shp_transform

    ax = fig.add_subplot(111)
    shapes = [g for g in (_polygonal(g) for g in geoms) if g is not None and g != "not polygonal"]
    shapes = [shp_transform(transformer.transform, g) if transformer is not None else g for g in shapes]
    gx0, gy0, gx1, gy1 = grid.bounds
    if shapes:
        xs = [g.bounds for g in shapes]
        x0, y0 = min(b[0] for b in xs), min(b[1] for b in xs)
        x1, y1 = max(b[2] for b in xs), max(b[3] for b in xs)
        pad = 0.05 * max(x1 - x0, y1 - y0, 1e-9)
        x0, y0, x1, y1 = max(gx0, x0 - pad), max(gy0, y0 - pad), min(gx1, x1 + pad), min(gy1, y1 + pad)
    else:
        x0, y0, x1, y1 = gx0, gy0, gx1, gy1
    if x1 > x0 and y1 > y0:
        with rasterio.open(raster) as src:
            win = from_bounds(x0, y0, x1, y1, src.transform)
            scale = max(1.0, max(win.width, win.height) / 800.0)
            data = src.read(1, window=win, masked=True, boundless=False,
                            out_shape=(max(1, int(win.height / scale)), max(1, int(win.width / scale))))
        image = ax.imshow(np.ma.masked_invalid(data.astype(float)), extent=(x0, x1, y0, y1), cmap="YlGn")
        fig.colorbar(image, ax=ax, shrink=0.8)
    for i, g in enumerate(shapes):
        for part in getattr(g, "geoms", [g]):
            ax.plot(*part.exterior.xy, color="crimson", lw=1)
            for hole in part.interiors:
                ax.plot(*hole.xy, color="crimson", lw=0.8, ls="--")
        c = g.representative_point()
        ax.annotate(str(i), (c.x, c.y), color="black", fontsize=8)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)


def _draw_histograms(fig, doc, sims):
    chosen = [i for i, s in enumerate(sims) if s is not None][:12]
    n = len(chosen)
    cols = min(3, n)
    rows = int(math.ceil(n / cols))
    for k, i in enumerate(chosen):
        ax = fig.add_subplot(rows, cols, k + 1)
        rec = doc["records"][i]
        ax.hist(sims[i], bins=40, color="#7fa97f")
        for v, style in ((rec["co2e_ci_low_t"], "--"), (rec["co2e_ci_high_t"], "--"), (rec["co2e_total_t"], "-")):
            ax.axvline(v, color="black", ls=style, lw=0.8)
        ax.set_title(f"feature {i}", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
