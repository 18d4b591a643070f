"""Per-pixel temporal composites of harmonized scenes: median, medoid, maximum NDVI.

Inputs are rasters whose bands are described with the plugin's band names (red, nir, …;
the output of ``harmonizescene``), or products as delivered, in every layout harmonizescene
reads (:func:`.products.product_layout`, the one detection both use): Landsat Level-1 and
Collection-2 Level-2 folders with their MTL, Sentinel-2 L1C/L2A folders, and ESPA scene
folders (:mod:`.espa`). Bands are matched across scenes by description or common name
(lower-cased; an undescribed band is named ``band_<n>`` and so matches by position); the
composite holds the bands common to all scenes, in the first scene's order, each as DN × scale
+ offset: the GDAL scale/offset of a raster's band, the product's own scaling for a product
(Landsat C2 L2 SR = DN·2.75e-5 − 0.2 or its MTL's values, Level-1 TOA from the MTL, Sentinel-2
(DN + offset)/QUANTIFICATION_VALUE; :mod:`.products`), 1e-4 for ESPA. A folder in none of these
layouts is refused with the layouts listed.

An observation (a scene at a pixel) is invalid when any of its bands is no-data (the file's, or
the product's fill: DN 0 for Landsat and Sentinel-2) or NaN, or when its QA says cloud, cloud
shadow, cirrus or snow: CFmask classes 2 shadow, 3 snow, 4 cloud and 255 fill of a band
described ``fmask`` or an ESPA/Landsat Fmask file (0 clear land and 1 water are kept); a
Collection-2 QA_PIXEL's fill, dilated cloud, cirrus, cloud, shadow and snow bits; Sentinel-2 SCL
classes 0, 3, 8, 9, 10, 11. Mask bands are not composited. A product's bands are read onto its
finest band's grid. Scenes on another grid are read onto the first scene's grid with nearest
neighbour (no mixing of dates or of cloud edges; harmonize scenes onto one grid first for a
proper resampling).

Methods (:class:`Median`, :class:`Medoid`, :class:`MaxNDVI`), over the valid observations of each pixel:
- ``Median()``: per band median (the mean of the two middle values for an even count);
  bands may come from different dates.
- ``Medoid()`` (Flood 2013, Remote Sensing 5:6481-6500): the observation whose sum of
  Euclidean distances (across the composited bands) to all other valid observations is
  smallest; all bands come from that one date. Ties: the earliest input.
- ``MaxNDVI()``: the observation with the highest NDVI, (nir − red)/(nir + red) (``nir_broad``
  when there is no ``nir``). Ties: the earliest input.

The last output band, ``valid_count``, counts the valid observations. Where it is 0 the
composite bands are NaN (the output's no-data) and ``valid_count`` holds 0, a valid value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from ..raster.grid import Grid
from ..raster.read import overlaps, Readers
from ..raster.write import RasterSpec, process_blocks
from ..errors import ForestCarbonError
from .espa import FMASK_FILL, read_espa_scene
from .masks import MASKERS
from ..outputs import provenance
from .products import LAYOUTS, open_product, product_layout

MASK_NAME = "fmask"
KEEP_CLASSES = (0, 1)  # CFmask clear land, water
#: the classes a product's QA_PIXEL or SCL leaves out of a composite (fill always)
QA_CLASSES = ("cloud", "cloud_shadow", "cirrus", "snow")
#: the fill value of each QA layer a product may have (read as no-data when warped)
QA_FILL = {"qa_pixel": 1, "scl": 0, "fmask": FMASK_FILL}
#: the (scenes × bands) block buffer of one worker is kept under this many bytes
BLOCK_BUDGET = 64 * 2**20


@dataclass(frozen=True)
class SceneBand:
    path: str
    band: int  # 1-based band of path
    name: str
    scale: float
    offset: float
    nodata: float | None
    #: the value that marks pixels outside the file when it is read onto another grid (None: the
    #: file's own no-data; NaN or -0.5, which no integer takes, when it has none)
    outside: float | None = None
    #: the file's own no-data where a product's fill (``nodata``) is another value
    file_nodata: float | None = None


def _outside(src, band: int):
    if src.nodatavals[band - 1] is not None:
        return None
    return float("nan") if np.dtype(src.dtypes[band - 1]).kind == "f" else -0.5


@dataclass(frozen=True)
class Scene:
    source: str
    bands: tuple[SceneBand, ...]
    mask: SceneBand | None
    grid: Grid
    mask_kind: str = "fmask"  # CFmask classes; or a product's "qa_pixel" / "scl" (:data:`.masks.MASKERS`)
    layout: str = "raster"

    def band(self, name: str) -> SceneBand:
        return next(b for b in self.bands if b.name == name)


def open_scene(source) -> Scene:
    """A scene to composite, from its headers: its bands' files, scaling and no-data, its QA layer and grid.

    Parameters
    ----------
    source : str or Path
        A raster whose bands are described (red, nir, …; a band described ``fmask`` is its mask), or a
        Landsat, Sentinel-2 or ESPA product folder (:func:`.products.product_layout`).

    Returns
    -------
    Scene
    """
    import rasterio

    path = Path(source)
    layout = product_layout(path) if path.exists() else None
    if path.is_dir() and layout is None:
        raise ForestCarbonError(
            f"The folder '{path}' is not a product layout the plugin reads: give " + "; ".join(LAYOUTS.values())
            + "; or raster files whose bands are described red, nir, … (harmonizescene's outputs).")
    if layout in ("landsat", "sentinel2"):
        return _product_scene(path, layout)
    if path.is_dir():
        espa = read_espa_scene(path)
        bands = []
        for b in espa.bands:
            with rasterio.open(b.path) as src:
                bands.append(SceneBand(str(b.path), 1, b.name, b.scale, b.offset, b.nodata, _outside(src, 1)))
                if len(bands) == 1:
                    grid = Grid.of(src)
        mask = espa.mask and SceneBand(str(espa.mask.path), 1, MASK_NAME, 1.0, 0.0, float(FMASK_FILL))
        return Scene(str(path), tuple(bands), mask, grid, layout="espa")
    try:
        src = rasterio.open(path)
    except Exception as exc:  # noqa: BLE001 - rasterio raises several types
        raise ForestCarbonError(f"{path} is not a readable raster ({exc}).") from exc
    with src:
        bands, mask = [], None
        for i in range(1, src.count + 1):
            name = (src.descriptions[i - 1] or "").strip().lower() or f"band_{i}"
            if name == MASK_NAME:
                mask = SceneBand(str(path), i, MASK_NAME, 1.0, 0.0, float(FMASK_FILL))
                continue
            if any(b.name == name for b in bands):
                raise ForestCarbonError(f"{path} has two bands described {name!r}: band names must be unique to "
                                        "match bands across scenes.")
            bands.append(SceneBand(str(path), i, name, float(src.scales[i - 1] or 1.0),
                                   float(src.offsets[i - 1] or 0.0), src.nodatavals[i - 1], _outside(src, i)))
        return Scene(str(path), tuple(bands), mask, Grid.of(src))


def _product_scene(path: Path, layout: str) -> Scene:
    """A Landsat or Sentinel-2 product (:func:`.products.open_product`) as a scene on its finest band's grid."""
    import rasterio

    product = open_product(path)
    bands = []
    for b in product.bands.values():
        with rasterio.open(b.path) as src:
            bands.append(SceneBand(str(b.path), 1, b.name, b.scale, b.offset, b.nodata, _outside(src, 1),
                                   b.file_nodata))
    finest = min(product.bands.values(), key=lambda b: b.res_m)
    with rasterio.open(finest.path) as src:
        grid = Grid.of(src)
    mask = None
    if product.qa_path is not None:
        mask = SceneBand(str(product.qa_path), 1, MASK_NAME, 1.0, 0.0, float(QA_FILL[product.qa_kind]))
    return Scene(str(path), tuple(bands), mask, grid, mask_kind=product.qa_kind or "fmask", layout=layout)


def common_bands(scenes: Sequence[Scene]) -> list[str]:
    """The band names every scene has, in the first scene's order.

    Parameters
    ----------
    scenes : sequence of Scene

    Returns
    -------
    list of str
        Refused (with the scenes' bands listed) when empty.
    """
    names = [b.name for b in scenes[0].bands]
    for scene in scenes[1:]:
        have = {b.name for b in scene.bands}
        names = [n for n in names if n in have]
    if not names:
        listing = "; ".join(f"{Path(s.source).name}: {', '.join(b.name for b in s.bands)}" for s in scenes[:4])
        raise ForestCarbonError(
            "The scenes have no band in common (bands are matched by their descriptions): " + listing +
            ". Harmonize the scenes first (forestcarbon:harmonizescene) or give scenes of one product.")
    return names


def nir_name(names: Sequence[str]) -> str | None:
    """The NIR band to use: ``nir`` (narrow, OLI 5 / MSI B8A) where present, else ``nir_broad`` (MSI B08).

    Parameters
    ----------
    names : sequence of str

    Returns
    -------
    str or None
        None when neither is among ``names``.
    """
    return "nir" if "nir" in names else ("nir_broad" if "nir_broad" in names else None)


# ---------------------------------------------------------------- array functions
# stack: (scenes, bands, rows, cols), NaN where an observation is invalid (all its bands NaN)

def valid_observations(stack: np.ndarray) -> np.ndarray:
    """Which observations are valid: every band finite.

    Parameters
    ----------
    stack : numpy.ndarray
        (scenes, bands, rows, cols), NaN where invalid.

    Returns
    -------
    numpy.ndarray of bool
        (scenes, rows, cols).
    """
    return np.isfinite(stack).all(axis=1)


def median_composite(stack: np.ndarray) -> np.ndarray:
    """Per band median of the valid observations (the mean of the two middle ones for an even count).

    Parameters
    ----------
    stack : numpy.ndarray
        Observations as (scenes, bands, rows, cols); an observation with a NaN band is left out.

    Returns
    -------
    numpy.ndarray
        (bands, rows, cols) float64; NaN where a pixel has no valid observation.
    """
    stack = np.where(valid_observations(stack)[:, None], stack, np.nan)
    out = np.full(stack.shape[1:], np.nan, dtype=np.float64)
    any_valid = np.isfinite(stack).any(axis=0)
    if any_valid.any():
        # nanmedian over the pixels with data only (it warns on all-NaN slices)
        out[any_valid] = np.nanmedian(stack.transpose(1, 2, 3, 0)[any_valid], axis=-1)
    return out


def _pick(stack: np.ndarray, index: np.ndarray, has: np.ndarray) -> np.ndarray:
    """The bands of observation ``index`` (rows, cols) at each pixel; NaN where not ``has``."""
    picked = np.take_along_axis(stack, index[None, None], axis=0)[0].astype(np.float64)
    picked[:, ~has] = np.nan
    return picked


def medoid_composite(stack: np.ndarray) -> np.ndarray:
    """Flood's (2013) medoid: the valid observation with the smallest sum of Euclidean distances
    to all the other valid observations. Memory: O(scenes × bands) per pixel, time O(scenes²).

    Parameters
    ----------
    stack : numpy.ndarray
        (scenes, bands, rows, cols) reflectance, NaN where invalid.

    Returns
    -------
    numpy.ndarray
        Every band of the chosen observation, (bands, rows, cols); the earliest input on ties, NaN where none
        is valid.
    """
    valid = valid_observations(stack)
    data = np.where(valid[:, None], stack, 0).astype(np.float64)
    n = stack.shape[0]
    total = np.zeros((n,) + stack.shape[2:], dtype=np.float64)
    for i in range(n):
        d = np.sqrt(np.sum((data - data[i]) ** 2, axis=1))  # (scenes, rows, cols)
        total[i] = np.sum(np.where(valid, d, 0.0), axis=0)
    total[~valid] = np.inf
    return _pick(stack, np.argmin(total, axis=0), valid.any(axis=0))


def ndvi_of(stack: np.ndarray, red: int, nir: int) -> np.ndarray:
    """NDVI of every observation, (nir − red)/(nir + red).

    Parameters
    ----------
    stack : numpy.ndarray
        (scenes, bands, rows, cols).
    red, nir : int
        The bands' indices in the stack.

    Returns
    -------
    numpy.ndarray
        (scenes, rows, cols) float64; NaN or ±inf where red + nir = 0.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        r, n = stack[:, red].astype(np.float64), stack[:, nir].astype(np.float64)
        return (n - r) / (n + r)


def max_ndvi_composite(stack: np.ndarray, red: int, nir: int) -> np.ndarray:
    """The valid observation with the highest NDVI; an observation whose NDVI is undefined only when it is alone.

    Parameters
    ----------
    stack : numpy.ndarray
        The scenes' bands, (scenes, bands, rows, cols), NaN where invalid.
    red, nir : int
        Indices of the red and NIR bands in the stack.

    Returns
    -------
    numpy.ndarray
        All bands of that observation, (bands, rows, cols) (the earliest on ties; NaN without any).
    """
    valid = valid_observations(stack)
    ndvi = ndvi_of(stack, red, nir)
    # a valid observation whose NDVI is undefined (red + nir = 0) is taken only when alone
    score = np.where(valid, np.where(np.isfinite(ndvi), ndvi, -np.inf), np.nan)
    return _pick(stack, _nanargmax(score), valid.any(axis=0))


def _nanargmax(score: np.ndarray) -> np.ndarray:
    """argmax over axis 0 ignoring NaN (first index on ties; 0 where all are NaN)."""
    filled = np.where(np.isnan(score), -np.inf, score)
    best = np.argmax(filled, axis=0)
    # all -inf columns where a valid -inf exists: argmax returns the first -inf, which may be an
    # invalid one; take the first non-NaN instead
    only_inf = np.all(filled == -np.inf, axis=0)
    if only_inf.any():
        first_valid = np.argmax(~np.isnan(score), axis=0)
        best = np.where(only_inf, first_valid, best)
    return best


# ---------------------------------------------------------------- methods

class CompositeMethod:
    """A compositing method: :meth:`composite` of a block's stack; :meth:`check` refuses, before any
    block is read, the band sets it cannot composite."""

    name: ClassVar[str] = ""

    def check(self, names: Sequence[str]) -> None:
        """Any band set will do."""

    def composite(self, stack: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """(bands, rows, cols) composite of the (scenes, bands, rows, cols) ``stack``."""
        raise NotImplementedError


@dataclass(frozen=True)
class Median(CompositeMethod):
    """Per band median of the valid observations (bands may come from different dates)."""

    name: ClassVar[str] = "median"

    def composite(self, stack, names):
        return median_composite(stack)


@dataclass(frozen=True)
class Medoid(CompositeMethod):
    """Flood's (2013) medoid: every band from the one observation nearest to all the others."""

    name: ClassVar[str] = "medoid"

    def composite(self, stack, names):
        return medoid_composite(stack)


@dataclass(frozen=True)
class MaxNDVI(CompositeMethod):
    """The observation of highest NDVI, from the bands named ``red`` and ``nir`` (or ``nir_broad``)."""

    name: ClassVar[str] = "max_ndvi"

    def check(self, names: Sequence[str]) -> None:
        """Refuses band sets without red and NIR."""
        if "red" not in names or nir_name(names) is None:
            raise ForestCarbonError(
                "The max-NDVI composite needs bands described 'red' and 'nir' (or 'nir_broad') in every scene; "
                f"the common bands are: {', '.join(names)}. Use the median or medoid method, or harmonize the "
                "scenes first (forestcarbon:harmonizescene).")

    def composite(self, stack: np.ndarray, names: Sequence[str]) -> np.ndarray:
        return max_ndvi_composite(stack, list(names).index("red"), list(names).index(nir_name(names)))


# ---------------------------------------------------------------- files

def composite_scenes(inputs: Sequence, out_path, method=Median(), progress=None,
                     max_workers: int | None = None, parameters: dict | None = None) -> dict:
    """Composite ``inputs`` into ``out_path`` (float32 COG), per pixel over the valid observations.

    Parameters
    ----------
    inputs : sequence of str or Path
        Raster files with described bands, or product folders (Landsat, Sentinel-2, ESPA).
    out_path : str or Path
        The output GeoTIFF, on the first scene's grid.
    method : Median, Medoid or MaxNDVI
        The compositing method (module docstring).
    progress : Progress, optional
        Receives progress, warnings and cancellation.
    max_workers : int, optional
        Worker threads (None: the default).
    parameters : dict, optional
        Extra entries for the provenance record.

    Returns
    -------
    dict
        ``bands`` (composited band names), ``scenes`` (count), ``method`` (name), ``grid``.
    """
    if not isinstance(method, CompositeMethod):
        raise ForestCarbonError(f"Unknown compositing method {method!r}: use Median(), Medoid() or MaxNDVI().")
    inputs = [str(p) for p in inputs or []]
    if not inputs:
        raise ForestCarbonError("No input scenes: give at least one raster or ESPA scene folder.")
    scenes = open_scenes(inputs, progress)
    names = common_bands(scenes)
    method.check(names)
    check_overlap(scenes)
    grid = scenes[0].grid
    compositor = _Compositor(scenes, names, method, Readers(grid))
    record = {"INPUTS": inputs, "METHOD": method.name}
    record.update(parameters or {})
    try:
        spec = RasterSpec(count=len(names) + 1, descriptions=(*names, "valid_count"),
                          tags={"COMPOSITE_METHOD": method.name, "SCENE_COUNT": len(scenes)},
                          provenance=provenance("compositescenes", record, inputs),
                          block_size=block_size(len(scenes), len(names)))
        process_blocks(grid, compositor.compute, out_path, spec, progress=progress, max_workers=max_workers,
                       finish=compositor.finish)
    finally:
        compositor.readers.close()
    return {"bands": names, "scenes": len(scenes), "method": method.name, "grid": grid}


def open_scenes(inputs: Sequence[str], progress=None) -> list[Scene]:
    """:func:`open_scene` of each input, with a warning for each product that has no QA layer.

    Parameters
    ----------
    inputs : sequence of str
    progress : Progress, optional
        Receives the warnings.

    Returns
    -------
    list of Scene
    """
    scenes = [open_scene(p) for p in inputs]
    for scene in scenes:
        if scene.layout in ("landsat", "sentinel2") and scene.mask is None and progress is not None:
            progress.warning(f"'{Path(scene.source).name}' has no QA layer (QA_PIXEL, SCL or Fmask): its clouds and "
                             "their shadows are not masked.")
    return scenes


def check_overlap(scenes: Sequence[Scene]) -> None:
    """Refuses a scene that does not overlap the first one: on the first scene's grid it would add nothing.

    Parameters
    ----------
    scenes : sequence of Scene
    """
    for scene in scenes[1:]:
        if not overlaps(scenes[0].grid, scene.grid):
            raise ForestCarbonError(
                f"The scene '{Path(scene.source).name}' does not overlap the first scene, "
                f"'{Path(scenes[0].source).name}': scenes are composited on the first scene's grid, where it would "
                "add nothing. Give scenes of one area (or mosaic them first), and check that their CRSs are set "
                "correctly.")


def block_size(n_scenes: int, n_bands: int) -> int:
    """The block side that keeps one worker's float32 stack under :data:`BLOCK_BUDGET`.

    Parameters
    ----------
    n_scenes, n_bands : int
        The stack holds ``n_scenes`` × (``n_bands`` + 1) layers.

    Returns
    -------
    int
        Pixels, a multiple of 16 in 64-512.
    """
    side = int(math.sqrt(BLOCK_BUDGET / (4.0 * n_scenes * (n_bands + 1))))
    return int(min(512, max(64, side // 16 * 16)))


class _Compositor:
    """The per-block work of :func:`composite_scenes`; ``compute`` runs in worker threads."""

    def __init__(self, scenes: Sequence[Scene], names: list[str], method, readers: Readers):
        from rasterio.enums import Resampling  # rasterio is optional until a raster is read

        self.scenes, self.names, self.method, self.readers = scenes, names, method, readers
        # nearest neighbour: no mixing of dates or of cloud edges
        self.resampling = Resampling.nearest
        self.any_valid = False

    def compute(self, window) -> np.ndarray:
        rows, cols = int(window.height), int(window.width)
        stack = np.empty((len(self.scenes), len(self.names), rows, cols), dtype=np.float32)
        for s, scene in enumerate(self.scenes):
            stack[s] = self.read_scene(scene, window)
        count = valid_observations(stack).sum(axis=0)
        if count.any():
            self.any_valid = True
        comp = self.method.composite(stack, self.names)
        return np.concatenate([comp, count[None].astype(np.float64)]).astype(np.float32)

    def read_scene(self, scene: Scene, window) -> np.ndarray:
        """(bands, rows, cols) reflectance of ``scene`` on ``window``, NaN where the observation is invalid."""
        rows, cols = int(window.height), int(window.width)
        out = np.empty((len(self.names), rows, cols), dtype=np.float32)
        invalid = np.zeros((rows, cols), dtype=bool)
        for k, name in enumerate(self.names):
            b = scene.band(name)
            arr = self.readers.read(b.path, window, b.band, resampling=self.resampling, src_nodata=b.outside)
            data = np.asarray(np.ma.getdata(arr), dtype=np.float64)
            invalid |= np.ma.getmaskarray(arr) | ~np.isfinite(data)
            for nodata in (b.nodata, b.file_nodata):
                if nodata is not None and not math.isnan(nodata):
                    invalid |= data == nodata
            out[k] = data * b.scale + b.offset
        if scene.mask is not None:
            invalid |= self.masked(scene, window)
        out[:, invalid] = np.nan
        return out

    def masked(self, scene: Scene, window) -> np.ndarray:
        """True where the scene's QA layer says fill, cloud, cloud shadow, cirrus or snow."""
        m = self.readers.read(scene.mask.path, window, scene.mask.band, resampling=self.resampling,
                              src_nodata=scene.mask.nodata)
        classes = np.asarray(np.ma.getdata(m))
        if scene.mask_kind == "fmask":
            return np.ma.getmaskarray(m) | ~np.isin(classes, KEEP_CLASSES)
        return np.ma.getmaskarray(m) | MASKERS[scene.mask_kind](classes, QA_CLASSES)

    def finish(self) -> None:
        if not self.any_valid:
            raise ForestCarbonError(
                f"No pixel of the first scene's grid has a valid observation in any of the {len(self.scenes)} "
                "scene(s): they are no-data, or masked (cloud, cloud shadow, snow, fill), everywhere. The composite "
                "would be no-data everywhere, so nothing was written. Add clearer scenes.")
