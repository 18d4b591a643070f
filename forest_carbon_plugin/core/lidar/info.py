"""Describe LAS/LAZ files: what a tile holds before anything is computed from it.

The numbers follow the ASPRS LAS 1.4 specification (R15, 2019) field definitions:
version, point data record format, point count, the header's bounding box, the CRS
from the OGC WKT VLR or the GeoTIFF key VLRs, and counts of the classification and
return-number fields. Points are read in chunks, so memory is bounded by the chunk
size whatever the file size. Densities are per m² of the convex hull of the points'
XY (lidR's ``density()`` divides by the area of the point cloud the same way), in the
units of the CRS (m² for metric CRSs).
"""

from __future__ import annotations

import dataclasses
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..dependencies import require
from ..errors import ForestCarbonError
from ..progress import NullProgress, Progress, check_cancel
from .vpc import is_vpc, vpc_files

LAS_SUFFIXES = (".las", ".laz")
CHUNK_POINTS = 1_000_000

#: ASPRS standard classes (LAS 1.4 R15, table 17).
ASPRS_CLASSES = {
    0: "created, never classified", 1: "unclassified", 2: "ground", 3: "low vegetation",
    4: "medium vegetation", 5: "high vegetation", 6: "building", 7: "low point (noise)",
    8: "model key-point", 9: "water", 10: "rail", 11: "road surface", 12: "overlap",
    13: "wire guard", 14: "wire conductor", 15: "transmission tower", 16: "wire connector",
    17: "bridge deck", 18: "high noise",
}


@dataclass
class LasInfo:
    """What one LAS/LAZ file holds."""

    path: str
    file_size_bytes: int
    version: str
    point_format: int
    point_count: int
    compressed: bool
    min_x: float
    min_y: float
    min_z: float
    max_x: float
    max_y: float
    max_z: float
    scales: list[float]
    offsets: list[float]
    crs_epsg: int | None
    crs_horizontal_epsg: int | None
    crs_name: str | None
    crs_wkt: str | None
    crs_note: str | None
    classification_counts: dict[int, int]
    return_number_counts: dict[int, int]
    hull_area_m2: float
    point_density_per_m2: float
    pulse_density_per_m2: float
    normalized: bool | None
    normalized_reason: str
    extra_dimensions: list[str] = field(default_factory=list)
    generating_software: str = ""
    creation_date: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        # JSON object keys are strings; keep class codes readable.
        d["classification_counts"] = {str(k): v for k, v in self.classification_counts.items()}
        d["return_number_counts"] = {str(k): v for k, v in self.return_number_counts.items()}
        return d


def las_files(path) -> list[Path]:
    """The LAS/LAZ files of ``path``.

    Parameters
    ----------
    path : str or Path
        A LAS/LAZ file (COPC included), a folder (the files directly in it) or a QGIS virtual point
        cloud (``.vpc``, the files it lists).

    Returns
    -------
    list of Path
    """
    p = Path(path)
    if not p.exists():
        raise ForestCarbonError(f"'{p}' does not exist: give a LAS/LAZ file or a folder of them, or a .vpc.")
    if p.is_file() and is_vpc(p):
        return vpc_files(p)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in LAS_SUFFIXES)
        if not files:
            raise ForestCarbonError(
                f"The folder '{p}' holds no .las or .laz file: choose a folder of LiDAR tiles or one file.")
        return files
    if p.suffix.lower() not in LAS_SUFFIXES:
        raise ForestCarbonError(f"'{p.name}' is not a .las, .laz (COPC included) or .vpc file: choose a LAS/LAZ "
                                "point cloud, a virtual point cloud or a folder of tiles.")
    return [p]


class _PointTally:
    """What describe_las counts over the chunks of a file: classes, returns, Z near 0, the hull."""

    def __init__(self):
        self.class_counts = np.zeros(256, dtype=np.int64)
        self.return_counts = np.zeros(16, dtype=np.int64)
        self.hull = _IncrementalHull()
        self.seen = self.first_returns = self.ground = self.near_zero_ground = self.near_zero_all = 0

    def add(self, chunk) -> None:
        cls = np.asarray(chunk.classification, dtype=np.int64)
        rn = np.asarray(chunk.return_number, dtype=np.int64)
        z = np.asarray(chunk.z, dtype=np.float64)
        self.seen += len(cls)
        self.class_counts += np.bincount(cls, minlength=256)[:256]
        self.return_counts += np.bincount(rn, minlength=16)[:16]
        self.first_returns += int(np.count_nonzero(rn == 1))
        is_ground = cls == 2
        self.ground += int(is_ground.sum())
        self.near_zero_ground += int(np.count_nonzero(np.abs(z[is_ground]) <= 0.5))
        self.near_zero_all += int(np.count_nonzero(np.abs(z) <= 0.5))
        self.hull.add(np.asarray(chunk.x, dtype=np.float64), np.asarray(chunk.y, dtype=np.float64))


def _tally_points(reader, path: Path, progress: Progress, chunk_points: int) -> _PointTally:
    """Every point of an open LAS reader, in chunks; refuses a file with fewer points than its header says."""
    expected = int(reader.header.point_count)
    tally = _PointTally()
    try:
        for chunk in reader.chunk_iterator(chunk_points):
            check_cancel(progress)
            if len(chunk) == 0:
                break
            tally.add(chunk)
            if expected:
                progress.set_progress(min(100.0, 100.0 * tally.seen / expected))
    except ForestCarbonError:
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    if tally.seen != expected:
        raise ForestCarbonError(
            f"'{path.name}' is truncated or corrupt: its header announces {expected:,} points "
            f"but only {tally.seen:,} could be read. Re-download or re-export the file.")
    return tally


def describe_las(path, progress: Progress | None = None, chunk_points: int = CHUNK_POINTS) -> LasInfo:
    """Describe one LAS/LAZ file, reading its points in chunks.

    Parameters
    ----------
    path : str or Path
        A LAS or LAZ (COPC included) file.
    progress : Progress, optional
        Progress over the points, and cancel.
    chunk_points : int
        Points read at a time (bounds the memory).

    Returns
    -------
    LasInfo
        Header fields (ASPRS LAS 1.4 R15), CRS, class and return counts, hull area, densities, and
        whether Z look normalized.
    """
    path = Path(path)
    modules = ("laspy", "lazrs") if path.suffix.lower() == ".laz" else ("laspy",)
    laspy = require(*modules)
    laspy = laspy[0] if isinstance(laspy, tuple) else laspy
    progress = progress or NullProgress()
    try:
        reader = laspy.open(path)
    except Exception as exc:  # laspy raises several types for a file that is not LAS
        raise _unreadable(path, exc) from exc
    with reader:
        header = reader.header
        epsg, h_epsg, crs_name, crs_wkt, crs_note, metres_per_unit = _crs_of(header)
        tally = _tally_points(reader, path, progress, chunk_points)
    seen = tally.seen
    area = tally.hull.area()
    mins, maxs = np.asarray(header.mins, dtype=float), np.asarray(header.maxs, dtype=float)
    if area <= 0:  # degenerate (a line of points): fall back to the header box
        area = float(max(maxs[0] - mins[0], 0) * max(maxs[1] - mins[1], 0))
    area *= metres_per_unit ** 2  # feet-based state-plane CRSs are common in the US
    normalized, reason = looks_normalized(tally.ground, tally.near_zero_ground, seen, tally.near_zero_all,
                                           float(mins[2]), float(maxs[2]))
    std_dims = set(header.point_format.standard_dimension_names)
    extra = [d for d in header.point_format.dimension_names if d not in std_dims]
    created = getattr(header, "creation_date", None)
    return LasInfo(
        path=str(path),
        file_size_bytes=path.stat().st_size,
        version=str(header.version),
        point_format=int(header.point_format.id),
        point_count=seen,
        compressed=path.suffix.lower() == ".laz",
        min_x=float(mins[0]), min_y=float(mins[1]), min_z=float(mins[2]),
        max_x=float(maxs[0]), max_y=float(maxs[1]), max_z=float(maxs[2]),
        scales=[float(s) for s in header.scales],
        offsets=[float(o) for o in header.offsets],
        crs_epsg=epsg, crs_horizontal_epsg=h_epsg, crs_name=crs_name, crs_wkt=crs_wkt, crs_note=crs_note,
        classification_counts={int(c): int(n) for c, n in enumerate(tally.class_counts) if n},
        return_number_counts={int(r): int(n) for r, n in enumerate(tally.return_counts) if n},
        hull_area_m2=float(area),
        point_density_per_m2=float(seen / area) if area > 0 else float("nan"),
        pulse_density_per_m2=float(tally.first_returns / area) if area > 0 else float("nan"),
        normalized=normalized, normalized_reason=reason,
        extra_dimensions=extra,
        generating_software=str(getattr(header, "generating_software", "") or "").strip("\x00 "),
        creation_date=created.isoformat() if created else None,
    )


def describe_catalog(path, progress: Progress | None = None) -> list[LasInfo]:
    """Describe a LAS/LAZ file or every LAS/LAZ file of a folder or .vpc (a tile catalog).

    Parameters
    ----------
    path : str or Path
        A LAS/LAZ file, a folder of them or a .vpc.
    progress : Progress, optional
        Progress over the files, cancel, and a warning when the tiles do not share one CRS.

    Returns
    -------
    list of LasInfo
    """
    progress = progress or NullProgress()
    files = las_files(path)
    infos = []
    for i, f in enumerate(files):
        check_cancel(progress)
        progress.info(f"Reading {f.name} ({i + 1}/{len(files)})")
        infos.append(describe_las(f, _Scaled(progress, i, len(files))))
    epsgs = {info.crs_epsg for info in infos}
    if len(epsgs) > 1:
        progress.warning(f"The tiles do not share one CRS (EPSG codes: {sorted(map(str, epsgs))}).")
    progress.set_progress(100.0)
    return infos


def catalog_summary(infos: list[LasInfo]) -> dict:
    """Totals over the tiles of a catalog.

    Parameters
    ----------
    infos : list of LasInfo
        :func:`describe_las` of each file.

    Returns
    -------
    dict
        Files, points, bounds, EPSG codes, class and return counts, point density per m².
    """
    classes: dict[int, int] = {}
    returns: dict[int, int] = {}
    for info in infos:
        for c, n in info.classification_counts.items():
            classes[c] = classes.get(c, 0) + n
        for r, n in info.return_number_counts.items():
            returns[r] = returns.get(r, 0) + n
    points = sum(i.point_count for i in infos)
    area = sum(i.hull_area_m2 for i in infos)
    return {
        "files": len(infos),
        "point_count": points,
        "min_x": min(i.min_x for i in infos), "min_y": min(i.min_y for i in infos),
        "min_z": min(i.min_z for i in infos), "max_x": max(i.max_x for i in infos),
        "max_y": max(i.max_y for i in infos), "max_z": max(i.max_z for i in infos),
        "crs_epsg": sorted({i.crs_epsg for i in infos if i.crs_epsg is not None}),
        "classification_counts": {str(k): classes[k] for k in sorted(classes)},
        "return_number_counts": {str(k): returns[k] for k in sorted(returns)},
        "point_density_per_m2": points / area if area > 0 else None,
    }


def report_document(infos: list[LasInfo], provenance: dict) -> dict:
    """The lidarinfo JSON document: the summary, each file and the provenance.

    Parameters
    ----------
    infos : list of LasInfo
        :func:`describe_las` of each file.
    provenance : dict
        The run's provenance record.

    Returns
    -------
    dict
    """
    return {"summary": catalog_summary(infos), "files": [i.to_dict() for i in infos],
            "provenance": provenance}


def report_html(infos: list[LasInfo], provenance: dict) -> str:
    """A self-contained HTML page describing the files: :func:`report_document` as a page.

    ``infos`` and ``provenance`` are as :func:`report_document` takes them; returns the page's text.
    """
    summary = catalog_summary(infos)
    e = html.escape
    rows = []
    for i in infos:
        classes = ", ".join(f"{c} {ASPRS_CLASSES.get(c, 'user-defined')}: {n:,}"
                            for c, n in sorted(i.classification_counts.items()))
        returns = ", ".join(f"{r}: {n:,}" for r, n in sorted(i.return_number_counts.items()))
        crs = f"EPSG:{i.crs_epsg}" if i.crs_epsg else (i.crs_name or "none")
        if i.crs_note:
            crs += f" ({i.crs_note})"
        norm = {True: "yes", False: "no", None: "unknown"}[i.normalized]
        rows.append(
            "<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in (
                Path(i.path).name, i.version, i.point_format, f"{i.point_count:,}",
                f"{i.min_x:.2f} – {i.max_x:.2f}", f"{i.min_y:.2f} – {i.max_y:.2f}",
                f"{i.min_z:.2f} – {i.max_z:.2f}", crs, classes, returns,
                f"{i.point_density_per_m2:.2f}", f"{i.pulse_density_per_m2:.2f}",
                f"{norm}: {i.normalized_reason}")) + "</tr>")
    header = ("file", "LAS", "point format", "points", "X", "Y", "Z", "CRS", "classes (ASPRS)",
              "return numbers", "points/m²", "pulses/m²", "height-normalized")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>LiDAR files: {e(str(len(infos)))} tile(s)</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:3px 6px;font-size:90%;vertical-align:top}}th{{background:#e8f0e0}}</style>
</head><body>
<h1>LiDAR files</h1>
<p>{summary['files']} file(s), {summary['point_count']:,} points, CRS {e(', '.join(f'EPSG:{c}' for c in summary['crs_epsg']) or 'unknown')};
mean density {(summary['point_density_per_m2'] or float('nan')):.2f} points/m² (convex-hull area).</p>
<table><tr>{''.join(f'<th>{e(h)}</th>' for h in header)}</tr>
{chr(10).join(rows)}
</table>
<h2>Provenance</h2><pre>{e(json.dumps(provenance, indent=2, default=str))}</pre>
</body></html>
"""


def _unreadable(path: Path, exc: Exception) -> ForestCarbonError:
    return ForestCarbonError(
        f"'{path.name}' is not a readable LAS/LAZ file ({type(exc).__name__}: {exc}). "
        "Check that it is a complete LAS or LAZ file (re-download or re-export it).")


def _crs_of(header):
    """EPSG code, horizontal EPSG, name, WKT, a note, and metres per horizontal CRS unit."""
    wkt_raw = None
    for vlr in list(header.vlrs) + list(getattr(header, "evlrs", None) or []):
        if type(vlr).__name__ == "WktCoordinateSystemVlr":
            wkt_raw = vlr.string.strip("\x00 ") if isinstance(vlr.string, str) else None
    try:
        crs = header.parse_crs()
    except Exception as exc:  # pyproj rejects some WKT written by LiDAR software
        return (None, None, None, wkt_raw,
                f"CRS present but not understood by PROJ: {str(exc).splitlines()[0][:120]}", 1.0)
    if crs is None:
        return None, None, None, wkt_raw, "no CRS in the file", 1.0
    epsg = crs.to_epsg()
    h_epsg = epsg
    if crs.is_compound and crs.sub_crs_list:
        h_epsg = crs.sub_crs_list[0].to_epsg()
    elif epsg is None and crs.is_projected:
        h_epsg = None
    note = None if epsg else "CRS without an EPSG code"
    horizontal = crs.sub_crs_list[0] if crs.is_compound and crs.sub_crs_list else crs
    metres = 1.0
    if horizontal.is_projected and horizontal.axis_info:
        metres = float(horizontal.axis_info[0].unit_conversion_factor or 1.0)
    elif horizontal.is_geographic:
        note = (note + "; " if note else "") + "geographic CRS: densities are per square degree"
    return epsg, h_epsg, crs.name, crs.to_wkt(), note, metres


def looks_normalized(ground, near_zero_ground, total, near_zero_all, min_z, max_z):
    """Do heights look like heights above ground (normalized) rather than elevations?

    With ground points (class 2): normalized when 90% of them lie within ±0.5 m of 0.
    Without: likely normalized when Z starts near 0 (≥ −2 m) and at least 5% of the
    points lie within ±0.5 m of 0 (ground returns); a heuristic, said as such.
    """
    if total == 0:
        return None, "no points"
    if ground:
        share = near_zero_ground / ground
        if share >= 0.9:
            return True, f"{share:.0%} of the {ground:,} ground points are within ±0.5 m of 0"
        return False, f"only {share:.0%} of the ground points are within ±0.5 m of 0 (Z {min_z:.1f} to {max_z:.1f})"
    share = near_zero_all / total
    if min_z >= -2.0 and share >= 0.05:
        return True, f"no ground class; {share:.0%} of the points are within ±0.5 m of 0 (heuristic)"
    return False, f"no ground class; Z runs {min_z:.1f} to {max_z:.1f}, not from 0"


class _Scaled:
    """Progress of one file mapped into its share of a catalog's progress."""

    def __init__(self, progress: Progress, index: int, count: int):
        self.progress, self.index, self.count = progress, index, count

    def set_progress(self, percent: float) -> None:
        self.progress.set_progress((self.index + percent / 100.0) * 100.0 / self.count)

    def is_canceled(self) -> bool:
        return self.progress.is_canceled()

    def info(self, message: str) -> None:
        self.progress.info(message)

    def warning(self, message: str) -> None:
        self.progress.warning(message)


class _IncrementalHull:
    """Convex hull of many chunks of points, keeping only the hull vertices between chunks."""

    def __init__(self):
        self.points = np.empty((0, 2))

    def add(self, x, y):
        from scipy.spatial import ConvexHull, QhullError

        pts = np.vstack([self.points, np.column_stack([x, y])])
        if len(pts) < 3:
            self.points = pts
            return
        try:
            hull = ConvexHull(pts)
        except QhullError:  # collinear or repeated points: no area
            self.points = pts[[np.argmin(pts[:, 0]), np.argmax(pts[:, 0])]]
            return
        self.points = pts[hull.vertices]  # counter-clockwise order

    def area(self) -> float:
        p = self.points
        if len(p) < 3:
            return 0.0
        # shoelace formula over the ordered hull vertices (centred for precision)
        x, y = p[:, 0] - p[:, 0].mean(), p[:, 1] - p[:, 1].mean()
        return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
