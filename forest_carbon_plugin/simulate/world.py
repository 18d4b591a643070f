"""The simulated world: terrain, stands, trees and crowns, deterministic for a seed.

Everything here is a pure function of :class:`SceneConfig`. Heights of crowns are
heights above the ground at the stem; elevations are ``terrain_m(x, y) + height``.

Allometries (per tree, H = height in m, CD = crown diameter in m):

* Above-ground biomass, Jucker et al. (2017), Global Change Biology 23:177-190, as
  implemented in the R package itcSegment: angiosperms ``0.016·(H·CD)^2.013·exp(σ²/2)``,
  gymnosperms ``0.109·(H·CD)^1.790·exp(σ²/2)`` kg, σ = 0.204; stem diameter
  ``0.557·(H·CD)^0.809·exp(0.056²/2)`` cm. Each tree's true value scatters around the
  allometry with the published log-residual σ, so the allometry is a model of the truth,
  not the truth itself.
* Crown radius ``a·H^0.85`` and crown depth ``f·H`` per forest type (illustrative values
  in the range of temperate species, not a published fit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import ForestCarbonError

EPSG = 32633  # WGS 84 / UTM zone 33N
GRID_ALIGN_M = 60.0  # every product grid (1, 10, 20, 30, 60 m) divides this
JUCKER_SIGMA = 0.204


@dataclass(frozen=True)
class ForestType:
    name: str
    forest: bool
    density_per_ha: float = 0.0
    height_mean_m: float = 0.0
    height_sd_m: float = 0.0
    gymnosperm_share: float = 1.0
    crown_a: float = 0.2  # crown radius = crown_a · H^0.85
    crown_depth_frac: float = 0.6
    clumping: float = 0.0  # share of trees placed in clusters (Thomas process)
    regular: bool = False  # plantation rows
    age_years: int = 0
    ground: str = "litter"  # background cover: litter, grass, soil, water


FOREST_TYPES = {
    t.name: t for t in (
        ForestType("conifer_old", True, 350, 27.0, 4.0, 1.0, 0.20, 0.60, 0.3, age_years=120),
        ForestType("conifer_young", True, 1200, 12.0, 2.5, 1.0, 0.20, 0.65, 0.2, age_years=30),
        ForestType("broadleaf_mature", True, 250, 24.0, 4.0, 0.0, 0.40, 0.50, 0.2, age_years=90),
        ForestType("mixed", True, 550, 20.0, 5.0, 0.5, 0.30, 0.55, 0.4, age_years=70),
        ForestType("plantation", True, 1000, 16.0, 1.5, 1.0, 0.18, 0.60, 0.0, regular=True, age_years=25),
        ForestType("grassland", False, ground="grass"),
        ForestType("bare_soil", False, ground="soil"),
        ForestType("water", False, ground="water"),
        ForestType("deforested", False, ground="soil"),
    )
}
STAND_TYPE_WEIGHTS = {"conifer_old": 3, "conifer_young": 2, "broadleaf_mature": 2, "mixed": 2,
                      "plantation": 1, "grassland": 1, "bare_soil": 0.5}


@dataclass(frozen=True)
class SceneConfig:
    """What to simulate. ``size_m`` is rounded up to a multiple of 60 m so that the 1, 10, 20,
    30 and 60 m grids align exactly."""

    size_m: float = 500.0
    seed: int = 7
    pulse_density: float = 10.0  # pulses per m²
    tile_m: float = 250.0  # LiDAR tile size
    xmin: float = 500_040.0
    ymax: float = 5_600_040.0
    flying_height_m: float = 800.0
    max_scan_angle_deg: float = 15.0
    acquisition_date: str = "2023-07-15"
    landsat_date: str = "2023-07-16"
    s2_sun_zenith_deg: float = 35.0
    s2_sun_azimuth_deg: float = 150.0
    s2_view_zenith_deg: float = 6.0
    s2_view_azimuth_deg: float = 105.0
    landsat_sun_zenith_deg: float = 34.0
    landsat_sun_azimuth_deg: float = 145.0
    landsat_view_zenith_deg: float = 2.0
    landsat_view_azimuth_deg: float = 100.0
    # geometry at which endmember spectra are defined (nadir view); None: HLS v2.0's NBAR solar
    # zenith of the scene centre on the Sentinel-2 date, so harmonized reflectance is the truth
    reference_sun_zenith_deg: float | None = None
    cloud_fraction: float = 0.08
    s1_looks: float = 4.4
    s1_incidence_deg: float = 38.0
    workers: int = 2
    # field plots are circles of this radius: 12.62 m = 500 m²; 16.93 m = 900 m², the area of a 30 m cell
    plot_radius_m: float = 12.62

    @property
    def size(self) -> float:
        return math.ceil(self.size_m / GRID_ALIGN_M) * GRID_ALIGN_M

    @property
    def xmax(self) -> float:
        return self.xmin + self.size

    @property
    def ymin(self) -> float:
        return self.ymax - self.size

    def validate(self) -> None:
        if not (30 <= self.size_m <= 20_000):
            raise ForestCarbonError(f"Scene size {self.size_m} m is out of range: choose 30 to 20,000 m.")
        if not (0.1 <= self.pulse_density <= 100):
            raise ForestCarbonError(
                f"Pulse density {self.pulse_density} pulses/m² is out of range: choose 0.1 to 100.")
        if self.tile_m < 30:
            raise ForestCarbonError("LiDAR tiles must be at least 30 m wide.")
        if not (1 <= self.plot_radius_m <= 60):
            raise ForestCarbonError(f"Plot radius {self.plot_radius_m} m is out of range: choose 1 to 60 m.")


def rng_for(config: SceneConfig, *stream: int) -> np.random.Generator:
    """An independent random stream per purpose (and per tile): results do not depend on the order in
    which parts are computed.

    Parameters
    ----------
    config : SceneConfig
        Its seed starts every stream.
    *stream : int
        The purpose (and tile) keys.

    Returns
    -------
    numpy.random.Generator
    """
    return np.random.default_rng([config.seed, *stream])


# -- terrain --------------------------------------------------------------------------

@dataclass(frozen=True)
class Terrain:
    """A smooth surface: a plane plus a few long-wavelength waves (tens of metres of relief)."""

    base_m: float
    slope_x: float
    slope_y: float
    amplitudes: tuple
    kx: tuple
    ky: tuple
    phases: tuple
    x0: float
    y0: float

    def elevation(self, x, y):
        x = np.asarray(x, dtype=np.float64) - self.x0
        y = np.asarray(y, dtype=np.float64) - self.y0
        z = self.base_m + self.slope_x * x + self.slope_y * y
        for a, kx, ky, ph in zip(self.amplitudes, self.kx, self.ky, self.phases):
            z = z + a * np.sin(kx * x + ky * y + ph)
        return z

    def gradient(self, x, y):
        """(dz/dx, dz/dy), exact."""
        x = np.asarray(x, dtype=np.float64) - self.x0
        y = np.asarray(y, dtype=np.float64) - self.y0
        gx = np.full(np.broadcast(x, y).shape, self.slope_x)
        gy = np.full(np.broadcast(x, y).shape, self.slope_y)
        for a, kx, ky, ph in zip(self.amplitudes, self.kx, self.ky, self.phases):
            c = a * np.cos(kx * x + ky * y + ph)
            gx = gx + c * kx
            gy = gy + c * ky
        return gx, gy


def make_terrain(config: SceneConfig) -> Terrain:
    """A smooth terrain: a tilted plane plus five random sinusoids (wavelengths 250-1500 m, amplitudes 2-7 m).

    Parameters
    ----------
    config : SceneConfig

    Returns
    -------
    Terrain
    """
    rng = rng_for(config, 1)
    n = 5
    wavelengths = rng.uniform(250, 1500, n)
    angles = rng.uniform(0, 2 * np.pi, n)
    k = 2 * np.pi / wavelengths
    return Terrain(
        base_m=float(rng.uniform(250, 450)),
        slope_x=float(rng.uniform(-0.03, 0.03)), slope_y=float(rng.uniform(-0.03, 0.03)),
        amplitudes=tuple(rng.uniform(2, 7, n)), kx=tuple(k * np.cos(angles)), ky=tuple(k * np.sin(angles)),
        phases=tuple(rng.uniform(0, 2 * np.pi, n)), x0=config.xmin, y0=config.ymin)


# -- stands -----------------------------------------------------------------------------

@dataclass
class Stands:
    """Stand partition on the 1 m grid (row 0 at the top) and each stand's type."""

    ids_1m: np.ndarray  # int32, stand index per 1 m cell
    types: list  # ForestType per stand index
    clearings: list = field(default_factory=list)  # (cx, cy, radius_m) deforested patches


def make_stands(config: SceneConfig) -> Stands:
    """Voronoi stands with warped (irregular) edges, plus circular deforested patches.

    Parameters
    ----------
    config : SceneConfig

    Returns
    -------
    Stands
        Stand ids on the 1 m grid, each stand's forest type, the clearings.
    """
    from scipy.spatial import cKDTree

    rng = rng_for(config, 2)
    size = config.size
    n_stands = max(6, int(round(size * size / 40_000)))  # about 4 ha each
    seeds = rng.uniform(0, size, (n_stands, 2))
    names = list(STAND_TYPE_WEIGHTS)
    weights = np.array([STAND_TYPE_WEIGHTS[n] for n in names], dtype=float)
    chosen = list(rng.choice(names, size=n_stands, p=weights / weights.sum()))
    # every forest type at least once when there is room, and one water body
    forest_names = [n for n in names if FOREST_TYPES[n].forest]
    for i, name in enumerate(forest_names[: max(0, n_stands - 2)]):
        chosen[i] = name
    chosen[-1] = "water" if n_stands >= 6 else chosen[-1]
    if n_stands >= 7:
        chosen[-2] = "grassland"
    types = [FOREST_TYPES[str(n)] for n in chosen]

    n = int(size)
    cc = np.arange(n) + 0.5
    ids = np.empty((n, n), dtype=np.int32)
    tree = cKDTree(seeds)
    warp_rng = rng_for(config, 3)
    wa = warp_rng.uniform(8, 20, 4)
    wk = 2 * np.pi / warp_rng.uniform(80, 200, 4)
    wp = warp_rng.uniform(0, 2 * np.pi, 4)
    for r0 in range(0, n, 256):
        rows = np.arange(r0, min(n, r0 + 256))
        X, Y = np.meshgrid(cc, size - (rows + 0.5))
        wx = X + wa[0] * np.sin(wk[0] * Y + wp[0]) + wa[1] * np.sin(wk[1] * X + wp[1])
        wy = Y + wa[2] * np.sin(wk[2] * X + wp[2]) + wa[3] * np.sin(wk[3] * Y + wp[3])
        ids[r0:r0 + len(rows)] = tree.query(np.column_stack([wx.ravel(), wy.ravel()]))[1].reshape(X.shape)

    # deforested patches inside forest stands: the map must have zeros
    clearings = []
    forest_stands = [i for i, t in enumerate(types) if t.forest]
    n_clear = max(1, int(round(size * size / 250_000)))
    for _ in range(n_clear):
        if not forest_stands:
            break
        stand = int(rng.choice(forest_stands))
        rr, cc_ = np.nonzero(ids == stand)
        if len(rr) == 0:
            continue
        k = int(rng.integers(len(rr)))
        radius = float(rng.uniform(20, 45))
        clearings.append((float(cc_[k] + 0.5), float(size - (rr[k] + 0.5)), radius))
    if clearings:
        types.append(FOREST_TYPES["deforested"])
        clear_id = len(types) - 1
        X, Y = np.meshgrid(np.arange(n) + 0.5, size - (np.arange(n) + 0.5))
        for cx, cy, radius in clearings:
            ids[(X - cx) ** 2 + (Y - cy) ** 2 <= radius ** 2] = clear_id
    return Stands(ids, types, clearings)


# -- trees --------------------------------------------------------------------------------

@dataclass
class Trees:
    """Tree list in scene coordinates (x, y in metres from the scene's lower-left corner)."""

    x: np.ndarray
    y: np.ndarray
    height_m: np.ndarray
    crown_radius_m: np.ndarray
    crown_depth_m: np.ndarray
    gymnosperm: np.ndarray  # bool
    dbh_cm: np.ndarray
    agb_kg: np.ndarray
    stand: np.ndarray

    def __len__(self):
        return len(self.x)

    def subset(self, mask) -> "Trees":
        return Trees(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))


def jucker_agb_kg(height_m, crown_diameter_m, gymnosperm):
    """Expected AGB from height and crown diameter (Jucker et al. 2017, Global Change Biology 23:177-190;
    itcSegment coefficients), with the log-normal bias correction.

    Parameters
    ----------
    height_m, crown_diameter_m : array_like
        Metres.
    gymnosperm : array_like of bool
        Conifer (True) or broadleaf equation.

    Returns
    -------
    numpy.ndarray
        kg.
    """
    hcd = np.asarray(height_m) * np.asarray(crown_diameter_m)
    corr = math.exp(JUCKER_SIGMA ** 2 / 2)
    return np.where(gymnosperm, 0.109 * hcd ** 1.790, 0.016 * hcd ** 2.013) * corr


def jucker_dbh_cm(height_m, crown_diameter_m):
    """Stem diameter from height × crown diameter (Jucker et al. 2017), with the log-normal bias correction.

    Parameters
    ----------
    height_m, crown_diameter_m : array_like
        Metres.

    Returns
    -------
    numpy.ndarray
        cm.
    """
    return 0.557 * (np.asarray(height_m) * np.asarray(crown_diameter_m)) ** 0.809 * math.exp(0.056 ** 2 / 2)


def make_trees(config: SceneConfig, stands: Stands) -> Trees:
    """The trees of every forest stand: Poisson counts at the type's density, planted on a grid or scattered,
    with heights, crowns and AGB.

    Parameters
    ----------
    config : SceneConfig
    stands : Stands

    Returns
    -------
    Trees
    """
    rng = rng_for(config, 4)
    size = config.size
    n = stands.ids_1m.shape[0]
    parts = []
    for sid, ftype in enumerate(stands.types):
        if not ftype.forest:
            continue
        mask = stands.ids_1m == sid
        area_ha = mask.sum() / 10_000
        count = rng.poisson(ftype.density_per_ha * area_ha)
        if count == 0:
            continue
        rows, cols = np.nonzero(mask)
        x0, x1 = cols.min(), cols.max() + 1
        y0, y1 = size - (rows.max() + 1), size - rows.min()
        if ftype.regular:
            spacing = 100 / math.sqrt(ftype.density_per_ha)
            angle = rng.uniform(0, np.pi)
            gx, gy = np.meshgrid(np.arange(-size, 2 * size, spacing), np.arange(-size, 2 * size, spacing))
            px = gx.ravel() * math.cos(angle) - gy.ravel() * math.sin(angle) + rng.normal(0, 0.4, gx.size)
            py = gx.ravel() * math.sin(angle) + gy.ravel() * math.cos(angle) + rng.normal(0, 0.4, gx.size)
        else:
            n_clumped = int(count * ftype.clumping)
            n_parents = max(1, n_clumped // 8)
            parents = np.column_stack([rng.uniform(x0, x1, n_parents), rng.uniform(y0, y1, n_parents)])
            pick = rng.integers(0, n_parents, n_clumped)
            cx = parents[pick, 0] + rng.normal(0, 6, n_clumped)
            cy = parents[pick, 1] + rng.normal(0, 6, n_clumped)
            # oversample the bounding box, keep those inside the stand
            box_share = mask.sum() / max(1, (x1 - x0) * (y1 - y0))
            m = int((count - n_clumped) / max(box_share, 1e-3) * 1.05) + 10
            ux, uy = rng.uniform(x0, x1, m), rng.uniform(y0, y1, m)
            px, py = np.concatenate([cx, ux]), np.concatenate([cy, uy])
        inside = (px >= 0) & (px < size) & (py >= 0) & (py < size)
        px, py = px[inside], py[inside]
        ci = np.clip((size - py).astype(int), 0, n - 1)
        cj = np.clip(px.astype(int), 0, n - 1)
        keep = stands.ids_1m[ci, cj] == sid
        px, py = px[keep], py[keep]
        if not ftype.regular and len(px) > count:
            # keep the clumped ones first, then uniform ones up to the Poisson count
            px, py = px[:count], py[:count]
        k = len(px)
        if k == 0:
            continue
        h = np.clip(rng.normal(ftype.height_mean_m, ftype.height_sd_m, k), 3.0, 60.0)
        gym = rng.random(k) < ftype.gymnosperm_share
        a = np.where(gym, ftype.crown_a, ftype.crown_a * 1.6) if ftype.gymnosperm_share not in (0, 1) \
            else np.full(k, ftype.crown_a)
        cr = a * h ** 0.85 * np.exp(rng.normal(0, 0.12, k))
        depth = np.clip(ftype.crown_depth_frac * h * np.exp(rng.normal(0, 0.08, k)), 1.0, h - 0.5)
        agb = jucker_agb_kg(h, 2 * cr, gym) * np.exp(rng.normal(-JUCKER_SIGMA ** 2 / 2, JUCKER_SIGMA, k))
        dbh = jucker_dbh_cm(h, 2 * cr) * np.exp(rng.normal(-0.056 ** 2 / 2, 0.056, k))
        parts.append(Trees(px, py, h, cr, depth, gym, dbh, agb, np.full(k, sid, dtype=np.int32)))
    if not parts:
        empty = np.empty(0)
        return Trees(empty, empty, empty, empty, empty, np.empty(0, bool), empty, empty, np.empty(0, np.int32))
    return Trees(*(np.concatenate([getattr(p, f) for p in parts]) for f in Trees.__dataclass_fields__))


# -- crowns -----------------------------------------------------------------------------------

def crown_interval(trees: Trees, index, r):
    """Top and bottom heights of crowns ``index`` at horizontal distance ``r`` from their stems.

    Gymnosperm crowns are cones, angiosperm crowns half-ellipsoids, both with a flat base at
    ``H − depth``; outside the crown radius the interval is empty (top = bottom = −inf).

    Parameters
    ----------
    trees : Trees
    index : numpy.ndarray
        Tree indices.
    r : numpy.ndarray
        Distances, m.

    Returns
    -------
    tuple of numpy.ndarray
        (top, bottom), m above ground.
    """
    h = trees.height_m[index]
    cr = trees.crown_radius_m[index]
    d = trees.crown_depth_m[index]
    u = np.clip(r / cr, 0, None)
    inside = u < 1.0
    cone = h - d * u
    ellipsoid = (h - d) + d * np.sqrt(np.clip(1 - u * u, 0, None))
    top = np.where(trees.gymnosperm[index], cone, ellipsoid)
    bottom = h - d
    top = np.where(inside, top, -np.inf)
    bottom = np.where(inside, bottom, -np.inf)
    return top, bottom


#: foliage extinction per metre of path inside a crown (gap probability exp(−k·L))
EXTINCTION_PER_M = {True: 1.6, False: 1.2}


def extinction(trees: Trees, index):
    """Foliage extinction coefficient of each crown (:data:`EXTINCTION_PER_M`).

    Parameters
    ----------
    trees : Trees
    index : numpy.ndarray
        Tree indices.

    Returns
    -------
    numpy.ndarray
        Per metre of path.
    """
    return np.where(trees.gymnosperm[index], EXTINCTION_PER_M[True], EXTINCTION_PER_M[False])


MAX_NEIGHBOURS = 10


def canopy_at(trees: Trees, tree_index, x, y, height_break_m: float = 2.0):
    """Vertical-view canopy surface height, top tree, and gap-fraction cover at points.

    Parameters
    ----------
    trees : Trees
    tree_index : scipy.spatial.cKDTree
        Over ``(trees.x, trees.y)``.
    x, y : numpy.ndarray
        Points, scene metres.
    height_break_m : float
        Cover counts interceptions above this height, m.

    Returns
    -------
    tuple of numpy.ndarray
        ``(height_m, top_tree, p_hit_above_break)``: the highest crown top over each point (0 where
        none), the index of that tree (−1), and the probability that a nadir pulse is intercepted
        above ``height_break_m`` (1 − exp(−Σ k·L) over crown paths above the break).
    """
    pts = np.column_stack([x, y])
    n = len(pts)
    height = np.zeros(n)
    top_tree = np.full(n, -1, dtype=np.int64)
    optical = np.zeros(n)
    if len(trees) == 0 or n == 0:
        return height, top_tree, 1 - np.exp(-optical)
    rmax = float(trees.crown_radius_m.max())
    k = min(MAX_NEIGHBOURS, len(trees))
    dist, idx = tree_index.query(pts, k=k, distance_upper_bound=rmax)
    dist = dist.reshape(n, k)
    idx = idx.reshape(n, k)
    valid = idx < len(trees)
    safe = np.where(valid, idx, 0)
    top, bottom = crown_interval(trees, safe, dist)
    top = np.where(valid, top, -np.inf)
    bottom = np.where(valid, bottom, -np.inf)
    best = np.argmax(top, axis=1)
    best_top = top[np.arange(n), best]
    has = np.isfinite(best_top)
    height[has] = best_top[has]
    top_tree[has] = safe[np.arange(n), best][has]
    with np.errstate(invalid="ignore"):  # −inf − (−inf) where no crown
        path = np.clip(top - np.maximum(bottom, height_break_m), 0, None)
    path = np.where(np.isfinite(path), path, 0.0)
    optical = (path * extinction(trees, safe)).sum(axis=1)
    return height, top_tree, 1 - np.exp(-optical)
