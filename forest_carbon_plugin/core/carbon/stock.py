"""Carbon stock of project areas with a Monte Carlo confidence interval.

:func:`carbon_stock` gives, per polygon: area, mean and total AGB, biomass with roots, carbon, CO2e, the Monte
Carlo interval of the total (correlated pixel errors + allometry parameter draws), the two analytic bounds
(independent and fully correlated pixel errors), the uncertainty deduction, and an HTML/JSON report. Its steps,
in order: the checked settings (:class:`BiomassMap`, :class:`CarbonFactors`, :class:`MonteCarlo`,
:class:`Deduction`), the raster frame, the project polygons, per polygon the pixel shares, the totals and the
Monte Carlo interval, and the result document.

Units: AGB in Mg (dry matter) per ha, areas in ha, totals in Mg = t.
Conversions: biomass = AGB·(1 + R); carbon = biomass·CF; CO2e = carbon·44/12 (:mod:`.tables`).

Pixel errors are additive and Gaussian with standard deviation σ per pixel (from a σ raster, or from the bounds
of a central interval: σ = (upper − lower) / (2·z(coverage))). The error of a polygon's total is Σ wᵢ·aᵢ·σᵢ·εᵢ
(w = share of the pixel inside, a = pixel area in ha) with ε the correlated field of :mod:`.random_field`.
Propagating map errors to an area total by Monte Carlo follows McRoberts et al. (2022) and Réjou-Méchain et al.
(2017).

References
----------
McRoberts R.E., Næsset E., Saatchi S. & Quegan S. (2022) Statistically rigorous, model-based inferences from maps.
Remote Sensing of Environment 279:113028.
Réjou-Méchain M., Tanguy A., Piponiot C., Chave J. & Hérault B. (2017) BIOMASS: an R package for estimating
above-ground biomass and its uncertainty in tropical forests. Methods in Ecology and Evolution 8:1163-1167.
Chave J. et al. (2014) Improved allometric models to estimate the aboveground biomass of tropical trees. Global
Change Biology 20:3177-3190 (power-law allometries whose coefficient uncertainty BIOMASS propagates by drawing
the coefficients in each simulation, as done here).
ART (2021) The REDD+ Environmental Excellence Standard (TREES) v2.0, §8: Monte Carlo with 10,000 iterations and
90 % confidence intervals.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ForestCarbonError
from ..outputs import provenance
from ..progress import NullProgress, Progress, check_cancel
from ..raster.coverage import polygon_coverage
from ..raster.grid import Grid
from ..raster.read import Readers, overlaps
from ..report import write_report
from ..stats import sigma_from_bounds, z_score
from .polygons import NOT_POLYGONAL, cell_area_ha, equal_area_ha, polygonal, read_projects, repair
from .random_field import exact_variance, simulate_error_totals
from .stock_report import build_report
from .tables import (
    ALLOMETRIES,
    CARBON_FRACTION_CITATION,
    CO2_CITATION,
    CO2_PER_C,
    DEDUCTION_CITATION,
    DEFAULT_CARBON_FRACTION,
    ECOZONE_CITATION,
    AllometryModel,
    root_shoot_ratio,
)
from .variogram import resolve_correlation_range

__all__ = ["Allometry", "PowerLaw", "BiomassMap", "CarbonFactors", "MonteCarlo", "Deduction", "RasterFrame",
           "carbon_stock", "resolve_allometry", "errors_off_the_map", "raster_frame", "DEFAULT_ALLOWED_UNCERTAINTY",
           "DEFAULT_SIMULATIONS", "OUTPUT_FIELDS"]

DEFAULT_ALLOWED_UNCERTAINTY = 10.0
#: ART-TREES v2.0 (2021) §8 asks for Monte Carlo with 10,000 iterations and 90 % confidence intervals
DEFAULT_SIMULATIONS = 10_000

OUTPUT_FIELDS = ("area_ha", "agb_mean_mg_ha", "agb_total_mg", "biomass_total_mg", "carbon_total_t",
                 "co2e_total_t", "co2e_ci_low_t", "co2e_ci_high_t", "uncertainty_pct", "deduction_pct",
                 "co2e_creditable_t")


# ----------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class Allometry:
    """Canopy height to biomass, ``AGB (Mg/ha) = a · H^b`` (H in m).

    Parameters
    ----------
    model : str
        A key of :data:`.tables.ALLOMETRIES`: ``"custom"`` (``a``, ``b`` given here) or a published model, whose
        coefficient is fixed by ``basal_area_m2_ha`` and ``wood_density_g_cm3`` (Asner & Mascaro 2014).
    a, b : float or None
        The custom model's coefficients.
    a_se, b_se : float
        Their standard errors, drawn as independent normals in each simulation (0: exact).
    basal_area_m2_ha : float or None
        Stand basal area (m²/ha), for models that need it.
    wood_density_g_cm3 : float or None
        Wood density (g/cm³), for models that need it.
    """

    model: str = "custom"
    a: float | None = None
    b: float | None = None
    a_se: float = 0.0
    b_se: float = 0.0
    basal_area_m2_ha: float | None = None
    wood_density_g_cm3: float | None = None


@dataclass(frozen=True)
class PowerLaw:
    """The coefficients an :class:`Allometry` resolves to, with the table entry they came from."""

    a: float
    b: float
    a_se: float
    b_se: float
    model: AllometryModel


@dataclass(frozen=True)
class BiomassMap:
    """The biomass map and its per-pixel error.

    Parameters
    ----------
    agb : str or None
        Above-ground biomass raster (Mg/ha); or
    height : str or None
        a canopy height raster (m), turned into AGB by ``allometry``.
    allometry : Allometry
        Used with ``height`` only.
    std : str or None
        Per-pixel standard deviation of the AGB (Mg/ha); or
    lower, upper : str or None
        the bounds of a central interval of the AGB with ``coverage`` (0.9: 5th–95th percentiles).
        In height mode these describe the AGB derived from the heights (e.g. the allometry's residual error).
    coverage : float
        Central coverage of ``lower``/``upper``.
    """

    agb: str | None = None
    std: str | None = None
    lower: str | None = None
    upper: str | None = None
    coverage: float = 0.9
    height: str | None = None
    allometry: Allometry = field(default_factory=Allometry)

    @property
    def raster(self) -> str:
        """The raster the totals are read from (AGB, else height)."""
        return self.agb if self.agb is not None else self.height

    @property
    def interval_source(self) -> str | None:
        """``"std"``, ``"bounds"`` or None (no per-pixel error: no interval)."""
        return "std" if self.std is not None else ("bounds" if self.lower is not None else None)


@dataclass(frozen=True)
class CarbonFactors:
    """Biomass to carbon.

    Parameters
    ----------
    carbon_fraction : float
        Carbon per dry matter (IPCC 2006 Vol. 4 Ch. 4 Table 4.3: 0.47).
    root_shoot : float or None
        Below- over above-ground biomass R; None takes the IPCC default of ``ecozone``.
    ecozone : str or None
        A key of :data:`.tables.ECOZONES` (IPCC 2006 Vol. 4 Ch. 4 Table 4.4, R by AGB class); with neither
        this nor ``root_shoot`` R = 0 (above-ground carbon only), with a warning.
    """

    carbon_fraction: float = DEFAULT_CARBON_FRACTION
    root_shoot: float | None = None
    ecozone: str | None = None


@dataclass(frozen=True)
class MonteCarlo:
    """The Monte Carlo interval of each total.

    Parameters
    ----------
    draws : int
        Simulations (ART-TREES v2.0 §8: 10,000).
    correlation_range_m : float or None
        Practical range (m) of the pixel errors' exponential correlation; 0 = independent pixels; None: fitted
        from ``validation_report``, else fully correlated (:func:`.variogram.resolve_correlation_range`).
    validation_report : str or None
        A ``validatepredictions`` report of the map (its .html or .json).
    confidence : float
        Central coverage of the interval (0.9: 5th–95th percentiles of the draws).
    seed : int
        Seed; each polygon draws from its own child stream, so its interval does not depend on the others.
    keep_draws : bool
        Return the draws (t CO2e per polygon) in the document's ``simulations``.
    """

    draws: int = DEFAULT_SIMULATIONS
    correlation_range_m: float | None = None
    validation_report: str | None = None
    confidence: float = 0.9
    seed: int = 0
    keep_draws: bool = False


@dataclass(frozen=True)
class Deduction:
    """The uncertainty deduction of carbon standards (see :data:`.tables.DEDUCTION_CITATION`).

    Parameters
    ----------
    allowed_uncertainty_pct : float
        Half-width of the interval, in % of the total, allowed before a deduction (Verra VM0047 §8.4: 10 % at
        90 % confidence).
    """

    allowed_uncertainty_pct: float = DEFAULT_ALLOWED_UNCERTAINTY


# ----------------------------------------------------------------------------- the run's log

class _Log:
    """Notes and warnings of a run: kept for the report, and sent to the progress as they come."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.notes: list[str] = []
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.progress.warning(message)

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.progress.info(message)


# ----------------------------------------------------------------------------- step 1: the checked settings

@dataclass(frozen=True)
class _Settings:
    biomass: BiomassMap
    factors: CarbonFactors
    monte_carlo: MonteCarlo
    deduction: Deduction
    root_shoot: float | None  #: None: the ecozone's default at each polygon's mean AGB
    law: PowerLaw | None  #: height mode's allometry
    correlation: dict  #: :func:`.variogram.resolve_correlation_range`'s answer

    @property
    def range_m(self) -> float:
        return self.correlation["range_m"]


def _check_biomass(biomass: BiomassMap) -> None:
    if (biomass.agb is None) == (biomass.height is None):
        raise ForestCarbonError("Give either biomass.agb (a biomass raster, Mg/ha) or biomass.height with an "
                                "allometry, not both and not neither.")
    if (biomass.lower is None) != (biomass.upper is None):
        raise ForestCarbonError("biomass.lower and biomass.upper go together: give both (with biomass.coverage), or "
                                "biomass.std.")
    if biomass.std is not None and biomass.lower is not None:
        raise ForestCarbonError("Give biomass.std or biomass.lower/biomass.upper, not both.")
    if biomass.interval_source == "bounds":
        z_score(biomass.coverage)  # a bad coverage fails before any pixel is read


def _check_numbers(factors: CarbonFactors, monte_carlo: MonteCarlo, deduction: Deduction) -> None:
    if not 0 < factors.carbon_fraction <= 1:
        raise ForestCarbonError(f"carbon_fraction must lie in (0, 1] (got {factors.carbon_fraction}).")
    if int(monte_carlo.draws) < 10:
        raise ForestCarbonError(f"draws must be at least 10 (got {monte_carlo.draws}); 1000 or more is advised.")
    if not 0 < monte_carlo.confidence < 1:
        raise ForestCarbonError(f"confidence must lie in (0, 1) (got {monte_carlo.confidence}).")
    if deduction.allowed_uncertainty_pct is None or deduction.allowed_uncertainty_pct < 0:
        raise ForestCarbonError("allowed_uncertainty_pct must be a percentage ≥ 0.")


def _root_shoot(factors: CarbonFactors, log: _Log) -> float | None:
    if factors.root_shoot is not None:
        if factors.root_shoot < 0:
            raise ForestCarbonError(f"root_shoot must be ≥ 0 (got {factors.root_shoot}).")
        return float(factors.root_shoot)
    if factors.ecozone:
        root_shoot_ratio(factors.ecozone, 0.0)  # validates the key
        return None
    # no zone known: roots are left out, which can only understate the stock (conservative for crediting)
    log.warn("Neither root_shoot nor ecozone is set: root-to-shoot ratio 0, i.e. ABOVE-GROUND carbon only "
             "(below-ground biomass is left out, which understates the stock). Set the ecozone for the IPCC default "
             "ratio of your ecological zone, or root_shoot for your own.")
    return 0.0


def _coefficients(allometry: Allometry, model: AllometryModel, carbon_fraction: float) -> tuple[float, float]:
    if model.needs:
        if allometry.basal_area_m2_ha is None or allometry.wood_density_g_cm3 is None:
            raise ForestCarbonError(f"{model.label} needs basal_area_m2_ha (basal area, m²/ha) and "
                                    "wood_density_g_cm3 (wood density, g/cm³).")
        a = (model.a * float(allometry.basal_area_m2_ha) ** model.basal_area_exponent
             * float(allometry.wood_density_g_cm3) ** model.wood_density_exponent)
        b = model.b
    else:
        if allometry.a is None or allometry.b is None:
            raise ForestCarbonError("The custom allometry AGB = a·H^b needs its coefficients a and b.")
        a, b = float(allometry.a), float(allometry.b)
    if model.predicts == "acd":
        a /= carbon_fraction  # carbon density to dry matter, so that the carbon output equals the model's ACD
    return a, b


def resolve_allometry(allometry: Allometry, carbon_fraction: float, log: _Log | None = None) -> PowerLaw:
    """The coefficients of ``AGB = a·H^b`` for an :class:`Allometry`.

    Parameters
    ----------
    allometry : Allometry
    carbon_fraction : float
        Turns a model of carbon density (ACD, Mg C/ha) into one of AGB.
    log : object with ``warn`` and ``note`` or None
        Receives the messages for the run's log.

    Returns
    -------
    PowerLaw
        ``a`` (Mg/ha per m^b), ``b``, their standard errors, and the table entry.
    """
    if allometry.model not in ALLOMETRIES:
        raise ForestCarbonError(f"Unknown allometry model '{allometry.model}'. Choose one of: "
                                f"{', '.join(ALLOMETRIES)}.")
    model = ALLOMETRIES[allometry.model]
    a, b = _coefficients(allometry, model, carbon_fraction)
    a_se, b_se = float(allometry.a_se or 0.0), float(allometry.b_se or 0.0)
    if a <= 0:
        raise ForestCarbonError(f"The allometry's coefficient a must be > 0 (got {a}).")
    if a_se < 0 or b_se < 0:
        raise ForestCarbonError("The allometry's standard errors a_se and b_se must be ≥ 0.")
    if log is not None:
        if not model.verified:
            log.warn(f"{model.key}: coefficients not checked against the paper (see the help)"
                     + ("; ACD converted to AGB with the carbon fraction." if model.predicts == "acd" else "."))
        if a_se == 0 and b_se == 0:
            log.note("The allometry's parameters are taken as exact (standard errors 0): the interval covers the map "
                     "errors only.")
        else:
            log.note(f"Allometry AGB = {a:.6g}·H^{b:.6g}; a ~ N({a:.4g}, {a_se:.4g}²) and b ~ N({b:.4g}, "
                     f"{b_se:.4g}²) drawn independently in each simulation (their covariance is not used).")
    return PowerLaw(a, b, a_se, b_se, model)


def _settings(biomass: BiomassMap, factors: CarbonFactors, monte_carlo: MonteCarlo, deduction: Deduction,
              log: _Log) -> _Settings:
    _check_biomass(biomass)
    _check_numbers(factors, monte_carlo, deduction)
    correlation = resolve_correlation_range(monte_carlo.correlation_range_m, monte_carlo.validation_report,
                                            warn=log.warn, note=log.note)
    root_shoot = _root_shoot(factors, log)
    law = resolve_allometry(biomass.allometry, factors.carbon_fraction, log) if biomass.height is not None else None
    return _Settings(biomass, factors, monte_carlo, deduction, root_shoot, law, correlation)


# ----------------------------------------------------------------------------- step 2: the raster frame

@dataclass(frozen=True)
class RasterFrame:
    """The grid the totals are read on.

    ``crs`` is a pyproj CRS (``wkt`` its text), ``res`` the cell size in the CRS's units and ``res_m`` in
    metres (at the raster's centre for a geographic CRS), which the correlation distances use.
    """

    path: str
    grid: Grid
    crs: object
    wkt: str
    res: tuple[float, float]
    res_m: tuple[float, float]


def _res_m(crs, grid: Grid, res) -> tuple[float, float]:
    if crs.is_geographic:
        # metres per pixel at the raster's centre, for the correlation distances
        lat = math.radians((grid.bounds[1] + grid.bounds[3]) / 2)
        a_e = crs.ellipsoid.semi_major_metre
        return math.radians(res[0]) * a_e * math.cos(lat), math.radians(res[1]) * a_e
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return res[0] * unit, res[1] * unit


def errors_off_the_map(biomass: BiomassMap, grid: Grid | None = None) -> list[str]:
    """The error rasters that do not overlap the biomass map.

    Parameters
    ----------
    biomass : BiomassMap
    grid : Grid or None
        The map's grid (read from ``biomass.raster`` when None).

    Returns
    -------
    list of str
        The fields of ``biomass`` (``"std"``, ``"lower"``, ``"upper"``) whose raster covers no part of the map.
    """
    import rasterio

    if grid is None:
        with rasterio.open(biomass.raster) as src:
            grid = Grid.of(src)
    off = []
    for name in ("std", "lower", "upper"):
        if getattr(biomass, name) is not None:
            with rasterio.open(getattr(biomass, name)) as src:
                if not overlaps(grid, src):
                    off.append(name)
    return off


def raster_frame(biomass: BiomassMap) -> RasterFrame:
    """The grid of ``biomass.raster``, after checking that it has a CRS and that the error rasters overlap it.

    Parameters
    ----------
    biomass : BiomassMap

    Returns
    -------
    RasterFrame
    """
    import rasterio
    from pyproj import CRS

    main = biomass.raster
    with rasterio.open(main) as src:
        if src.crs is None:
            raise ForestCarbonError(f"The raster '{main}' has no CRS. Assign one (gdal_edit.py -a_srs) and run again.")
        grid = Grid.of(src)
        wkt = src.crs.to_wkt()
        res = (abs(src.transform.a), abs(src.transform.e))
    off = errors_off_the_map(biomass, grid)
    if off:
        raise ForestCarbonError(
            f"biomass.{off[0]} ('{Path(str(getattr(biomass, off[0]))).name}') does not overlap "
            f"'{Path(str(main)).name}': the uncertainty rasters must cover the map they describe. Give the ones "
            "predictraster wrote with it.")
    crs = CRS.from_user_input(wkt)
    return RasterFrame(str(main), grid, crs, wkt, res, _res_m(crs, grid, res))


# ----------------------------------------------------------------------------- step 3: the project polygons

@dataclass(frozen=True)
class _Projects:
    geoms: list
    crs: object  #: the projects' CRS (WKT or as given)
    transformer: object | None  #: projects' CRS → raster's, None when they are the same


def _projects(projects, projects_crs, frame: RasterFrame, log: _Log) -> _Projects:
    from pyproj import CRS, Transformer

    geoms, crs = read_projects(projects, projects_crs)
    if not geoms:
        raise ForestCarbonError("projects has no features: give a polygon layer with one polygon per project area.")
    if crs is None:
        log.warn("The projects have no CRS: taken to be the raster's CRS.")
        crs = frame.wkt
    source = CRS.from_user_input(crs)
    if source.equals(frame.crs):
        return _Projects(geoms, crs, None)
    log.note(f"The projects ({source.name}) are reprojected to the raster's CRS ({frame.crs.name}) for the pixel "
             "weights; areas are computed on the ellipsoid from the original geometries.")
    return _Projects(geoms, crs, Transformer.from_crs(source, frame.crs, always_xy=True))


# ----------------------------------------------------------------------------- step 4: per polygon

@dataclass(frozen=True)
class _Context:
    settings: _Settings
    frame: RasterFrame
    projects: _Projects
    readers: Readers
    log: _Log


@dataclass(frozen=True)
class _Pixels:
    valid: np.ndarray  #: pixels inside the polygon with a value
    agb: np.ndarray  #: AGB (Mg/ha), 0 where not valid or negative
    log_h: np.ndarray | None  #: height mode: log of the height, −inf where not > 0


def _polygon(index: int, geom, crs, det: dict, log: _Log):
    """The polygon to total (repaired when invalid), or None (``det["status"]`` says why)."""
    geom = polygonal(geom)
    if geom is None or geom == NOT_POLYGONAL:
        det["status"] = "no polygon geometry"
        log.warn(f"Feature {index}: {'no geometry' if geom is None else 'not a polygon'}; its fields are NULL.")
        return None
    if geom.is_valid:
        return geom
    drawn = geom
    geom, fix = repair(geom)
    det["repair"] = fix
    if geom is None:
        det["status"] = "invalid polygon, not repairable"
        log.warn(f"Feature {index}: invalid polygon ({fix['reason']}) that make_valid turns into no area; its fields "
                 "are NULL. Fix it (QGIS: Fix geometries, Check validity) and run again.")
        return None
    try:
        as_drawn = equal_area_ha(drawn, crs)
    except Exception:  # noqa: BLE001 - an area of invalid rings is only informative
        as_drawn = float("nan")
    fix["area_as_drawn_ha"] = as_drawn
    fix["area_repaired_ha"] = equal_area_ha(geom, crs)
    log.warn(f"Feature {index}: invalid polygon ({fix['reason']}) repaired with make_valid, keeping every polygonal "
             f"part: area {fix['area_repaired_ha']:.6g} ha after repair (the shoelace area of the rings as drawn, "
             f"where crossing lobes cancel, is {as_drawn:.6g} ha). Check the polygon.")
    return geom


def _pixel_shares(geom, area_ha: float, projects: _Projects, frame: RasterFrame):
    """``(window, w_ha)``: the area (ha) of each pixel of the polygon's window that lies inside it; None when
    the polygon misses the raster."""
    from rasterio.windows import Window
    from shapely.ops import transform

    g_r = transform(projects.transformer.transform, geom) if projects.transformer is not None else geom
    weights = polygon_coverage(g_r, frame.grid)
    if weights is None or not np.any(weights[2] > 0):
        return None
    r0, c0, frac = weights
    w_ha = frac * cell_area_ha(frame.grid, r0, frac.shape[0])
    if not frame.crs.is_geographic:
        planar_ha = g_r.area * (frame.res_m[0] / frame.res[0]) ** 2 / 10_000.0
        # projection scale: pixel areas on the ellipsoid (same factor over a project)
        w_ha = w_ha * (area_ha / planar_ha)
    return Window(c0, r0, frac.shape[1], frac.shape[0]), w_ha


def _pixel_biomass(ctx: _Context, window, w_ha: np.ndarray, index: int) -> _Pixels:
    raw = ctx.readers.read(ctx.settings.biomass.raster, window, dtype="float64")
    valid = (w_ha > 0) & ~np.ma.getmaskarray(raw) & np.isfinite(np.ma.getdata(raw))
    values = np.where(valid, np.ma.getdata(raw), 0.0)
    negative = valid & (values < 0)
    law = ctx.settings.law
    if law is None:
        if negative.any():
            added = float(-np.sum(values[negative] * w_ha[negative]))
            ctx.log.warn(f"Feature {index}: {int(negative.sum())} pixels of negative AGB set to 0 (adds {added:.4g} "
                         "Mg to the total).")
        return _Pixels(valid, np.clip(values, 0.0, None), None)
    if negative.any():
        ctx.log.warn(f"Feature {index}: {int(negative.sum())} negative heights set to 0.")
    values = np.clip(values, 0.0, None)
    with np.errstate(divide="ignore"):
        log_h = np.where(values > 0, np.log(np.where(values > 0, values, 1.0)), -np.inf)
    return _Pixels(valid, np.where(values > 0, law.a * np.exp(law.b * log_h), 0.0), log_h)


def _totals(rec: dict, det: dict, pixels: _Pixels, w_ha: np.ndarray, ctx: _Context, index: int) -> bool:
    """Fill the polygon's AGB, biomass, carbon and CO2e totals; False when no valid pixel lies inside."""
    covered = float(np.sum(w_ha[pixels.valid]))
    if covered <= 0:
        det["status"] = "no valid pixels"
        ctx.log.warn(f"Feature {index}: no valid raster pixel inside; only its area is reported.")
        return False
    share = covered / rec["area_ha"]
    det["covered_share"] = share
    if share < 0.999:
        ctx.log.warn(f"Feature {index}: only {100 * share:.1f}% of the polygon is covered by valid pixels (outside "
                     "the raster or nodata): totals are for the covered part only (no extrapolation).")
    total_agb = float(np.sum(pixels.agb * w_ha))
    rec["agb_mean_mg_ha"] = total_agb / covered
    rec["agb_total_mg"] = total_agb
    settings = ctx.settings
    r = settings.root_shoot
    if r is None:
        r = root_shoot_ratio(settings.factors.ecozone, rec["agb_mean_mg_ha"])
    det["root_shoot"] = r
    rec["biomass_total_mg"] = total_agb * (1.0 + r)
    rec["carbon_total_t"] = rec["biomass_total_mg"] * settings.factors.carbon_fraction
    rec["co2e_total_t"] = rec["carbon_total_t"] * CO2_PER_C
    det["pixels"] = int(pixels.valid.sum())
    return True


def _pixel_sigma(ctx: _Context, window, valid: np.ndarray, det: dict, index: int):
    """σ (Mg/ha) of each valid pixel (0 elsewhere); None when a valid pixel has none."""
    biomass, read = ctx.settings.biomass, ctx.readers.read
    if biomass.interval_source == "std":
        s_raw = read(biomass.std, window, dtype="float64")
        ok = ~np.ma.getmaskarray(s_raw) & np.isfinite(np.ma.getdata(s_raw))
        sigma = np.ma.getdata(s_raw)
    else:
        lo = read(biomass.lower, window, dtype="float64")
        hi = read(biomass.upper, window, dtype="float64")
        sigma = sigma_from_bounds(np.ma.getdata(lo), np.ma.getdata(hi), biomass.coverage)
        ok = ~np.ma.getmaskarray(lo) & ~np.ma.getmaskarray(hi) & np.isfinite(sigma)
    missing = valid & ~ok
    if missing.any():
        det["status"] = "no interval: uncertainty missing on valid pixels"
        ctx.log.warn(f"Feature {index}: {int(missing.sum())} valid AGB pixels have no uncertainty value (nodata in "
                     "the uncertainty raster): its interval is not computed.")
        return None
    sigma = np.where(valid, sigma, 0.0)
    if np.any(sigma < 0):
        raise ForestCarbonError(f"Feature {index}: the uncertainty raster has negative standard deviations "
                                "(or biomass.upper < biomass.lower). Check the inputs.")
    return sigma


def _agb_draws(u: np.ndarray, total_agb: float, pixels: _Pixels, w_ha: np.ndarray, ctx: _Context, rng):
    """Simulated AGB totals (Mg): the map error Σ u·ε plus, in height mode, the allometry's a and b drawn."""
    settings = ctx.settings
    n = int(settings.monte_carlo.draws)
    err, info = simulate_error_totals(u, ctx.frame.res_m, settings.range_m, n, rng, ctx.log.progress)
    law = settings.law
    if law is None or (law.a_se <= 0 and law.b_se <= 0):
        return total_agb + err, info
    a_k = rng.normal(law.a, law.a_se, n)
    b_k = rng.normal(law.b, law.b_se, n)
    pos = np.isfinite(pixels.log_h)
    lh, wp = pixels.log_h[pos], w_ha[pos]
    sums = np.empty(n)
    step = max(1, int(2e7 // max(1, lh.size)))  # draws per block of the (draws × pixels) matrix
    for k0 in range(0, n, step):
        sums[k0:k0 + step] = np.exp(np.outer(b_k[k0:k0 + step], lh)) @ wp
    return a_k * sums + err, info


def _interval(rec: dict, det: dict, co2_draws: np.ndarray, ctx: _Context, index: int) -> np.ndarray:
    """Fill the interval, uncertainty, deduction and creditable stock from the draws; returns the draws used."""
    settings = ctx.settings
    confidence = settings.monte_carlo.confidence
    negative = int(np.count_nonzero(co2_draws < 0))
    if negative:
        # a stock cannot be negative: the Gaussian model's draws below 0 are censored at 0
        det["negative_draws"] = negative
        ctx.log.warn(f"Feature {index}: {negative} of {len(co2_draws)} simulated totals were negative (errors large "
                     "against the biomass) and count as 0: the lower bound is censored at 0.")
        co2_draws = np.maximum(co2_draws, 0.0)
    lo_q, hi_q = np.quantile(co2_draws, [(1 - confidence) / 2, (1 + confidence) / 2])
    rec["co2e_ci_low_t"] = float(lo_q)
    rec["co2e_ci_high_t"] = float(hi_q)
    total = rec["co2e_total_t"]
    if total > 0:
        rec["uncertainty_pct"] = float(100.0 * (hi_q - lo_q) / 2.0 / total)
        rec["deduction_pct"] = max(0.0, rec["uncertainty_pct"] - settings.deduction.allowed_uncertainty_pct)
        rec["co2e_creditable_t"] = float(total * (1.0 - min(100.0, rec["deduction_pct"]) / 100.0))
    else:
        det["status"] = "zero total: no relative uncertainty"
    det["mc_mean_co2e_t"] = float(np.mean(co2_draws))
    det["mc_sd_co2e_t"] = float(np.std(co2_draws, ddof=1))
    det["halfwidth_mc_t"] = float((hi_q - lo_q) / 2.0)
    return co2_draws


def _analytic_halfwidths(det: dict, u: np.ndarray, factor: float, ctx: _Context) -> None:
    """The half-widths for independent and fully correlated pixel errors, and the exact Gaussian one for the
    range used: the Monte Carlo half-width lies between the first two."""
    z = z_score(ctx.settings.monte_carlo.confidence)
    det["halfwidth_independent_t"] = z * math.sqrt(float(np.sum(u * u))) * factor
    det["halfwidth_correlated_t"] = z * float(np.sum(u)) * factor
    variance = exact_variance(u, ctx.frame.res_m, ctx.settings.range_m)
    det["halfwidth_gaussian_t"] = z * math.sqrt(max(0.0, variance)) * factor


def _monte_carlo_interval(rec, det, pixels: _Pixels, w_ha, window, ctx: _Context, index: int, rng):
    """The polygon's CO2e draws (t) and interval; None when the map has no per-pixel error there."""
    if ctx.settings.biomass.interval_source is None:
        det["status"] = "no interval: no AGB_STD or AGB_LOWER/AGB_UPPER"
        return None
    sigma = _pixel_sigma(ctx, window, pixels.valid, det, index)
    if sigma is None:
        return None
    u = w_ha * sigma  # Mg per unit of ε
    agb_draws, det["simulation"] = _agb_draws(u, rec["agb_total_mg"], pixels, w_ha, ctx, rng)
    factor = (1.0 + det["root_shoot"]) * ctx.settings.factors.carbon_fraction * CO2_PER_C
    co2_draws = _interval(rec, det, agb_draws * factor, ctx, index)
    _analytic_halfwidths(det, u, factor, ctx)
    return co2_draws


def _one_polygon(index: int, geom, ctx: _Context, rng):
    """``(record, details, CO2e draws or None)`` of one feature."""
    rec = dict.fromkeys(OUTPUT_FIELDS)
    det = {"feature": index, "status": "ok"}
    geom = _polygon(index, geom, ctx.projects.crs, det, ctx.log)
    if geom is None:
        return rec, det, None
    rec["area_ha"] = equal_area_ha(geom, ctx.projects.crs)
    shares = _pixel_shares(geom, rec["area_ha"], ctx.projects, ctx.frame)
    if shares is None:
        det["status"] = "outside the raster"
        ctx.log.warn(f"Feature {index} lies outside the raster: only its area is reported.")
        return rec, det, None
    window, w_ha = shares
    pixels = _pixel_biomass(ctx, window, w_ha, index)
    if not _totals(rec, det, pixels, w_ha, ctx, index):
        return rec, det, None
    det["window"] = [int(window.row_off), int(window.col_off), int(window.height), int(window.width)]
    return rec, det, _monte_carlo_interval(rec, det, pixels, w_ha, window, ctx, index, rng)


def _all_polygons(ctx: _Context):
    geoms = ctx.projects.geoms
    # one child stream per polygon: a polygon's draws do not depend on the other polygons
    seeds = np.random.SeedSequence(int(ctx.settings.monte_carlo.seed)).spawn(len(geoms))
    records, details, draws = [], [], []
    for index, geom in enumerate(geoms):
        check_cancel(ctx.log.progress)
        rec, det, sims = _one_polygon(index, geom, ctx, np.random.default_rng(seeds[index]))
        records.append(rec)
        details.append(det)
        draws.append(sims)
        ctx.log.progress.set_progress(100.0 * (index + 1) / len(geoms))
    return records, details, draws


def _check_results(details: list, ctx: _Context) -> None:
    n = len(details)
    if all(d["status"] == "no polygon geometry" for d in details):
        raise ForestCarbonError(f"The projects hold no polygon ({n} features without a polygon geometry: points, "
                                "lines or empty): give a polygon layer with one polygon per project area.")
    if not any(d["status"] not in ("no valid pixels", "no polygon geometry") for d in details):
        raise ForestCarbonError(
            f"None of the {n} project polygons holds a valid pixel of '{Path(ctx.frame.path).name}': the projects "
            "lie outside the raster, or the raster is no-data there. Check that they cover the same area and that "
            "both CRSs are set correctly.")
    if ctx.settings.biomass.interval_source is None:
        ctx.log.warn("No biomass.std or biomass.lower/upper given: the interval, uncertainty, deduction and "
                     "creditable fields are NULL (an interval needs the per-pixel error of the map).")
    if ctx.settings.root_shoot is None:
        ctx.log.note(f"Root-to-shoot ratio from the ecozone '{ctx.settings.factors.ecozone}' at each polygon's mean "
                     f"AGB ({ECOZONE_CITATION})")


# ----------------------------------------------------------------------------- step 5: the result

def _allometry_record(law: PowerLaw | None) -> dict | None:
    if law is None:
        return None
    return {"key": law.model.key, "a": law.a, "b": law.b, "a_se": law.a_se, "b_se": law.b_se,
            "citation": law.model.citation, "verified": law.model.verified}


def _settings_record(ctx: _Context) -> dict:
    s, frame = ctx.settings, ctx.frame
    mc, correlation = s.monte_carlo, s.correlation
    fully = math.isinf(s.range_m)
    return {"carbon_fraction": s.factors.carbon_fraction, "co2_per_c": CO2_PER_C, "root_shoot": s.root_shoot,
            "ecozone": s.factors.ecozone, "confidence": mc.confidence,
            "correlation_range_m": None if fully else s.range_m,
            "correlation_model": ("fully correlated inside each polygon" if fully else
                                  "exp(-3 d / range) (practical range)"),
            "correlation_source": correlation["source"], "correlation_note": correlation["message"],
            "variogram": correlation["variogram"], "validation_report": mc.validation_report,
            "negative_draws": "simulated totals below 0 are censored at 0", "simulations": int(mc.draws),
            "seed": mc.seed, "allowed_uncertainty_pct": s.deduction.allowed_uncertainty_pct,
            "interval_source": s.biomass.interval_source,
            "coverage": s.biomass.coverage if s.biomass.interval_source == "bounds" else None,
            "allometry": _allometry_record(s.law), "pixel_size_m": list(frame.res_m), "raster_crs": frame.crs.name,
            "projects_reprojected": ctx.projects.transformer is not None}


def _document(ctx: _Context, records, details, parameters, started: float) -> dict:
    b = ctx.settings.biomass
    return {
        "algorithm": "carbonstock",
        "parameters": parameters or {},
        "inputs": {"agb": b.agb, "height": b.height, "agb_std": b.std, "agb_lower": b.lower, "agb_upper": b.upper},
        "settings": _settings_record(ctx),
        "citations": {"carbon_fraction": CARBON_FRACTION_CITATION, "root_shoot": ECOZONE_CITATION,
                      "deduction": DEDUCTION_CITATION, "co2": CO2_CITATION},
        "records": records, "details": details, "notes": ctx.log.notes, "warnings": ctx.log.warnings,
        "seconds": time.perf_counter() - started,
    }


def carbon_stock(projects, biomass, out_html=None, *, factors: CarbonFactors = CarbonFactors(),
                 monte_carlo: MonteCarlo = MonteCarlo(), deduction: Deduction = Deduction(), projects_crs=None,
                 progress: Progress | None = None, parameters: dict | None = None,
                 embed_figures: bool = False) -> dict:
    """Carbon stock and its Monte Carlo interval for each project polygon.

    Parameters
    ----------
    projects : str, os.PathLike or sequence
        A vector file (OGR; ``path|layername=name`` accepted), or a sequence of shapely geometries in
        ``projects_crs``.
    biomass : BiomassMap or str
        The biomass map (Mg/ha) and its per-pixel error; a path is an AGB raster without error.
    out_html : str, os.PathLike or None
        The HTML report to write, with a JSON of every number beside it.
    factors : CarbonFactors
        Carbon fraction and root-to-shoot ratio.
    monte_carlo : MonteCarlo
        Draws, error correlation range (:func:`.variogram.resolve_correlation_range`: the uncertainty dock calls
        the same function, so both give the same interval), confidence, seed.
    deduction : Deduction
        The uncertainty deduction rule.
    projects_crs : str or None
        The CRS of a sequence of geometries.
    progress : Progress or None
        Messages, progress and cancellation.
    parameters : dict or None
        What the caller ran with (Processing parameters), recorded in the document and the provenance.
    embed_figures : bool
        Embed the report's figures in the HTML instead of writing PNGs beside it.

    Returns
    -------
    dict
        ``records`` (one per input feature, keys :data:`OUTPUT_FIELDS`: ha, Mg, t CO2e, %; None where
        undefined), ``details`` (per feature: status, root-to-shoot, Monte Carlo and analytic half-widths),
        ``settings``, ``citations``, ``notes``, ``warnings``, and ``outputs`` when ``out_html`` is given.
    """
    if not isinstance(biomass, BiomassMap):
        biomass = BiomassMap(agb=str(biomass))
    progress = progress or NullProgress()
    started = time.perf_counter()
    log = _Log(progress)
    settings = _settings(biomass, factors, monte_carlo, deduction, log)
    frame = raster_frame(biomass)
    polygons = _projects(projects, projects_crs, frame, log)
    readers = Readers(frame.grid)
    ctx = _Context(settings, frame, polygons, readers, log)
    try:
        records, details, draws = _all_polygons(ctx)
    finally:
        readers.close()
    _check_results(details, ctx)
    doc = _document(ctx, records, details, parameters, started)
    if monte_carlo.keep_draws:
        doc["simulations"] = draws
    if out_html:
        doc["provenance"] = provenance("carbonstock", parameters, inputs=[p for p in (biomass.agb, biomass.height) if p])
        report = build_report(doc, draws, ctx.projects.geoms, frame.path, frame.grid, ctx.projects.transformer)
        doc["outputs"] = write_report(out_html, report, doc, embed=embed_figures)
    return doc
