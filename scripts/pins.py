"""Pins derived at `make setup` time from the Python that runs this script (no QGIS, standard library only).

    /usr/bin/python3 scripts/pins.py system > .venv/constraints.txt
        Debian's builds that pip must never replace in the --system-site-packages .venv: QGIS, GDAL's
        Python bindings, rasterio and scipy are compiled against this numpy, and the others are the
        versions Debian tested together. Pinned to whatever this Debian release ships (12: numpy 1.24.2,
        13: numpy 2.2.4), so one requirements.txt serves every release.

    .venv/bin/python scripts/pins.py worker > constraints-worker.txt
        The versions .venv runs of what a Dask worker installs (`pip install .[worker]`), so that a tile
        computed on a worker has the same bits as one computed in QGIS and the client and its workers
        agree on dask/distributed/cloudpickle/msgpack.
"""

from __future__ import annotations

import sys
from importlib import metadata

# Debian packages whose pip wheels would replace Debian's ABI-matched builds.
SYSTEM = ["numpy", "scipy", "rasterio", "pyproj", "affine", "shapely", "pandas", "geopandas", "scikit-learn",
          "matplotlib", "cryptography"]

# What a worker computes with (bits: numeric stack, LAS decoding, ONNX) and talks with (transport: dask,
# distributed and the libraries that serialize or ship its messages). Pure-Python helpers that Debian may
# provide in old versions without wheels for this Python (PyYAML, click, jinja2) are left to pip.
WORKER = ["numpy", "scipy", "rasterio", "affine", "pyproj", "onnxruntime", "laspy", "lazrs", "dask",
          "distributed", "cloudpickle", "msgpack", "toolz", "tornado", "tblib", "psutil", "zict",
          "sortedcontainers", "locket", "partd", "fsspec", "protobuf"]

HEADERS = {
    "system": "# Derived by `make setup` (scripts/pins.py system) from {python}: Debian's builds, kept in .venv.",
    "worker": "# Derived by `make setup` (scripts/pins.py worker) from {python}, the client's .venv:\n"
              "# `pip install -c constraints-worker.txt .[worker]` gives a Dask worker the client's versions\n"
              "# (Python {version} on the worker too).",
}


def version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def pins(names: list[str]) -> list[str]:
    # Debian's local labels ("2.2.3+dfsg") are not on PyPI; "==2.2.3" still matches Debian's build.
    return [f"{name}=={v.split('+')[0]}" for name in names if (v := version(name)) is not None]


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in HEADERS:
        print("usage: pins.py system|worker", file=sys.stderr)
        return 2
    kind = argv[0]
    names = SYSTEM if kind == "system" else WORKER
    lines = pins(names)
    if kind == "system" and not any(line.startswith("numpy==") for line in lines):
        print(f"pins.py: {sys.executable} has no numpy; install Debian's python3-numpy (make system-packages)",
              file=sys.stderr)
        return 1
    missing = [n for n in names if version(n) is None] if kind == "worker" else []
    if missing:
        print(f"pins.py: {sys.executable} lacks {', '.join(missing)}: run `make setup` first", file=sys.stderr)
        return 1
    print(HEADERS[kind].format(python=sys.executable, version=".".join(map(str, sys.version_info[:2]))))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
