"""Files sent with a job: a model and its external data files, for workers that cannot see them.

The client sends the bytes (:func:`model_bundle`); each worker machine writes them once into a private cache
folder (:func:`materialize`, :func:`cache_folder`) and later tasks reuse that copy.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

from ..errors import ForestCarbonError

CACHE_MAX_AGE_S = 7 * 24 * 3600  # cache entries unused this long are removed
_EXTERNAL = re.compile(rb"\n\x08location\x12")
_CACHE: dict = {}


def external_data_files(model) -> list:
    """The external data files an ONNX model names (``location`` entries of its tensors).

    Read from the protobuf bytes, so that the client needs no ``onnx`` package.

    Parameters
    ----------
    model : str or Path
        The ONNX file.

    Returns
    -------
    list of str
        The files' paths relative to the model's folder.

    Raises
    ------
    ForestCarbonError
        For a location outside the model's folder, or not a file there (before the job starts).
    """
    model = Path(model)
    data = model.read_bytes()
    names = []
    for match in _EXTERNAL.finditer(data):
        pos, length, shift = match.end(), 0, 0
        while pos < len(data):  # the string's length, a protobuf varint
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        name = data[pos:pos + length].decode("utf-8", "replace")
        if name and name not in names:
            names.append(name)
    folder = model.resolve().parent
    for name in names:
        target = (folder / name).resolve()
        if folder not in target.parents or not target.is_file():
            raise ForestCarbonError(f"The model '{model.name}' keeps weights in '{name}', which is not a file in the "
                                    "model's folder: a cluster job sends the model and its external data files, so "
                                    "they must sit beside it (or save the model as one file).")
    return names


def model_bundle(path) -> tuple:
    """A model and its external data files, as sent to the workers.

    Parameters
    ----------
    path : str or Path
        The model file.

    Returns
    -------
    tuple
        ``(file name, {relative path: bytes})``.
    """
    path = Path(path)
    files = {path.name: path.read_bytes()}
    if path.suffix.lower() == ".onnx":
        for name in external_data_files(path):
            files[name] = (path.parent / name).read_bytes()
    return path.name, files


def bundle_digest(bundle) -> str:
    """A SHA-256 of a bundle's names and contents: the key of its cache entry on the workers.

    Parameters
    ----------
    bundle : tuple
        A :func:`model_bundle`.

    Returns
    -------
    str
        The hexadecimal digest.
    """
    digest = hashlib.sha256()
    name, files = bundle
    for rel in sorted(files):
        digest.update(rel.encode() + b"\0" + hashlib.sha256(files[rel]).digest())
    return digest.hexdigest()


def cache_folder() -> Path:
    """(runs on a worker) This user's folder for files sent with jobs.

    ``forest_carbon_jobs_<uid>`` in the temporary folder, mode 0700 and owned by this user. One owned by
    someone else, or a link, is never used: a private folder of this process takes its place. Entries not
    used for :data:`CACHE_MAX_AGE_S` are removed.

    Returns
    -------
    Path
        The folder.
    """
    uid = os.getuid() if hasattr(os, "getuid") else None
    folder = Path(tempfile.gettempdir()) / f"forest_carbon_jobs_{uid if uid is not None else 0}"
    cached = _CACHE.get("folder")
    if cached is not None and cached.is_dir():
        return cached
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(folder)
        usable = stat.S_ISDIR(info.st_mode) and (uid is None or info.st_uid == uid)
        if usable and uid is not None and stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(folder, 0o700)  # made by an older version, world-readable
    except OSError:
        usable = False
    if not usable:
        folder = Path(tempfile.mkdtemp(prefix=f"forest_carbon_jobs_{uid}_"))
        atexit.register(shutil.rmtree, folder, True)
    _CACHE["folder"] = folder
    _clean_cache(folder)
    return folder


def _clean_cache(folder: Path, max_age: float = CACHE_MAX_AGE_S) -> None:
    """Remove entries not used for ``max_age`` seconds (each use touches its entry)."""
    now = time.time()
    for entry in folder.iterdir():
        with contextlib.suppress(OSError):
            if now - entry.lstat().st_mtime > max_age:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()


def materialize(data, suffix: str = ".onnx") -> Path:
    """(runs on a worker) A file sent with the job, written once per worker machine into :func:`cache_folder`.

    Parameters
    ----------
    data : bytes or tuple
        The file's bytes, or a :func:`model_bundle`.
    suffix : str
        The file's suffix when ``data`` is bare bytes.

    Returns
    -------
    Path
        The model file's path, its external data files beside it.
    """
    if isinstance(data, (bytes, bytearray)):
        data = (f"model{suffix}", {f"model{suffix}": bytes(data)})
    name, files = data
    folder = cache_folder()
    entry = folder / bundle_digest(data)[:32]
    if not entry.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".part-", dir=folder))
        try:
            for rel, content in files.items():
                target = (tmp / rel).resolve()
                if tmp.resolve() not in target.parents:
                    raise ForestCarbonError(f"A file sent with the job has an unsafe name: {rel!r}.")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            try:
                os.rename(tmp, entry)  # atomic: another task may have written the same entry meanwhile
            except OSError:
                if not entry.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.utime(entry)
    return entry / name
