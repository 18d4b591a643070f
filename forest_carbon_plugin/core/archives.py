"""Unpacking archives that users download, without trusting them.

A zip names its members and their sizes itself: a hostile or damaged one can name paths outside
the folder it is unpacked into (``../x``, ``/etc/x``), hold millions of members, or inflate a few
megabytes into terabytes (a "zip bomb"). :func:`extract_members` checks the member paths, the
member count, the sizes the headers declare and their compression ratio before writing anything,
and counts the bytes actually inflated while writing, since headers can lie.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import ForestCarbonError

#: Total uncompressed size one archive may unpack to (GEDI L2A granules are up to a few GiB each).
MAX_TOTAL_BYTES = 32 * 2 ** 30
#: Members one archive may hold (a GEDI download holds one granule; folders of them a few hundred).
MAX_MEMBERS = 1000
#: Compression ratio past which a member is a bomb, not data: HDF5 granules are already compressed
#: (ratios near 1); only members above MIN_RATIO_CHECK bytes are judged, small files compress freely.
MAX_RATIO = 100.0
MIN_RATIO_CHECK = 1 << 20
_CHUNK = 1 << 22


def _size(n: float) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} bytes"


def _unsafe_name(name: str) -> bool:
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    return (posix.is_absolute() or windows.is_absolute() or bool(windows.drive) or name.startswith(("/", "\\"))
            or ".." in posix.parts or ".." in windows.parts)


def extract_members(archive_path, dest, wanted=lambda name: True, max_total: int = MAX_TOTAL_BYTES,
                    max_members: int = MAX_MEMBERS, max_ratio: float = MAX_RATIO) -> list[Path]:
    """Unpack the members of the zip ``archive_path`` for which ``wanted(name)`` is true into ``dest``
    (one numbered sub-folder per member, so equal base names cannot collide); returns their paths.

    Refuses, before writing, archives with an absolute or ``..`` member path, more than
    ``max_members`` members, a declared total above ``max_total`` bytes or above the free space at
    ``dest``, or a member inflating more than ``max_ratio`` times; while writing, stops at
    ``max_total`` bytes actually inflated whatever the headers say. On any refusal what was written
    is removed."""
    path = Path(archive_path)
    dest = Path(dest)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ForestCarbonError(f"'{path}' is not a valid zip file ({exc}): download it again.") from exc
    except OSError as exc:
        raise ForestCarbonError(f"Cannot read the zip '{path}' ({exc}).") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > max_members:
            raise ForestCarbonError(
                f"The zip '{path.name}' holds {len(infos):,} members, more than the {max_members:,} a download of "
                "this kind has: it is not a product archive (or it is hostile). Unpack the files you need yourself "
                "and give them directly.")
        for info in infos:
            if _unsafe_name(info.filename):
                raise ForestCarbonError(
                    f"The zip '{path.name}' holds a member named '{info.filename}', a path outside the folder it "
                    "would be unpacked into: the archive is damaged or hostile and is not unpacked. Download it "
                    "again from its source.")
        members = [i for i in infos if not i.is_dir() and wanted(i.filename)]
        declared = sum(i.file_size for i in members)
        if declared > max_total:
            raise ForestCarbonError(
                f"The zip '{path.name}' would unpack to {_size(declared)}, more than the limit of "
                f"{_size(max_total)}: unpack it yourself where there is room, and give the files.")
        for info in members:
            if info.file_size > MIN_RATIO_CHECK and info.file_size > max_ratio * max(info.compress_size, 1):
                raise ForestCarbonError(
                    f"The zip '{path.name}' member '{info.filename}' would inflate {info.compress_size:,} bytes "
                    f"into {info.file_size:,} (more than {max_ratio:g} times): that is a zip bomb, not a product, "
                    "and it is not unpacked.")
        dest.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dest).free
        if declared > free:
            raise ForestCarbonError(
                f"The zip '{path.name}' would unpack to {_size(declared)}, but only "
                f"{_size(free)} are free in the temporary folder '{dest}': free some space or unpack "
                "it yourself elsewhere and give the files.")
        written, out = 0, []
        try:
            for k, info in enumerate(members):
                target = dest / str(k) / PurePosixPath(info.filename.replace("\\", "/")).name
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as fin, open(target, "wb") as fout:
                    while chunk := fin.read(_CHUNK):
                        written += len(chunk)
                        if written > max_total:
                            raise ForestCarbonError(
                                f"The zip '{path.name}' inflated past the limit of {_size(max_total)} "
                                "while unpacking, more than its headers declare: it is damaged or hostile and was "
                                "not unpacked.")
                        fout.write(chunk)
                out.append(target)
        except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
            shutil.rmtree(dest, ignore_errors=True)
            raise ForestCarbonError(f"The zip '{path.name}' is damaged ({exc}): download it again.") from exc
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        return out
