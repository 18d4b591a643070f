"""Harmonize one Landsat or Sentinel-2 scene the way NASA's HLS v2.0 does, on the user's grid.

:func:`harmonize_scene` runs, block by block (:mod:`.blocks`):

1. digital numbers → reflectance with the product's own scaling (:mod:`.products`): surface
   reflectance for Level-2 inputs, top-of-atmosphere reflectance for Level-1;
2. masks from QA_PIXEL bits, SCL classes or an Fmask band (:mod:`.masks`), projected onto the
   output grid with "any masked source pixel masks the output pixel", then dilated by
   ``mask_dilation`` output pixels;
3. BRDF normalization to a nadir view at HLS v2.0's NBAR solar zenith with the c-factor
   (Roy et al. 2016; :mod:`.hls`, :func:`.solar.nbar_solar_zenith_deg`), from per-pixel angles
   where the product has them;
4. bandpass adjustment of Sentinel-2A/2B/2C to Landsat-8 OLI (Claverie et al. 2018; after BRDF,
   as HLS's ``sentinel.sh``; B08 and the red-edge bands untouched);
5. resampling to the target grid: area average when coarsening, bilinear otherwise.

Output: a float32 Cloud-Optimized GeoTIFF, bands named in OLI's convention (coastal … swir2,
then re1-re3 and nir_broad for MSI), NaN where masked, with provenance tags. Fill is no-data in
every band: DN 0 of Landsat Level-1 and Level-2 and Sentinel-2 L1C/L2A bands (tested on the DN,
before any offset), the band file's own no-data value too, and QA fill; a pixel no-data in one
band is no-data in all.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import hls, solar
from ..raster.grid import Grid
from ..raster.read import Readers, same_grid
from ..parallel.pool import default_workers
from ..raster.write import RasterSpec, process_blocks
from ..errors import ForestCarbonError
from .masks import DEFAULT_MASK, MASKERS, parse_classes, radsat_mask
from ..outputs import provenance as make_provenance
from .products import OUTPUT_ORDER, Product, open_product
from ..progress import NullProgress, Progress, check_cancel
from ..parallel.assemble import assemble_raster, bands_for, job_folder, write_tile
from ..parallel.tilemap import current_executor

COEFFICIENTS_VERSION = "HLS v2.0 (bandpass: hls_libs/L8like S2A/S2B/S2C; BRDF: Roy et al. 2016/2017)"
HIGH_LATITUDE_DEG = 81.3


@dataclass
class HarmonizeResult:
    path: Path
    bands: list
    product: Product
    nbar_sza_deg: float | None
    valid_fraction: float
    warnings: list


@dataclass(frozen=True)
class TargetGrid:
    """The output grid of :func:`harmonize_scene`.

    Parameters
    ----------
    crs : optional
        The output CRS (anything ``rasterio.crs.CRS.from_user_input`` takes); None: the product's.
    resolution_m : float
        The pixel size, in the CRS's units (metres for a projected CRS).
    reference : str or Path, optional
        A raster whose grid is taken as it is (``crs`` and ``resolution_m`` are then ignored).
    """

    crs: object = None
    resolution_m: float = 30.0
    reference: object = None

    def for_product(self, product: Product) -> Grid:
        """The reference raster's grid, or the product's footprint in ``crs`` at ``resolution_m`` with
        edges snapped to multiples of the resolution."""
        if self.reference:
            return _reference_grid(self.reference)
        from rasterio.crs import CRS
        from rasterio.warp import transform_bounds

        resolution_m = self.resolution_m
        if resolution_m is None or not resolution_m > 0:
            raise ForestCarbonError(f"resolution_m must be greater than 0 (got {resolution_m}).")
        crs = CRS.from_user_input(self.crs) if self.crs else product.crs
        bounds = transform_bounds(product.crs, crs, *product.bounds) if crs != product.crs else product.bounds
        if crs.is_geographic and resolution_m >= 1:
            raise ForestCarbonError(f"The resolution {resolution_m} is in the units of {crs.to_string()}, i.e. "
                                    "degrees: choose a projected CRS (e.g. UTM) or a resolution in degrees.")
        return Grid.from_bounds(crs, bounds, resolution_m)


def _reference_grid(reference) -> Grid:
    import rasterio

    try:
        with rasterio.open(reference) as ref:
            if ref.crs is None:
                raise ForestCarbonError(f"The reference grid '{reference}' has no CRS: assign its CRS "
                                        "(Raster ▸ Projections ▸ Assign Projection), or leave REFERENCE_GRID "
                                        "empty and give TARGET_CRS and TARGET_RESOLUTION.")
            return Grid.of(ref)
    except rasterio.errors.RasterioIOError as exc:
        raise ForestCarbonError(f"The reference grid '{reference}' cannot be read: {exc}.") from exc


def harmonize_scene(source, out_path, target: TargetGrid = TargetGrid(), mask_classes=DEFAULT_MASK,
                    mask_dilation: int = 0, brdf: bool = True, bandpass: bool = True,
                    progress: Progress | None = None, max_workers: int | None = None,
                    block_size: int = 512) -> HarmonizeResult:
    """Harmonize the product at ``source`` into ``out_path`` as HLS v2.0 does (module docstring).

    Parameters
    ----------
    source : str, Path or Product
        A product folder or metadata file (:func:`.products.open_product`), or an opened product.
    out_path : str or Path
        The output float32 Cloud-Optimized GeoTIFF.
    target : TargetGrid
        The output grid.
    mask_classes : sequence of str
        The classes of :data:`.masks.MASK_CLASSES` to mask (fill is always masked).
    mask_dilation : int
        Output pixels by which the mask is dilated.
    brdf, bandpass : bool
        Whether to normalize to nadir view (c-factor) and, for MSI, adjust to OLI's bandpasses.
    progress : Progress, optional
        Receives progress, messages and cancellation.
    max_workers : int, optional
        Worker threads (None: the default); a Dask executor set by the caller takes precedence.
    block_size : int
        The side of a block, in output pixels.

    Returns
    -------
    HarmonizeResult
        The output path and bands, the product, the NBAR solar zenith (degrees; None without BRDF),
        the fraction of valid pixels and the product's warnings.
    """
    progress = progress or NullProgress()
    product = source if isinstance(source, Product) else open_product(source)
    classes = parse_classes(mask_classes)
    if mask_dilation < 0:
        raise ForestCarbonError(f"mask_dilation must be 0 or more pixels (got {mask_dilation}).")
    for warning in product.warnings:
        progress.warning(warning)
    grid = target.for_product(product)
    _check_overlap(product, grid)
    steps = ["reflectance (SR)" if product.level == "SR" else "reflectance (TOA)"]
    if product.qa_path is not None:
        steps.append(f"mask ({product.qa_kind}: {', '.join(classes) or 'fill only'})")
    else:
        progress.warning("The product has no QA layer (QA_PIXEL, SCL or Fmask): clouds are not masked.")
    nbar_sza = nbar_solar_zenith(product, progress) if brdf else None
    if nbar_sza is not None:
        steps.append(f"BRDF c-factor to nadir at solar zenith {nbar_sza:.2f}°")
    do_bandpass = bandpass and product.sensor == "MSI"
    if do_bandpass:
        steps.append(f"bandpass MSI→OLI ({product.platform})")
    steps.append("resampled to the target grid (average when coarsening, bilinear otherwise)")
    if product.level == "TOA":
        progress.info("Level-1 input: the output is top-of-atmosphere reflectance (no atmospheric correction).")
    bands = [product.bands[name] for name in OUTPUT_ORDER if name in product.bands]
    plan = _Plan(product, grid, bands, classes, int(mask_dilation), nbar_sza, do_bandpass)
    params = {"target_crs": str(grid.crs), "resolution_m": grid.res, "reference_grid": target.reference,
              "mask_classes": list(classes), "mask_dilation": mask_dilation, "brdf": brdf, "bandpass": bandpass}
    record = make_provenance("forestcarbon:harmonizescene", params,
                             inputs=[product.metadata_path or product.bands[bands[0].name].path],
                             sensor=product.sensor, platform=product.platform, level=product.level,
                             steps=steps, coefficients=COEFFICIENTS_VERSION, angle_source=product.angle_source,
                             nbar_solar_zenith_deg=nbar_sza, acquired=product.acquired.isoformat(),
                             **product.notes)
    tags = {"SENSOR": product.sensor, "PLATFORM": product.platform, "LEVEL": product.level,
            "ACQUIRED": product.acquired.isoformat(), "STEPS": "; ".join(steps),
            "COEFFICIENTS": COEFFICIENTS_VERSION}
    if nbar_sza is not None:
        tags["NBAR_SOLAR_ZENITH"] = f"{nbar_sza:.4f}"
    band_tags = [{"SOURCE_BAND": b.band_id, "SCALE": repr(b.scale), "OFFSET": repr(b.offset)} for b in bands]
    executor = current_executor()
    try:
        if executor is not None:  # a Dask cluster: row bands of the same blocks on the workers
            record.update(executor.describe())
            plan.valid = _harmonize_remote(executor, (product, grid, bands, classes, int(mask_dilation), nbar_sza,
                                                      do_bandpass), out_path, tags, record, band_tags, progress,
                                           block_size)
        else:
            spec = RasterSpec(count=len(bands), descriptions=tuple(b.name for b in bands), tags=tags,
                              provenance=record, band_tags=tuple(band_tags), block_size=block_size)
            process_blocks(grid, plan.compute, out_path, spec, progress=progress,
                           max_workers=default_workers(max_workers))
    finally:
        plan.readers.close()
    total = grid.width * grid.height
    valid_fraction = plan.valid / total if total else 0.0
    if plan.valid == 0:
        progress.warning("Every pixel is masked or outside the product (an all-cloud scene?): the output is "
                         "all no-data.")
    return HarmonizeResult(Path(out_path), [b.name for b in bands], product, nbar_sza, valid_fraction,
                           list(product.warnings))


def nbar_solar_zenith(product: Product, progress: Progress) -> float:
    """HLS v2.0's NBAR solar zenith for the product, with a warning when BRDF normalization must use
    scene-mean angles.

    Parameters
    ----------
    product : Product
    progress : Progress
        Receives the warning.

    Returns
    -------
    float
        Degrees: :func:`.solar.nbar_solar_zenith_deg` at the product's centre, or its own sun zenith
        above 81.3° of latitude, where HLS keeps the observed one.
    """
    if not (product.angle_files or product.angle_grids is not None):
        progress.warning(f"No per-pixel angles in the product: BRDF normalization uses {product.angle_source}.")
    lon, lat = product.center_lonlat
    if abs(lat) > HIGH_LATITUDE_DEG:
        return float(product.sun_zenith_deg)
    return solar.nbar_solar_zenith_deg(lat, product.acquired, lon)


def _harmonize_remote(executor, plan_args, out_path, tags, record, band_tags, progress, block_size) -> int:
    """Row bands of whole blocks on the workers (:func:`harmonize_rows`), then one COG; returns the valid pixels."""
    product, grid, bands = plan_args[:3]
    sources = [b.path for b in bands] + [p for p in (product.qa_path, product.radsat_path) if p is not None]
    executor.check_visible(sorted({str(p) for p in sources}))
    rows = bands_for(grid.height, grid.width * len(bands), block_size, executor.workers,
                     tasks_per_thread=getattr(executor, "tasks_per_thread", 8))
    progress.info(f"{len(rows)} row bands on the Dask cluster at {executor.address}")
    with job_folder(out_path, executor.job_dir) as folder:
        done = executor.row_bands(harmonize_rows, [(plan_args, r0, r1, block_size, str(folder)) for r0, r1 in rows],
                                  progress)
        valid = sum(n for _, n in done)
        check_cancel(progress)
        spec = RasterSpec(count=len(bands), descriptions=tuple(b.name for b in bands), tags=tags, provenance=record,
                          band_tags=tuple(band_tags or ()))
        assemble_raster(grid, [(r0, r1, done[i][0]) for i, (r0, r1) in enumerate(rows)], out_path, spec,
                        folder=folder)
    progress.set_progress(100.0)
    return valid


def harmonize_rows(plan_args, row0: int, row1: int, block_size: int, folder: str, progress=None):
    """A tile task run on a Dask worker: the blocks of rows ``row0``-``row1`` computed as the local path
    computes them, written into ``folder``.

    Parameters
    ----------
    plan_args : tuple
        The arguments of the block plan (product, grid, bands, classes, dilation, NBAR zenith, bandpass).
    row0, row1 : int
        The rows of the output grid (whole blocks).
    block_size : int
        Side of a block, pixels.
    folder : str
        The job folder shared with the client.
    progress : Progress, optional
        Cancellation.

    Returns
    -------
    tuple
        (tile path, valid pixels).
    """
    plan = _Plan(*plan_args)
    grid = plan.grid
    out = np.full((len(plan.bands), row1 - row0, grid.width), np.nan, dtype=np.float32)
    try:
        for window in grid.windows(block_size):
            if row0 <= window.row_off < row1:
                check_cancel(progress)
                r, c = int(window.row_off) - row0, int(window.col_off)
                out[:, r:r + int(window.height), c:c + int(window.width)] = plan.compute(window)
    finally:
        plan.readers.close()
    return write_tile(folder, f"harmonized_{row0:09d}", out, grid, row0, float("nan")), plan.valid


def _check_overlap(product: Product, grid: Grid) -> None:
    from rasterio.warp import transform_bounds

    b = transform_bounds(product.crs, grid.crs, *product.bounds)
    g = grid.bounds
    if b[0] >= g[2] or b[2] <= g[0] or b[1] >= g[3] or b[3] <= g[1]:
        raise ForestCarbonError("The target grid does not overlap the product: check the reference grid or the "
                                "target CRS.")


class _Plan:
    """What every block needs; ``compute`` runs in worker threads."""

    def __init__(self, product, grid, bands, classes, dilation, nbar_sza, bandpass):
        self.product, self.grid, self.bands = product, grid, bands
        self.classes, self.dilation, self.nbar_sza, self.bandpass = classes, dilation, nbar_sza, bandpass
        self.readers = Readers(grid)
        self.valid = 0
        self._lock = threading.Lock()
        target_res = grid.res * _metres_per_unit(grid.crs)
        from rasterio.enums import Resampling

        self.resampling = {b.name: Resampling.average if target_res > b.res_m * 1.01 else Resampling.bilinear
                           for b in bands}

    def compute(self, window) -> np.ndarray:
        from rasterio.enums import Resampling

        rows, cols = int(window.height), int(window.width)
        valid = ~self._mask(window)
        values = []
        for band in self.bands:
            dn = self.readers.read(band.path, window, resampling=self.resampling[band.name],
                                   src_nodata=band.nodata, dtype="float64")
            valid &= ~np.ma.getmaskarray(dn)
            if band.nodata is not None:
                # a band on the output grid is read as it is, masked by its file's no-data only (resampled reads
                # leave the fill out of their sums and mark what is fill alone)
                valid &= np.ma.getdata(dn) != band.nodata
            if band.file_nodata is not None:  # the file's own no-data besides the product's fill
                value = band.file_nodata
                valid &= ~self._project_mask(band.path, window, lambda raw, v=value: raw == v)
            values.append(np.ma.getdata(dn) * band.scale + band.offset)
        out = np.full((len(self.bands), rows, cols), np.nan, dtype=np.float32)
        if not valid.any():
            return out
        if self.nbar_sza is not None:
            sza, vza, raa = self._angles(window, Resampling.bilinear)
            k_vol, k_geo = hls.ross_thick(sza, vza, raa), hls.li_sparse(sza, vza, raa)
            nbar_vol, nbar_geo = float(hls.ross_thick(self.nbar_sza, 0, 0)), float(hls.li_sparse(self.nbar_sza, 0, 0))
        for i, band in enumerate(self.bands):
            rho = values[i]
            if self.nbar_sza is not None:
                rho = rho * hls.c_factor_from_kernels(band.name, k_vol, k_geo, nbar_vol, nbar_geo)
            if self.bandpass and band.band_id in hls.BANDPASS_MSI_TO_OLI[self.product.platform]:
                rho = hls.bandpass_msi_to_oli(rho, band.band_id, self.product.platform)
            out[i][valid] = rho[valid]
        with self._lock:
            self.valid += int(valid.sum())
        return out

    # -- masks -------------------------------------------------------------------------
    def _mask(self, window) -> np.ndarray:
        """Masked output pixels of ``window`` (QA classes, dilated); False where no QA layer."""
        from rasterio.windows import Window

        rows, cols = int(window.height), int(window.width)
        product = self.product
        if product.qa_path is None and product.radsat_path is None:
            return np.zeros((rows, cols), dtype=bool)
        d = self.dilation
        r0, c0 = max(0, int(window.row_off) - d), max(0, int(window.col_off) - d)
        r1 = min(self.grid.height, int(window.row_off) + rows + d)
        c1 = min(self.grid.width, int(window.col_off) + cols + d)
        big = Window(c0, r0, c1 - c0, r1 - r0)
        mask = np.zeros((r1 - r0, c1 - c0), dtype=bool)
        if product.qa_path is not None:
            masker = MASKERS[product.qa_kind]
            mask |= self._project_mask(product.qa_path, big, lambda qa: masker(qa, self.classes))
        if product.radsat_path is not None and "saturated" in self.classes:
            mask |= self._project_mask(product.radsat_path, big, radsat_mask)
        if d:
            from scipy.ndimage import binary_dilation

            mask = binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=d)
        ro, co = int(window.row_off) - r0, int(window.col_off) - c0
        return mask[ro:ro + rows, co:co + cols]

    def _project_mask(self, path, window, classify) -> np.ndarray:
        """The source's classified mask on ``window`` of the output grid: any masked source
        pixel under an output pixel masks it (GDAL's "max" resampling of a 0/1 raster)."""
        from rasterio.enums import Resampling
        from rasterio.warp import reproject, transform_bounds
        from rasterio.windows import Window, from_bounds

        src = self.readers.dataset(path)
        dst_transform = self.grid.window_transform(window)
        rows, cols = int(window.height), int(window.width)
        if same_grid(Grid.of(src), self.grid):  # QA on the output grid: no projection needed
            raw = src.read(1, window=window)
            return classify(raw).astype(bool)
        left, top = dst_transform.c, dst_transform.f
        right, bottom = left + dst_transform.a * cols, top + dst_transform.e * rows
        sb = transform_bounds(self.grid.crs, src.crs, left, bottom, right, top)
        exact = from_bounds(*sb, transform=src.transform)
        col0, row0 = math.floor(exact.col_off) - 1, math.floor(exact.row_off) - 1
        src_window = Window(col0, row0, math.ceil(exact.col_off + exact.width) + 1 - col0,
                            math.ceil(exact.row_off + exact.height) + 1 - row0)
        raw = src.read(1, window=src_window, boundless=True, fill_value=0)
        inside = src.read(1, window=src_window, boundless=True, masked=True)
        flags = classify(raw).astype(np.uint8)
        flags[np.ma.getmaskarray(inside) & (raw == 0)] = 0  # outside the file: the bands' nodata decides
        out = np.zeros((rows, cols), dtype=np.uint8)
        reproject(flags, out, src_transform=src.window_transform(src_window), src_crs=src.crs,
                  dst_transform=dst_transform, dst_crs=self.grid.crs, resampling=Resampling.max)
        return out.astype(bool)

    # -- angles ------------------------------------------------------------------------
    def _angles(self, window, resampling):
        """Per-pixel (sun zenith, view zenith, view − sun azimuth) in degrees."""
        rows, cols = int(window.height), int(window.width)
        product = self.product
        if product.angle_files:
            got = {}
            for kind, (path, scale) in product.angle_files.items():
                got[kind] = np.ma.getdata(self.readers.read(path, window, resampling=resampling,
                                                            dtype="float64")) * scale
            return got["sza"], got["vza"], got["vaa"] - got["saa"]
        if product.angle_grids is not None:
            return self._grid_angles(window)
        shape = (rows, cols)
        return (np.full(shape, product.sun_zenith_deg), np.full(shape, product.view_zenith_deg),
                np.full(shape, product.view_azimuth_deg - product.sun_azimuth_deg))

    def _grid_angles(self, window):
        from rasterio.warp import transform
        from scipy.ndimage import map_coordinates

        grids = self.product.angle_grids
        rows, cols = int(window.height), int(window.width)
        t = self.grid.window_transform(window)
        xs = t.c + (np.arange(cols) + 0.5) * t.a
        ys = t.f + (np.arange(rows) + 0.5) * t.e
        gx, gy = np.meshgrid(xs, ys)
        if self.grid.crs != self.product.crs:
            px, py = transform(self.grid.crs, self.product.crs, gx.ravel(), gy.ravel())
            gx, gy = np.asarray(px).reshape(gx.shape), np.asarray(py).reshape(gy.shape)
        coords = np.stack([(gy - grids.y0) / grids.dy, (gx - grids.x0) / grids.dx])

        def interp(values):
            return map_coordinates(values, coords, order=1, mode="nearest")

        def interp_azimuth(values):
            rad = np.radians(values)
            return np.degrees(np.arctan2(interp(np.sin(rad)), interp(np.cos(rad))))

        return interp(grids.values["sza"]), interp(grids.values["vza"]), \
            interp_azimuth(grids.values["vaa"]) - interp_azimuth(grids.values["saa"])


def _metres_per_unit(crs) -> float:
    from rasterio.crs import CRS

    crs = CRS.from_user_input(crs)
    if crs.is_geographic:
        return 111_320.0
    try:
        return float(crs.linear_units_factor[1])
    except Exception:  # noqa: BLE001 - unknown units: assume metres
        return 1.0
