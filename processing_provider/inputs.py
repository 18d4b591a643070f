"""Messages for parameter values that QGIS's own check refuses.

QGIS refuses such values with "Incorrect parameter value for INPUT", which names neither the
value nor what would be accepted. :func:`explain_invalid` finds the parameter QGIS refused and
says both, so that a user can fix the value without reading the algorithm's code.
"""

from __future__ import annotations

import os

from .compat import FileBehavior, ParameterFlag


def _shown(value) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


def _file_hint(param, value) -> str:
    extensions = list(getattr(param, "_extensions", ()) or [])
    extension = param.extension() if hasattr(param, "extension") else ""
    if extension and not extensions:
        extensions = [extension]
    wanted = " or ".join(f".{e}" for e in extensions) if extensions else "a file"
    folder = hasattr(param, "_extensions") or (hasattr(param, "behavior") and param.behavior() == FileBehavior.Folder)
    if isinstance(value, str) and value and not os.path.exists(value):
        return f"'{_shown(value)}' does not exist: choose an existing file" + (" or folder" if folder else "") + "."
    if isinstance(value, str) and os.path.isdir(value) and not folder:
        return f"'{_shown(value)}' is a folder: choose a file ({wanted})."
    return (f"'{_shown(value)}' is not {'a file ending in ' + wanted if extensions else 'an acceptable file'}"
            + (" or a folder of them" if folder else "") + ".")


def _layer_hint(kind: str, value) -> str:
    if isinstance(value, str) and value and not os.path.exists(value.split("|")[0]):
        return f"'{_shown(value)}' does not exist: choose an existing {kind} file or a loaded layer."
    return (f"'{_shown(value)}' cannot be opened as a {kind} layer: check that it is a complete {kind} file that "
            "QGIS can open (e.g. GeoTIFF for rasters, GeoPackage or shapefile for vectors).")


def _number_hint(param, value) -> str:
    low, high = param.minimum(), param.maximum()
    bounds = []
    if low > -1.7e308:
        bounds.append(f"at least {low:g}")
    if high < 1.7e308:
        bounds.append(f"at most {high:g}")
    return f"{_shown(value)} is not accepted: give a number {' and '.join(bounds) or ''}".rstrip() + "."


def explain_invalid(alg, parameters: dict, context) -> str | None:
    """The first parameter of ``alg`` whose value QGIS refuses, as "NAME (description): what is wrong
    and what to give"; None when every value is acceptable."""
    for param in alg.parameterDefinitions():
        value = parameters.get(param.name())
        acceptable = param.checkValueIsAcceptable(value, context)
        if acceptable:
            continue
        label = f"{param.name()} ({param.description()})"
        optional = bool(param.flags() & ParameterFlag.Optional)
        if value is None or value == "" or value == []:
            if param.isDestination():
                return f"{label}: no output given. Choose where to write it."
            return f"{label}: no value given. {'' if optional else 'This parameter is required.'}".strip()
        kind = param.type()
        if kind == "file":
            hint = _file_hint(param, value)
        elif kind == "number":
            hint = _number_hint(param, value)
        elif kind == "multilayer":
            items = value if isinstance(value, (list, tuple)) else [value]
            missing = [v for v in items if isinstance(v, str) and v and not os.path.exists(v.split("|")[0])]
            hint = (f"'{_shown(missing[0])}' does not exist: choose existing files or loaded layers." if missing else
                    f"{_shown(value)} holds an item that cannot be opened as the kind of layer this parameter takes: "
                    "check that every item is a complete file of that kind.")
        elif kind == "raster":
            hint = _layer_hint("raster", value)
        elif kind in ("vector", "source"):
            hint = _layer_hint("vector", value)
        elif kind == "enum":
            options = param.options()
            hint = (f"{_shown(value)} is not one of the options: give an index from 0 to {len(options) - 1} "
                    f"({', '.join(f'{i}: {o}' for i, o in enumerate(options))}).")
        elif kind == "extent":
            hint = f"'{_shown(value)}' is not an extent: write 'xmin,xmax,ymin,ymax [EPSG:code]'."
        elif kind == "crs":
            hint = f"'{_shown(value)}' is not a coordinate reference system: give e.g. 'EPSG:32633'."
        else:
            hint = f"{_shown(value)} is not an acceptable value."
        return f"{label}: {hint}"
    return None
