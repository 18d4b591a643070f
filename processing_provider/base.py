"""What every Forest Carbon algorithm shares: ids, groups, dependency checks, errors, and the
safety of outputs (never onto an input, all-or-nothing)."""

from __future__ import annotations

import functools
import os
import traceback
from pathlib import Path

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingParameterCrs,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from forest_carbon_plugin.core.dependencies import missing_dependencies, missing_message
from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.lidar.vpc import vpc_files
from forest_carbon_plugin.core.outputs import OutputTransaction
from forest_carbon_plugin.core.parallel.pool import default_workers
from forest_carbon_plugin.paths import ICON_SVG, RESOURCES_DIR
from forest_carbon_plugin.styling import rescale_ramp
from .compat import NumberType, PropertyType, RangeLimit
from .find_and_read import ALGORITHMS, help_page, with_labels
from .inputs import add_point_cloud_input, explain_invalid, layer_file, plain_path


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


class ForestCarbonAlgorithm(QgsProcessingAlgorithm):
    """Base class: subclasses set ``_name``, ``_display``, ``_group``, ``requirements``.

    Every subclass's ``processAlgorithm`` runs inside :func:`_safe_outputs`: outputs that would
    overwrite an input, or each other, are refused before any work, and a run that fails or is
    cancelled leaves its outputs as they were before it.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        process = cls.__dict__.get("processAlgorithm")
        if process is not None and not getattr(process, "_safe_outputs", False):
            cls.processAlgorithm = _safe_outputs(process)
        helper = cls.__dict__.get("shortHelpString")
        if helper is not None and not getattr(helper, "_with_labels", False):
            cls.shortHelpString = _help_with_labels(helper)

    def parameterAsSink(self, parameters, name, context, *args, **kwargs):  # noqa: N802
        """QGIS's sink, remembered so that the run finalizes it before it returns (see :func:`_safe_outputs`)."""
        sink, dest = super().parameterAsSink(parameters, name, context, *args, **kwargs)
        if sink is not None:
            self.__dict__.setdefault("_sinks", []).append(sink)
        return sink, dest

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

    def shortDescription(self) -> str:  # noqa: N802
        return self.tr(ALGORITHMS.get(self._name, ("",))[0])

    def tags(self) -> list:
        return [self.tr(tag) for tag in ALGORITHMS.get(self._name, ("", ()))[1]]

    def helpUrl(self) -> str:  # noqa: N802
        """A page written from this algorithm beside the profile: opens offline, never stale."""
        from qgis.core import QgsApplication

        try:
            folder = Path(QgsApplication.qgisSettingsDirPath()) / "forest_carbon_help"
            return help_page(self, folder).resolve().as_uri()
        except OSError:
            return ""  # a read-only profile: QGIS then hides the Help button rather than opening nothing

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

    def add_cloud_input(self, label: str = "Point cloud (layer, LAS/LAZ/COPC file, .vpc or folder of tiles)",
                        extensions=("las", "laz")) -> None:
        """INPUT: a point-cloud layer, one point-cloud file, a .vpc or a folder of tiles (a catalog); read it
        with :func:`.inputs.point_cloud_source`."""
        add_point_cloud_input(self, label, extensions)

    def add_resolution(self, default: float, name: str = "RESOLUTION", label: str = "Resolution (m)") -> None:
        self.addParameter(QgsProcessingParameterNumber(name, self.tr(label), NumberType.Double,
                                                       defaultValue=default, minValue=0.0))

    def add_max_workers(self) -> None:
        """MAX_WORKERS: catalog tiles run in this many worker processes (1 = in QGIS's process)."""
        self.addParameter(QgsProcessingParameterNumber(
            "MAX_WORKERS", self.tr("Worker processes (tiles of a catalog in parallel)"),
            NumberType.Integer, defaultValue=default_workers(), minValue=1,
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

    def checkParameterValues(self, parameters, context):  # noqa: N802
        """QGIS's check, with a message that names the value refused and what would be accepted."""
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            message = explain_invalid(self, parameters, context) or message
        return ok, message

    def call_core(self, function, *args, **kwargs):
        """Call a core function; its user-facing errors become ``QgsProcessingException``."""
        try:
            return function(*args, **kwargs)
        except ForestCarbonError as exc:
            raise QgsProcessingException(str(exc)) from exc
        except MemoryError as exc:
            # grids are refused before allocating when they cannot fit at all; this is the memory that the
            # machine lacked for one that could
            raise QgsProcessingException(self.tr(
                f"Not enough memory for this run ({exc or 'an allocation failed'}): use a coarser resolution, a "
                "smaller extent or fewer worker processes, or close other programs.")) from exc
        except Exception as exc:  # noqa: BLE001 - the last net: the user reads a message, the log keeps the traceback
            from qgis.core import Qgis, QgsMessageLog

            QgsMessageLog.logMessage(traceback.format_exc(), "Forest Carbon", Qgis.MessageLevel.Critical)
            raise QgsProcessingException(self.tr(
                f"{self.displayName()} stopped on an unexpected {type(exc).__name__}: {str(exc)[:300]}. Check that "
                "the inputs are what the help describes; if they are, this is a bug in Forest Carbon: please report "
                "it with the traceback shown in View ▸ Panels ▸ Log Messages (tab 'Forest Carbon').")) from exc


#: parameter types whose values name files or layers that an algorithm reads
_INPUT_TYPES = {"file", "raster", "vector", "source", "layer", "multilayer", "mesh", "pointcloud", "vectortile"}
_CATALOG_SUFFIXES = (".las", ".laz")


#: objects told of every run, whoever started it (the toolbox, a model, processing.run, the jobs dock):
#: ``started(alg, parameters, feedback)`` returns a token, ``ended(token, results, error)``; called on
#: the run's thread. The desktop's jobs dock is one (forest_carbon_plugin.gui.jobs.RunListener).
RUN_LISTENERS: list = []


def _tell_listeners(event: str, *args) -> list:
    """Call ``event`` on each listener; a listener's failure must not fail the run."""
    answers = []
    for listener in list(RUN_LISTENERS):
        try:
            answers.append((listener, getattr(listener, event)(*args)))
        except Exception:  # noqa: BLE001 - reported in the log, the run goes on
            from qgis.core import Qgis, QgsMessageLog

            QgsMessageLog.logMessage(traceback.format_exc(), "Forest Carbon", Qgis.MessageLevel.Warning)
    return answers


def _help_with_labels(helper):
    """A subclass's shortHelpString with parameter ids replaced by the labels the dialog shows."""

    @functools.wraps(helper)
    def short_help(self):
        return with_labels(self, helper(self))

    short_help._with_labels = True
    return short_help


def _safe_outputs(process):
    """``processAlgorithm`` with its outputs checked against its inputs, and written all-or-nothing."""

    @functools.wraps(process)
    def run(self, parameters, context, feedback):
        if getattr(self, "_in_safe_run", False):  # a subclass calling its parent's processAlgorithm
            return process(self, parameters, context, feedback)
        tokens = _tell_listeners("started", self, parameters, feedback) if RUN_LISTENERS else []
        results, error = None, None
        try:
            results = _checked_run(self, process, parameters, context, feedback)
            return results
        except BaseException as exc:
            error = exc
            raise
        finally:
            for listener, token in tokens:
                try:
                    listener.ended(token, results, error)
                except Exception:  # noqa: BLE001 - as in _tell_listeners
                    pass

    run._safe_outputs = True
    return run


def _checked_run(alg, process, parameters, context, feedback):
    """The body of :func:`_safe_outputs`' run: outputs refused or written all-or-nothing."""
    files, folders = output_targets(alg, parameters, context)
    alg._in_safe_run = True
    try:
        with OutputTransaction([path for _, path in files], [path for _, path in folders]) as transaction:
            if transaction.recovered and feedback is not None:
                feedback.pushInfo(alg.tr("An earlier run that was killed before it finished was rolled back "
                                         "(its partial outputs removed, the files it replaced put back): ")
                                  + "; ".join(transaction.recovered))
            try:
                results = process(alg, parameters, context, feedback)
                if feedback is not None and feedback.isCanceled():
                    raise QgsProcessingException(alg.tr("Cancelled: no output was written."))
                _close_sinks(alg, finalize=True)
            except BaseException as exc:
                # the traceback's frames hold the run's open outputs (a GeoPackage sink): let them
                # close before their files are removed
                traceback.clear_frames(exc.__traceback__)
                _close_sinks(alg, finalize=False)
                raise
        return results
    except ForestCarbonError as exc:
        raise QgsProcessingException(str(exc)) from exc
    finally:
        alg._in_safe_run = False
        alg.__dict__.pop("_sinks", None)


def _close_sinks(alg, finalize: bool) -> None:
    """Close the run's feature sinks. On success they are finalized first: from QGIS 3.42 a sink made in
    Python keeps features buffered until ``finalize()`` or its deletion, which Python may put off until
    after QGIS has read the output (a GeoPackage with no layer, seen with QGIS 3.44 in a model)."""
    from qgis.PyQt import sip

    sinks = alg.__dict__.pop("_sinks", [])
    for sink in sinks:
        if sip.isdeleted(sink):
            continue
        if finalize and hasattr(sink, "finalize"):
            sink.finalize()
        # close the file now, whatever still refers to the Python object: a sink kept alive (a reference
        # cycle) is otherwise closed only at exit, after qgis_process has torn GDAL down (no layer written)
        if sip.ispyowned(sink):
            sip.delete(sink)
    sinks.clear()


def output_targets(alg, parameters, context):
    """The run's output files and folders as ``([(parameter, path)], [(parameter, path)])``, after
    refusing, with a ``QgsProcessingException`` naming both, an output that is an input (the same file,
    a file inside an input folder, or a LAS/LAZ file inside an input folder of tiles), two outputs on one
    path, and a file output that is a folder. Temporary and non-file destinations are left out."""
    files, folders = [], []
    for param in alg.destinationParameterDefinitions():
        path = _destination_path(param, parameters.get(param.name()), context)
        if path is None:
            continue
        if param.type() == "folderDestination":
            if os.path.isfile(path):
                raise QgsProcessingException(alg.tr(
                    f"{param.name()}: '{path}' is a file; give a folder for the output."))
            folders.append((param.name(), path))
            continue
        if not os.path.splitext(path)[1] and param.defaultFileExtension():
            if not os.path.isdir(path):  # QGIS adds the format's extension
                path = f"{path}.{param.defaultFileExtension()}"
        if os.path.isdir(path):
            raise QgsProcessingException(alg.tr(
                f"{param.name()}: '{path}' is a folder; give a file name for the output "
                f"(e.g. {os.path.join(path, param.name().lower())}"
                f"{'.' + param.defaultFileExtension() if param.defaultFileExtension() else ''})."))
        files.append((param.name(), path))
    seen = {}
    for name, path in files + folders:
        key = _key(path)
        if key in seen:
            raise QgsProcessingException(alg.tr(
                f"{seen[key]} and {name} are the same path '{path}': give each output its own file name."))
        seen[key] = name
    inputs = input_paths(alg, parameters, context)
    for name, path in files + folders:
        key = _key(path)
        for in_name, in_path in inputs:
            in_key = _key(in_path)
            if key == in_key:
                raise QgsProcessingException(alg.tr(
                    f"{name} '{path}' is the input {in_name} ('{in_path}'): the output would overwrite it. "
                    "Give the output another file name."))
            if os.path.isdir(in_path) and _is_inside(key, in_key):
                # of a folder of tiles only the LAS/LAZ files are read; of another folder (a product, a
                # scene) any file may be
                tiles = _is_catalog(in_path)
                if os.path.isfile(path) and not (tiles and not path.lower().endswith(_CATALOG_SUFFIXES)):
                    raise QgsProcessingException(alg.tr(
                        f"{name} '{path}' is a file inside the input folder {in_name} ('{in_path}'): the output "
                        "would overwrite it. Write the output elsewhere."))
                if path.lower().endswith(_CATALOG_SUFFIXES):
                    raise QgsProcessingException(alg.tr(
                        f"{name} '{path}' is inside the input folder of tiles {in_name} ('{in_path}'): a LAS/LAZ "
                        "output there would be read as one of its tiles. Write the output to another folder."))
    return files, folders


def input_paths(alg, parameters, context) -> list:
    """``[(parameter, path)]``: the files and folders the run reads (file parameters, layers' sources)."""
    found = []
    for param in alg.parameterDefinitions():
        if param.isDestination() or param.type() not in _INPUT_TYPES:
            continue
        value = parameters.get(param.name())
        if value is None:
            value = param.defaultValue()
        for path in _paths_of(value, context):
            found.append((param.name(), path))
    return found


def _paths_of(value, context) -> list:
    from qgis.core import QgsMapLayer, QgsProcessingFeatureSourceDefinition, QgsProcessingUtils, QgsProperty

    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _paths_of(v, context)]
    if isinstance(value, QgsProcessingFeatureSourceDefinition):
        return _paths_of(value.source, context)
    if isinstance(value, QgsProperty):
        return _paths_of(value.staticValue() if value.propertyType() == PropertyType.Static
                         else value.valueAsString(context.expressionContext()), context)
    if isinstance(value, QgsMapLayer):
        return _layer_path(value)
    if not isinstance(value, str):
        return []
    plain = plain_path(value)
    if os.path.exists(plain):
        return [plain, *_vpc_members(plain)]
    layer = QgsProcessingUtils.mapLayerFromString(value, context, False)
    return _layer_path(layer) if layer is not None else []


def _vpc_members(path: str) -> list:
    """The files a virtual point cloud (.vpc) lists, which the run reads as much as the .vpc itself."""
    if not path.lower().endswith(".vpc"):
        return []
    try:
        return [str(f) for f in vpc_files(path)]
    except ForestCarbonError:  # the run itself says what is wrong with it
        return []


def _layer_path(layer) -> list:
    path = layer_file(layer)
    return [path, *_vpc_members(path)] if path and os.path.exists(path) else []


def _destination_path(param, value, context):
    """The local path a destination parameter writes to; None for temporary, memory or database outputs."""
    from qgis.core import QgsProcessing, QgsProcessingOutputLayerDefinition, QgsProperty

    if isinstance(value, QgsProcessingOutputLayerDefinition):
        value = value.sink
    if isinstance(value, QgsProperty):
        value = value.staticValue() if value.propertyType() == PropertyType.Static \
            else value.valueAsString(context.expressionContext())
    if not isinstance(value, str) or not value.strip() or value == QgsProcessing.TEMPORARY_OUTPUT:
        return None
    value = value.strip()
    head = value.split(":", 1)[0]
    if ":" in value and len(head) > 1 and "/" not in head and "\\" not in head:
        return None  # "memory:", "ogr:dbname=…", "postgis:…": not a plain file
    return os.path.abspath(os.path.expanduser(plain_path(value)))


def _is_catalog(folder: str) -> bool:
    try:
        return any(name.lower().endswith(_CATALOG_SUFFIXES) for name in os.listdir(folder))
    except OSError:
        return False


def _key(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _is_inside(path_key: str, folder_key: str) -> bool:
    return path_key != folder_key and path_key.startswith(folder_key.rstrip(os.sep) + os.sep)
