"""Build dist/forest_carbon_plugin-<version>.zip, the zip QGIS's plugin manager installs.

One top folder, ``forest_carbon_plugin/``, holding the package (``__init__.py`` with
``classFactory``), ``metadata.txt``, ``LICENSE``, ``resources/``, ``docs/`` (the help the
algorithms link to, readable offline) and ``processing_provider/``; no tests, caches or build
scripts. Entries are written in sorted order with a fixed timestamp, so the same tree gives the
same zip.

In the repository ``processing_provider`` is a top-level package; in the zip it is
``forest_carbon_plugin.processing_provider``, so that the installed plugin puts no generic
top-level name on ``sys.path``. The zip's copies of the Python files therefore say
``from <dots>processing_provider... import`` (relative to the file) where the repository says
``from processing_provider... import``; :func:`relative_imports` is that one rewrite.
"""

from __future__ import annotations

import configparser
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "forest_carbon_plugin"
EXCLUDED_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
EXCLUDED_SUFFIXES = {".pyc", ".pyo", ".orig", ".rej", ".swp"}


def version() -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "metadata.txt", encoding="utf-8")
    return parser["general"]["version"]


def _files(base: Path):
    for path in sorted(base.rglob("*")):
        if path.is_file() and not (set(path.relative_to(ROOT).parts) & EXCLUDED_DIRS) \
                and path.suffix not in EXCLUDED_SUFFIXES:
            yield path


_ABSOLUTE = re.compile(r"^(\s*)from processing_provider(?=[.\s])", re.MULTILINE)
_PLAIN_IMPORT = re.compile(r"^\s*import processing_provider\b", re.MULTILINE)


def relative_imports(source: str, name: str) -> str:
    """``source`` of the zip member ``name`` with its top-level processing_provider imports made relative."""
    depth = name.count("/") - 1  # folders below forest_carbon_plugin/: plugin.py 0, gui/x.py 1
    if _PLAIN_IMPORT.search(source):
        raise SystemExit(f"{name}: 'import processing_provider' cannot be made relative; "
                         "write 'from processing_provider.X import Y'")
    return _ABSOLUTE.sub(lambda m: f"{m.group(1)}from {'.' * (depth + 1)}processing_provider", source)


def members():
    """(path in the repository, name in the zip) pairs."""
    for path in _files(ROOT / PLUGIN):
        yield path, f"{PLUGIN}/{path.relative_to(ROOT / PLUGIN).as_posix()}"
    for folder in ("processing_provider", "resources", "docs"):
        for path in _files(ROOT / folder):
            yield path, f"{PLUGIN}/{path.relative_to(ROOT).as_posix()}"
    for name in ("metadata.txt", "LICENSE", "README.md"):
        yield ROOT / name, f"{PLUGIN}/{name}"


def build(out_dir: Path = ROOT / "dist") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PLUGIN}-{version()}.zip"
    tmp = target.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, name in members():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            data = path.read_bytes()
            if name.endswith(".py"):
                data = relative_imports(data.decode("utf-8"), name).encode("utf-8")
            archive.writestr(info, data)
    tmp.replace(target)
    return target


if __name__ == "__main__":
    path = build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist")
    print(path)
