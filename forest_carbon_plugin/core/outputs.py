"""Writing outputs: atomically, and with provenance.

Every output goes through :func:`atomic_output`: the writer fills a temporary file in
the target's folder, and only a run that finishes renames it into place, so a failed
or cancelled run leaves nothing at the output path (and never a half-written file).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import tempfile
from pathlib import Path

from .. import __version__
from .errors import ForestCarbonError

PROVENANCE_KEY = "FOREST_CARBON_PROVENANCE"


def provenance(algorithm: str, parameters: dict | None = None, inputs=None, model_id: str | None = None,
               deterministic: bool = False, **extra) -> dict:
    """A provenance record for an output: what made it, from what, with what.

    With ``deterministic`` the record leaves out the time and host, for outputs that must be
    byte-identical when made again from the same inputs (the scene simulator's).
    """
    record = {
        "plugin": "forest_carbon_plugin",
        "plugin_version": __version__,
        "algorithm": algorithm,
        "parameters": _jsonable(parameters or {}),
        "inputs": [str(p) for p in (inputs or [])],
        "model_id": model_id,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "python": platform.python_version(),
        "host": platform.node(),
    }
    record.update(_jsonable(extra))
    if deterministic:
        for key in ("created_utc", "host", "python"):
            record.pop(key)
    return record


def gdal_tags(tags: dict | None, provenance: dict | None = None) -> dict:
    """A raster's dataset tags as GDAL stores them (strings), with the provenance record as JSON under
    :data:`PROVENANCE_KEY`."""
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    if provenance is not None:
        all_tags[PROVENANCE_KEY] = json.dumps(provenance, sort_keys=True, default=str)
    return all_tags


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


@contextlib.contextmanager
def atomic_output(path, mode: str | None = None):
    """Yield a temporary path beside ``path``; move it to ``path`` only on success.

    With ``mode`` (``"w"``, ``"wb"``) an open file object is yielded instead of a path.
    The temporary name keeps the suffix so that format drivers chosen by extension work.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".part{target.suffix}",
                                        dir=target.parent)
    except OSError as exc:
        raise ForestCarbonError(f"Cannot write '{target}' ({exc.strerror or exc}): choose a folder you can "
                                "write to.") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp makes the file private (0600); an output gets the permissions any new file would get here
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o666 & ~_umask())
    try:
        if mode is None:
            yield tmp
        else:
            encoding = None if "b" in mode else "utf-8"
            with open(tmp, mode, encoding=encoding) as handle:
                yield handle
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _umask() -> int:
    """The process's umask (read once: os.umask can only be read by setting it)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


_UMASK = None


def write_json(path, document: dict) -> Path:
    with atomic_output(path, "w") as handle:
        json.dump(document, handle, indent=2, default=str)
        handle.write("\n")
    return Path(path)


def write_text(path, text: str) -> Path:
    with atomic_output(path, "w") as handle:
        handle.write(text)
    return Path(path)
