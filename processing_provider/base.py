"""What every Forest Carbon algorithm shares: ids, groups, dependency checks, errors."""

from __future__ import annotations

import os

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingParameterCrs,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from forest_carbon_plugin.core.dependencies import missing_dependencies, missing_message
from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.paths import ICON_SVG, RESOURCES_DIR
from .compat import FileBehavior, NumberType, ParameterFlag, PropertyType, RangeLimit


class FeedbackProgress:
    """The core's progress protocol on top of a ``QgsProcessingFeedback``."""

    def __init__(self, feedback):
        self.feedback = feedback

    def set_progress(self, percent: float) -> None:
        if self.feedback is not None:
            self.feedback.setProgress(percent)

    def is_canceled(self) -> bool:
        return self.feedback is not None and self.feedback.isCanceled()

    def info(self, message: str) -> None:
        if self.feedback is not None:
            self.feedback.pushInfo(message)

    def warning(self, message: str) -> None:
        if self.feedback is not None:
            self.feedback.reportError(message, fatalError=False)


def rescale_ramp(layer, low: float = 0.02, high: float = 0.98) -> None:
    """Stretch a single-band pseudocolour ramp (stops given on 0-1) to the layer's cumulative
    ``low``-``high`` range, keeping the stops' relative positions."""
    from qgis.core import QgsColorRampShader

    renderer = layer.renderer()
    if renderer is None or renderer.type() != "singlebandpseudocolor":
        return
    vmin, vmax = layer.dataProvider().cumulativeCut(renderer.band(), low, high)
    if not vmax > vmin:
        vmax = vmin + 1.0
    shader = renderer.shader().rasterShaderFunction()
    items = shader.colorRampItemList()
    old_min, old_max = items[0].value, items[-1].value
    span = (old_max - old_min) or 1.0
    shader.setColorRampItemList([QgsColorRampShader.ColorRampItem(
        vmin + (i.value - old_min) / span * (vmax - vmin), i.color, f"{vmin + (i.value - old_min) / span * (vmax - vmin):.3g}")
        for i in items])
    shader.setMinimumValue(vmin)
    shader.setMaximumValue(vmax)
    renderer.setClassificationMin(vmin)
    renderer.setClassificationMax(vmax)


class StyleLoader(QgsProcessingLayerPostProcessorInterface):
    """Applies a style of resources/styles/ to an output when QGIS loads it."""

    _alive: list = []  # QGIS holds only a pointer: keep the Python objects alive

    def __init__(self, qml_path, rescale: bool = False):
        super().__init__()
        self.qml_path = str(qml_path)
        self.rescale = rescale

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        layer.loadNamedStyle(self.qml_path)
        if self.rescale:
            rescale_ramp(layer)
        layer.triggerRepaint()

    @classmethod
    def attach(cls, context, output, style_name: str, rescale: bool = False) -> None:
        if output and context.willLoadLayerOnCompletion(output):
            loader = cls(RESOURCES_DIR / "styles" / f"{style_name}.qml", rescale)
            cls._alive.append(loader)
            context.layerToLoadOnCompletionDetails(output).setPostProcessor(loader)


class RgbStyler(QgsProcessingLayerPostProcessorInterface):
    """Shows a reflectance output as true colour: the bands described red, green and blue,
    stretched to their 2-98% cumulative range (QGIS's default for multiband imagery)."""

    _alive: list = []

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        from qgis.core import QgsContrastEnhancement, QgsMultiBandColorRenderer

        provider = layer.dataProvider()
        names = [layer.bandName(i).split(":")[-1].strip().lower() for i in range(1, layer.bandCount() + 1)]
        try:
            red, green, blue = (names.index(n) + 1 for n in ("red", "green", "blue"))
        except ValueError:
            return
        renderer = QgsMultiBandColorRenderer(provider, red, green, blue)
        layer.setRenderer(renderer)
        layer.setContrastEnhancement(QgsContrastEnhancement.ContrastEnhancementAlgorithm.StretchToMinimumMaximum,
                                     RangeLimit.CumulativeCut)
        layer.triggerRepaint()

    @classmethod
    def attach(cls, context, output) -> None:
        if output and context.willLoadLayerOnCompletion(output):
            styler = cls()
            cls._alive.append(styler)
            context.layerToLoadOnCompletionDetails(output).setPostProcessor(styler)


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


class ForestCarbonAlgorithm(QgsProcessingAlgorithm):
    """Base class: subclasses set ``_name``, ``_display``, ``_group``, ``requirements``."""

    _name = ""
    _display = ""
    _group = ""
    _group_id = ""
    #: import names of the Python packages the algorithm needs (see core.dependencies)
    requirements: tuple[str, ...] = ()

    def tr(self, text: str) -> str:
        return QCoreApplication.translate(type(self).__name__, text)

    def createInstance(self):  # noqa: N802
        return type(self)()

    def name(self) -> str:
        return self._name

    def displayName(self) -> str:  # noqa: N802
        return self.tr(self._display)

    def group(self) -> str:
        return self.tr(self._group)

    def groupId(self) -> str:  # noqa: N802
        return self._group_id

    def icon(self):
        return QIcon(str(ICON_SVG))

    def canExecute(self):  # noqa: N802
        missing = missing_dependencies(self.requirements)
        if missing:
            return False, missing_message(missing)
        return True, ""

    def check_requirements(self) -> None:
        """Raise a ``QgsProcessingException`` naming the pip command when a package is missing."""
        missing = missing_dependencies(self.requirements)
        if missing:
            raise QgsProcessingException(missing_message(missing))

    def add_cloud_input(self, label: str = "LAS/LAZ file or folder of tiles", extensions=("las", "laz")) -> None:
        """INPUT: one point-cloud file or a folder of tiles (a catalog)."""
        self.addParameter(FileOrFolderParameter("INPUT", self.tr(label), extensions=extensions))

    def add_resolution(self, default: float, name: str = "RESOLUTION", label: str = "Resolution (m)") -> None:
        self.addParameter(QgsProcessingParameterNumber(name, self.tr(label), NumberType.Double,
                                                       defaultValue=default, minValue=0.0))

    def add_max_workers(self) -> None:
        """MAX_WORKERS: catalog tiles run in this many worker processes (1 = in QGIS's process)."""
        import os

        self.addParameter(QgsProcessingParameterNumber(
            "MAX_WORKERS", self.tr("Worker processes (tiles of a catalog in parallel)"),
            NumberType.Integer, defaultValue=max(1, min(4, os.cpu_count() or 1)), minValue=1,
            maxValue=64))

    def add_las_output(self, label: str) -> None:
        """OUTPUT: one LAS/LAZ file (the tiles of a catalog are written into it in turn)."""
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", self.tr(label), fileFilter="LAZ files (*.laz);;LAS files (*.las)"))

    def las_output(self, parameters, context) -> str:
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if not output.lower().endswith((".las", ".laz")):
            raise QgsProcessingException(self.tr("OUTPUT must end in .laz or .las."))
        return output

    def add_crs_and_extent(self, extent: bool) -> None:
        """The optional CRS override (for files without one) and, for raster outputs, EXTENT."""
        self.addParameter(QgsProcessingParameterCrs("CRS", self.tr("CRS (when the files have none)"), optional=True))
        if extent:
            self.addParameter(QgsProcessingParameterExtent("EXTENT", self.tr("Extent (default: the whole cloud)"),
                                                           optional=True))

    def crs_wkt(self, parameters, context, name: str = "CRS"):
        """The optional CRS parameter as WKT for the core, or None when unset."""
        crs = self.parameterAsCrs(parameters, name, context)
        return crs.toWkt() if crs.isValid() else None

    def extent_of(self, parameters, context, name: str = "EXTENT"):
        """The optional extent as ((xmin, ymin, xmax, ymax), its CRS as WKT), or (None, None)."""
        if not parameters.get(name):
            return None, None
        rect = self.parameterAsExtent(parameters, name, context)
        crs = self.parameterAsExtentCrs(parameters, name, context)
        return ((rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()),
                crs.toWkt() if crs.isValid() else None)

    def call_core(self, function, *args, **kwargs):
        """Call a core function; its user-facing errors become ``QgsProcessingException``."""
        try:
            return function(*args, **kwargs)
        except ForestCarbonError as exc:
            raise QgsProcessingException(str(exc)) from exc
