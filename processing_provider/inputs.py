"""Inputs of the algorithms: the point-cloud input every LiDAR algorithm shares, and messages for
parameter values that QGIS's own check refuses.

QGIS refuses such values with "Incorrect parameter value for INPUT", which names neither the
value nor what would be accepted. :func:`explain_invalid` finds the parameter QGIS refused and
says both, so that a user can fix the value without reading the algorithm's code.
"""

from __future__ import annotations

import functools
import os

import qgis.core as _qgis_core
from qgis.core import (
    QgsMapLayer,
    QgsProcessingException,
    QgsProcessingParameterFile,
    QgsProcessingUtils,
    QgsProperty,
    QgsProviderRegistry,
)

from forest_carbon_plugin.core.vector import source_path

from .compat import FileBehavior, ParameterFlag, PropertyType

#: providers that open local point-cloud files as layers (3.22 from Debian has only 'ept'; 3.44 'copc', 'vpc')
_LOCAL_CLOUD_PROVIDERS = ("pdal", "copc", "vpc")
_CLOUD_SUFFIXES = (".vpc",)  # besides the algorithm's own (las, laz: COPC's .copc.laz included)


class FileOrFolderParameter(QgsProcessingParameterFile):
    """A file with one of ``extensions``, or a folder (a catalog of tiles).

    QGIS 3.22's file parameter accepts either files or folders, never both; LiDAR tools
    take a tile or a catalog alike (as lidR's ``readLAScatalog``). The widget is the file
    picker; a folder path can be typed or pasted into it.
    """

    def __init__(self, name, description, extensions=(), optional=False):
        patterns = " ".join(f"*.{e} *.{e.upper()}" for e in extensions)
        super().__init__(name, description, behavior=FileBehavior.File,
                         fileFilter=f"Files or folders ({patterns});;All files (*)", optional=optional)
        self._extensions = tuple(extensions)

    def clone(self):
        return FileOrFolderParameter(self.name(), self.description(), self._extensions,
                                     bool(self.flags() & ParameterFlag.Optional))

    def checkValueIsAcceptable(self, value, context=None):  # noqa: N802
        if isinstance(value, str) and os.path.isdir(value):
            return True
        if isinstance(value, str) and value and not os.path.splitext(value)[1].lower().lstrip(".") \
                in self._extensions:
            return False
        return super().checkValueIsAcceptable(value, context) if context is not None \
            else super().checkValueIsAcceptable(value)


def point_cloud_layers_available() -> bool:
    """Whether the running QGIS can load a LAS/LAZ, COPC or .vpc file as a point-cloud layer, and so
    whether INPUT is offered as a layer dropdown (with its file picker) rather than a file box."""
    if not hasattr(_qgis_core, "QgsProcessingParameterPointCloudLayer"):
        return False
    return any(key in QgsProviderRegistry.instance().providerList() for key in _LOCAL_CLOUD_PROVIDERS)


def _accepts_path(value, extensions) -> bool | None:
    """True/False for a value that names an existing file or folder; None for anything else (a layer)."""
    if not isinstance(value, str) or not value:
        return None
    path = plain_path(value)
    if os.path.isdir(path):
        return True
    suffixes = tuple(f".{e}" for e in extensions) + _CLOUD_SUFFIXES
    if os.path.isfile(path):
        return path.lower().endswith(suffixes)
    if _looks_like_path(path, suffixes):
        return True  # as QGIS's file parameter does: the run names the missing file (the same on every QGIS)
    return None


def _looks_like_path(text: str, suffixes=(".las", ".laz") + _CLOUD_SUFFIXES) -> bool:
    return "/" in text or os.sep in text or text.lower().endswith(suffixes)


if hasattr(_qgis_core, "QgsProcessingParameterPointCloudLayer"):
    class PointCloudInputParameter(_qgis_core.QgsProcessingParameterPointCloudLayer):
        """A point-cloud layer of the project (dropdown, with the file picker of QGIS's layer widgets), or
        a LAS/LAZ/COPC file, a ``.vpc`` or a folder of tiles given by path, as scripts pass today."""

        def __init__(self, name, description, extensions=("las", "laz"), optional=False):
            super().__init__(name, description, optional=optional)
            self._extensions = tuple(extensions)
            # QGIS's layer widget takes no folder (neither typed nor dropped): the toolbox dialog gets ours
            self.setMetadata({"widget_wrapper": {"class": _CloudWidgetWrapperFactory}})

        def clone(self):
            return PointCloudInputParameter(self.name(), self.description(), self._extensions,
                                            bool(self.flags() & ParameterFlag.Optional))

        def createFileFilter(self):  # noqa: N802
            # QGIS lists only what its providers load (COPC, EPT, .vpc where PDAL is absent): LAS/LAZ are read here
            patterns = " ".join(f"*.{e} *.{e.upper()}" for e in self._extensions + ("vpc",))
            return f"Point clouds ({patterns});;{super().createFileFilter()}"

        def checkValueIsAcceptable(self, value, context=None):  # noqa: N802
            if isinstance(value, QgsProperty) and value.propertyType() == PropertyType.Static:
                value = value.staticValue()
            accepted = _accepts_path(value, self._extensions)
            if accepted is not None:
                return accepted
            return super().checkValueIsAcceptable(value, context) if context is not None \
                else super().checkValueIsAcceptable(value)


class _CloudWidgetWrapperFactory:
    """Processing's dialogs build a parameter's widget from the ``widget_wrapper`` class in its metadata: the
    toolbox dialog gets :class:`CloudWidgetWrapper`, the batch and model designers QGIS's own widgets."""

    def __new__(cls, param, dialog, row=0, col=0, **kwargs):
        from processing.gui.wrappers import dialogTypes
        from qgis.gui import QgsGui

        kind = type(dialog).__name__
        if kind == "ModelerParametersDialog":
            return QgsGui.processingGuiRegistry().createModelerParameterWidget(dialog.model, dialog.childId, param,
                                                                               dialog.context)
        standard = dialogTypes["AlgorithmDialog"]
        dialog_type = dialogTypes.get(kind, standard)
        wrapper = (cloud_widget_wrapper_class()(param, dialog_type) if dialog_type == standard
                   else QgsGui.processingGuiRegistry().createParameterWidgetWrapper(param, dialog_type))
        wrapper.setDialog(dialog)
        return wrapper


@functools.lru_cache(maxsize=None)
def cloud_widget_wrapper_class():
    """The toolbox dialog's widget for the point-cloud input (a class built on first use: it needs qgis.gui,
    which a headless ``qgis_process`` run never loads)."""
    from qgis.core import QgsPointCloudLayer, QgsProject
    from qgis.gui import QgsAbstractProcessingParameterWidgetWrapper
    from qgis.PyQt.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QMenu, QToolButton, QWidget

    class CloudWidgetWrapper(QgsAbstractProcessingParameterWidgetWrapper):
        """A dropdown of the project's point-cloud layers in which a file or folder path can also be typed or
        pasted, and a ``…`` button to pick a LAS/LAZ/COPC/.vpc file or a folder of tiles."""

        def createWidget(self):  # noqa: N802
            widget = QWidget()
            layout = QHBoxLayout(widget)
            layout.setContentsMargins(0, 0, 0, 0)
            self.combo = QComboBox()
            self.combo.setEditable(True)
            self.combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
            self.combo.lineEdit().setPlaceholderText("a point-cloud layer, or the path of a file or folder")
            for layer in QgsProject.instance().mapLayers().values():
                if isinstance(layer, QgsPointCloudLayer):
                    self.combo.addItem(layer.name(), layer.id())
            self.combo.setCurrentIndex(0 if self.combo.count() else -1)
            self.combo.currentTextChanged.connect(lambda _text: self.widgetValueHasChanged.emit(self))
            layout.addWidget(self.combo, 1)
            button = QToolButton()
            button.setText("…")
            button.setToolTip("Pick a point-cloud file or a folder of tiles")
            menu = QMenu(button)
            menu.addAction("Select File…", self._pick_file)
            menu.addAction("Select Folder of Tiles…", self._pick_folder)
            button.setMenu(menu)
            button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
            layout.addWidget(button)
            return widget

        def _pick_file(self):
            path, _ = QFileDialog.getOpenFileName(self.combo, self.parameterDefinition().description(), "",
                                                  self.parameterDefinition().createFileFilter())
            if path:
                self.combo.setEditText(path)

        def _pick_folder(self):
            path = QFileDialog.getExistingDirectory(self.combo, self.parameterDefinition().description())
            if path:
                self.combo.setEditText(path)

        def setWidgetValue(self, value, context):  # noqa: N802
            if isinstance(value, QgsMapLayer):
                value = value.id()
            text = "" if value is None else str(value)
            if not text and self.combo.count() and not self.parameterDefinition().flags() & ParameterFlag.Optional:
                self.combo.setCurrentIndex(0)  # as QGIS's layer widgets: no default means the first layer
                return
            index = self.combo.findData(text)
            if index < 0:
                index = self.combo.findText(text)
            if index >= 0:
                self.combo.setCurrentIndex(index)
            else:
                self.combo.setEditText(text)

        def widgetValue(self):  # noqa: N802
            text = self.combo.currentText().strip()
            index = self.combo.currentIndex()
            if index >= 0 and self.combo.itemText(index) == text:
                return self.combo.itemData(index)
            return text or None

    return CloudWidgetWrapper


def add_point_cloud_input(alg, label: str = "Point cloud (layer, LAS/LAZ/COPC file, .vpc or folder of tiles)",
                          extensions=("las", "laz"), name: str = "INPUT") -> None:
    """Declare the point-cloud input: a layer dropdown where QGIS can load point-cloud files, otherwise a
    file box that takes a file or a folder (QGIS 3.22 from Debian has no provider for LAS/LAZ layers)."""
    if point_cloud_layers_available():
        alg.addParameter(PointCloudInputParameter(name, alg.tr(label), extensions=extensions))
    else:
        alg.addParameter(FileOrFolderParameter(name, alg.tr(label), extensions=tuple(extensions) + ("vpc",)))


def point_cloud_source(alg, parameters, context, name: str = "INPUT") -> str:
    """The file or folder that the point-cloud input names: a path as given, or a layer's own file."""
    value = parameters.get(name)
    if isinstance(value, QgsProperty):
        value = value.staticValue() if value.propertyType() == PropertyType.Static \
            else value.valueAsString(context.expressionContext())
    layer = value if isinstance(value, QgsMapLayer) else None
    if layer is None:
        if value is None or (isinstance(value, str) and not value.strip()):
            raise QgsProcessingException(alg.tr(
                f"{name}: no point cloud given. Choose a point-cloud layer, a LAS/LAZ/COPC file, a .vpc or a "
                "folder of tiles."))
        text = str(value)
        if os.path.exists(plain_path(text)):
            return plain_path(text)
        layer = QgsProcessingUtils.mapLayerFromString(text, context, False)
        if layer is None and _looks_like_path(text):
            return plain_path(text)  # a path: the core says what is missing
        if layer is None:
            raise QgsProcessingException(alg.tr(
                f"{name}: '{_shown(text)}' is neither an existing file or folder nor a layer of the project: "
                "choose a point-cloud layer, a LAS/LAZ/COPC file, a .vpc or a folder of tiles."))
    return _cloud_layer_path(alg, layer, name)


def plain_path(value: str) -> str:
    """The file part of a path or of a QGIS source string (``a.gpkg|layername=x`` → ``a.gpkg``)."""
    return str(source_path(value))


def layer_file(layer) -> str:
    """The local file behind a layer as its provider decodes it (else the file part of its source)."""
    try:
        path = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source()).get("path")
    except Exception:  # noqa: BLE001 - providers without decodeUri
        path = None
    return path or plain_path(layer.source())


def _cloud_layer_path(alg, layer, name: str) -> str:
    path = layer_file(layer)
    if not path or not os.path.exists(path):
        raise QgsProcessingException(alg.tr(
            f"{name}: the layer '{layer.name()}' is not a local file ({_shown(layer.source())}): Forest Carbon reads "
            "local LAS/LAZ/COPC files and .vpc. Download the data and load or give the local files."))
    if os.path.basename(path).lower() == "ept.json":
        raise QgsProcessingException(alg.tr(
            f"{name}: the layer '{layer.name()}' is an Entwine Point Tile index ({path}), which Forest Carbon does "
            "not read: give the LAS/LAZ files it was built from, or a COPC/.vpc of them."))
    return path


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
    if isinstance(value, str) and value and not os.path.exists(plain_path(value)):
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
        if kind == "pointcloud":
            hint = (_file_hint(param, value) if isinstance(value, str) and (os.path.exists(value) or "/" in value
                                                                             or os.sep in value)
                    else f"'{_shown(value)}' is not a point-cloud layer of the project, nor an existing LAS/LAZ/COPC "
                         "file, .vpc or folder of tiles.")
        elif kind == "file":
            hint = _file_hint(param, value)
        elif kind == "number":
            hint = _number_hint(param, value)
        elif kind == "multilayer":
            items = value if isinstance(value, (list, tuple)) else [value]
            missing = [v for v in items if isinstance(v, str) and v and not os.path.exists(plain_path(v))]
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
