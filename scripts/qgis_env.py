"""Run ``qgis_process`` against a throwaway QGIS profile holding the packaged plugin.

Used by ``make demo``, ``make deploy`` and the tests. Debian's ``/usr/bin/qgis_process``
wrapper passes ``--noversioncheck``, which the 3.22 binary rejects, so the binary
``qgis_process.bin`` is called directly (shared/notes/qgis_conventions.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

PLUGIN = "forest_carbon_plugin"


def qgis_process_binary() -> str:
    for candidate in ("qgis_process.bin", "/usr/bin/qgis_process.bin", "/usr/lib/qgis/qgis_process.bin"):
        found = shutil.which(candidate)
        if found:
            return found
    found = shutil.which("qgis_process")
    if found:
        return found
    raise FileNotFoundError("qgis_process not found: install QGIS (make setup).")


def install_zip(zip_path, profile_dir) -> Path:
    """Unpack the plugin zip into ``profile_dir/python/plugins`` (replacing an old copy)."""
    plugins = Path(profile_dir) / "python" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(plugins / PLUGIN, ignore_errors=True)
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(plugins)
    return plugins / PLUGIN


def enable_plugin(profile_dir) -> None:
    """Set ``[PythonPlugins] forest_carbon_plugin=true`` in the profile's QGIS3.ini, as QGIS does."""
    from qgis.PyQt.QtCore import QSettings

    ini = Path(profile_dir) / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    settings = QSettings(str(ini), QSettings.Format.IniFormat)
    settings.setValue(f"PythonPlugins/{PLUGIN}", True)
    settings.sync()


def environment(config_dir, python_path: bool = True) -> dict:
    """Environment for qgis_process with ``config_dir/profiles/default`` as profile.

    With ``python_path`` QGIS's embedded Python also sees this interpreter's
    site-packages (the .venv with onnxruntime, laspy, dask).
    """
    env = dict(os.environ)
    env["QGIS_CUSTOM_CONFIG_PATH"] = str(config_dir)
    env["QT_QPA_PLATFORM"] = "offscreen"
    env.setdefault("PROJ_DATA", "/usr/share/proj")
    # PATH is left as the user has it (pyenv, conda or venv shims first included): QGIS must cope
    runtime = Path(tempfile.gettempdir()) / f"runtime-{os.getuid()}"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env["XDG_RUNTIME_DIR"] = str(runtime)
    if python_path:
        site = sysconfig.get_paths()["purelib"]
        env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH", "")) if p)
    else:
        env.pop("PYTHONPATH", None)
    return env


def make_profile(zip_path, config_dir) -> Path:
    """A throwaway QGIS configuration folder whose default profile has the plugin enabled."""
    profile = Path(config_dir) / "profiles" / "default"
    install_zip(zip_path, profile)
    enable_plugin(profile)
    return profile


def run(args, config_dir, python_path: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """``qgis_process.bin ARGS`` with the throwaway profile; output captured as text."""
    return subprocess.run([qgis_process_binary(), *args], env=environment(config_dir, python_path),
                          capture_output=True, text=True, timeout=timeout)


def run_algorithm(algorithm: str, parameters: dict, config_dir, python_path: bool = True):
    """Run an algorithm; return (completed process, results dict or None)."""
    args = ["--json", "run", algorithm, "--"]
    for key, value in parameters.items():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            args.append(f"{key}={item}")
    proc = run(args, config_dir, python_path)
    results = None
    if proc.returncode == 0:
        start = proc.stdout.find("{")
        if start >= 0:
            results = json.loads(proc.stdout[start:]).get("results")
    return proc, results


if __name__ == "__main__":
    # python scripts/qgis_env.py ZIP CONFIG_DIR: prepare a profile (used by make deploy/demo)
    print(make_profile(sys.argv[1], sys.argv[2]))
