"""Apply an ONNX model to rasters: a prediction and its uncertainty for every pixel.

:func:`predict_raster` stacks the bands of the input rasters (warped onto the first one's
grid), applies the model card's preprocessing (:mod:`.modelcard`) and runs ONNX Runtime:

* per-pixel models (``[N, F]``) on the valid pixels of strips of rows, in batches;
* patch models (``[N, C, H, W]``) on overlapping tiles of a global lattice (a tile every
  ``tile − overlap`` pixels), batched, blended with weights that are 0 on the outer quarter
  of the overlap and rise with a raised cosine over its middle half: for a fully
  convolutional model whose receptive-field radius is ≤ overlap/4 the result equals a
  whole-image run away from the raster's own border.

Rows are finished strip by strip (a tile row at a time), so memory follows
``width × tile × outputs`` and the batch, never the raster's height. A reader thread
prefetches the next strip and a writer thread writes the finished one while the model runs;
on the CPU a patch model runs one single-threaded session run per core on its own batch. The
outputs are COGs written as the rows come (:mod:`.cog`).

Uncertainty (every output float32 COG on the input grid, nodata where any input is nodata):
prediction = mean of the members' means (median for quantile models); std from the declared
variance/log-variance/std outputs; for an ensemble the epistemic variance between members
(``np.var``, ddof 0) is added to the mean aleatoric variance (Lang et al. 2023, Nature Ecology
& Evolution 7:1778-1789); bounds at ``coverage`` are Gaussian (mean ± z·σ) or, for quantile
models, the declared quantiles; a conformal factor (from calibration) scales the half-widths.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..raster import cog
from ..raster.grid import RasterGrid
from ..raster.read import Readers, stack_bands
from ..parallel.pool import default_workers
from ..raster.write import COMPRESS, RasterSpec, raster_writer
from ..dependencies import require
from ..errors import ForestCarbonError
from .card import ModelCard, read_card
from .intervals import combine_members
from ..outputs import provenance as make_provenance
from ..progress import NullProgress, Progress, check_cancel
from ..parallel.tilemap import current_executor

DEVICES = ("auto", "cpu", "cuda", "tensorrt", "directml", "coreml")
PROVIDER_OF = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
               "tensorrt": "TensorrtExecutionProvider", "directml": "DmlExecutionProvider",
               "coreml": "CoreMLExecutionProvider"}
AUTO_ORDER = ("cuda", "directml", "coreml")  # TensorRT builds engines for minutes: only on request
DEFAULT_TILE = 256
DEFAULT_PIXEL_BATCH = 262_144
#: the largest patch side and the largest batch (inputs and outputs, float32) a run may ask for
MAX_TILE = 8192
MAX_BATCH_BYTES = 2 * 2 ** 30


@dataclass
class Prediction:
    outputs: dict  # kind -> path
    provider: str
    card: ModelCard
    tiles: int = 0
    seconds: float = 0.0
    warnings: list = field(default_factory=list)


# --------------------------------------------------------------------------- sessions

_SESSIONS: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()
_SESSIONS_LOCK = threading.Lock()


def choose_providers(device: str, require_gpu: bool, progress: Progress) -> list:
    """The ONNX Runtime providers for ``device``: the GPU provider (with CPU behind it) or CPU."""
    ort = require("onnxruntime")
    if device not in DEVICES:
        raise ForestCarbonError(f"Unknown device '{device}': choose one of {', '.join(DEVICES)}.")
    available = ort.get_available_providers()
    if device == "cpu":
        if require_gpu:
            raise ForestCarbonError("DEVICE is CPU but REQUIRE_GPU is set: choose a GPU device or clear it.")
        return ["CPUExecutionProvider"]
    wanted = [device] if device != "auto" else list(AUTO_ORDER)
    for name in wanted:
        if PROVIDER_OF[name] in available:
            return [PROVIDER_OF[name], "CPUExecutionProvider"]
    message = (f"{'No GPU execution provider' if device == 'auto' else PROVIDER_OF[device] + ' is not'} available "
               f"in this onnxruntime ({', '.join(available)})")
    if require_gpu:
        raise ForestCarbonError(message + ": install onnxruntime-gpu (CUDA) or onnxruntime-directml, or clear "
                                "REQUIRE_GPU to run on the CPU.")
    if device != "auto":
        progress.warning(message + ": running on the CPU instead.")
    return ["CPUExecutionProvider"]


def session_for(path: Path, providers: list, threads: int):
    """A cached ONNX Runtime session (sessions are expensive to build; QGIS runs many jobs)."""
    ort = require("onnxruntime")
    key = (str(path), Path(path).stat().st_mtime_ns, tuple(providers), threads)
    with _SESSIONS_LOCK:
        if key in _SESSIONS:
            _SESSIONS.move_to_end(key)
            return _SESSIONS[key]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime has its own exception types
        raise ForestCarbonError(f"ONNX Runtime cannot load '{Path(path).name}': {str(exc)[:300]}") from exc
    with _SESSIONS_LOCK:
        _SESSIONS[key] = session
        while len(_SESSIONS) > 6:
            _SESSIONS.popitem(last=False)
    return session


class _Runner:
    """Runs one member on a batch; I/O binding on CUDA (inputs copied once, outputs fetched once)."""

    def __init__(self, session, card: ModelCard):
        self.session = session
        self.card = card
        self.names = sorted({o.name for o in card.outputs})
        self.cuda = session.get_providers()[0] == "CUDAExecutionProvider"

    def __call__(self, batch: np.ndarray) -> dict:
        if self.cuda:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.card.input_name, batch)
            for name in self.names:
                binding.bind_output(name)
            self.session.run_with_iobinding(binding)
            return dict(zip(self.names, binding.copy_outputs_to_cpu()))
        return dict(zip(self.names, self.session.run(self.names, {self.card.input_name: batch})))


# --------------------------------------------------------------------------- statistics

def blend_weights(size: int, overlap: int, taper_low: bool, taper_high: bool) -> np.ndarray:
    """1-D blending weight of a tile: 0 on the outer quarter of the overlap, a raised cosine over
    its middle half, 1 inside; untapered on a side where the tile meets the raster's border."""
    d = np.arange(size, dtype=np.float64)
    w = np.ones(size)
    if overlap <= 0:
        return w
    quarter, half = overlap / 4.0, overlap / 2.0

    def rise(distance):
        t = np.clip((distance - quarter + 0.5) / half, 0.0, 1.0)
        return 0.5 - 0.5 * np.cos(np.pi * t)

    if taper_low:
        w = w * rise(d)
    if taper_high:
        w = w * rise(size - 1 - d)
    return w


# --------------------------------------------------------------------------- the algorithm

def support_warning(plot_area_m2, cell_area_m2: float, tolerance: float = 0.25) -> str | None:
    """A warning when a plot-trained model maps cells of another area than its plots, else None.

    The intervals of an area-based model are calibrated on plot measurements: their spread is that of
    plots of that area. Biomass density over a bigger cell varies less (the variance of a mean over an
    area falls roughly as 1/area for weakly correlated stems), so the intervals over-cover bigger cells
    and under-cover smaller ones. lidR's advice: a cell area equal to the plot area.
    """
    if not plot_area_m2 or not cell_area_m2 or abs(cell_area_m2 / plot_area_m2 - 1) <= tolerance:
        return None
    side = math.sqrt(plot_area_m2)
    way = "wider than needed (they over-cover)" if cell_area_m2 > plot_area_m2 else "too narrow (they under-cover)"
    return (f"The model was calibrated on plots of {plot_area_m2:.0f} m²; the cells here are {cell_area_m2:.0f} m². "
            f"For cells of this size its intervals are likely {way}: map at a {side:.1f} m resolution "
            f"(cells of the plots' area), or train on plots of the cells' area.")


def predict_raster(inputs, model, out_path, out_std=None, out_lower=None, out_upper=None, bands=None,
                   device: str = "auto", require_gpu: bool = False, tile_size: int | None = None,
                   overlap: int | None = None, batch_size: int | None = None, coverage: float = 0.9,
                   progress: Progress | None = None, max_workers: int | None = None) -> Prediction:
    """Run ``model`` (an .onnx file or a model card) over ``inputs`` (raster paths); see the module doc."""
    progress = progress or NullProgress()
    started = time.perf_counter()
    inputs = [Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    if not inputs:
        raise ForestCarbonError("Give at least one input raster.")
    if not 0 < coverage < 1:
        raise ForestCarbonError(f"COVERAGE must be between 0 and 1 (got {coverage}).")
    card = read_card(model)
    _check_deepness(card, progress)
    stack = _stack(inputs, card, bands, progress)
    grid = stack.grid
    if card.resolution_m and abs(grid.res[0] - card.resolution_m) > 0.25 * card.resolution_m:
        progress.warning(f"The model was made for {card.resolution_m:g} m pixels; the input has {grid.res[0]:g} m. "
                         "The outputs stay on the input grid, but the predictions may be off.")
    plot_area = (card.extra.get("forest_carbon:training") or {}).get("plot_area_m2")
    if plot_area:
        from rasterio.crs import CRS

        if CRS.from_user_input(grid.crs).is_projected:  # cell areas in degrees² say nothing
            note = support_warning(plot_area, abs(grid.transform.a * grid.transform.e))
            if note:
                progress.warning(note)
    providers = choose_providers(device, require_gpu, progress)
    threads = default_workers(max_workers)
    # patch models on the CPU: one single-threaded run per core, each on its own batch, rather than every core
    # on each convolution. The runs share nothing, so the reading, blending and writing threads take a core
    # from one run without stalling the other at a barrier (intra-op threads wait for each other per node).
    lanes = threads if card.kind == "patch" and providers == ["CPUExecutionProvider"] else 1
    session_threads = 1 if lanes > 1 else threads
    sessions = [session_for(m, providers, session_threads) for m in card.members]
    used = sessions[0].get_providers()[0]
    if device not in ("auto", "cpu") and used == "CPUExecutionProvider" and providers[0] != used:
        if require_gpu:
            raise ForestCarbonError(f"{providers[0]} failed to start (drivers?): clear REQUIRE_GPU to use the CPU.")
        progress.warning(f"{providers[0]} failed to start: running on the CPU instead.")
    progress.info(f"Execution provider: {used}; {len(card.members)} member(s); {card.kind} model; "
                  f"model card from {card.source}")
    runners = [_Runner(s, card) for s in sessions]

    if card.kind == "patch":
        tile = int(card.patch_size or tile_size or DEFAULT_TILE)
        if card.patch_size and tile_size and tile_size != card.patch_size:
            progress.warning(f"The model takes {card.patch_size}-pixel patches: TILE_SIZE {tile_size} is ignored.")
        ov = int(overlap if overlap is not None else (card.overlap if card.overlap is not None else tile // 8))
        if not 0 <= ov < tile:
            raise ForestCarbonError(f"OVERLAP must be between 0 and the tile size {tile} (got {ov}): give a smaller "
                                    "OVERLAP (an eighth of the tile is usual).")
        fixed_batch = sessions[0].get_inputs()[0].shape[0]
        batch = 1 if isinstance(fixed_batch, int) else int(batch_size or max(1, 4 * 256 * 256 // (tile * tile)))
    else:
        tile = int(tile_size or DEFAULT_TILE)
        ov = 0
        batch = int(batch_size or DEFAULT_PIXEL_BATCH)
    if tile <= 0 or batch <= 0:
        raise ForestCarbonError("TILE_SIZE and BATCH_SIZE must be positive.")
    _check_batch_memory(card, len(stack.sources), tile, batch)

    kinds = ["prediction"]
    has_spread = any(o.meaning != "mean" for o in card.outputs) or len(card.members) > 1
    requested = {"prediction": out_path, "std": out_std, "lower": out_lower, "upper": out_upper}
    for kind in ("std", "lower", "upper"):
        if requested[kind] and not has_spread:
            progress.warning(f"The model gives no uncertainty (one member, a mean output only): "
                             f"no {kind} output is written.")
        elif requested[kind]:
            kinds.append(kind)
    record = make_provenance(
        "forestcarbon:predictraster",
        {"bands": bands, "device": device, "require_gpu": require_gpu, "tile_size": tile, "overlap": ov,
         "batch_size": batch, "coverage": coverage},
        inputs=[str(p) for p in inputs], model_id=card.model_id, execution_provider=used,
        model=str(model), members=[str(m) for m in card.members], model_card_source=card.source,
        conformal_factor=card.conformal_factor, target=card.target, unit=card.unit,
        output_scale=card.output_scale, deepness=card.extra.get("deepness_applied") if card.deepness else None,
        # the sibling outputs of this run, so that a viewer finds a prediction's uncertainty layers
        outputs={k: str(Path(requested[k]).resolve()) for k in kinds})
    executor = current_executor()

    def tags(kind):
        return {"OUTPUT_KIND": kind, "UNIT": card.unit, "COVERAGE": coverage if kind in ("lower", "upper") else "",
                "MODEL_ID": card.model_id, "EXECUTION_PROVIDER": used}

    def description(kind):
        return card.target if kind == "prediction" else f"{card.target}_{kind}"

    if executor is not None:  # a Dask cluster: row bands of the same pipeline on the workers
        stack.readers.close()
        record.update(executor.describe())
        spec = {"grid": grid, "sources": stack.sources, "names": stack.names, "card": card, "device": device,
                "require_gpu": require_gpu, "tile": tile, "overlap": ov, "batch": batch, "coverage": coverage,
                "kinds": kinds, "threads": session_threads, "lanes": lanes}
        count = _predict_remote(executor, spec, requested, tags, description, record, progress)
        seconds = time.perf_counter() - started
        progress.info(f"{count} tiles in {seconds:.1f} s on the Dask cluster at {executor.address}")
        return Prediction({k: Path(requested[k]) for k in kinds}, used, card, count, seconds)
    pipeline = _Pipeline(stack, card, runners, tile, ov, batch, coverage, kinds, progress, lanes)
    with contextlib.ExitStack() as outputs:
        writers = {}
        for kind in kinds:
            if cog.available(COMPRESS):  # rows come in order: tiles and overviews made as they come
                writers[kind] = outputs.enter_context(cog.cog_writer(
                    grid, requested[kind], descriptions=[description(kind)], tags=tags(kind), provenance=record,
                    compress=COMPRESS, units=[card.unit]))
            else:
                spec = RasterSpec(descriptions=(description(kind),), tags=tags(kind), provenance=record,
                                  units=(card.unit,) if card.unit else ())
                writers[kind] = outputs.enter_context(raster_writer(grid, requested[kind], spec, workers=threads))
        pipeline.run(writers)
        _check_has_data(pipeline.any_valid, pipeline.any_finite, card)
    stack.readers.close()
    seconds = time.perf_counter() - started
    progress.info(f"{pipeline.tiles} tiles in {seconds:.1f} s")
    return Prediction({k: Path(requested[k]) for k in kinds}, used, card, pipeline.tiles, seconds)


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


def _predict_remote(executor, spec, requested, tags, description, record, progress) -> int:
    """Row bands of the output on the cluster's workers (:func:`predict_rows`), each written into the job folder,
    then one COG per output. Band edges fall on the local path's strip edges, so that every pixel gets the same
    model tiles, batches and blending sums in the same order as the local run: the same bits."""
    from ..parallel.cluster import assemble_raster, bands_for, job_folder

    grid, card, kinds = spec["grid"], spec["card"], spec["kinds"]
    executor.check_visible(sorted({str(path) for path, _, _ in spec["sources"]}))
    patch = card.kind == "patch"
    unit = spec["tile"] - spec["overlap"] if patch else spec["tile"]
    bands = bands_for(grid.height, grid.width, unit, executor.workers, 2 if patch and spec["overlap"] else 1,
                      tasks_per_thread=getattr(executor, "tasks_per_thread", 8))
    progress.info(f"{len(bands)} row bands on the Dask cluster at {executor.address} "
                  f"({executor.workers} worker threads)")
    members = [executor.send_file(m) for m in card.members]  # the workers may not see a local model file
    try:
        with job_folder(requested["prediction"], executor.job_dir) as folder:
            done = executor.row_bands(predict_rows, [(spec, members, r0, r1, str(folder)) for r0, r1 in bands],
                                      progress)
            paths = [written for written, _, _ in done]
            count = sum(tiles for _, tiles, _ in done)
            _check_has_data(any(flags[0] for _, _, flags in done), any(flags[1] for _, _, flags in done), card)
            for kind in kinds:
                check_cancel(progress)
                assemble_raster(grid, [(r0, r1, paths[i][kind]) for i, (r0, r1) in enumerate(bands)], requested[kind],
                                1, "float32", float("nan"), descriptions=[description(kind)], tags=tags(kind),
                                provenance=record, folder=folder, streamed=cog.available(COMPRESS), units=[card.unit])
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
    """(a tile task, run on a Dask worker) rows ``row0``-``row1`` of every output, written into ``folder``;
    ``members`` are the model files' bytes sent with the job. Returns ({kind: tile path}, model tiles run,
    (whether any pixel had data, whether any prediction was finite))."""
    from dataclasses import replace

    from ..parallel.cluster import materialize, write_tile

    progress = progress or NullProgress()
    card = replace(spec["card"], members=[materialize(data) for data in members])
    providers = choose_providers(spec["device"], spec["require_gpu"], NullProgress())
    # as many ONNX Runtime threads as the run here would use: tree ensembles sum their trees per thread, so the
    # thread count is part of "the same computation" (bit-identical results)
    runners = [_Runner(session_for(m, providers, spec["threads"]), card) for m in card.members]
    grid = spec["grid"]
    stack = _Stack(grid, spec["sources"], Readers(grid, direct_io=True), spec["names"])
    try:
        pipeline = _Pipeline(stack, card, runners, spec["tile"], spec["overlap"], spec["batch"], spec["coverage"],
                             spec["kinds"], progress, spec.get("lanes", 1))
        arrays = {k: np.full((row1 - row0, grid.width), np.nan, dtype=np.float32) for k in spec["kinds"]}
        pipeline.run({k: _ArrayWriter(a, row0) for k, a in arrays.items()}, rows=(row0, row1))
    finally:
        stack.readers.close()
    written = {k: write_tile(folder, f"{k}_{row0:09d}", a, grid, row0, float("nan")) for k, a in arrays.items()}
    return written, pipeline.tiles, (pipeline.any_valid, pipeline.any_finite)


@dataclass
class _Stack:
    grid: RasterGrid
    sources: list  # (path, band index 1-based, nodata)
    readers: Readers
    names: list


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


def _stack(inputs, card: ModelCard, bands, progress) -> _Stack:
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
    return _Stack(grid, sources, Readers(grid, direct_io=True), names)


class _Pipeline:
    """Strips of rows: read ahead, run, blend, write behind."""

    def __init__(self, stack, card, runners, tile, overlap, batch, coverage, kinds, progress, lanes: int = 1):
        self.stack, self.card, self.runners = stack, card, runners
        self.tile, self.overlap, self.batch, self.coverage = tile, overlap, batch, coverage
        self.kinds, self.progress = kinds, progress
        self.lanes = max(1, lanes)  # batches run at once (each by single-threaded sessions)
        self.grid = stack.grid
        self.step = tile - overlap
        self.tiles = 0
        # whether any pixel had data in every input band, and whether any prediction was finite: a run
        # without either is a failure, not an all-nodata raster
        self.any_valid = False
        self.any_finite = False
        self._buffers = _Buffers()
        self._weights = None

    # rows of the strip that starts a tile row at ``y0``: [y0, y0 + tile)
    def _read(self, y0: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        window = Window(0, y0, self.grid.width, height)
        data = self._buffers.take((len(self.stack.sources), height, self.grid.width))
        invalid = None
        for start, stop in _runs_of_same_file(self.stack.sources):
            path, _, nodata = self.stack.sources[start]
            bands = [band for _, band, _ in self.stack.sources[start:stop]]
            mask = self.stack.readers.read_into(path, window, bands, data[start:stop], Resampling.bilinear, nodata)
            if mask is not None:
                invalid = mask if invalid is None else invalid | mask
        valid = np.isfinite(data).all(axis=0)
        if invalid is not None:
            valid &= ~invalid
        if self.card.nodata is not None:
            valid &= (data != np.float32(self.card.nodata)).all(axis=0)
        self.any_valid = self.any_valid or bool(valid.any())
        return data, valid

    def _strips(self):
        height = self.grid.height
        if self.card.kind == "pixel":
            return [(y, min(self.tile, height - y)) for y in range(0, height, self.tile)]
        starts = list(range(0, max(height - self.tile, 0) + 1, self.step))
        if starts[-1] + self.tile < height:
            starts.append(height - self.tile)
        return [(y, min(self.tile, height)) for y in starts]

    def run(self, writers, rows=None) -> None:
        """Predict and write rows ``rows = (row0, row1)`` (default: all): the strips that touch them, in order,
        so that each of those rows gets every model tile's contribution in the same order as a whole run.

        Patch models: every strip's batches go to ``lanes`` model threads as soon as the strip is read; the
        results are blended in submission order (the same sums whatever finishes first), and a strip's
        finished rows go to the writer once its last batch is blended. A few batches stay queued so that no
        model thread waits for the blending or for the next strip."""
        row0, row1 = rows or (0, self.grid.height)
        strips = [s for s in self._strips() if s[0] < row1 and s[0] + s[1] > row0]
        total = len(strips)
        queue: collections.deque = collections.deque()  # ("batch", …) / ("invalid", …) / ("flush", …) in order
        state = {"acc": None, "write": None, "done": 0}

        def finish(y0, arrays):
            if y0 < row0 or y0 + _rows_of(arrays) > row1:
                y0, arrays = _clip_rows(y0, arrays, row0, row1)
            if state["write"] is not None:
                state["write"].result()
            state["write"] = writer.submit(self._write, writers, y0, arrays)
            state["done"] += 1
            self.progress.set_progress(100.0 * state["done"] / total)

        def consume(item):
            if item[0] == "batch":
                _, y0, h, places, future = item
                self._blend(future.result(), places, y0, h, state["acc"])
            elif item[0] == "invalid":
                state["acc"].mark_invalid(item[1], item[2])
            else:
                finish(*state["acc"].take_until(item[1]))

        with cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fc-read") as reader, \
                cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fc-write") as writer, \
                cf.ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix="fc-model") as model:
            try:
                pending_read = reader.submit(self._read, *strips[0])
                for i, (y0, h) in enumerate(strips):
                    data, valid = pending_read.result()
                    if i + 1 < total:
                        pending_read = reader.submit(self._read, *strips[i + 1])
                    check_cancel(self.progress)
                    if self.card.kind == "pixel":
                        finish(y0, self._predict_pixels(data, valid))
                        continue
                    if state["acc"] is None:
                        state["acc"] = _Accumulator(self.kinds, self.grid.width, self.tile, top=y0,
                                                    coverage=self._lattice_weights()[2])
                    for places, batch in self._batches(data, valid):
                        queue.append(("batch", y0, h, places, model.submit(self._run_members, batch)))
                        while sum(item[0] == "batch" for item in queue) > 2 * self.lanes:
                            consume(queue.popleft())
                    if not valid.all():
                        queue.append(("invalid", y0, valid))
                    queue.append(("flush", strips[i + 1][0] if i + 1 < total else min(row1, self.grid.height)))
                while queue:
                    consume(queue.popleft())
                if state["write"] is not None:
                    state["write"].result()
            except BaseException:
                for item in queue:
                    if item[0] == "batch":
                        item[4].cancel()
                raise

    def _write(self, writers, y0: int, arrays: dict) -> None:
        from rasterio.windows import Window

        for kind, dst in writers.items():
            block = arrays[kind]
            if kind == "prediction" and not self.any_finite:
                self.any_finite = bool(np.isfinite(block).any())
            if block.shape[0]:
                dst.write(block[None].astype(np.float32, copy=False),
                          window=Window(0, y0, block.shape[1], block.shape[0]))

    def _predict_pixels(self, data, valid) -> dict:
        c, h, w = data.shape
        features = self.card.preprocess(data.reshape(c, -1).T[valid.ravel()], axis=1)
        out = {k: np.full(h * w, np.nan, dtype=np.float32) for k in self.kinds}
        idx = np.flatnonzero(valid.ravel())
        for start in range(0, features.shape[0], self.batch):
            chunk = np.ascontiguousarray(features[start:start + self.batch])
            members = [{k: np.asarray(v).reshape(len(chunk), -1).T for k, v in r(chunk).items()}  # (C, N)
                       for r in self.runners]
            stats = combine_members(self.card, members, self.coverage)
            for kind in self.kinds:
                out[kind][idx[start:start + len(chunk)]] = stats[kind]
            self.tiles += 1
        return {k: v.reshape(h, w) for k, v in out.items()}

    def _tile_columns(self) -> list:
        grid_w, tile = self.grid.width, self.tile
        xs = list(range(0, max(grid_w - tile, 0) + 1, self.step))
        if xs[-1] + tile < grid_w:
            xs.append(grid_w - tile)
        return xs

    def _lattice_weights(self):
        """Every tile's blending weight divided by the sum of the weights over the whole lattice, so that the
        blended value is a plain sum of contributions. The lattice is a product of tile rows and columns, so that
        sum is a product of a row sum and a column sum, and each tile's normalized weight is still an outer
        product of two vectors. Computed on the global lattice: a row band of a cluster job gets the same."""
        if self._weights is None:
            tile, ov = self.tile, self.overlap

            def normalized(starts, size):
                raw = {s: blend_weights(tile, ov, s > 0, s + tile < size)[:min(tile, size - s)] for s in starts}
                total = np.zeros(size)
                for s, w in raw.items():
                    total[s:s + len(w)] += w
                with np.errstate(invalid="ignore", divide="ignore"):
                    return ({s: np.where(total[s:s + len(w)] > 0, w / total[s:s + len(w)], 0).astype(np.float32)
                             for s, w in raw.items()}, total > 0)

            wy, covered_y = normalized([y for y, _ in self._strips()], self.grid.height)
            wx, covered_x = normalized(self._tile_columns(), self.grid.width)
            self._weights = (wy, wx, None if covered_y.all() and covered_x.all() else (covered_y, covered_x))
        return self._weights

    def _batches(self, data, valid):
        """``(tile columns, batch array)`` for the tiles of a strip, ``batch`` tiles at a time."""
        tile = self.tile
        prepared = self.card.preprocess(data, axis=0)
        if not valid.all():
            prepared[:, ~valid] = 0.0  # nodata: the standardized mean, and no NaN into the network
        xs = self._tile_columns()
        for start in range(0, len(xs), self.batch):
            patches = []
            for x0 in xs[start:start + self.batch]:
                patch = prepared[:, :, x0:x0 + tile]
                if patch.shape[1] < tile or patch.shape[2] < tile:  # raster smaller than a tile
                    pad = ((0, 0), (0, tile - patch.shape[1]), (0, tile - patch.shape[2]))
                    patch = np.pad(patch, pad, mode="reflect" if min(patch.shape[1:]) > 1 else "edge")
                patches.append(patch)
            yield xs[start:start + self.batch], np.ascontiguousarray(np.stack(patches))

    def _run_members(self, batch) -> list:
        return [r(batch) for r in self.runners]

    def _blend(self, members, places, y0, h, acc):
        wy, wx, _ = self._lattice_weights()
        wy = wy[y0][:h]
        tile = self.tile
        plain = len(members) == 1 and [o.meaning for o in self.card.outputs] == ["mean"]
        for j, x0 in enumerate(places):
            if plain:  # one member, a mean only: no statistics to combine
                spec = self.card.outputs[0]
                stats = {"prediction": card_output(self.card, members[0][spec.name][j], spec, tile)}
            else:
                per_member = [{name: np.asarray(out[name][j], dtype=np.float64).reshape(-1, tile, tile)  # (C, T, T)
                               for name in out} for out in members]
                stats = combine_members(self.card, per_member, self.coverage)
            w = len(wx[x0])
            acc.add(y0, x0, {k: stats[k][:h, :w] for k in self.kinds}, wy, wx[x0])
            self.tiles += 1


def card_output(card: ModelCard, array, spec, tile: int) -> np.ndarray:
    """One tile's mean output channel in the prediction's units (the card's output scaling applied)."""
    value = np.asarray(array).reshape(-1, tile, tile)[spec.channel]
    return value if card.output_scale == 1.0 else card.postprocess(value.astype(np.float32), spec.meaning)


def _runs_of_same_file(sources) -> list:
    """``(start, stop)`` of the runs of consecutive stacked bands that come from one file (read in one call)."""
    runs = []
    for i, (path, _, nodata) in enumerate(sources):
        if runs and sources[runs[-1][0]][0] == path and sources[runs[-1][0]][2] == nodata:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return [tuple(r) for r in runs]


class _Buffers:
    """A ring of strip buffers reused in turn: the reader fills one while the model works on another, and fresh
    memory is not page-faulted in for every strip (a quarter of the reading time on a virtual machine). Two are
    enough: strip i + 2 is read into strip i's buffer only after strip i's batches were cut (copied) from it."""

    def __init__(self, count: int = 2):
        self.count, self.ring, self.next = count, [], 0

    def take(self, shape) -> np.ndarray:
        size, i = math.prod(shape), self.next % self.count
        self.next += 1
        if i == len(self.ring):
            self.ring.append(np.empty(size, dtype=np.float32))
        elif self.ring[i].size < size:
            self.ring[i] = np.empty(size, dtype=np.float32)
        return self.ring[i][:size].reshape(shape)


def _rows_of(arrays: dict) -> int:
    return next(iter(arrays.values())).shape[0] if arrays else 0


def _clip_rows(y0: int, arrays: dict, row0: int, row1: int):
    """Finished rows cut to ``[row0, row1)`` (a row band's own rows; the others lack some contributions)."""
    lo, hi = max(y0, row0), min(y0 + _rows_of(arrays), row1)
    hi = max(hi, lo)
    return lo, {k: v[lo - y0:hi - y0] for k, v in arrays.items()}


class _Accumulator:
    """Blended sums of the rows still open: ``tile`` rows from grid row ``top``, shifted up as rows finish."""

    def __init__(self, kinds, width, rows, top: int = 0, coverage=None):
        self.kinds, self.width, self.top = kinds, width, top
        self.coverage = coverage  # (rows covered, columns covered) where some pixel has no tile weight, else None
        self.sums = {k: np.zeros((rows, width), dtype=np.float32) for k in kinds}
        self.invalid = np.zeros((rows, width), dtype=bool)
        self.scratch = np.empty((rows, rows), dtype=np.float32)

    def add(self, y0, x0, values: dict, wy: np.ndarray, wx: np.ndarray):
        """Adds ``values × wy ⊗ wx`` (normalized tile weights) at grid row ``y0``, column ``x0``."""
        h, w = len(wy), len(wx)
        r = y0 - self.top
        part = self.scratch[:h, :w]
        for k in self.kinds:
            np.multiply(values[k], wy[:, None], out=part)
            part *= wx
            self.sums[k][r:r + h, x0:x0 + w] += part

    def mark_invalid(self, y0, valid):
        r = y0 - self.top
        self.invalid[r:r + valid.shape[0]] |= ~valid

    def take_until(self, row: int):
        """The finished rows ``top…row`` (new arrays, NaN where an input was nodata); the rest move up."""
        n = max(0, row - self.top)
        blank = self.invalid[:n]
        if self.coverage is not None:
            rows, cols = self.coverage
            blank = blank | ~rows[self.top:self.top + n, None] | ~cols[None, :]
        out = {}
        keep = len(self.invalid) - n
        any_blank = blank.any()
        for k in self.kinds:
            out[k] = self.sums[k][:n].copy()
            if any_blank:
                out[k][blank] = np.nan
            self.sums[k][:keep] = self.sums[k][n:]
            self.sums[k][keep:] = 0
        self.invalid[:keep] = self.invalid[n:]
        self.invalid[keep:] = False
        start = self.top
        self.top += n
        return start, out


__all__ = ["predict_raster", "combine_members", "blend_weights", "choose_providers", "DEVICES"]
