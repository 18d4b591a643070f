"""Apply an ONNX model to rasters: a prediction and its uncertainty for every pixel.

:func:`predict_raster` stacks the bands of the input rasters (warped onto the first one's grid), checks them
against the model card (:mod:`.card`: band names, count, Deepness metadata), starts ONNX Runtime on the chosen
device (:mod:`.onnx`) and runs the strip pipeline (:mod:`.pipeline`) here or, on a Dask cluster, in row bands
on the workers (:func:`predict_rows`), which give the same bits. The statistics of the outputs (mean, σ,
bounds, conformal factor) are :mod:`.intervals`'.

Every output is a float32 COG on the input grid (written as the rows come, :mod:`..raster.cog`), nodata where
any input is nodata, with the card's unit as the band's unit.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import ForestCarbonError
from ..outputs import provenance as make_provenance
from ..parallel.assemble import assemble_raster, bands_for, job_folder, write_tile
from ..parallel.files import materialize
from ..parallel.pool import default_workers
from ..parallel.tilemap import current_executor
from ..progress import NullProgress, Progress, check_cancel
from ..raster import cog
from ..raster.grid import Grid
from ..raster.read import Readers, stack_bands
from ..raster.write import COMPRESS, RasterSpec, raster_writer
from .card import ModelCard, read_card
from .onnx import DEVICES, Runner, choose_providers, session_for
from .pipeline import Pipeline, Stack

DEFAULT_TILE = 256
DEFAULT_PIXEL_BATCH = 262_144
#: the largest patch side and the largest batch (inputs and outputs, float32) a run may ask for
MAX_TILE = 8192
MAX_BATCH_BYTES = 2 * 2 ** 30


@dataclass
class Prediction:
    """What a run wrote (``outputs``: kind → path), on which execution provider, with which card, how many model
    runs (``tiles``) and how long it took."""

    outputs: dict  # kind -> path
    provider: str
    card: ModelCard
    tiles: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------- the algorithm

def support_warning(plot_area_m2, cell_area_m2: float, tolerance: float = 0.25) -> str | None:
    """A warning when a plot-trained model maps cells of another area than its plots.

    The intervals of an area-based model are calibrated on plot measurements: their spread is that of plots of
    that area. Biomass density over a bigger cell varies less (the variance of a mean over an area falls roughly
    as 1/area for weakly correlated stems), so the intervals over-cover bigger cells and under-cover smaller
    ones. lidR's advice: a cell area equal to the plot area.

    Parameters
    ----------
    plot_area_m2 : float
        The plots' area (m²).
    cell_area_m2 : float
        The output cells' area (m²).
    tolerance : float
        Relative difference tolerated.

    Returns
    -------
    str or None
    """
    if not plot_area_m2 or not cell_area_m2 or abs(cell_area_m2 / plot_area_m2 - 1) <= tolerance:
        return None
    side = math.sqrt(plot_area_m2)
    way = "wider than needed (they over-cover)" if cell_area_m2 > plot_area_m2 else "too narrow (they under-cover)"
    return (f"The model was calibrated on plots of {plot_area_m2:.0f} m²; the cells here are {cell_area_m2:.0f} m². "
            f"For cells of this size its intervals are likely {way}: map at a {side:.1f} m resolution "
            f"(cells of the plots' area), or train on plots of the cells' area.")


@dataclass(frozen=True)
class PredictSettings:
    """How a prediction runs.

    Parameters
    ----------
    device : str
        One of :data:`.onnx.DEVICES`: ``auto`` (CUDA, DirectML or CoreML when onnxruntime has it, else the CPU),
        ``cpu``, ``cuda``, ``tensorrt``, ``directml``, ``coreml``.
    require_gpu : bool
        Fail instead of falling back to the CPU.
    tile_size : int, optional
        Patch side (pixels) of patch models, or rows per strip of per-pixel models (default 256; a model's own
        patch size wins).
    overlap : int, optional
        Overlap of patches (pixels; default the card's, else an eighth of the tile).
    batch_size : int, optional
        Patches or pixels per model run (default chosen from the tile size).
    coverage : float
        Central coverage of the lower/upper bounds (0-1).
    max_workers : int, optional
        Threads (default: the machine's cores, capped).
    """

    device: str = "auto"
    require_gpu: bool = False
    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    coverage: float = 0.9
    max_workers: int | None = None


@dataclass(frozen=True)
class _Engine:
    """The ONNX Runtime sessions of a run: one runner per member, the provider they use, the threads."""

    runners: list
    provider: str
    threads: int  # cores for the run (readers, writers, sessions)
    lanes: int  # batches run at once
    session_threads: int
    fixed_batch: bool  # the model's batch dimension is fixed (patch models: one patch per run)


@dataclass(frozen=True)
class _Run:
    """Everything one prediction needs once its inputs are checked."""

    card: ModelCard
    stack: Stack
    engine: _Engine
    tile: int
    overlap: int
    batch: int
    settings: PredictSettings
    kinds: list  # outputs written: "prediction" and any of "std", "lower", "upper"
    requested: dict  # kind -> output path
    record: dict  # provenance


def predict_raster(inputs, model, out_path, out_std=None, out_lower=None, out_upper=None, bands=None,
                   settings: PredictSettings | None = None, progress: Progress | None = None) -> Prediction:
    """Run an ONNX model over rasters: a prediction and its uncertainty for every pixel.

    Parameters
    ----------
    inputs : str, os.PathLike or sequence of them
        The input rasters; their bands are stacked in order and warped onto the first one's grid.
    model : str or os.PathLike
        An ``.onnx`` file (with its card in the metadata, a ``<model>.json`` beside it, or Deepness metadata) or a
        model card ``.json`` (several members: a deep ensemble).
    out_path : str or os.PathLike
        The prediction (float32 COG on the first input's grid, NaN where any input is nodata).
    out_std, out_lower, out_upper : str or os.PathLike, optional
        The standard deviation and the bounds at ``settings.coverage`` (written only when the model gives an
        uncertainty).
    bands : str or sequence of int, optional
        1-based numbers of the stacked bands to use, in the model's order (default: by the card's band names).
    settings : PredictSettings, optional
    progress : Progress, optional

    Returns
    -------
    Prediction
        The outputs written, the execution provider used, the model card, the model runs and the seconds.

    References
    ----------
    STAC Machine Learning Model extension (``mlm:*`` fields of the card); Deepness (QGIS plugin) model metadata;
    Lang, N. et al. (2023), Nature Ecology & Evolution 7:1778–1789 (ensemble variance).
    """
    progress = progress or NullProgress()
    settings = settings or PredictSettings()
    started = time.perf_counter()
    run = _prepare(inputs, model, (out_path, out_std, out_lower, out_upper), bands, settings, progress)
    executor = current_executor()
    if executor is not None:  # a Dask cluster: row bands of the same pipeline on the workers
        run.stack.readers.close()
        run.record.update(executor.describe())
        count = _predict_remote(executor, run, progress)
        seconds = time.perf_counter() - started
        progress.info(f"{count} tiles in {seconds:.1f} s on the Dask cluster at {executor.address}")
    else:
        count = _predict_here(run, progress)
        seconds = time.perf_counter() - started
        progress.info(f"{count} tiles in {seconds:.1f} s")
    return Prediction({k: Path(run.requested[k]) for k in run.kinds}, run.engine.provider, run.card, count, seconds)


def _prepare(inputs, model, paths, bands, settings: PredictSettings, progress) -> _Run:
    """Check the inputs against the card, start the sessions and choose the tiling: the run, before any pixel."""
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    if not inputs:
        raise ForestCarbonError("Give at least one input raster.")
    if not 0 < settings.coverage < 1:
        raise ForestCarbonError(f"coverage must be between 0 and 1 (got {settings.coverage}).")
    card = read_card(model)
    _check_deepness(card, progress)
    stack = _stack(inputs, card, bands, progress)
    _warn_support(card, stack.grid, progress)
    engine = _engine(card, settings, progress)
    tile, overlap, batch = _tiling(card, settings, engine.fixed_batch, progress)
    _check_batch_memory(card, len(stack.sources), tile, batch)
    requested = dict(zip(("prediction", "std", "lower", "upper"), paths))
    kinds = _output_kinds(card, requested, progress)
    record = make_provenance(
        "forestcarbon:predictraster",
        {"bands": bands, "device": settings.device, "require_gpu": settings.require_gpu, "tile_size": tile,
         "overlap": overlap, "batch_size": batch, "coverage": settings.coverage},
        inputs=[str(p) for p in inputs], model_id=card.model_id, execution_provider=engine.provider,
        model=str(model), members=[str(m) for m in card.members], model_card_source=card.source,
        conformal_factor=card.conformal_factor, target=card.target, unit=card.unit,
        output_scale=card.output_scale, deepness=card.extra.get("deepness_applied") if card.deepness else None,
        # the sibling outputs of this run, so that a viewer finds a prediction's uncertainty layers
        outputs={k: str(Path(requested[k]).resolve()) for k in kinds})
    return _Run(card, stack, engine, tile, overlap, batch, settings, kinds, requested, record)


def _warn_support(card: ModelCard, grid: Grid, progress) -> None:
    """Warn when the input pixels differ from those the model was made for, or from its plots' area."""
    if card.resolution_m and abs(grid.res - card.resolution_m) > 0.25 * card.resolution_m:
        progress.warning(f"The model was made for {card.resolution_m:g} m pixels; the input has {grid.res:g} m. "
                         "The outputs stay on the input grid, but the predictions may be off.")
    plot_area = (card.extra.get("forest_carbon:training") or {}).get("plot_area_m2")
    if plot_area:
        from rasterio.crs import CRS

        if CRS.from_user_input(grid.crs).is_projected:  # cell areas in degrees² say nothing
            note = support_warning(plot_area, abs(grid.transform.a * grid.transform.e))
            if note:
                progress.warning(note)


def _engine(card: ModelCard, settings: PredictSettings, progress) -> _Engine:
    """The sessions of every member on the chosen device, and how many run at once."""
    providers = choose_providers(settings.device, settings.require_gpu, progress)
    threads = default_workers(settings.max_workers)
    # patch models on the CPU: one single-threaded run per core, each on its own batch, rather than every core
    # on each convolution. The runs share nothing, so the reading, blending and writing threads take a core
    # from one run without stalling the other at a barrier (intra-op threads wait for each other per node).
    lanes = threads if card.kind == "patch" and providers == ["CPUExecutionProvider"] else 1
    session_threads = 1 if lanes > 1 else threads
    sessions = [session_for(m, providers, session_threads) for m in card.members]
    used = sessions[0].get_providers()[0]
    if settings.device not in ("auto", "cpu") and used == "CPUExecutionProvider" and providers[0] != used:
        if settings.require_gpu:
            raise ForestCarbonError(f"{providers[0]} failed to start (drivers?): clear REQUIRE_GPU to use the CPU.")
        progress.warning(f"{providers[0]} failed to start: running on the CPU instead.")
    progress.info(f"Execution provider: {used}; {len(card.members)} member(s); {card.kind} model; "
                  f"model card from {card.source}")
    fixed_batch = isinstance(sessions[0].get_inputs()[0].shape[0], int)
    return _Engine([Runner(s, card) for s in sessions], used, threads, lanes, session_threads, fixed_batch)


def _tiling(card: ModelCard, settings: PredictSettings, fixed_batch: bool, progress) -> tuple[int, int, int]:
    """(tile, overlap, batch): patch side and overlap of patch models, or rows per strip of per-pixel ones."""
    tile_size = settings.tile_size
    if card.kind == "patch":
        tile = int(card.patch_size or tile_size or DEFAULT_TILE)
        if card.patch_size and tile_size and tile_size != card.patch_size:
            progress.warning(f"The model takes {card.patch_size}-pixel patches: TILE_SIZE {tile_size} is ignored.")
        overlap = settings.overlap if settings.overlap is not None else card.overlap
        ov = int(overlap if overlap is not None else tile // 8)
        if not 0 <= ov < tile:
            raise ForestCarbonError(f"OVERLAP must be between 0 and the tile size {tile} (got {ov}): give a smaller "
                                    "OVERLAP (an eighth of the tile is usual).")
        batch = 1 if fixed_batch else int(settings.batch_size or max(1, 4 * 256 * 256 // (tile * tile)))
    else:
        tile, ov = int(tile_size or DEFAULT_TILE), 0
        batch = int(settings.batch_size or DEFAULT_PIXEL_BATCH)
    if tile <= 0 or batch <= 0:
        raise ForestCarbonError(f"tile_size and batch_size must be positive (got {tile} and {batch}).")
    return tile, ov, batch


def _output_kinds(card: ModelCard, requested: dict, progress) -> list:
    """The outputs to write: the prediction, and the uncertainty outputs asked for if the model gives any."""
    kinds = ["prediction"]
    has_spread = any(o.meaning != "mean" for o in card.outputs) or len(card.members) > 1
    for kind in ("std", "lower", "upper"):
        if requested[kind] and not has_spread:
            progress.warning(f"The model gives no uncertainty (one member, a mean output only): "
                             f"no {kind} output is written.")
        elif requested[kind]:
            kinds.append(kind)
    return kinds


def _tags(run: _Run, kind: str) -> dict:
    return {"OUTPUT_KIND": kind, "UNIT": run.card.unit,
            "COVERAGE": run.settings.coverage if kind in ("lower", "upper") else "", "MODEL_ID": run.card.model_id,
            "EXECUTION_PROVIDER": run.engine.provider}


def _description(card: ModelCard, kind: str) -> str:
    return card.target if kind == "prediction" else f"{card.target}_{kind}"


def _predict_here(run: _Run, progress) -> int:
    """The pipeline on this machine, every output written as its rows come; returns the model runs."""
    card, grid = run.card, run.stack.grid
    pipeline = Pipeline(run.stack, card, run.engine.runners, run.tile, run.overlap, run.batch, run.settings.coverage,
                        run.kinds, progress, run.engine.lanes)
    with contextlib.ExitStack() as outputs:
        writers = {}
        for kind in run.kinds:
            if cog.available(COMPRESS):  # rows come in order: tiles and overviews made as they come
                writers[kind] = outputs.enter_context(cog.cog_writer(
                    grid, run.requested[kind], descriptions=[_description(card, kind)], tags=_tags(run, kind),
                    provenance=run.record, compress=COMPRESS, units=[card.unit]))
            else:
                spec = RasterSpec(descriptions=(_description(card, kind),), tags=_tags(run, kind),
                                  provenance=run.record, units=(card.unit,) if card.unit else ())
                writers[kind] = outputs.enter_context(raster_writer(grid, run.requested[kind], spec,
                                                                    workers=run.engine.threads))
        pipeline.run(writers)
        _check_has_data(pipeline.any_valid, pipeline.any_finite, card)
    run.stack.readers.close()
    return pipeline.tiles


def _check_deepness(card: ModelCard, progress: Progress) -> None:
    """Refuse a Deepness model whose output is not one value per pixel; pass on what its metadata left out."""
    if not card.deepness:
        return
    model_type = card.extra.get("deepness_model_type")
    if model_type != "Regressor":
        raise ForestCarbonError(
            f"'{Path(card.members[0]).name}' is a Deepness {model_type} model (metadata model_type): its outputs are "
            "class scores, boxes or images, not a value per pixel. predictraster maps regression models: use a "
            "Deepness Regressor model (or a model card), or run this model in the Deepness plugin.")
    for note in card.extra.get("deepness_notes") or []:
        progress.warning(note)
    applied = card.extra.get("deepness_applied") or {}
    progress.info("Deepness metadata applied: " + ", ".join(f"{k} = {v}" for k, v in applied.items()))


def _check_has_data(any_valid: bool, any_finite: bool, card: ModelCard) -> None:
    """Refuse a prediction that would be no-data everywhere, saying why."""
    if not any_valid:
        raise ForestCarbonError(
            "No pixel has data in every input band (the inputs do not overlap where they have data, or are no-data "
            "everywhere): the prediction would be no-data everywhere, so nothing was written. Give inputs that "
            "cover the same area.")
    if not any_finite:
        raise ForestCarbonError(
            f"The model ({Path(card.members[0]).name}) returned NaN or infinity for every pixel: the prediction would "
            "be no-data everywhere, so nothing was written. Check that the inputs are the bands, units and scaling "
            "the model was trained on (see forestcarbon:modelinfo), and the model itself.")


def _predict_remote(executor, run: _Run, progress) -> int:
    """Row bands of the output on the cluster's workers (:func:`predict_rows`), each written into the job folder,
    then one COG per output. Band edges fall on the local path's strip edges, so that every pixel gets the same
    model tiles, batches and blending sums in the same order as the local run: the same bits."""
    card, grid = run.card, run.stack.grid
    spec = {"grid": grid, "sources": run.stack.sources, "names": run.stack.names, "card": card,
            "device": run.settings.device, "require_gpu": run.settings.require_gpu, "tile": run.tile,
            "overlap": run.overlap, "batch": run.batch, "coverage": run.settings.coverage,
            "kinds": run.kinds, "threads": run.engine.session_threads, "lanes": run.engine.lanes}
    executor.check_visible(sorted({str(path) for path, _, _ in run.stack.sources}))
    patch = card.kind == "patch"
    unit = run.tile - run.overlap if patch else run.tile
    bands = bands_for(grid.height, grid.width, unit, executor.workers, 2 if patch and run.overlap else 1,
                      tasks_per_thread=getattr(executor, "tasks_per_thread", 8))
    progress.info(f"{len(bands)} row bands on the Dask cluster at {executor.address} "
                  f"({executor.workers} worker threads)")
    members = [executor.send_file(m) for m in card.members]  # the workers may not see a local model file
    try:
        with job_folder(run.requested["prediction"], executor.job_dir) as folder:
            done = executor.row_bands(predict_rows, [(spec, members, r0, r1, str(folder)) for r0, r1 in bands],
                                      progress)
            paths = [written for written, _, _ in done]
            count = sum(tiles for _, tiles, _ in done)
            _check_has_data(any(flags[0] for _, _, flags in done), any(flags[1] for _, _, flags in done), card)
            for kind in run.kinds:
                check_cancel(progress)
                layout = RasterSpec(descriptions=(_description(card, kind),), tags=_tags(run, kind),
                                    provenance=run.record, units=(card.unit,), compress=COMPRESS)
                assemble_raster(grid, [(r0, r1, paths[i][kind]) for i, (r0, r1) in enumerate(bands)],
                                run.requested[kind], layout, folder=folder, streamed=cog.available(COMPRESS))
    finally:  # a cancelled or failed job must not leave the model's bytes on the scheduler
        executor.release(members)
    progress.set_progress(100.0)
    return count


class _ArrayWriter:
    """Collects the rows a pipeline writes (grid windows) into an array of rows ``row0…``."""

    def __init__(self, array, row0):
        self.array, self.row0 = array, row0

    def write(self, data, window=None):
        r = int(window.row_off) - self.row0
        self.array[r:r + int(window.height), int(window.col_off):int(window.col_off) + int(window.width)] = data[0]


def predict_rows(spec: dict, members: list, row0: int, row1: int, folder: str, progress=None):
    """Rows ``row0``-``row1`` of every output, run on a Dask worker and written into ``folder``.

    Parameters
    ----------
    spec : dict
        The run (grid, sources, card, device, tiling, coverage, outputs, threads) as :func:`predict_raster` sends it.
    members : list
        The model files' bytes, sent with the job.
    row0, row1 : int
        The row band.
    folder : str
        The job folder the tiles are written to.
    progress : Progress, optional

    Returns
    -------
    (dict, int, (bool, bool))
        ``{kind: tile path}``, the model runs, and whether any pixel had data and any prediction was finite.
    """
    progress = progress or NullProgress()
    card = replace(spec["card"], members=[materialize(data) for data in members])
    providers = choose_providers(spec["device"], spec["require_gpu"], NullProgress())
    # as many ONNX Runtime threads as the run here would use: tree ensembles sum their trees per thread, so the
    # thread count is part of "the same computation" (bit-identical results)
    runners = [Runner(session_for(m, providers, spec["threads"]), card) for m in card.members]
    grid = spec["grid"]
    stack = Stack(grid, spec["sources"], Readers(grid, direct_io=True), spec["names"])
    try:
        pipeline = Pipeline(stack, card, runners, spec["tile"], spec["overlap"], spec["batch"], spec["coverage"],
                             spec["kinds"], progress, spec.get("lanes", 1))
        arrays = {k: np.full((row1 - row0, grid.width), np.nan, dtype=np.float32) for k in spec["kinds"]}
        pipeline.run({k: _ArrayWriter(a, row0) for k, a in arrays.items()}, rows=(row0, row1))
    finally:
        stack.readers.close()
    written = {k: write_tile(folder, f"{k}_{row0:09d}", a, grid, row0, float("nan")) for k, a in arrays.items()}
    return written, pipeline.tiles, (pipeline.any_valid, pipeline.any_finite)


def _check_batch_memory(card: ModelCard, n_bands: int, tile: int, batch: int) -> None:
    """Refuse tiles and batches whose buffers could not be allocated, before any is."""
    if card.kind == "patch" and tile > MAX_TILE:
        raise ForestCarbonError(f"TILE_SIZE {tile} is too large: tiles of at most {MAX_TILE} pixels fit in memory "
                                f"(the default, {DEFAULT_TILE}, suits most models).")
    channels = (card.n_inputs or n_bands) + max(1, len(card.outputs))
    need = batch * (tile * tile if card.kind == "patch" else 1) * channels * 4
    if need > MAX_BATCH_BYTES:
        raise ForestCarbonError(
            f"BATCH_SIZE {batch} " + (f"with TILE_SIZE {tile} " if card.kind == "patch" else "")
            + f"would need {need / 2 ** 30:,.1f} GiB per batch, more than {MAX_BATCH_BYTES / 2 ** 30:g} GiB: give "
            "BATCH_SIZE 0 (chosen for you) or a smaller batch.")


def _band_numbers(bands) -> list:
    """BANDS as 1-based band numbers ("1,2,3", "1 2 3" or a sequence), or a message saying what it should be."""
    items = [b for b in re.split(r"[,;\s]+", bands.strip())] if isinstance(bands, str) else list(bands)
    picks = []
    for item in items:
        try:
            number = float(item)
        except (TypeError, ValueError):
            number = float("nan")
        if not (math.isfinite(number) and number == int(number)):
            raise ForestCarbonError(f"BANDS '{bands}' is not a list of band numbers: write the 1-based numbers of the "
                                    "stacked input bands in the model's order, e.g. '1,2,3' (or leave it empty).")
        picks.append(int(number))
    if not picks:
        raise ForestCarbonError("BANDS names no band: write e.g. '1,2,3', or leave it empty.")
    return picks


def _stack(inputs, card: ModelCard, bands, progress) -> Stack:
    grid, sources, names = stack_bands(inputs)
    if bands:
        picks = _band_numbers(bands)
        if any(p < 1 or p > len(sources) for p in picks):
            raise ForestCarbonError(f"BANDS {picks} asks for bands outside 1-{len(sources)} (the stacked inputs): "
                                    f"give band numbers from 1 to {len(sources)}, in the model's order.")
        sources = [sources[p - 1] for p in picks]
        names = [names[p - 1] for p in picks]
    elif card.bands:
        lower = [n.lower() for n in names]
        missing = [b for b in card.bands if b.lower() not in lower]
        unnamed = all(not n or n.lower().startswith("band ") for n in names)
        if not missing:  # picked by name, whatever their order in the inputs
            order = [lower.index(b.lower()) for b in card.bands]
            sources = [sources[i] for i in order]
            names = [names[i] for i in order]
        elif unnamed:  # nothing to match: used in order (the count is checked below)
            if len(sources) == len(card.bands):
                progress.warning(f"The input bands carry no names: they are used in order as the model's "
                                 f"{', '.join(card.bands)}.")
        else:
            raise ForestCarbonError(
                f"The model needs the bands {', '.join(card.bands)}; the inputs lack {', '.join(missing)} "
                f"(they have {', '.join(n or '?' for n in names)}). Add a raster with those bands to INPUT, or "
                "pick bands by number with BANDS.")
    expected = card.n_inputs or (len(card.bands) if card.bands else None)
    if card.deepness and not bands and expected is not None and len(sources) > expected:
        # Deepness's default channel mapping feeds model input i from image band i (an RGBA orthophoto's alpha
        # is left out of an RGB model): the same bands here
        progress.warning(f"The inputs have {len(sources)} bands and the Deepness model takes {expected}: bands "
                         f"1-{expected} are used, as Deepness does (pick others with BANDS).")
        sources, names = sources[:expected], names[:expected]
    if expected is not None and len(sources) != expected:
        wanted = f" ({', '.join(card.bands)})" if card.bands else ""
        raise ForestCarbonError(
            f"The model takes {expected} bands{wanted} but {len(sources)} were given "
            f"({', '.join(n or '?' for n in names)}): add the missing rasters to INPUT or pick bands with BANDS.")
    return Stack(grid, sources, Readers(grid, direct_io=True), names)


__all__ = ["PredictSettings", "Prediction", "predict_raster", "predict_rows", "support_warning", "DEVICES"]
