"""A Cloud-Optimized GeoTIFF written as its rows arrive.

GDAL's COG driver makes a COG by copying a finished raster: it reads everything back,
builds the overviews in a temporary file and compresses every tile again, after the
computation is over (for a 6000² float32 prediction on 2 cores: 1.2 s, a fifth of the model's
own time). :class:`StreamingCOG` does the same work while the rows are being computed, in the
writer thread: each full row of 512-pixel tiles is compressed and appended to a file of its
level as it comes, and averaged 2 × 2 into the next overview level (NaN-aware, like GDAL's
``AVERAGE``). Closing only writes the header and concatenates the levels (a kernel copy).

The file is laid out as GDAL's COG driver lays it out (https://gdal.org/drivers/raster/cog.html):
the TIFF header, GDAL's structural metadata ("ghost area": ``LAYOUT=IFDS_BEFORE_DATA``,
``BLOCK_ORDER=ROW_MAJOR``, a 4-byte size before each tile and its last 4 bytes repeated after
it), the IFDs of the full resolution then of the overviews from the largest, then the tiles of
the smallest overview first and of the full resolution last, each level row-major. GDAL reads
it as ``LAYOUT=COG`` and its ``validate_cloud_optimized_geotiff.py`` passes it. The georeferencing
and metadata tags (GeoKeys, pixel scale and tie point, ``GDAL_METADATA`` with the tags and band
description, ``GDAL_NODATA``) are GDAL's own: copied from a one-pixel GeoTIFF that GDAL writes
with the same CRS, transform, nodata and metadata, so that no CRS is ever encoded by hand.

One band of float32 with NaN as nodata (what :mod:`..models.predict` writes); compression ZSTD
(TIFF code 50000, as GDAL and libtiff write it; level 1, no predictor: on float predictions the
floating-point predictor gained nothing here and cost a third of the time) through the
``zstandard`` package, or none.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
from pathlib import Path

import numpy as np

from ..errors import ForestCarbonError
from ..outputs import atomic_output, gdal_tags
from .write import RasterSpec, describe

COMPRESSIONS = {"none": 1, "zstd": 50000}

# TIFF tags (TIFF 6.0; GeoTIFF 1.1, OGC 19-008r4; GDAL's private tags 42112/42113)
NEW_SUBFILE_TYPE, IMAGE_WIDTH, IMAGE_LENGTH, BITS_PER_SAMPLE, COMPRESSION = 254, 256, 257, 258, 259
PHOTOMETRIC, SAMPLES_PER_PIXEL, PLANAR_CONFIG = 262, 277, 284
TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS, SAMPLE_FORMAT = 322, 323, 324, 325, 339
GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)  # pixel scale, tie point, transformation, GeoKeys
GDAL_METADATA, GDAL_NODATA = 42112, 42113
SHORT, LONG, LONG8 = 3, 4, 16
TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8}


def available(compress: str) -> bool:
    """Whether :class:`StreamingCOG` can write a compression.

    Parameters
    ----------
    compress : str
        ``"zstd"`` or ``"none"``.

    Returns
    -------
    bool
        True for ``"none"``, and for ``"zstd"`` where the ``zstandard`` package imports.
    """
    if compress.lower() == "none":
        return True
    if compress.lower() != "zstd":
        return False
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


def overview_count(width: int, height: int, block: int) -> int:
    """The number of overviews GDAL's ``OVERVIEWS=AUTO`` makes: halve until the image fits in one tile.

    Parameters
    ----------
    width, height : int
        The full resolution's size in pixels.
    block : int
        Tile side in pixels.

    Returns
    -------
    int
        The number of overview levels.
    """
    count = 0
    while max(width, height) > block:
        width, height = math.ceil(width / 2), math.ceil(height / 2)
        count += 1
    return count


def average_2x2(rows: np.ndarray) -> np.ndarray:
    """The NaN-aware mean of each 2 × 2 cell, as GDAL's ``AVERAGE`` overview resampling.

    Parameters
    ----------
    rows : numpy.ndarray
        float32 (rows, cols); an odd last row or column averages what it has.

    Returns
    -------
    numpy.ndarray
        float32 (ceil(rows / 2), ceil(cols / 2)); NaN where all four are NaN (sums in float32: within an
        ulp or two of float64).
    """
    h, w = rows.shape
    if h % 2 or w % 2:
        rows = np.pad(rows, ((0, h % 2), (0, w % 2)), constant_values=np.nan)
    pairs = rows[0::2] + rows[1::2]  # whole rows first: contiguous, the fast way through memory
    out = pairs[:, 0::2] + pairs[:, 1::2]
    out *= np.float32(0.25)
    if not np.isnan(out).any():  # no NaN in, none out: the plain mean is the NaN-aware one
        return out
    nan = np.isnan(rows)
    filled = np.where(nan, np.float32(0), rows)
    count = (~nan[0::2]).astype(np.float32) + ~nan[1::2]
    count = count[:, 0::2] + count[:, 1::2]
    total = filled[0::2] + filled[1::2]
    total = total[:, 0::2] + total[:, 1::2]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.float32(np.nan)).astype(np.float32)


class _Level:
    """One resolution: rows waiting for a full row of tiles, and the tiles written so far."""

    def __init__(self, width: int, height: int, block: int, path: Path):
        self.width, self.height, self.block = width, height, block
        self.path = path
        self.file = open(path, "wb")
        self.rows: list = []  # arrays of full-width rows not yet in a row of tiles
        self.pending = 0  # rows in self.rows
        self.done = 0  # rows written as tiles
        self.offsets: list = []  # tile data offsets within this level's file
        self.sizes: list = []
        self.written = 0  # bytes in this level's file


class StreamingCOG:
    """Full-width rows written in order (:meth:`write`) become a COG at ``path`` on :meth:`close`.

    Parameters
    ----------
    path : str or Path
        The COG to write (level files are made beside it).
    grid : Grid
        The raster's grid (CRS, transform, size).
    descriptions : sequence of str, optional
        The band's description.
    tags : dict, optional
        Dataset tags as GDAL stores them (:func:`..outputs.gdal_tags`).
    block : int
        Tile side in pixels, a multiple of 16.
    compress : str
        ``"zstd"`` or ``"none"`` (:func:`available`).
    level : int
        ZSTD level.
    units : sequence of str, optional
        The band's unit type (GDAL's ``GetUnitType``), e.g. ``"Mg/ha"``.
    """

    def __init__(self, path, grid, descriptions=None, tags=None, block: int = 512, compress: str = "zstd",
                 level: int = 1, units=None):
        self.units = list(units or [])  # each band's unit type (GDAL's GetUnitType), e.g. "Mg/ha"
        if block % 16:
            raise ForestCarbonError(f"COG tiles must be a multiple of 16 pixels (got {block}).")
        compress = compress.lower()
        if not available(compress):
            raise ForestCarbonError(f"Cannot write {compress.upper()} COGs here: install the 'zstandard' package "
                                    "or write them through GDAL.")
        self.path, self.grid, self.block = Path(path), grid, block
        self.descriptions, self.tags = list(descriptions or []), dict(tags or {})
        self.compression = COMPRESSIONS[compress]
        if self.compression == COMPRESSIONS["zstd"]:
            import zstandard

            self._compressor = zstandard.ZstdCompressor(level=level)
        self.levels = []
        width, height = grid.width, grid.height
        try:
            for k in range(overview_count(width, height, block) + 1):
                self.levels.append(_Level(width, height, block, self.path.with_name(f"{self.path.name}.level{k}")))
                width, height = math.ceil(width / 2), math.ceil(height / 2)
        except OSError as exc:
            self.cleanup()
            raise ForestCarbonError(f"Cannot write beside '{self.path}' ({exc.strerror or exc}): choose a folder "
                                    "you can write to, with room for the output.") from exc
        self._tile = np.empty((block, block), dtype="<f4")
        self.next_row = 0
        self.bigtiff = None  # None: BigTIFF when the file would pass 4 GB (GDAL's IF_SAFER)

    # ------------------------------------------------------------------ rows in

    def write(self, data: np.ndarray, window=None) -> None:
        """Rows ``window.row_off …`` (all columns; ``data`` (1, rows, width) or (rows, width)), in order. The rows
        are kept, not copied, until their row of tiles is complete: do not change ``data`` afterwards."""
        rows = np.asarray(data, dtype=np.float32)
        rows = rows[0] if rows.ndim == 3 else rows
        row_off = self.next_row if window is None else int(window.row_off)
        if row_off != self.next_row or rows.shape[1] != self.grid.width or (window is not None and window.col_off):
            raise ForestCarbonError(f"A streamed COG takes whole rows in order: expected rows from {self.next_row} "
                                    f"across {self.grid.width} columns, got {rows.shape[0]} from row {row_off}.")
        self.next_row += rows.shape[0]
        self._add(0, rows)

    def _add(self, k: int, rows: np.ndarray) -> None:
        level = self.levels[k]
        level.rows.append(rows)
        level.pending += rows.shape[0]
        last = level.done + level.pending >= level.height
        while level.pending >= level.block or (last and level.pending):
            take = min(level.block, level.pending)
            block_rows = self._take_rows(level, take)
            self._write_tiles(level, block_rows)
            if k + 1 < len(self.levels):
                self._add(k + 1, average_2x2(block_rows))

    @staticmethod
    def _take_rows(level: _Level, count: int) -> np.ndarray:
        parts, got = [], 0
        while got < count:
            head = level.rows[0]
            need = count - got
            if head.shape[0] <= need:
                parts.append(level.rows.pop(0))
                got += head.shape[0]
            else:
                parts.append(head[:need])
                level.rows[0] = head[need:]
                got += need
        level.pending -= count
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _write_tiles(self, level: _Level, rows: np.ndarray) -> None:
        b = self.block
        tile = self._tile  # one buffer for every tile: no fresh memory to fault in for each
        for x0 in range(0, level.width, b):
            part = rows[:, x0:x0 + b]
            if part.shape != (b, b):  # edge tiles are whole tiles in TIFF, padded with nodata
                tile[:] = np.nan
            tile[:part.shape[0], :part.shape[1]] = part
            body = self._compressor.compress(tile) if self.compression != 1 else tile.tobytes()
            # GDAL's block leader (the size) and trailer (the last 4 bytes again)
            level.file.write(struct.pack("<I", len(body)))
            level.file.write(body)
            level.file.write(body[-4:])
            level.offsets.append(level.written + 4)
            level.sizes.append(len(body))
            level.written += len(body) + 8
        level.done += rows.shape[0]

    # ------------------------------------------------------------------ the file

    def close(self) -> Path:
        """Write the COG at ``path`` (the level files are removed)."""
        if self.next_row != self.grid.height:
            raise ForestCarbonError(f"The COG got {self.next_row} of {self.grid.height} rows.")
        for level in self.levels:
            level.file.close()
        template = _template_tags(self.path, self.grid, self.descriptions, self.tags, self.units)
        data_bytes = sum(level.written for level in self.levels)
        bigtiff = self.bigtiff
        if bigtiff is None:
            bigtiff = data_bytes + 2 ** 20 + 40 * sum(len(lv.sizes) for lv in self.levels) >= 2 ** 32 - 1
        header, level_starts = self._header(template, bigtiff)
        # "r+b" on the empty file atomic_output made: truncating it ("wb") would make ext4 start writing the
        # whole file back to disk when it is closed (auto_da_alloc), a tenth of a second on the caller's clock
        with open(self.path, "r+b" if self.path.exists() else "wb") as out:
            out.write(header)
            for level in reversed(self.levels):  # the smallest overview first, the full resolution last
                assert out.tell() == level_starts[id(level)]
                with open(level.path, "rb") as src:
                    _copy(src, out, level.written)
        self.cleanup()
        return self.path

    def cleanup(self) -> None:
        for level in self.levels:
            with contextlib.suppress(OSError):
                level.file.close()
            with contextlib.suppress(OSError):
                level.path.unlink()

    def _header(self, template: list, bigtiff: bool):
        """The bytes before the first tile, and where each level's tiles start."""
        ghost = ("LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\n"
                 "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\nKNOWN_INCOMPATIBLE_EDITION=NO\n ")
        ghost = f"GDAL_STRUCTURAL_METADATA_SIZE={len(ghost):06d} bytes\n{ghost}".encode("ascii")
        start = (16 if bigtiff else 8) + len(ghost)
        start += start % 2
        # first pass with zero offsets to size the IFDs, then with the real ones
        level_starts = {}
        for _ in range(2):
            ifds, position = [], start
            for k, level in enumerate(self.levels):
                tags = self._tags(k, level, template, level_starts.get(id(level), 0), bigtiff)
                block = _ifd(tags, position, bigtiff, last=k == len(self.levels) - 1)
                ifds.append(block)
                position += len(block)
            data = position
            for level in reversed(self.levels):
                level_starts[id(level)] = data
                data += level.written
        head = (struct.pack("<2sHHHQ", b"II", 43, 8, 0, start) if bigtiff
                else struct.pack("<2sHI", b"II", 42, start))
        header = head + ghost + b"\0" * (start - len(head) - len(ghost)) + b"".join(ifds)
        return header, level_starts

    def _tags(self, k, level, template, data_start, bigtiff) -> list:
        offset_type = LONG8 if bigtiff else LONG
        offsets = [data_start + o for o in level.offsets]
        tags = [
            (NEW_SUBFILE_TYPE, LONG, [1 if k else 0]),
            (IMAGE_WIDTH, LONG, [level.width]),
            (IMAGE_LENGTH, LONG, [level.height]),
            (BITS_PER_SAMPLE, SHORT, [32]),
            (COMPRESSION, SHORT, [self.compression]),
            (PHOTOMETRIC, SHORT, [1]),  # min-is-black
            (SAMPLES_PER_PIXEL, SHORT, [1]),
            (PLANAR_CONFIG, SHORT, [1]),
            (TILE_WIDTH, SHORT, [self.block]),
            (TILE_LENGTH, SHORT, [self.block]),
            (TILE_OFFSETS, offset_type, offsets),
            (TILE_BYTE_COUNTS, offset_type if bigtiff else LONG, level.sizes),
            (SAMPLE_FORMAT, SHORT, [3]),  # IEEE floating point
        ]
        for tag, type_, count, raw in template:
            if k == 0 or tag == GDAL_NODATA:  # georeferencing and metadata on the full resolution
                tags.append((tag, type_, (count, raw)))
        return sorted(tags, key=lambda t: t[0])


def _ifd(tags: list, position: int, bigtiff: bool, last: bool) -> bytes:
    """One IFD at file offset ``position``, with its out-of-line values right after it."""
    entry, count_fmt, inline = (20, "<Q", 8) if bigtiff else (12, "<H", 4)
    n = len(tags)
    fixed = len(struct.pack(count_fmt, n)) + n * entry + (8 if bigtiff else 4)
    entries, extra = [], b""
    for tag, type_, values in tags:
        if isinstance(values, tuple):  # (count, raw bytes) copied from GDAL's template
            count, raw = values
        else:
            count = len(values)
            raw = struct.pack("<" + {SHORT: "H", LONG: "I", LONG8: "Q"}[type_] * count, *values)
        if len(raw) <= inline:
            value = raw.ljust(inline, b"\0")
        else:
            where = position + fixed + len(extra)
            value = struct.pack("<Q" if bigtiff else "<I", where)
            extra += raw + (b"\0" if len(raw) % 2 else b"")
        entries.append(struct.pack("<HHQ" if bigtiff else "<HHI", tag, type_, count) + value)
    next_ifd = 0 if last else position + fixed + len(extra)
    next_ifd = struct.pack("<Q" if bigtiff else "<I", next_ifd)
    return struct.pack(count_fmt, n) + b"".join(entries) + next_ifd + extra


def _template_tags(path: Path, grid, descriptions, tags, units=None) -> list:
    """``(tag, type, count, raw value bytes)`` of the georeferencing and metadata tags GDAL writes for this grid,
    nodata, band description and tags, read from a one-pixel GeoTIFF beside ``path``."""
    import rasterio

    probe = path.with_name(path.name + ".probe.tif")
    try:
        with rasterio.open(probe, "w", driver="GTiff", width=1, height=1, count=1, dtype="float32", crs=grid.crs,
                           transform=grid.transform, nodata=float("nan")) as dst:
            describe(dst, RasterSpec(descriptions=tuple(descriptions), tags=tags, units=tuple(units or ())))
        return [t for t in _read_ifd(probe.read_bytes()) if t[0] in GEO_TAGS + (GDAL_METADATA, GDAL_NODATA)]
    finally:
        for leftover in (probe, probe.with_name(probe.name + ".aux.xml")):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _read_ifd(data: bytes) -> list:
    """The entries of the first IFD of a little-endian classic TIFF: ``(tag, type, count, raw bytes)``."""
    if data[:4] != b"II*\0":
        raise ForestCarbonError("GDAL wrote an unexpected GeoTIFF (not little-endian classic TIFF).")
    (offset,) = struct.unpack_from("<I", data, 4)
    (n,) = struct.unpack_from("<H", data, offset)
    out = []
    for i in range(n):
        tag, type_, count, value = struct.unpack_from("<HHI4s", data, offset + 2 + 12 * i)
        size = TYPE_SIZE[type_] * count
        if size > 4:
            (where,) = struct.unpack("<I", value)
            value = data[where:where + size]
        out.append((tag, type_, count, value[:size]))
    return out


def _copy(src, dst, length: int) -> None:
    """``length`` bytes from one open file to another: in the kernel where it can (copy_file_range)."""
    dst.flush()
    done = 0
    try:
        while done < length:
            n = os.copy_file_range(src.fileno(), dst.fileno(), length - done)
            if n == 0:
                break
            done += n
    except (AttributeError, OSError):
        pass
    if done < length:  # another file system, or an old kernel: plain copies
        src.seek(done)
        dst.seek(0, os.SEEK_END)
        while done < length:
            chunk = src.read(min(length - done, 1 << 24))
            if not chunk:
                raise ForestCarbonError("A COG level file ended early.")
            dst.write(chunk)
            done += len(chunk)
    dst.seek(0, os.SEEK_END)


@contextlib.contextmanager
def cog_writer(grid, path, descriptions=None, tags=None, provenance=None, block: int = 512,
               compress: str = "zstd", units=None):
    """A :class:`StreamingCOG` to write rows into, made atomic.

    On a clean exit it becomes ``path``; on an error nothing is left (the partial output and the level
    files are removed).

    Parameters
    ----------
    grid : Grid
        The raster's grid.
    path : str or Path
        The COG to write.
    descriptions, units : sequence of str, optional
        The band's description and unit type.
    tags : dict, optional
        Dataset tags.
    provenance : dict, optional
        The provenance record, stored with the tags (:func:`..outputs.gdal_tags`).
    block : int
        Tile side in pixels.
    compress : str
        ``"zstd"`` or ``"none"``.

    Yields
    ------
    StreamingCOG
        The writer.
    """
    with atomic_output(Path(path)) as tmp:
        writer = StreamingCOG(tmp, grid, descriptions, gdal_tags(tags, provenance), block=block, compress=compress,
                              units=units)
        try:
            yield writer
            writer.close()
        finally:
            writer.cleanup()
