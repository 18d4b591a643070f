"""Python packages the plugin needs beyond what QGIS ships, and how to get them.

QGIS bundles numpy, GDAL and (on most platforms) rasterio-free Python; onnxruntime,
laspy with its LAZ backend lazrs, and Dask usually have to be installed into the Python
that QGIS runs. The check at plugin load uses :func:`importlib.util.find_spec` (fast: no
import), the functions that need a package import it through :func:`require`, which
turns an ``ImportError`` (missing, or broken by a numpy ABI clash) into a message with
the exact pip command.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import MissingDependency


@dataclass(frozen=True)
class Dependency:
    module: str  #: import name
    requirement: str  #: pip requirement, pinned to what the test suite runs
    purpose: str


#: numpy is deliberately absent: it comes with QGIS and must keep QGIS's ABI.
DEPENDENCIES: dict[str, Dependency] = {
    d.module: d
    for d in (
        Dependency("onnxruntime", "onnxruntime>=1.17,<2", "ONNX model inference"),
        Dependency("laspy", "laspy>=2.5,<3", "reading and writing LAS/LAZ point clouds"),
        Dependency("lazrs", "lazrs>=0.6,<1", "LAZ compression for laspy"),
        Dependency("dask", "dask>=2024.1", "tiled parallel processing"),
        Dependency("distributed", "distributed>=2024.1", "the local and remote Dask cluster"),
        Dependency("rasterio", "rasterio>=1.3", "block-wise raster reading and writing"),
        Dependency("scipy", "scipy>=1.10", "filters, triangulations and robust statistics"),
        Dependency("matplotlib", "matplotlib>=3.5", "the plots of validation and training reports"),
        Dependency("sklearn", "scikit-learn>=1.2", "training forest-structure models"),
        Dependency("skl2onnx", "skl2onnx>=1.17", "exporting trained models to ONNX"),
        Dependency("onnx", "onnx>=1.14", "checking and building ONNX models"),
        Dependency("shapely", "shapely>=1.8", "polygon geometry for carbon totals"),
        Dependency("pyproj", "pyproj>=3.3", "coordinate transformations and geodesic areas"),
        Dependency("h5py", "h5py>=3.7", "reading GEDI HDF5 granules"),
    )
}


def is_available(module: str) -> bool:
    """True when ``module`` can be found, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_dependencies(modules=None) -> list[Dependency]:
    """The dependencies (all, or those named) that this Python cannot find."""
    names = DEPENDENCIES if modules is None else modules
    return [DEPENDENCIES[m] for m in names if not is_available(m)]


def qgis_python_executable() -> str:
    """The Python interpreter of the running QGIS (or of this process outside QGIS).

    The interpreter found by :func:`matching_python`; when none is found, the name it would have
    (for messages such as the pip command).
    """
    return matching_python() or f"python{sys.version_info[0]}.{sys.version_info[1]}"


@functools.lru_cache(maxsize=None)
def matching_python() -> str | None:
    """An interpreter that runs exactly this process's Python (version and standard library), or None.

    ``sys.executable`` cannot be trusted: inside QGIS it is the QGIS binary, or whatever ``python3``
    comes first on PATH (a pyenv/conda/venv shim: the embedded interpreter finds its program name
    there), which would load QGIS's compiled packages into another Python. So every candidate is
    started once and must report this process's ``sys.hexversion`` and standard-library folder.
    """
    major, minor = sys.version_info[:2]
    # the interpreter whose standard library this process runs (os.py sits in <prefix>/lib/pythonX.Y)
    stdlib = Path(os.__file__).resolve().parent
    stdlib_prefix = stdlib.parents[1]
    candidates = [Path(sys.executable or ""), Path(getattr(sys, "_base_executable", "") or "")]
    qgis_module = sys.modules.get("qgis")
    if qgis_module is not None and str(getattr(qgis_module, "__file__", "")).startswith("/usr/lib/python3/"):
        # a distribution's QGIS (Debian, Ubuntu, Fedora) runs the distribution's Python
        candidates.append(Path("/usr/bin") / f"python{major}.{minor}")
    for prefix in dict.fromkeys((stdlib_prefix, Path(sys.base_exec_prefix), Path(sys.exec_prefix))):
        candidates += [
            prefix / "bin" / f"python{major}.{minor}",  # Linux, macOS bundle
            prefix / "bin" / f"python{major}",
            prefix / "bin" / "python3",
            prefix / "python.exe",  # OSGeo4W / standalone Windows installer
        ]
    seen = set()
    for candidate in candidates:
        if not candidate.name.lower().startswith("python") or candidate in seen or not candidate.is_file():
            continue
        seen.add(candidate)
        if _runs_this_python(str(candidate), stdlib):
            return str(candidate)
    return None


_PROBE = "import os, sys; print(sys.hexversion); print(os.path.dirname(os.path.realpath(os.__file__)))"


def _runs_this_python(executable: str, stdlib: Path) -> bool:
    import subprocess

    try:
        # -I -S: neither PYTHON* variables nor site-packages may change what the candidate reports
        proc = subprocess.run([executable, "-I", "-S", "-c", _PROBE], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL, creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except (OSError, subprocess.SubprocessError):
        return False
    lines = proc.stdout.split("\n")
    return proc.returncode == 0 and len(lines) >= 2 and lines[0].strip() == str(sys.hexversion) \
        and Path(lines[1].strip()) == stdlib


def pip_command(deps) -> str:
    """The pip command that installs ``deps`` into the Python QGIS runs."""
    requirements = [d.requirement for d in deps]
    python = qgis_python_executable()
    quoted = " ".join(shlex.quote(r) for r in requirements)
    user = "" if _in_virtualenv() else " --user"
    return f"{shlex.quote(python)} -m pip install{user} {quoted}"


def _in_virtualenv() -> bool:
    return sys.prefix != getattr(sys, "base_prefix", sys.prefix) or "CONDA_PREFIX" in os.environ


def missing_message(deps) -> str:
    names = ", ".join(d.module for d in deps)
    purposes = "; ".join(f"{d.module}: {d.purpose}" for d in deps)
    return (
        f"Missing Python package(s): {names} ({purposes}). "
        f"Install them into the Python that QGIS runs with:\n{pip_command(deps)}\n"
        "then restart QGIS."
    )


def require(*modules: str):
    """Import ``modules`` and return them, or raise :class:`MissingDependency`.

    Any ``ImportError`` counts as missing: a package built for another numpy ABI fails
    to import just like an absent one, and the fix is the same pip command.
    """
    loaded, failed, reasons = [], [], []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError as exc:
            failed.append(DEPENDENCIES.get(name, Dependency(name, name, name)))
            reasons.append(f"{name}: {exc}")
    if failed:
        raise MissingDependency(missing_message(failed) + "\n(import errors: " + "; ".join(reasons) + ")")
    return loaded[0] if len(loaded) == 1 else tuple(loaded)
