"""A pytest plugin (``-p tests.cases.hide_modules``) that makes the modules named in
``FOREST_CARBON_HIDE`` (comma-separated) unimportable, as if they were not installed."""

import importlib.abc
import os
import sys

HIDDEN = {m.strip() for m in os.environ.get("FOREST_CARBON_HIDE", "").split(",") if m.strip()}


class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


if HIDDEN:
    for loaded in [m for m in sys.modules if m.split(".")[0] in HIDDEN]:
        del sys.modules[loaded]
    sys.meta_path.insert(0, _Hide())
