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

from .errors import Cancelled, ForestCarbonError, MissingDependency


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
    if sys.executable:
        # QGIS.app (macOS): sys.executable is Contents/MacOS/QGIS, its Python is Contents/MacOS/bin/python3
        candidates += [Path(sys.executable).parent / "bin" / f"python{major}.{minor}",
                       Path(sys.executable).parent / "bin" / "python3"]
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


#: the plugin's package folder, set by the plugin at start-up (None outside QGIS: then messages give plain pip)
_INSTALL_TARGET: Path | None = None


def configure_install_target(folder) -> None:
    global _INSTALL_TARGET
    _INSTALL_TARGET = None if folder is None else Path(folder)


#: constraints files written this session (reading every distribution's metadata takes ~0.1 s, and the toolbox
#: asks every algorithm's canExecute, whose message has the command); forgotten after an installation
_WRITTEN: dict = {}


def constraints_file(target) -> Path:
    """Write (beside ``target``) the pins of what QGIS's Python has, for the copyable command; its path."""
    target = Path(target)
    path = target.parent / f"constraints-{target.name}.txt"
    if _WRITTEN.get(path):
        return path
    _WRITTEN[path] = True
    text = install_constraints(installed_pins())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    except OSError:
        pass  # the command is still right; pip names the missing file if it is run
    return path


def missing_message(deps) -> str:
    names = ", ".join(d.module for d in deps)
    purposes = "; ".join(f"{d.module}: {d.purpose}" for d in deps)
    if _INSTALL_TARGET is None:
        return (
            f"Missing Python package(s): {names} ({purposes}). "
            f"Install them into the Python that QGIS runs with:\n{pip_command(deps)}\n"
            "then restart QGIS."
        )
    command = install_command(deps, _INSTALL_TARGET, constraints_file(_INSTALL_TARGET))
    return (
        f"Missing Python package(s): {names} ({purposes}). Install them with Plugins \u25b8 Forest Carbon \u25b8 "
        f"Install dependencies\u2026 (into {_INSTALL_TARGET}, which the plugin adds to QGIS's Python at start-up), "
        f"or run in a terminal{' (OSGeo4W Shell)' if sys.platform.startswith('win') else ''}:\n{command}\n"
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


# -- Installing into a folder the plugin owns ---------------------------------------------------------
# QGIS's Python is often one pip must not write to: Debian/Ubuntu mark it externally managed (PEP 668),
# OSGeo4W and QGIS.app are shared installations. The plugin installs into
# <profile>/python/forest_carbon_deps/pyXY (one folder per Python version: compiled wheels differ) and
# appends that folder to sys.path at start-up, AFTER QGIS's own entries, so QGIS's numpy (and everything
# else QGIS's Python already has) is the one imported. Because a package in that folder can never
# shadow an installed one, the folder must not need newer versions of what is installed: the resolver
# is given every installed distribution pinned to its installed version (the constraints-file approach
# of the dzetsaka plugin), and only what is missing is installed.

DEPS_FOLDER = "forest_carbon_deps"


def deps_dir(settings_dir) -> Path:
    """The plugin's package folder for this Python under a QGIS profile folder (``qgisSettingsDirPath``)."""
    return Path(settings_dir) / "python" / DEPS_FOLDER / f"py{sys.version_info[0]}{sys.version_info[1]}"


def add_deps_dir(folder) -> bool:
    """Append ``folder`` to ``sys.path`` (after QGIS's entries) when it exists; True when it is there."""
    folder = str(folder)
    if not os.path.isdir(folder):
        return False
    if folder not in sys.path:
        sys.path.append(folder)
    importlib.invalidate_caches()  # find_spec must see packages installed since the last look
    return True


def _canonical(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503 normalized name


def installed_pins(paths=None) -> dict[str, str]:
    """``{normalized name: version}`` of every distribution this Python can import (first on the path wins)."""
    import re
    from importlib import metadata

    pins: dict[str, str] = {}
    for dist in metadata.distributions(path=list(sys.path if paths is None else paths)):
        name, version = dist.metadata["Name"], dist.version
        if not name or not version:
            continue
        # Debian's local labels ("2.2.3+dfsg") are not on package indexes; "==2.2.3" still matches the build
        version = version.split("+")[0]
        if re.fullmatch(r"\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?", version):
            pins.setdefault(_canonical(name), version)
    return pins


def constraints_text(pins: dict[str, str]) -> str:
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


#: The versions requirements.txt (what the test suite runs) fixes because newer ones break training's export:
#: protobuf 6+ rejects the numpy booleans that onnx 1.17's helpers pass when skl2onnx builds tree ensembles, and
#: onnx 1.19+ needs protobuf 6 (trainmodel's quantile model then fails with "Unable to create node
#: 'TreeEnsembleRegressor'"). Applied only to packages QGIS's Python lacks: an installed one is pinned as it is.
TESTED_PINS = (
    'onnx==1.17.0; python_version < "3.12"',
    'onnx==1.18.0; python_version >= "3.12"',
    "protobuf==5.29.5",
    "skl2onnx==1.19.1",
)


def install_constraints(pins: dict[str, str]) -> str:
    """The constraints file of an installation: what QGIS's Python has, then :data:`TESTED_PINS` it lacks."""
    import re

    extra = [c for c in TESTED_PINS if _canonical(re.split(r"[=<>!~;\s]", c, maxsplit=1)[0]) not in pins]
    return constraints_text(pins) + "".join(f"{c}\n" for c in extra)


def install_command(deps, target, constraints, python: str | None = None, platform: str | None = None) -> str:
    """A command a user can paste to install ``deps`` into ``target`` (the folder the plugin adds).

    Windows: for the OSGeo4W Shell, whose ``python`` is QGIS's. Elsewhere the interpreter QGIS runs,
    by its full path (Debian/Ubuntu: /usr/bin/python3; macOS: the python inside QGIS.app).
    The constraints file pins what QGIS's Python has, so no other numpy can be chosen. ``--target`` makes pip
    ignore what is installed, so this one-step form also copies what QGIS already has (at QGIS's versions,
    shadowed by QGIS's own folders); :func:`install_dependencies` plans first and installs only what is missing.
    """
    platform = platform or sys.platform
    requirements = [d.requirement for d in deps]
    if platform.startswith("win"):
        quote = lambda s: f'"{s}"'  # noqa: E731 (cmd.exe quoting)
        python = "python"
    else:
        quote = shlex.quote
        python = python or qgis_python_executable()
    program = python if python == "python" else quote(python)
    return " ".join([program, "-m", "pip", "install", "--target", quote(str(target)), "-c", quote(str(constraints))]
                    + [quote(r) for r in requirements])


@dataclass
class InstallPlan:
    requirements: list  #: "name==version" of each distribution pip will put into the folder
    skipped: list  #: what the resolver chose that QGIS's Python already has (left alone)


def _pip_env(env=None) -> dict:
    env = dict(os.environ if env is None else env)
    # the interpreter must not pick up QGIS's PYTHONHOME/PYTHONPATH tweaks for another layout
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONNOUSERSITE"):
        env.pop(key, None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _run_pip(python: str, args: list, log, cancelled, env) -> None:
    import subprocess

    cmd = [python, "-m", "pip"] + args
    log("$ " + " ".join(shlex.quote(str(a)) for a in cmd))
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, encoding="utf-8", errors="replace", env=env, bufsize=1,
                                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
    except OSError as exc:
        raise ForestCarbonError(f"Could not start {python} to run pip ({exc}). Install the packages with the "
                                "command shown in the dialog instead.") from exc
    tail = []
    import threading

    def _watch():  # pip may sit in a download for long: a cancel must not wait for its next line
        while proc.poll() is None:
            if cancelled():
                proc.terminate()
                return
            threading.Event().wait(0.2)

    watcher = threading.Thread(target=_watch, daemon=True)
    watcher.start()
    for line in proc.stdout:
        line = line.rstrip()
        log(line)
        tail = (tail + [line])[-15:]
    proc.wait()
    watcher.join(1)
    if cancelled():
        raise Cancelled("Installation cancelled; packages already unpacked stay in the folder and are "
                        "reused next time.")
    if proc.returncode != 0:
        raise ForestCarbonError(
            f"pip failed (exit status {proc.returncode}). Its last lines:\n" + "\n".join(tail)
            + "\nCheck the network or the index (pip's own configuration is used), or run the command shown in "
              "the dialog in a terminal.")


def plan_install(deps, target, *, python: str | None = None, pip_args=(), log=print, cancelled=lambda: False,
                 env=None, work_dir=None) -> InstallPlan:
    """Ask pip which distributions installing ``deps`` takes, given everything QGIS's Python already has.

    ``pip install --dry-run --report`` (pip >= 22.2; exempt from PEP 668 because it installs nothing)
    resolves against the interpreter's environment with every distribution QGIS's Python can import
    pinned to its version; what it would install that QGIS already has is dropped.
    """
    import json
    import tempfile

    python = python or matching_python()
    if python is None:
        raise ForestCarbonError(
            f"No Python interpreter matching the one QGIS runs (Python {sys.version.split()[0]}, standard library "
            f"in {Path(os.__file__).parent}) was found, so pip cannot be run from QGIS. Use the command shown.")
    pins = installed_pins(sys.path + [str(target)])
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(install_constraints(pins), encoding="utf-8")
        report = Path(tmp) / "report.json"
        _run_pip(python, ["install", "--dry-run", "--quiet", "--report", str(report), "-c", str(constraints),
                          *pip_args, *[d.requirement for d in deps]], log, cancelled, _pip_env(env))
        chosen = json.loads(report.read_text(encoding="utf-8")).get("install", [])
    requirements, skipped = [], []
    for item in chosen:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        (skipped if _canonical(name) in pins else requirements).append(f"{name}=={version}")
    return InstallPlan(requirements, skipped)


def install_dependencies(deps, target, *, python: str | None = None, pip_args=(), log=print,
                         cancelled=lambda: False, env=None) -> InstallPlan:
    """Install ``deps`` (and what they need that QGIS's Python lacks) into ``target``; what the button runs.

    Two pip runs: :func:`plan_install` resolves, then ``pip install --target --no-deps`` installs exactly
    the planned distributions, so pip can never put another numpy (or anything QGIS has) in the folder.
    ``pip_args`` reach both runs (``--index-url``, ``--find-links``...). ``log`` gets pip's lines.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    _WRITTEN.clear()  # what QGIS's Python has changes now
    deps = list(deps)
    if not deps:
        return InstallPlan([], [])
    plan = plan_install(deps, target, python=python, pip_args=pip_args, log=log, cancelled=cancelled, env=env)
    if plan.skipped:
        log("Already in QGIS's Python, left as they are: " + ", ".join(plan.skipped))
    if plan.requirements:
        log("Installing into " + str(target) + ": " + ", ".join(plan.requirements))
        # --upgrade: a package of an earlier, interrupted run is replaced rather than refused
        _run_pip(python or matching_python(), ["install", "--target", str(target), "--no-deps", "--upgrade",
                                               "--no-warn-script-location", *pip_args, *plan.requirements],
                 log, cancelled, _pip_env(env))
    add_deps_dir(target)
    _WRITTEN.clear()
    still = [d.module for d in deps if not is_available(d.module)]
    if still:
        raise ForestCarbonError(f"pip finished but {', '.join(still)} still cannot be found in {target}. "
                                "The log above shows what pip did.")
    log("Done: " + ", ".join(d.module for d in deps) + " installed.")
    return plan
