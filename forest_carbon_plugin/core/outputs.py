"""Writing outputs: atomically, and with provenance.

Every output goes through :func:`atomic_output`: the writer fills a temporary file in
the target's folder, and only a run that finishes renames it into place, so a failed
or cancelled run leaves nothing at the output path (and never a half-written file).
A run with several outputs is made all-or-nothing by :class:`OutputTransaction`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

from .. import __version__
from .errors import ForestCarbonError

PROVENANCE_KEY = "FOREST_CARBON_PROVENANCE"


def provenance(algorithm: str, parameters: dict | None = None, inputs=None, model_id: str | None = None,
               deterministic: bool = False, **extra) -> dict:
    """A provenance record for an output: what made it, from what, with what.

    Parameters
    ----------
    algorithm : str
        The algorithm's id (``"forestcarbon:canopymetrics"``).
    parameters : dict, optional
        Its parameters (made JSON-safe: anything else becomes its string).
    inputs : sequence, optional
        Its input files.
    model_id : str, optional
        The model used, for predictions.
    deterministic : bool
        Leave out the time, host and Python version, for outputs that must be byte-identical when
        made again from the same inputs (the scene simulator's).
    **extra
        More keys (JSON-safe).

    Returns
    -------
    dict
        The record, with the plugin's name and version.
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
    """A raster's dataset tags as GDAL stores them.

    Parameters
    ----------
    tags : dict or None
        The tags; values become strings.
    provenance : dict, optional
        The provenance record (:func:`provenance`).

    Returns
    -------
    dict
        ``{name: str}``, with the record as JSON under :data:`PROVENANCE_KEY`.
    """
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    if provenance is not None:
        all_tags[PROVENANCE_KEY] = json.dumps(provenance, sort_keys=True, default=str)
    return all_tags


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


@contextlib.contextmanager
def atomic_output(path, mode: str | None = None):
    """A temporary file beside ``path``, moved to ``path`` only on success.

    The temporary name keeps the suffix so that format drivers chosen by extension work; on an error
    (or a cancel) it is removed and ``path`` is untouched.

    Parameters
    ----------
    path : str or Path
        The output; its folder is created if needed.
    mode : str, optional
        ``"w"`` (UTF-8 text) or ``"wb"``: yield an open file instead of a path.

    Yields
    ------
    Path or file object
        The temporary path, or the file open on it.
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
        try:
            os.replace(tmp, target)
        except OSError as exc:  # e.g. a folder of that name
            raise ForestCarbonError(f"Cannot write '{target}' ({exc.strerror or exc}): give a file name that is "
                                    "not a folder, in a folder you can write to.") from exc
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
    """Write ``document`` as indented JSON (anything not JSON becomes its string), atomically.

    Parameters
    ----------
    path : str or Path
        The file.
    document : dict
        The document.

    Returns
    -------
    Path
        ``path``.
    """
    with atomic_output(path, "w") as handle:
        json.dump(document, handle, indent=2, default=str)
        handle.write("\n")
    return Path(path)


def write_text(path, text: str) -> Path:
    """Write UTF-8 text, atomically.

    Parameters
    ----------
    path : str or Path
        The file.
    text : str
        The text.

    Returns
    -------
    Path
        ``path``.
    """
    with atomic_output(path, "w") as handle:
        handle.write(text)
    return Path(path)


UNDO_PREFIX = ".forest_carbon_undo-"


class OutputTransaction:
    """All-or-nothing for a run with several outputs: a failure or a cancel after some outputs were
    written puts back what was there before.

    Parameters
    ----------
    files : sequence of str or Path
        The run's output files.
    folders : sequence of str or Path
        The run's output folders.

    On entry the files that an
    output may replace are kept as hard links (a copy where the file system has none) in a hidden
    folder beside them: the output itself and its side files, named like it (``agb.tif.aux.xml``,
    ``report.json``, ``report_<figure>.png``, atomic_output's ``.report.*`` temporaries, a job folder
    ``.agb.dask-*``), and everything inside an output folder. On an error the files the run made there
    are removed, the replaced ones come back and the folders the run created are removed; on success
    the kept links are dropped.

    The outputs are written under their own names (not staged under temporary ones): reports, scene
    manifests and raster provenance record the paths of their sibling outputs, which must be the final ones.
    Writers replace files (atomic_output renames, GDAL and OGR delete and create), so a kept hard link
    still holds the previous content.

    A run killed outright (no ``__exit__``) leaves its journal (``journal.json`` in a hidden folder beside
    the first output: the process, the outputs, what was there before and where it is kept). The next
    transaction on the same outputs' folders rolls such a run back once its process is gone from this
    machine, and lists it in :attr:`recovered`: the user's previous files come back, the killed run's
    partial outputs go.
    """

    def __init__(self, files=(), folders=()):
        self.files = [Path(os.path.abspath(p)) for p in files]
        self.folders = [Path(os.path.abspath(p)) for p in folders]
        self._before: dict[Path, tuple] = {}  # entry -> (device, inode) before the run
        self._kept: dict[Path, Path] = {}  # entry -> its kept link
        self._undo_dirs: dict[Path, Path] = {}  # folder -> its hidden undo folder
        self._created: list[Path] = []  # folders that did not exist before the run, outermost first
        self._journal: Path | None = None
        self.recovered: list[str] = []  # journals of killed runs rolled back on entry

    def __enter__(self):
        self.recovered = recover_killed_runs(self._neighbourhood())
        for path in self.files:
            self._note_missing(path.parent)
            for entry in self._matching(path):
                self._keep(entry)
        for folder in self.folders:
            self._note_missing(folder)
            for entry in self._inside(folder):
                self._keep(entry)
        self._write_journal()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self._drop_undo()
        else:
            self.rollback()
        return False

    def rollback(self) -> None:
        """Remove what the run made, put back what it replaced, remove the folders it created."""
        now = set()
        for path in self.files:
            now.update(self._matching(path))
        for folder in self.folders:
            now.update(self._inside(folder))
        for entry in sorted(now, key=lambda p: len(p.parts), reverse=True):
            if entry not in self._before:
                _remove(entry)
        for entry, kept in self._kept.items():
            with contextlib.suppress(OSError):
                if _identity(entry) != self._before[entry]:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    os.replace(kept, entry)
        for folder in self._created:
            shutil.rmtree(folder, ignore_errors=True)
        self._drop_undo()

    def _note_missing(self, folder: Path) -> None:
        missing = []
        while not folder.exists() and folder.parent != folder:
            missing.append(folder)
            folder = folder.parent
        if missing and missing[-1] not in self._created:
            self._created.append(missing[-1])

    def _matching(self, path: Path):
        """The entries of ``path``'s folder that are ``path`` or its side files."""
        stem = path.stem if path.suffix else path.name
        prefixes = (stem + ".", stem + "_", "." + stem + ".")
        try:
            names = os.listdir(path.parent)
        except OSError:
            return []
        return [path.parent / n for n in names
                if (n == path.name or n.startswith(prefixes)) and not n.startswith(UNDO_PREFIX)]

    @staticmethod
    def _inside(folder: Path):
        if not folder.is_dir():
            return []
        entries = []
        for root, dirs, names in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(UNDO_PREFIX)]
            entries += [Path(root, n) for n in dirs + names]
        return entries

    def _keep(self, entry: Path) -> None:
        identity = _identity(entry)
        if identity is None or entry in self._before:
            return
        self._before[entry] = identity
        if entry.is_symlink() or not entry.is_file():
            return  # folders: their files are kept one by one (output folders) or not replaced
        undo = self._undo_dirs.get(entry.parent)
        try:
            if undo is None:
                undo = self._undo_dirs[entry.parent] = Path(tempfile.mkdtemp(prefix=UNDO_PREFIX, dir=entry.parent))
            kept = undo / str(len(self._kept))
            try:
                os.link(entry, kept)
            except OSError:
                shutil.copy2(entry, kept)
        except OSError as exc:
            raise ForestCarbonError(f"Cannot keep a copy of '{entry}' while the run replaces it "
                                    f"({exc.strerror or exc}): choose a folder you can write to.") from exc
        self._kept[entry] = kept

    def _drop_undo(self) -> None:
        for undo in self._undo_dirs.values():
            shutil.rmtree(undo, ignore_errors=True)
        self._undo_dirs.clear()
        self._kept.clear()
        if self._journal is not None:
            shutil.rmtree(self._journal.parent, ignore_errors=True)
            self._journal = None

    def _neighbourhood(self) -> set:
        """The folders where a killed run on the same outputs would have left its journal."""
        places = set()
        for place in [p.parent for p in self.files] + self.folders + [f.parent for f in self.folders]:
            while not place.is_dir() and place.parent != place:
                place = place.parent  # where _write_journal puts it when the run creates the folder
            places.add(place)
        return places

    def _write_journal(self) -> None:
        targets = self.files + self.folders
        if not targets:
            return
        home = targets[0].parent
        while not home.is_dir() and home.parent != home:
            home = home.parent
        try:
            folder = Path(tempfile.mkdtemp(prefix=UNDO_PREFIX, dir=home))
            journal = {"pid": os.getpid(), "host": platform.node(), "files": [str(p) for p in self.files],
                       "folders": [str(p) for p in self.folders],
                       "before": [[str(k), list(v)] for k, v in self._before.items()],
                       "kept": [[str(k), str(v)] for k, v in self._kept.items()],
                       "undo_dirs": [[str(k), str(v)] for k, v in self._undo_dirs.items()],
                       "created": [str(p) for p in self._created]}
            (folder / JOURNAL).write_text(json.dumps(journal), encoding="utf-8")
        except OSError:
            return  # no journal, no recovery after a kill; the run itself is still all-or-nothing
        self._journal = folder / JOURNAL

    @classmethod
    def _from_journal(cls, doc: dict) -> "OutputTransaction":
        tx = cls(doc["files"], doc["folders"])
        tx._before = {Path(k): tuple(v) for k, v in doc["before"]}
        tx._kept = {Path(k): Path(v) for k, v in doc["kept"]}
        tx._undo_dirs = {Path(k): Path(v) for k, v in doc["undo_dirs"]}
        tx._created = [Path(p) for p in doc["created"]]
        return tx


JOURNAL = "journal.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def recover_killed_runs(folders) -> list:
    """Roll back the runs that were killed while writing into some folders.

    A run's journal in ``folders`` whose process is no longer running on this machine means a killed run
    (a cancel or an error would have rolled back or dropped its journal itself). A journal from another
    machine (a shared disk) or of a running process is left alone.

    Parameters
    ----------
    folders : iterable of str or Path
        The output folders to look in.

    Returns
    -------
    list
        The output lists of the runs rolled back.
    """
    recovered = []
    for folder in folders:
        try:
            names = [n for n in os.listdir(folder) if n.startswith(UNDO_PREFIX)]
        except OSError:
            continue
        for name in names:
            journal = Path(folder, name, JOURNAL)
            try:
                doc = json.loads(journal.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if doc.get("host") != platform.node() or _alive(int(doc.get("pid", 0))) or doc.get("pid") == os.getpid():
                continue
            try:
                tx = OutputTransaction._from_journal(doc)
            except (KeyError, TypeError, ValueError):
                continue
            tx._journal = journal
            tx.rollback()
            recovered.append(", ".join(doc["files"] + doc["folders"]))
    return recovered


def _identity(path: Path):
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _remove(entry: Path) -> None:
    with contextlib.suppress(OSError):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
