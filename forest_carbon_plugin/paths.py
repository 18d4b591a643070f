"""Where the plugin's files are, in the repository and in the installed plugin.

In the repository ``resources/`` and ``metadata.txt`` sit beside the package; in the
plugin zip they are copied inside the plugin folder. Both layouts resolve here.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _first_existing(name: str) -> Path:
    for base in (PACKAGE_DIR, PACKAGE_DIR.parent):
        candidate = base / name
        if candidate.exists():
            return candidate
    return PACKAGE_DIR / name


RESOURCES_DIR = _first_existing("resources")
METADATA_FILE = _first_existing("metadata.txt")
DOCS_DIR = _first_existing("docs")  #: shipped in the zip: the algorithms' help pages link to it offline
README_FILE = _first_existing("README.md")
ICON_SVG = RESOURCES_DIR / "icons" / "forest_carbon.svg"
ICON_PNG = RESOURCES_DIR / "icons" / "icon.png"
