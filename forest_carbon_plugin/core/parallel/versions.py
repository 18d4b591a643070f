"""Versions that must agree between this machine, the Dask scheduler and its workers.

A cluster is never trusted to be the one the plugin was tested with: before the first task the versions of the
packages that matter are compared (:func:`check_versions`); a mismatch that breaks results or transport is
refused, naming the package, both versions and the fix, the others are reported as warnings. Tasks travel as
plain data (:mod:`.plain`), which is what lets most packages differ without harm.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version

from ... import __version__
from ..errors import ForestCarbonError
from .connect import scheduler_address, within

INSTALL_HINT = ("install this machine's versions on the workers and the scheduler: pip install -c "
                "constraints-worker.txt .[worker] (the constraints file pins them)")

CORE_DISTRIBUTION = "forest-carbon-plugin"
# package → how many leading version numbers must agree (3 exact, 2 major.minor, 1 major, 0 never refused) and why.
# Tasks travel as plain data (see plain_call), so what remains fatal is what changes the wire format, the pickles of
# results (arrays), or the numbers themselves; other differences are reported as warnings.
VERSION_RULES = {
    "dask": (3, "the task graph format changes between releases"),
    "distributed": (3, "client, scheduler and workers speak one protocol per release"),
    "cloudpickle": (2, "tasks and results are pickled with it"),
    "msgpack": (1, "Dask's messages are encoded with it"),
    CORE_DISTRIBUTION: (3, "the workers run the plugin's own tile functions"),
    "numpy": (2, "arrays travel between this machine and the workers, and a numpy release changes results"),
    "rasterio": (2, "workers read and write the tiles with it (and with the GDAL it brings)"),
    "onnxruntime": (1, "it runs the model"),
    "laspy": (1, "it reads the LiDAR tiles"),
    "lazrs": (0, "it decodes LAZ"),
    "affine": (0, "transforms travel as six numbers"),
    "pyproj": (0, "it transforms coordinates"),
    "scipy": (0, "some tile functions use it"),
}
# what the scheduler itself needs: it unpickles the task graph (the plugin's function references) and routes messages
SCHEDULER_PACKAGES = ("dask", "distributed", "cloudpickle", "msgpack", CORE_DISTRIBUTION)
# missing on a worker, these break every job; the others only the jobs that use them
ESSENTIAL = {"dask", "distributed", "cloudpickle", "msgpack", CORE_DISTRIBUTION, "numpy", "rasterio"}


def local_versions() -> dict:
    """This machine's versions of the packages of :data:`VERSION_RULES`, and of Python.

    Returns
    -------
    dict
        Package name → version (None: not installed); the plugin's own is its ``__version__`` (inside QGIS it
        is not an installed distribution); ``"python"`` → ``major.minor.micro``.
    """
    found = {}
    for name in VERSION_RULES:
        if name == CORE_DISTRIBUTION:  # inside QGIS the plugin is not an installed distribution
            found[name] = __version__
            continue
        try:
            found[name] = version(name)
        except (PackageNotFoundError, ValueError):
            found[name] = None
    found["python"] = ".".join(map(str, sys.version_info[:3]))
    return found


def _numbers(text) -> tuple:
    return tuple(int(n) for n in re.findall(r"\d+", str(text).split("+")[0])[:3])


def compare_versions(client_versions: dict, remote: dict, where: str, names) -> tuple[list, list]:
    """What differs between this machine's versions and another machine's, as :data:`VERSION_RULES` says.

    Parameters
    ----------
    client_versions : dict
        This machine's versions (:func:`local_versions`).
    remote : dict
        The other machine's versions (Dask's ``get_versions`` packages).
    where : str
        Where the other versions are, for the messages ("on the scheduler at …", "on the workers").
    names : iterable of str
        The packages to compare.

    Returns
    -------
    tuple of list
        ``(fatal, warnings)``: one message per package that differs.
    """
    fatal, warnings = [], []
    for name in names:
        mine, theirs = client_versions.get(name), remote.get(name)
        if mine is None or mine == theirs:
            continue
        level, why = VERSION_RULES.get(name, (0, ""))
        if theirs is None:
            if name in ESSENTIAL:
                fatal.append(f"{name} is missing {where} ({mine} here)")
            else:
                warnings.append(f"{name} is missing {where} ({mine} here): jobs that need it will fail ({why})")
        elif level and _numbers(mine)[:level] != _numbers(theirs)[:level]:
            fatal.append(f"{name} {theirs} {where}, {mine} here ({why})")
        else:
            warnings.append(f"{name} {theirs} {where}, {mine} here: results may differ in the last bits")
    return fatal, warnings


def check_versions(client, timeout: float = 30.0, workers: bool = True) -> list:
    """Compare the versions of this machine, the scheduler and the workers attached now.

    Parameters
    ----------
    client : distributed.Client
        The connected client.
    timeout : float
        Seconds to wait for the scheduler's answer.
    workers : bool
        Compare the workers' versions too (False: the scheduler's only, before any worker is there).

    Returns
    -------
    list of str
        Warnings, one per package whose difference does not change results or transport.

    Raises
    ------
    ForestCarbonError
        For a mismatch that breaks results or transport, naming the package, both versions and the fix.
    """
    address = scheduler_address(client)
    packages = list(VERSION_RULES)
    done, versions, error = within(timeout, lambda: client.get_versions(packages=packages))
    if not done or error is not None:
        raise ForestCarbonError(f"The Dask scheduler at {address} did not say which versions it and its workers run "
                                f"({'no answer within ' + format(timeout, 'g') + ' s' if not done else error}): "
                                "is it overloaded, or of another Dask version than this machine?")
    mine = local_versions()
    scheduler = (versions.get("scheduler") or {}).get("packages") or {}
    fatal, warnings = compare_versions(mine, scheduler, f"on the scheduler at {address}", SCHEDULER_PACKAGES)
    by_message: dict = {}
    for worker, info in ((versions.get("workers") or {}).items() if workers else ()):
        f, w = compare_versions(mine, (info or {}).get("packages") or {}, "on the workers", VERSION_RULES)
        for message in f + w:
            by_message.setdefault((message in f, message), []).append(str(worker))
    for (is_fatal, message), names in by_message.items():
        named = message.replace("on the workers", f"on {len(names)} worker(s) ({', '.join(sorted(names)[:2])}"
                                f"{'…' if len(names) > 2 else ''})", 1)
        (fatal if is_fatal else warnings).append(named)
    if fatal:
        hint = INSTALL_HINT
        if any(CORE_DISTRIBUTION in m and "scheduler" in m for m in fatal):
            hint += ("; the scheduler needs the worker package too, since it reads the job's tasks (the plugin's "
                     "function names)")
        raise ForestCarbonError(f"The Dask cluster at {address} would not give this machine's results: "
                                + "; ".join(fatal) + f". To fix it, {hint}.")
    return warnings
