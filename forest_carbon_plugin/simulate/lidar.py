"""Airborne LiDAR over the simulated world, written tile by tile as LAS 1.4 PF6 LAZ.

Pulses fall on a jittered grid at the requested density. Flight lines run north-south;
each pulse's scan angle follows from its distance to the line's nadir and the flying
height (|angle| ≤ ``max_scan_angle_deg``), and its ray is tilted accordingly. Along the
ray, every crown is a solid (cone or half-ellipsoid) filled with foliage that intercepts
the beam at a constant rate per metre (Beer-Lambert: the gap probability over a path L is
exp(−k·L)); an echo is recorded at each interception, the beam continues with a fixed
probability, a 1.2 m dead zone separates echoes (pulse width), at most 5 echoes per
pulse, and a beam that reaches the ground gives the last return on the terrain. Water
reflects specularly away from the sensor: most pulses over water give no echo.

Each tile is computed from its own random stream (seed, tile index) and written on its
own, so memory is bounded by one tile and the bytes do not depend on thread scheduling.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.dependencies import require
from ..core.outputs import atomic_output
from .world import EPSG, SceneConfig, Terrain, Trees, crown_interval, extinction, rng_for

MAX_RETURNS = 5
DEAD_ZONE_M = 1.2
P_CONTINUE = 0.6
WATER_DROPOUT = 0.85
GPS_EPOCH = 3.6e8  # adjusted standard GPS time (GPS seconds − 1e9), mid-2021
SPEED_M_S = 60.0
PAIR_CHUNK = 100_000
NEIGHBOURS = 10  # nearest stems tried per ray; crowns overlap a ray a few at a time


@dataclass
class TileResult:
    path: str
    points: int
    pulses: int
    bounds: tuple


def swath_m(config: SceneConfig) -> float:
    """Swath width of a flight line: 2·H·tan(max scan angle).

    Parameters
    ----------
    config : SceneConfig

    Returns
    -------
    float
        Metres.
    """
    return 2 * config.flying_height_m * math.tan(math.radians(config.max_scan_angle_deg))


def tiles(config: SceneConfig):
    """The LiDAR tiles of the scene, row-major from the south-west.

    Parameters
    ----------
    config : SceneConfig
        ``tile_m`` sets the tile side.

    Yields
    ------
    tuple
        (ix, iy, x0, y0, x1, y1), bounds in scene metres.
    """
    n = int(math.ceil(config.size / config.tile_m))
    for iy in range(n):
        for ix in range(n):
            x0, y0 = ix * config.tile_m, iy * config.tile_m
            yield ix, iy, x0, y0, min(config.size, x0 + config.tile_m), min(config.size, y0 + config.tile_m)


@dataclass
class _Pulses:
    """The pulses of one tile: ground position of the nadir-equivalent ray (scene metres), scan
    geometry (tan and cos of the scan angle), flight line and GPS time."""

    x: np.ndarray
    y: np.ndarray
    tan_t: np.ndarray
    cos_t: np.ndarray
    line: np.ndarray
    gps: np.ndarray

    @property
    def n(self) -> int:
        return self.x.size


@dataclass
class _Crossings:
    """Sparse (pulse, crown) pairs sorted by pulse: the crown's foliage interval along the ray
    (``top``/``bottom`` heights, m) and its interception rate per metre of height."""

    pulse: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    rate: np.ndarray

    @property
    def starts(self) -> np.ndarray:
        """Index of each pulse's first pair."""
        if not self.pulse.size:
            return np.empty(0, int)
        return np.flatnonzero(np.r_[True, self.pulse[1:] != self.pulse[:-1]])


@dataclass
class _Echoes:
    """Echoes: height above ground (0 = ground), pulse index, beam energy, return number, and where
    they land (scene metres)."""

    h: np.ndarray
    pulse: np.ndarray
    energy: np.ndarray
    rn: np.ndarray
    x: np.ndarray = None
    y: np.ndarray = None


def simulate_tile(config: SceneConfig, terrain: Terrain, trees: Trees, water_1m: np.ndarray, tile, out_dir):
    """Simulate and write one tile; returns a :class:`TileResult`.

    Parameters
    ----------
    config : SceneConfig
        The scene (size, pulse density, flight geometry, seed).
    terrain, trees : Terrain, Trees
        The simulated world.
    water_1m : numpy.ndarray
        Boolean water mask on the 1 m grid of the scene, north up.
    tile : tuple
        ``(ix, iy, x0, y0, x1, y1)`` from :func:`tiles`.
    out_dir : str or Path
        Where the tile's LAZ is written.

    Returns
    -------
    TileResult
        The file, its point and pulse counts and its bounds (projected metres).
    """
    ix, iy, x0, y0, x1, y1 = tile
    rng = rng_for(config, 100, ix, iy)
    pulses = _pulses(config, tile, rng)
    crossings = _crossings(trees, tile, pulses)
    echoes = _trace(pulses, crossings, rng)
    echoes.x = pulses.x[echoes.pulse] - pulses.tan_t[echoes.pulse] * echoes.h
    echoes.y = pulses.y[echoes.pulse]
    points, header = _point_record(config, terrain, water_1m, tile, pulses, echoes, rng)
    out = Path(out_dir) / f"tile_{int(config.xmin + x0)}_{int(config.ymin + y0)}.laz"
    laspy = require("laspy", "lazrs")[0]
    with atomic_output(out) as tmp:
        with laspy.open(tmp, mode="w", header=header, do_compress=True) as writer:
            writer.write_points(points)
    return TileResult(str(out), int(len(points)), int(pulses.n),
                      (config.xmin + x0, config.ymin + y0, config.xmin + x1, config.ymin + y1))


def _pulses(config: SceneConfig, tile, rng) -> _Pulses:
    """Pulses on a jittered grid at the pulse density, with north-south flight lines of width :func:`swath_m`."""
    _, _, x0, y0, x1, y1 = tile
    spacing = 1 / math.sqrt(config.pulse_density)
    nx, ny = max(1, int(round((x1 - x0) / spacing))), max(1, int(round((y1 - y0) / spacing)))
    sx, sy = (x1 - x0) / nx, (y1 - y0) / ny
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
    px = x0 + (gx.ravel() + rng.random(gx.size)) * sx
    py = y0 + (gy.ravel() + rng.random(gy.size)) * sy
    swath = swath_m(config)
    line = np.floor(px / swath).astype(np.int64)
    tan_t = (px - (line + 0.5) * swath) / config.flying_height_m
    line_time = config.size / SPEED_M_S + 90.0
    along = np.where(line % 2 == 0, py, config.size - py)
    gps = GPS_EPOCH + line * line_time + along / SPEED_M_S + rng.random(px.size) * 1e-4
    return _Pulses(px, py, tan_t, 1 / np.sqrt(1 + tan_t ** 2), line, gps)


def _crossings(trees: Trees, tile, pulses: _Pulses) -> _Crossings:
    """The crowns crossed by each ray: the :data:`NEIGHBOURS` nearest stems of each pulse, kept where the
    tilted ray passes within the crown radius at mid-crown height."""
    from scipy.spatial import cKDTree

    _, _, x0, y0, x1, y1 = tile
    px, py, tan_t, n = pulses.x, pulses.y, pulses.tan_t, pulses.n
    pad = float(trees.crown_radius_m.max()) + 0.5 * float(np.abs(tan_t).max()) * 40 if len(trees) else 0
    near = (trees.x > x0 - pad) & (trees.x < x1 + pad) & (trees.y > y0 - pad) & (trees.y < y1 + pad)
    local = trees.subset(near)
    if not len(local):
        return _Crossings(np.empty(0, dtype=np.int64), np.empty(0), np.empty(0), np.empty(0))
    index = cKDTree(np.column_stack([local.x, local.y]))
    k = min(NEIGHBOURS, len(local))
    pulses_parts, trees_parts, r_parts = [], [], []
    # neighbour lists are n × k: build them a chunk of pulses at a time (bounded memory)
    for c0 in range(0, n, PAIR_CHUNK):
        c1 = min(n, c0 + PAIR_CHUNK)
        _, idx = index.query(np.column_stack([px[c0:c1] - tan_t[c0:c1] * 15.0, py[c0:c1]]), k=k,
                             distance_upper_bound=pad)
        idx = idx.reshape(c1 - c0, k)
        pp, slot_k = np.nonzero(idx < len(local))
        tid = idx[pp, slot_k]
        pp += c0
        # horizontal distance from the stem where the tilted ray crosses the crown's mid-height
        mid = local.height_m[tid] - local.crown_depth_m[tid] / 2
        r = np.hypot(px[pp] - tan_t[pp] * mid - local.x[tid], py[pp] - local.y[tid])
        crossed = r < local.crown_radius_m[tid]
        pulses_parts.append(pp[crossed])
        trees_parts.append(tid[crossed])
        r_parts.append(r[crossed])
    pair_pulse = np.concatenate(pulses_parts)
    tree_id = np.concatenate(trees_parts)
    top, bottom = crown_interval(local, tree_id, np.concatenate(r_parts))
    rate = extinction(local, tree_id) / pulses.cos_t[pair_pulse]  # per metre of height along a tilted ray
    return _Crossings(pair_pulse, top, bottom, rate)


def _trace(pulses: _Pulses, crossings: _Crossings, rng) -> _Echoes:
    """Up to :data:`MAX_RETURNS` echoes per pulse: competing exponential interceptions in the crowns still
    ahead of the beam, the beam going on with probability :data:`P_CONTINUE`, the ground last."""
    n = pulses.n
    pair_pulse, starts = crossings.pulse, crossings.starts
    segment_pulse = pair_pulse[starts]
    echoes_h, echoes_pulse, echoes_energy, echoes_rn = [], [], [], []
    z_cur = np.full(n, np.inf)
    alive = np.ones(n, dtype=bool)
    energy = np.ones(n)
    count = np.zeros(n, dtype=np.int64)
    for slot in range(MAX_RETURNS):
        act = np.flatnonzero(alive)
        if act.size == 0:
            break
        hit = np.full(n, -np.inf)
        if pair_pulse.size:
            entry = np.minimum(crossings.top, z_cur[pair_pulse])
            avail = entry - crossings.bottom
            depth = rng.exponential(1.0, pair_pulse.size) / crossings.rate
            pair_hit = np.where(alive[pair_pulse] & (avail > 0) & (depth < avail), entry - depth, -np.inf)
            hit[segment_pulse] = np.maximum.reduceat(pair_hit, starts)
        hit = hit[act]
        veg = hit > 0.3
        # a vegetation echo, or the ground (the last echo)
        echoes_h.append(np.where(veg, hit, 0.0))
        echoes_pulse.append(act)
        echoes_energy.append(energy[act].copy())
        count[act] += 1
        echoes_rn.append(count[act].copy())
        alive[act[~veg]] = False
        vact = act[veg]
        z_cur[vact] = hit[veg] - DEAD_ZONE_M
        energy[vact] *= 0.6
        stop = rng.random(vact.size) > P_CONTINUE
        alive[vact[stop]] = False
        if slot == MAX_RETURNS - 1:
            alive[:] = False
    return _Echoes(np.concatenate(echoes_h), np.concatenate(echoes_pulse), np.concatenate(echoes_energy),
                   np.concatenate(echoes_rn))


def _point_record(config: SceneConfig, terrain: Terrain, water_1m, tile, pulses: _Pulses, echoes: _Echoes, rng):
    """The tile's LAS 1.4 point format 6 record and header: water dropouts, noise, intensity,
    classification (2 ground, 5 high vegetation, 9 water), points in GPS-time order."""
    laspy = require("laspy", "lazrs")[0]
    _, _, x0, y0, _, _ = tile
    is_ground = echoes.h == 0.0
    ci = np.clip((config.size - echoes.y).astype(np.int64), 0, water_1m.shape[0] - 1)
    cj = np.clip(echoes.x.astype(np.int64), 0, water_1m.shape[1] - 1)
    on_water = is_ground & water_1m[ci, cj]
    keep = ~(on_water & (rng.random(echoes.h.size) < WATER_DROPOUT))
    # the number of returns a pulse really gave, after water dropouts
    per_pulse = np.bincount(echoes.pulse[keep], minlength=pulses.n)
    # renumber returns: dropped echoes are always last (ground), so numbering is unchanged
    h, pulse, e_energy, rn, is_ground, ex, ey, on_water = (
        a[keep] for a in (echoes.h, echoes.pulse, echoes.energy, echoes.rn, is_ground, echoes.x, echoes.y, on_water))
    noise = np.where(is_ground, rng.normal(0, 0.04, h.size), rng.normal(0, 0.03, h.size))
    z = terrain.elevation(config.xmin + ex, config.ymin + ey) + h + noise
    reflect = np.where(is_ground, np.where(on_water, 0.05, 0.35), 0.5 * (0.7 + 0.3 * rng.random(h.size)))
    intensity = np.clip(e_energy * reflect * 2000 * (0.9 + 0.2 * rng.random(h.size)), 1, 65535)
    classification = np.where(is_ground, np.where(on_water, 9, 2), 5)

    order = np.lexsort((rn, pulses.gps[pulse]))
    header = laspy.LasHeader(point_format=6, version="1.4")
    header.scales = np.array([0.01, 0.01, 0.01])
    header.offsets = np.array([config.xmin + x0, config.ymin + y0, 0.0])
    header.add_crs(_pyproj_crs())
    header.system_identifier = "SIMULATED"
    header.generating_software = "forest_carbon_plugin.simulate"
    header.creation_date = _dt.date.fromisoformat(config.acquisition_date)
    points = laspy.ScaleAwarePointRecord.zeros(len(order), header=header)
    points.x = config.xmin + ex[order]
    points.y = config.ymin + ey[order]
    points.z = z[order]
    points.intensity = intensity[order].astype(np.uint16)
    points.return_number = rn[order].astype(np.uint8)
    points.number_of_returns = per_pulse[pulse[order]].astype(np.uint8)
    points.classification = classification[order].astype(np.uint8)
    points.scan_angle = np.round(np.degrees(np.arctan(pulses.tan_t[pulse[order]])) / 0.006).astype(np.int16)
    points.scan_direction_flag = (pulses.line[pulse[order]] % 2).astype(np.uint8)
    points.point_source_id = (pulses.line[pulse[order]] + 1).astype(np.uint16)
    points.gps_time = pulses.gps[pulse[order]]
    return points, header


def _pyproj_crs():
    import pyproj

    return pyproj.CRS.from_epsg(EPSG)
