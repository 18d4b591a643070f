"""Simulate a whole scene: the world, its ground truth and every observation of it."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from affine import Affine

from ..core.errors import ForestCarbonError
from ..core.outputs import atomic_output, provenance as make_provenance
from ..core.progress import NullProgress, Progress, check_cancel
from ..core.raster.aggregate import block_mean
from ..core.raster.write import write_raster
from . import lidar, optical
from .world import EPSG, SceneConfig, Trees, canopy_at, make_stands, make_terrain, make_trees, rng_for

FIXED_DATE = "2023-07-15T00:00:00Z"  # GeoPackage timestamps: same seed, same bytes
CARBON_FRACTION = 0.47  # IPCC 2006 Guidelines, Vol. 4 Ch. 4, Table 4.3 default


def simulate_scene(out_dir, config: SceneConfig | None = None, progress: Progress | None = None) -> dict:
    """Write a simulated scene into ``out_dir``: the world, its ground truth and every observation of it.

    The folder is assembled beside ``out_dir`` and moved into place at the end, so a failed
    or cancelled run leaves nothing at ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        A new or empty folder (or one holding an earlier scene, which is replaced).
    config : SceneConfig, optional
        Size (m), seed, LiDAR pulse density (pulses/m²), dates and sensor geometry; the defaults if None.
    progress : Progress, optional
        Receives progress, messages and cancellation.

    Returns
    -------
    dict
        The scene manifest, also written as ``scene.json``: paths relative to the folder, the truth
        (tree count, AGB in Mg, projects' carbon) and each product's geometry.
    """
    config = config or SceneConfig()
    config.validate()
    progress = progress or NullProgress()
    target = Path(out_dir)
    if target.exists() and any(target.iterdir()) and not (target / "scene.json").exists():
        raise ForestCarbonError(f"'{target}' is not empty: choose an empty or new folder for the scene.")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        manifest = _simulate_into(work, config, progress)
        # paths in the manifest are relative: the folder can be moved
        with atomic_output(work / "scene.json", "w") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=True)
            handle.write("\n")
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, trash / "old")
            os.replace(work, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


@dataclass
class _Truth:
    """The world on the 1 m grid (north up): canopy height (m), crown probability, whether the top
    crown is a conifer, terrain slopes, water; and the AGB density maps (Mg/ha) at 10 and 30 m."""

    chm: np.ndarray
    p_crown: np.ndarray
    gym_top: np.ndarray
    slope_x: np.ndarray
    slope_y: np.ndarray
    water_1m: np.ndarray
    agb_maps: dict


def _simulate_into(out: Path, config: SceneConfig, progress: Progress) -> dict:
    started = time.perf_counter()
    prov = make_provenance("forestcarbon:simulatescene", asdict(config), deterministic=True)
    size = config.size
    progress.info(f"Simulating a {size:.0f} m × {size:.0f} m scene (seed {config.seed})")
    terrain = make_terrain(config)
    stands = make_stands(config)
    trees = make_trees(config, stands)
    progress.info(f"{len(trees):,} trees in {len(stands.types)} stands")
    progress.set_progress(5)
    check_cancel(progress)

    chm, p_crown, gym_top = _canopy_1m(config, trees, progress)
    dtm, slope_x, slope_y = _terrain_1m(config, terrain)
    agb_maps = _write_truth(out / "truth", config, dtm, trees, chm, p_crown, prov)
    truth = _Truth(chm, p_crown, gym_top, slope_x, slope_y, _water_1m(config, stands), agb_maps)
    progress.set_progress(15)
    progress.info(f"truth rasters written ({time.perf_counter() - started:.1f} s)")

    results = _write_lidar(out / "lidar", config, terrain, trees, truth.water_1m, progress)
    progress.info(f"{len(results)} LiDAR tiles written ({time.perf_counter() - started:.1f} s)")

    s2, landsat, naip, s1 = _write_imagery(out, config, stands, truth, prov, progress)
    progress.info(f"optical and radar products written ({time.perf_counter() - started:.1f} s)")

    stand_records = write_stands(config, stands, out / "truth" / "stands.gpkg")
    write_trees(config, trees, stands, out / "truth" / "trees.gpkg")
    plots = write_plots(config, trees, stands, out / "field_plots.gpkg", out / "truth" / "field_plots_truth.csv")
    projects = write_projects(config, trees, out / "projects.gpkg")
    progress.set_progress(100)
    progress.info(f"vectors written ({time.perf_counter() - started:.1f} s)")

    def rel(p):
        return os.path.relpath(p, out)

    crs = f"EPSG:{EPSG}"
    return {
        "config": asdict(config),
        "crs": crs,
        "bounds": [config.xmin, config.ymin, config.xmax, config.ymax],
        "size_m": size,
        "truth": {
            "dtm_1m": "truth/dtm_1m.tif", "chm_1m": "truth/chm_1m.tif",
            "cover_10m": "truth/cover_10m.tif", "cover_30m": "truth/cover_30m.tif",
            "agb_10m": "truth/agb_10m.tif", "agb_30m": "truth/agb_30m.tif",
            "trees": "truth/trees.gpkg", "stands": "truth/stands.gpkg",
            "field_plots": "truth/field_plots_truth.csv",
            "tree_count": len(trees), "agb_total_mg": float(trees.agb_kg.sum() / 1000),
            "stand_table": stand_records, "projects": projects, "plots": plots,
            "naip_gain": naip["gain"], "naip_offset": naip["offset"],
            "carbon_fraction": CARBON_FRACTION,
        },
        "lidar": {"tiles": [rel(r.path) for r in results], "points": sum(r.points for r in results),
                  "pulses": sum(r.pulses for r in results), "pulse_density": config.pulse_density,
                  "flying_height_m": config.flying_height_m, "max_scan_angle_deg": config.max_scan_angle_deg},
        "sentinel2": {**{k: v for k, v in s2.items() if k != "files"}, "product": rel(s2["product"]),
                      "files": {k: rel(v) for k, v in s2["files"].items()}},
        "landsat": {**{k: v for k, v in landsat.items() if k != "files"}, "product": rel(landsat["product"]),
                    "files": {k: rel(v) for k, v in landsat["files"].items()}},
        "sentinel1": {**{k: v for k, v in s1.items() if k != "files"}, "files": {k: rel(v) for k, v in s1["files"].items()}},
        "naip": {"file": rel(naip["file"]), "bands": naip["bands"]},
        # spectra are defined at a nadir view and this sun zenith: the reflectance truth that
        # BRDF normalization to this zenith should return
        "reference_sun_zenith_deg": optical.reference_sun_zenith(config),
        "field_plots": "field_plots.gpkg",
        "projects": "projects.gpkg",
        "provenance": prov,
    }


def _canopy_1m(config: SceneConfig, trees: Trees, progress: Progress):
    """(canopy height m, crown probability, conifer on top) of the 1 m grid, in row blocks of 120."""
    from scipy.spatial import cKDTree

    size = config.size
    n1 = int(size)
    index = cKDTree(np.column_stack([trees.x, trees.y])) if len(trees) else None
    chm = np.zeros((n1, n1), dtype=np.float32)
    p_crown = np.zeros((n1, n1), dtype=np.float32)
    gym_top = np.zeros((n1, n1), dtype=bool)
    cc = np.arange(n1) + 0.5

    def truth_rows(r0):
        rows = np.arange(r0, min(n1, r0 + 120))
        X, Y = np.meshgrid(cc, size - (rows + 0.5))
        h, top, p = canopy_at(trees, index, X.ravel(), Y.ravel(), height_break_m=2.0)
        gym = np.where(top >= 0, trees.gymnosperm[np.maximum(top, 0)], True)
        return rows, h.reshape(X.shape), p.reshape(X.shape), gym.reshape(X.shape)

    if index is not None:
        with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
            for rows, h, p, gym in pool.map(truth_rows, range(0, n1, 120)):
                chm[rows[0]:rows[-1] + 1] = h
                p_crown[rows[0]:rows[-1] + 1] = p
                gym_top[rows[0]:rows[-1] + 1] = gym
                check_cancel(progress)
    return chm, p_crown, gym_top


def _terrain_1m(config: SceneConfig, terrain):
    """(elevation m, slope x, slope y) at the 1 m grid's cell centres."""
    cc = np.arange(int(config.size)) + 0.5
    XX, YY = np.meshgrid(config.xmin + cc, config.ymax - cc)
    slope_x, slope_y = terrain.gradient(XX, YY)
    return terrain.elevation(XX, YY).astype(np.float32), slope_x, slope_y


def _water_1m(config: SceneConfig, stands) -> np.ndarray:
    n1 = int(config.size)
    water_1m = np.zeros((n1, n1), dtype=bool)
    for sid, t in enumerate(stands.types):
        if t.ground == "water":
            water_1m |= stands.ids_1m == sid
    return water_1m


def _write_truth(truth: Path, config: SceneConfig, dtm, trees: Trees, chm, p_crown, prov) -> dict:
    """The truth rasters (DTM, CHM at 1 m; cover and AGB at 10 and 30 m); returns the AGB maps by resolution."""
    t1 = Affine(1, 0, config.xmin, 0, -1, config.ymax)
    crs = f"EPSG:{EPSG}"
    write_raster(truth / "dtm_1m.tif", dtm, t1, crs, descriptions=["elevation_m"], provenance=prov)
    write_raster(truth / "chm_1m.tif", chm, t1, crs, descriptions=["canopy_height_m"],
                 provenance=prov)
    agb_maps = {}
    for res in (10, 30):
        transform = Affine(res, 0, config.xmin, 0, -res, config.ymax)
        cover = block_mean(p_crown, res)
        write_raster(truth / f"cover_{res}m.tif", cover.astype(np.float32), transform,
                     crs, descriptions=["canopy_cover_fraction_gt2m"], provenance=prov)
        agb = agb_grid(trees, config.size, res)
        agb_maps[res] = agb
        write_raster(truth / f"agb_{res}m.tif", agb.astype(np.float32), transform,
                     crs, descriptions=["agb_mg_per_ha"], provenance=prov)
    return agb_maps


def _write_lidar(lidar_dir: Path, config: SceneConfig, terrain, trees: Trees, water_1m, progress: Progress) -> list:
    """Every LiDAR tile (:func:`.lidar.simulate_tile`), in threads; a cancel stops the tiles not started."""
    lidar_dir.mkdir(parents=True, exist_ok=True)
    tile_list = list(lidar.tiles(config))
    results = []
    with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
        futures = [pool.submit(lidar.simulate_tile, config, terrain, trees, water_1m, t, lidar_dir)
                   for t in tile_list]
        for i, future in enumerate(futures):
            results.append(future.result())
            progress.set_progress(15 + 55 * (i + 1) / len(futures))
            if progress.is_canceled():
                for f in futures:
                    f.cancel()
                check_cancel(progress)
    check_cancel(progress)
    return results


def _write_imagery(out: Path, config: SceneConfig, stands, truth: _Truth, prov, progress: Progress):
    """The Sentinel-2, Landsat, NAIP and Sentinel-1 products; returns their descriptions."""
    n1 = int(config.size)
    background = np.zeros((n1, n1), dtype=np.int8)
    for sid, t in enumerate(stands.types):
        background[stands.ids_1m == sid] = optical.BACKGROUNDS.index(t.ground if t.ground in optical.BACKGROUNDS
                                                                     else "soil")
    surface = optical.SurfaceModel(config, truth.chm, truth.p_crown, truth.gym_top, background, truth.slope_x,
                                   truth.slope_y)
    s2 = optical.write_sentinel2(config, surface, out / "sentinel2", prov)
    progress.set_progress(78)
    check_cancel(progress)
    landsat = optical.write_landsat(config, surface, out / "landsat", prov)
    progress.set_progress(84)
    check_cancel(progress)
    naip = optical.write_naip(config, surface, out / "naip", prov)
    water_10m = block_mean(truth.water_1m.astype(np.float32), 10) > 0.5
    s1 = optical.write_sentinel1(config, truth.agb_maps[10], water_10m, out / "sentinel1", prov)
    progress.set_progress(90)
    check_cancel(progress)
    return s2, landsat, naip, s1


def agb_grid(trees: Trees, size: float, res: float) -> np.ndarray:
    """AGB density per cell of a ``res`` grid, each tree counted in the cell of its stem.

    Parameters
    ----------
    trees : Trees
    size : float
        Scene side, m.
    res : float
        Cell side, m.

    Returns
    -------
    numpy.ndarray
        (n, n) Mg/ha, row 0 at the north.
    """
    n = int(round(size / res))
    if len(trees) == 0:
        return np.zeros((n, n))
    col = np.clip((trees.x / res).astype(int), 0, n - 1)
    row = np.clip(((size - trees.y) / res).astype(int), 0, n - 1)
    total_kg = np.bincount(row * n + col, weights=trees.agb_kg, minlength=n * n).reshape(n, n)
    return total_kg / 1000 / (res * res / 10_000)


@contextlib.contextmanager
def _gdal_config(key: str, value: str):
    from osgeo import gdal

    old = gdal.GetConfigOption(key)
    gdal.SetConfigOption(key, value)
    try:
        yield
    finally:
        gdal.SetConfigOption(key, old)


def write_stands(config: SceneConfig, stands, path: Path) -> list:
    """The stands as a GeoPackage of polygons (type, forest or not, ground).

    Parameters
    ----------
    config : SceneConfig
    stands : Stands
    path : Path
        The GeoPackage.

    Returns
    -------
    list of dict
        One record per stand, for the manifest.
    """
    import geopandas as gpd
    from rasterio.features import shapes
    from shapely.geometry import shape
    from shapely.ops import unary_union

    transform = Affine(1, 0, config.xmin, 0, -1, config.ymax)
    geoms: dict[int, list] = {}
    for geom, value in shapes(stands.ids_1m.astype(np.int32), transform=transform):
        geoms.setdefault(int(value), []).append(shape(geom))
    records = []
    for sid in sorted(geoms):
        t = stands.types[sid]
        poly = unary_union(geoms[sid])
        records.append({"stand_id": sid, "stand_type": t.name, "forest": int(t.forest), "age_years": t.age_years,
                        "density_per_ha": t.density_per_ha, "height_mean_m": t.height_mean_m,
                        "area_ha": round(poly.area / 10_000, 4), "geometry": poly})
    frame = gpd.GeoDataFrame(records, crs=f"EPSG:{EPSG}")
    _write_gpkg(frame, path, "stands")
    return [{k: v for k, v in r.items() if k != "geometry"} for r in records]


def write_trees(config: SceneConfig, trees: Trees, stands, path: Path) -> None:
    """The tree list as a GeoPackage of points (GDAL's CSV reader: C speed for 10⁵-10⁶ trees).

    Parameters
    ----------
    config : SceneConfig
    trees : Trees
    stands : Stands
        Each tree's stand is written with it.
    path : Path
    """
    from osgeo import gdal

    columns = {
        "tree_id": (np.arange(len(trees)), "%d"),
        "x": (config.xmin + trees.x, "%.3f"), "y": (config.ymin + trees.y, "%.3f"),
        "height_m": (trees.height_m, "%.3f"), "crown_radius_m": (trees.crown_radius_m, "%.3f"),
        "crown_depth_m": (trees.crown_depth_m, "%.3f"), "dbh_cm": (trees.dbh_cm, "%.2f"),
        "agb_kg": (trees.agb_kg, "%.3f"), "gymnosperm": (trees.gymnosperm.astype(int), "%d"),
        "stand_id": (trees.stand, "%d"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    csv_path = path.with_name(f".{path.stem}.csv")
    header = ",".join(columns)
    table = np.column_stack([values for values, _ in columns.values()]) if len(trees) else np.empty((0, len(columns)))
    np.savetxt(csv_path, table, fmt=[fmt for _, fmt in columns.values()], delimiter=",", header=header, comments="")
    # CSVT: column types, so that an empty list still gets typed fields
    types = ["Integer" if fmt == "%d" else "Real" for _, fmt in columns.values()]
    csv_path.with_suffix(".csvt").write_text(",".join(types) + "\n")
    try:
        with _gdal_config("OGR_CURRENT_DATE", FIXED_DATE), atomic_output(path) as tmp:
            tmp.unlink()
            source = gdal.OpenEx(str(csv_path), gdal.OF_VECTOR,
                                 open_options=["X_POSSIBLE_NAMES=x", "Y_POSSIBLE_NAMES=y"])
            result = gdal.VectorTranslate(str(tmp), source, format="GPKG", layerName="trees",
                                          options=["-a_srs", f"EPSG:{EPSG}", "-nlt", "POINT"])
            if result is None:
                raise RuntimeError(f"GDAL could not write {path}")
            result = source = None  # close the datasets before the rename
    finally:
        csv_path.unlink(missing_ok=True)
        csv_path.with_suffix(".csvt").unlink(missing_ok=True)


def write_plots(config: SceneConfig, trees: Trees, stands, path: Path, truth_csv: Path) -> list:
    """Field plots: circular, with measured AGB and mean height carrying measurement error.

    Parameters
    ----------
    config : SceneConfig
    trees : Trees
    stands : Stands
    path : Path
        The plots' GeoPackage (what a field crew would deliver).
    truth_csv : Path
        The plots' true values.

    Returns
    -------
    list of dict
        Per plot: plot_id, true_agb_mg_ha, true_mean_height_m (m), for the manifest.
    """
    import geopandas as gpd

    rng = rng_for(config, 800)
    radius = config.plot_radius_m
    size = config.size
    n_plots = int(min(200, max(8, size * size / 30_000)))
    forest_ids = [i for i, t in enumerate(stands.types) if t.forest]
    records, truth = [], []
    attempts = 0
    while len(records) < n_plots and attempts < 100 * n_plots:
        attempts += 1
        x, y = rng.uniform(radius, size - radius, 2)
        sid = int(stands.ids_1m[min(int(size - y), stands.ids_1m.shape[0] - 1), int(x)])
        if sid not in forest_ids and rng.random() > 0.15:
            continue  # mostly forest plots, a few in non-forest
        inside = (trees.x - x) ** 2 + (trees.y - y) ** 2 <= radius ** 2
        area_ha = math.pi * radius ** 2 / 10_000
        true_agb = float(trees.agb_kg[inside].sum() / 1000 / area_ha)
        true_h = float(trees.height_m[inside].mean()) if inside.any() else 0.0
        measured_agb = true_agb * math.exp(rng.normal(-0.1 ** 2 / 2, 0.1))
        measured_h = max(0.0, true_h + rng.normal(0, 0.5)) if inside.any() else 0.0
        pid = f"P{len(records) + 1:03d}"
        records.append({"plot_id": pid, "radius_m": radius, "agb_mg_ha": round(measured_agb, 2),
                        "mean_height_m": round(measured_h, 2), "n_trees": int(inside.sum()),
                        "stand_type": stands.types[sid].name, "x": config.xmin + x, "y": config.ymin + y})
        truth.append({"plot_id": pid, "true_agb_mg_ha": true_agb, "true_mean_height_m": true_h})
    frame = gpd.GeoDataFrame(records, geometry=gpd.points_from_xy([r["x"] for r in records], [r["y"] for r in records]),
                             crs=f"EPSG:{EPSG}").drop(columns=["x", "y"])
    _write_gpkg(frame, path, "field_plots")
    truth_csv.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(truth_csv, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(truth[0]) if truth else ["plot_id"])
        writer.writeheader()
        writer.writerows(truth)
    return truth


def write_projects(config: SceneConfig, trees: Trees, path: Path) -> list:
    """Two or three project areas as polygons; their true AGB and carbon go to the manifest.

    Parameters
    ----------
    config : SceneConfig
    trees : Trees
    path : Path

    Returns
    -------
    list of dict
        Per project: area_ha, agb_mg, agb_mg_ha, carbon_t, co2e_t (carbon fraction :data:`CARBON_FRACTION`),
        tree_count.
    """
    import geopandas as gpd
    import shapely
    from shapely.geometry import Polygon

    # shapely 2 (Debian 13) deprecates vectorized.contains for contains_xy; shapely 1.8 (Debian 12) has only the former
    contains_xy = getattr(shapely, "contains_xy", None)
    if contains_xy is None:
        from shapely.vectorized import contains as contains_xy

    s = config.size
    x0, y0 = config.xmin, config.ymin
    shapes_ = {
        "Project A": Polygon([(0.05 * s, 0.05 * s), (0.45 * s, 0.08 * s), (0.42 * s, 0.6 * s), (0.25 * s, 0.95 * s),
                              (0.04 * s, 0.7 * s)]),
        "Project B": Polygon([(0.55 * s, 0.45 * s), (0.95 * s, 0.4 * s), (0.96 * s, 0.95 * s), (0.6 * s, 0.92 * s)]),
    }
    if s >= 400:
        shapes_["Project C"] = Polygon([(0.55 * s, 0.05 * s), (0.8 * s, 0.05 * s), (0.8 * s, 0.3 * s), (0.55 * s, 0.3 * s)])
    records, truth = [], []
    for name, poly in shapes_.items():
        inside = contains_xy(poly, trees.x, trees.y) if len(trees) else np.zeros(0, bool)
        agb_mg = float(trees.agb_kg[inside].sum() / 1000)
        world = Polygon([(x0 + x, y0 + y) for x, y in poly.exterior.coords])
        records.append({"project": name, "geometry": world})
        truth.append({"project": name, "area_ha": poly.area / 10_000, "agb_mg": agb_mg,
                      "agb_mg_ha": agb_mg / (poly.area / 10_000),
                      "carbon_t": agb_mg * CARBON_FRACTION, "co2e_t": agb_mg * CARBON_FRACTION * 44 / 12,
                      "tree_count": int(inside.sum())})
    _write_gpkg(gpd.GeoDataFrame(records, crs=f"EPSG:{EPSG}"), path, "projects")
    return truth


def _write_gpkg(frame, path: Path, layer: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A process-wide GDAL option, seen by whichever engine geopandas writes with (they share libgdal).
    with _gdal_config("OGR_CURRENT_DATE", FIXED_DATE), atomic_output(path) as tmp:
        tmp.unlink()  # let the driver create the file
        frame.to_file(tmp, layer=layer, driver="GPKG")
