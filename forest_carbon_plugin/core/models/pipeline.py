"""The prediction pipeline: strips of rows read ahead, run through the model, blended and written behind.

* per-pixel models (``[N, F]``) run on the valid pixels of strips of rows, in batches;
* patch models (``[N, C, H, W]``) run on overlapping tiles of a global lattice (a tile every
  ``tile − overlap`` pixels), batched, blended with weights that are 0 on the outer quarter
  of the overlap and rise with a raised cosine over its middle half (:func:`blend_weights`): for a fully
  convolutional model whose receptive-field radius is ≤ overlap/4 the result equals a whole-image run away
  from the raster's own border.

Rows are finished strip by strip (a tile row at a time), so memory follows ``width × tile × outputs`` and the
batch, never the raster's height. A reader thread prefetches the next strip and a writer thread writes the
finished one while the model runs; on the CPU a patch model runs one single-threaded session run per core on
its own batch.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import math
from dataclasses import dataclass

import numpy as np

from ..progress import check_cancel
from ..raster.grid import Grid
from ..raster.read import Readers
from .card import ModelCard
from .intervals import combine_members

__all__ = ["Stack", "Pipeline", "blend_weights", "card_output"]


@dataclass
class Stack:
    """The stacked input bands on the first input's grid, and their readers."""


    grid: Grid
    sources: list  # (path, band index 1-based, nodata)
    readers: Readers
    names: list


def blend_weights(size: int, overlap: int, taper_low: bool, taper_high: bool) -> np.ndarray:
    """The 1-D blending weight of a tile.

    Parameters
    ----------
    size : int
        Tile side (pixels).
    overlap : int
        Overlap between neighbouring tiles (pixels).
    taper_low, taper_high : bool
        Whether the tile meets another tile on that side (untapered where it meets the raster's border).

    Returns
    -------
    numpy.ndarray
        0 on the outer quarter of the overlap, a raised cosine over its middle half, 1 inside.
    """
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


class Pipeline:
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
                        state["acc"] = _TileSums(self.kinds, self.grid.width, self.tile, top=y0,
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
    """One tile's mean output channel in the prediction's units.

    Parameters
    ----------
    card : ModelCard
    array : array_like
        The member's output for one tile.
    spec : OutputSpec
        The output and its channel.
    tile : int
        Tile side (pixels).

    Returns
    -------
    numpy.ndarray
        (tile, tile), the card's output scaling applied.
    """
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


class _TileSums:
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
