"""Issue 18, acceptance 5: the sources use no Qt5-only (or moved) Qt/QGIS spelling, so the plugin
is ready for QGIS 4 (Qt6, PyQt6) and emits no deprecation warning on the current LTR.

QGIS 4 cannot run here (no Debian package), so readiness is checked statically, the way QGIS's
``scripts/pyqt5_to_pyqt6/pyqt5_to_pyqt6.py`` finds what to migrate: every ``Owner.Member`` in our
sources is resolved against the running QGIS, and a member that is an enum value reached without
its enum's name (``Qt.AlignCenter`` instead of ``Qt.AlignmentFlag.AlignCenter``) is reported, as
are direct PyQt5 imports, ``exec_()``, ``QVariant`` field types, ``QAction`` from QtWidgets, enums
that QGIS moved into ``Qgis`` (``processing_provider/compat.py`` is the one place allowed to name
both spellings) and classes Qt6 removed. The scanner is tested on a sample of each form.
"""

from __future__ import annotations

import ast
import enum
import functools
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("processing_provider", "forest_carbon_plugin", "scripts", "tests", "bench")
COMPAT = "processing_provider/compat.py"

# (owner, enum) pairs QGIS moved into Qgis; the old names are deprecated aliases from 3.30/3.36 on.
MOVED = {
    ("QgsProcessing", "SourceType"): "Qgis.ProcessingSourceType (3.36)",
    ("QgsProcessingParameterNumber", "Type"): "Qgis.ProcessingNumberParameterType (3.36)",
    ("QgsProcessingParameterFile", "Behavior"): "Qgis.ProcessingFileParameterBehavior (3.36)",
    ("QgsProcessingParameterField", "DataType"): "Qgis.ProcessingFieldParameterDataType (3.36)",
    ("QgsProcessingParameterDefinition", "Flag"): "Qgis.ProcessingParameterFlag (3.36)",
    ("QgsProcessingAlgorithm", "Flag"): "Qgis.ProcessingAlgorithmFlag (3.36)",
    ("QgsWkbTypes", "Type"): "Qgis.WkbType (3.30)",
    ("QgsWkbTypes", "GeometryType"): "Qgis.GeometryType (3.30)",
    ("QgsMapLayer", "LayerType"): "Qgis.LayerType (3.30)",
    ("QgsMapLayerProxyModel", "Filter"): "Qgis.LayerFilter (3.34)",
    ("QgsColorRampShader", "Type"): "Qgis.ShaderInterpolationMethod (3.30)",
    ("QgsRasterMinMaxOrigin", "Limits"): "Qgis.RasterRangeLimit (3.42)",
    ("QgsProperty", "Type"): "Qgis.PropertyType (3.36)",
}
MOVED_CLASSES = {"QgsMapLayerType": "Qgis.LayerType (3.30)", "QgsUnitTypes": "Qgis.DistanceUnit etc. (3.30)"}
MOVED_TO_QTGUI = {"QAction", "QActionGroup", "QShortcut", "QUndoCommand", "QUndoStack", "QFileSystemModel"}
REMOVED_IN_QT6 = {"QRegExp", "QRegExpValidator", "QDesktopWidget", "QGLWidget", "QMatrix", "QSound",
                  "QTextCodec", "QStringRef", "qApp"}
SIGNAL_OVERLOADS = {"activated", "currentIndexChanged", "highlighted"}


def _is_enum_class(obj) -> bool:
    return isinstance(obj, enum.EnumMeta) or type(obj).__name__ == "enumtype"  # sip's Qt5 enums


def _is_enum_member(obj) -> bool:
    return isinstance(obj, enum.Enum) or _is_enum_class(type(obj))


@functools.lru_cache(maxsize=None)
def _unscoped_member(owner: type, attr: str):
    """The enum value ``owner.attr`` names without its enum, or None."""
    value = getattr(owner, attr, None)
    if value is None and attr[:1].isupper():  # PyQt6 has no unscoped alias: look in the nested enums
        nested = (getattr(owner, n, None) for n in dir(owner) if n[:1].isupper())
        value = next((getattr(e, attr) for e in nested if _is_enum_class(e) and hasattr(e, attr)), None)
    return value if value is not None and _is_enum_member(value) else None


def _qt_module(name: str):
    try:
        return importlib.import_module(name)
    except Exception:  # an optional Qt module this build lacks: nothing to resolve through it
        return None


class _ClassTable:
    """Our classes by name (from every scanned file), to resolve ``self.X`` through QGIS bases."""

    def __init__(self):
        self.classes: dict[str, list[tuple[ast.ClassDef, dict]]] = {}

    def add(self, nodes: list, imports: dict):
        for node in nodes:
            if isinstance(node, ast.ClassDef):
                self.classes.setdefault(node.name, []).append((node, imports))


class _Scanner(ast.NodeVisitor):
    def __init__(self, rel: str, imports: dict, table: _ClassTable):
        self.rel = rel
        self.imports = imports
        self.table = table
        self.findings: list[tuple[int, str]] = []
        self.class_stack: list[tuple[list, set]] = []  # (QGIS bases, names our classes define)
        self.compat = rel == COMPAT
        self.aliases: dict[str, type] = {}

    def collect_aliases(self, nodes: list):
        """``Num = QgsProcessingParameterNumber`` makes ``Num.Double`` a QGIS enum access too."""
        for node in nodes:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                    and isinstance(node.value, (ast.Name, ast.Attribute)):
                resolved = self._resolve(node.value)
                if isinstance(resolved, type):
                    self.aliases[node.targets[0].id] = resolved

    # -- resolution ----------------------------------------------------------------------------
    def _resolve(self, node):
        """The QGIS/Qt object an expression names, or None (ours, local, unknown)."""
        if isinstance(node, ast.Name):
            if node.id in self.aliases:
                return self.aliases[node.id]
            target = self.imports.get(node.id)
            if target is None:
                return None
            module, attr = target
            obj = _qt_module(module)
            if attr is None or obj is None:
                return obj
            found = getattr(obj, attr, None)
            return found if found is not None else _qt_module(f"{module}.{attr}")  # a submodule
        if isinstance(node, ast.Attribute):
            owner = self._resolve(node.value)
            return None if owner is None else getattr(owner, node.attr, None)
        return None

    def _qgis_bases(self, class_node: ast.ClassDef, imports: dict, seen=None) -> tuple[list, set]:
        """QGIS/Qt base classes of one of our classes, and the names our classes define on the way."""
        seen = set() if seen is None else seen
        if id(class_node) in seen:
            return [], set()
        seen.add(id(class_node))
        defined = {t.id for stmt in class_node.body if isinstance(stmt, ast.Assign)
                   for t in stmt.targets if isinstance(t, ast.Name)}
        defined |= {stmt.name for stmt in class_node.body if isinstance(stmt, (ast.FunctionDef, ast.ClassDef))}
        bases = []
        for base in class_node.bases:
            resolved = _Scanner(self.rel, imports, self.table)._resolve(base)
            if isinstance(resolved, type):
                bases.append(resolved)
            elif isinstance(base, ast.Name):
                for other, other_imports in self.table.classes.get(base.id, []):
                    more, names = self._qgis_bases(other, other_imports, seen)
                    bases += more
                    defined |= names
        return bases, defined

    def _report(self, node, message: str):
        self.findings.append((node.lineno, message))

    # -- visitors --------------------------------------------------------------------------------
    def visit_ClassDef(self, node):
        self.class_stack.append(self._qgis_bases(node, self.imports))
        self.generic_visit(node)
        self.class_stack.pop()

    def visit_Import(self, node):
        for alias in node.names:
            top = alias.name.split(".")[0]
            if top in ("PyQt5", "PyQt6", "PySide2", "PySide6", "sip"):
                self._report(node, f"import {alias.name}: import Qt through qgis.PyQt")
            if alias.name.split(".")[-1] == "resources_rc":
                self._report(node, "compiled Qt resources are gone in Qt6: load files by path")
        self.generic_visit(node)

    def visit_ImportFrom(self, node):
        module = node.module or ""
        names = {alias.name for alias in node.names}
        if module.split(".")[0] in ("PyQt5", "PyQt6", "PySide2", "PySide6", "sip"):
            self._report(node, f"from {module} import ...: import Qt through qgis.PyQt")
        if module == "qgis.PyQt.Qt":
            self._report(node, "qgis.PyQt.Qt is gone in Qt6: import from qgis.PyQt.QtCore/QtGui/QtWidgets")
        if module == "qgis.PyQt.QtWidgets" and names & MOVED_TO_QTGUI and not self.compat:
            self._report(node, f"{', '.join(sorted(names & MOVED_TO_QTGUI))} moved to QtGui in Qt6: "
                               "take it from processing_provider.compat")
        for name in sorted(names & REMOVED_IN_QT6):
            self._report(node, f"{name} does not exist in Qt6")
        if "resources_rc" in names or module.endswith("resources_rc"):
            self._report(node, "compiled Qt resources are gone in Qt6: load files by path")
        for name in sorted(names & set(MOVED_CLASSES)):
            if not self.compat:
                self._report(node, f"{name} moved to {MOVED_CLASSES[name]}: take it from processing_provider.compat")
        self.generic_visit(node)

    def visit_FunctionDef(self, node):
        if node.name == "exec_":
            self._report(node, "def exec_: name it exec (Qt6 has no exec_)")
        self.generic_visit(node)

    def visit_Name(self, node):
        if node.id == "qApp" and isinstance(node.ctx, ast.Load):
            self._report(node, "qApp does not exist in Qt6: QApplication.instance()")

    def visit_Call(self, node):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "width":
            inner = func.value
            if isinstance(inner, ast.Call) and (
                    (isinstance(inner.func, ast.Attribute) and inner.func.attr == "fontMetrics")
                    or (isinstance(inner.func, ast.Name) and inner.func.id in ("QFontMetrics", "QFontMetricsF"))):
                self._report(node, "QFontMetrics.width() is gone in Qt6: horizontalAdvance()")
        resolved = self._resolve(func)
        if resolved is not None and getattr(resolved, "__name__", "") == "QVariant" and not self.compat:
            self._report(node, "QVariant(...) cannot make a null value in PyQt6: use qgis.core.NULL or None")
        self.generic_visit(node)

    def visit_Subscript(self, node):
        if isinstance(node.value, ast.Attribute) and node.value.attr in SIGNAL_OVERLOADS \
                and isinstance(node.slice, ast.Name) and node.slice.id == "str":
            self._report(node, f"{node.value.attr}[str] is gone in Qt6: use the plain signal")
        self.generic_visit(node)

    def visit_Attribute(self, node):
        attr = node.attr
        if attr == "exec_":
            self._report(node, "exec_(): call exec() (Qt6 has no exec_)")
        owner_node = node.value
        if isinstance(owner_node, ast.Name) and owner_node.id in ("self", "cls") and self.class_stack:
            bases, defined = self.class_stack[-1]
            if attr not in defined:
                for base in bases:
                    value = getattr(base, attr, None)
                    if value is not None and _is_enum_member(value):
                        self._report(node, f"{owner_node.id}.{attr} is an unscoped enum member of {base.__name__}: "
                                           f"write {base.__name__}.{type(value).__name__}.{attr} "
                                           "or take it from processing_provider.compat")
                        break
            self.generic_visit(node)
            return
        owner = self._resolve(owner_node)
        if owner is None:
            self.generic_visit(node)
            return
        owner_name = getattr(owner, "__name__", "")
        if owner_name == "QVariant" and attr[:1].isupper() and not self.compat:
            self._report(node, f"QVariant.{attr}: QVariant.Type is gone in PyQt6; field types come from "
                               "processing_provider.compat.FieldType (QMetaType.Type where QGIS takes it)")
        elif (owner_name, attr) in MOVED and not self.compat:
            self._report(node, f"{owner_name}.{attr} moved to {MOVED[(owner_name, attr)]}: "
                               "take it from processing_provider.compat")
        elif owner_name in MOVED_CLASSES and not self.compat and _is_enum_class(owner):
            self._report(node, f"{owner_name} moved to {MOVED_CLASSES[owner_name]}: "
                               "take it from processing_provider.compat")
        elif isinstance(owner, type) and not _is_enum_class(owner):
            value = _unscoped_member(owner, attr)
            if value is not None:
                enum_name = type(value).__name__
                moved = MOVED.get((owner_name, enum_name))
                self._report(node, f"{owner_name}.{attr} is an unscoped enum member (Qt5 only): "
                                   + (f"take it from processing_provider.compat (moved to {moved})" if moved
                                      else f"write {owner_name}.{enum_name}.{attr}"))
        elif getattr(owner, "__name__", None) == "qgis.PyQt.QtWidgets" and attr in MOVED_TO_QTGUI:
            self._report(node, f"QtWidgets.{attr} moved to QtGui in Qt6: take it from processing_provider.compat")
        self.generic_visit(node)


def _imports(nodes: list) -> dict:
    """Local name -> (module, attribute or None) for every qgis import of a file."""
    found = {}
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "qgis" \
                and node.level == 0:
            for alias in node.names:
                if alias.name != "*":
                    found[alias.asname or alias.name] = (node.module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "qgis":
                    if alias.asname:
                        found[alias.asname] = (alias.name, None)
                    else:
                        found["qgis"] = ("qgis", None)
    return found


def scan_sources(sources: dict[str, str]) -> list[str]:
    """``file:line: message`` for every Qt5-only form in ``{relative path: source}``."""
    trees = {}
    table = _ClassTable()
    for rel, text in sources.items():
        tree = ast.parse(text, filename=rel)
        nodes = list(ast.walk(tree))  # one walk serves the imports, the class table and the aliases
        trees[rel] = (tree, nodes, _imports(nodes))
        table.add(nodes, trees[rel][2])
    findings = []
    for rel, (tree, nodes, imports) in trees.items():
        scanner = _Scanner(rel, imports, table)
        scanner.collect_aliases(nodes)
        scanner.visit(tree)
        findings += [f"{rel}:{line}: {message}" for line, message in sorted(set(scanner.findings))]
    return findings


def our_sources() -> dict[str, str]:
    sources = {}
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if "__pycache__" not in rel:
                sources[rel] = path.read_text(encoding="utf-8")
    return sources


def test_sources_have_no_qt5_only_forms(qgis_app):
    sources = our_sources()
    assert len(sources) > 80 and COMPAT in sources  # the scan saw the tree, not an empty folder
    findings = scan_sources(sources)
    assert not findings, "Qt5-only or moved spellings (see processing_provider/compat.py):\n" + "\n".join(findings)


# One sample of each form, and what the report must say about it.
BAD = [
    ("from PyQt5.QtCore import pyqtSignal\n", "import Qt through qgis.PyQt"),
    ("import PyQt5.QtWidgets\n", "import Qt through qgis.PyQt"),
    ("import sip\n", "import Qt through qgis.PyQt"),
    ("from qgis.PyQt.Qt import Qt\n", "qgis.PyQt.Qt is gone"),
    ("from qgis.PyQt.QtWidgets import QDialog\nQDialog().exec_()\n", "call exec()"),
    ("class D:\n    def exec_(self):\n        pass\n", "def exec_"),
    ("from qgis.PyQt.QtCore import Qt\nx = Qt.AlignCenter\n", "write Qt.AlignmentFlag.AlignCenter"),
    ("from qgis.PyQt import QtCore\nx = QtCore.Qt.UTC\n", "write Qt.TimeSpec.UTC"),
    ("from qgis.PyQt.QtCore import QSettings\nx = QSettings.IniFormat\n", "write QSettings.Format.IniFormat"),
    ("from qgis.PyQt.QtWidgets import QDialog\nok = QDialog.Accepted\n", "write QDialog.DialogCode.Accepted"),
    ("from qgis.PyQt.QtWidgets import QDialogButtonBox as B\nx = B.Ok | B.Cancel\n",
     "write QDialogButtonBox.StandardButton.Ok"),
    ("from qgis.PyQt.QtCore import QVariant\nfrom qgis.core import QgsField\nf = QgsField('a', QVariant.Double)\n",
     "QVariant.Double: QVariant.Type is gone"),
    ("from qgis.PyQt.QtCore import QVariant\nv = QVariant()\n", "QVariant(...) cannot make a null"),
    ("from qgis.PyQt.QtWidgets import QAction\n", "QAction moved to QtGui"),
    ("from qgis.PyQt import QtWidgets\na = QtWidgets.QAction('x')\n", "QtWidgets.QAction moved to QtGui"),
    ("from qgis.PyQt.QtCore import QRegExp\n", "QRegExp does not exist in Qt6"),
    ("from qgis.PyQt.QtWidgets import qApp\nqApp.quit()\n", "qApp"),
    ("import resources_rc\nfrom tests import resources_rc\n", "compiled Qt resources"),
    ("w.fontMetrics().width('abc')\n", "horizontalAdvance"),
    ("combo.activated[str].connect(f)\n", "activated[str] is gone"),
    ("from qgis.core import Qgis\nlevel = Qgis.Warning\n", "write Qgis.MessageLevel.Warning"),
    ("from qgis.core import QgsProcessing\nt = QgsProcessing.TypeVectorPolygon\n", "unscoped enum member"),
    ("from qgis.core import QgsProcessing\nt = QgsProcessing.SourceType.TypeVectorPolygon\n",
     "moved to Qgis.ProcessingSourceType"),
    ("from qgis.core import QgsProcessingParameterNumber as N\nt = N.Double\n", "unscoped enum member"),
    ("from qgis.core import QgsProcessingParameterNumber\ndef f():\n    Num = QgsProcessingParameterNumber\n"
     "    return Num.Integer\n", "QgsProcessingParameterNumber.Integer is an unscoped enum member"),
    ("from qgis.core import QgsWkbTypes\ng = QgsWkbTypes.PointGeometry\n", "unscoped enum member"),
    ("from qgis.core import QgsMapLayerType\nt = QgsMapLayerType.VectorLayer\n", "QgsMapLayerType moved"),
    ("import qgis.core\nf = qgis.core.QgsFeatureSink.FastInsert\n", "write QgsFeatureSink.Flag.FastInsert"),
    ("from qgis.core import QgsProcessingParameterFile\n"
     "class P(QgsProcessingParameterFile):\n    def f(self):\n        return self.flags() & self.FlagOptional\n",
     "self.FlagOptional is an unscoped enum member of QgsProcessingParameterFile"),
    ("from qgis.core import QgsProcessingAlgorithm\nclass A(QgsProcessingAlgorithm):\n    pass\n"
     "class B(A):\n    def flags(self):\n        return super().flags() | self.FlagNoThreading\n",
     "self.FlagNoThreading is an unscoped enum member"),
]

GOOD = """
from qgis.core import Qgis, QgsFeatureSink, QgsField, QgsProcessingAlgorithm
from qgis.PyQt import QtCore
from qgis.PyQt.QtCore import QMetaType, Qt, QSettings
from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox
from processing_provider.compat import QAction, FieldType, SourceType

# Qt.AlignCenter, QVariant.Double and exec_() in comments and strings are not code
NOTE = "Qt.AlignCenter QVariant.Double dialog.exec_() from PyQt5 import QtCore"
a = Qt.AlignmentFlag.AlignCenter
b = QtCore.Qt.TimeSpec.UTC
c = QSettings.Format.IniFormat
d = QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
e = QDialog(None).exec() == QDialog.DialogCode.Accepted
f = QgsField("x", FieldType.Double)
g = QgsFeatureSink.Flag.FastInsert
h = Qgis.MessageLevel.Warning
i = QMetaType.Type.Double
j = SourceType.VectorPolygon
k = Qt.AlignmentFlag

class Mine(QgsProcessingAlgorithm):
    OUTPUT = "OUTPUT"
    FlagNoThreading = 1  # our own attribute shadows the QGIS one

    def use(self):
        return self.OUTPUT, self.FlagNoThreading, self.tr("x"), self.flags()
"""


@pytest.mark.parametrize("source,expected", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_scanner_reports_each_qt5_only_form(qgis_app, source, expected):
    findings = scan_sources({"sample.py": source})
    assert findings, f"not reported:\n{source}"
    assert any(expected in f for f in findings), findings
    assert all(f.startswith("sample.py:") for f in findings)


def test_scanner_accepts_scoped_forms_and_names_the_line(qgis_app):
    assert scan_sources({"good.py": GOOD}) == []
    findings = scan_sources({"good.py": GOOD + "\nz = Qt.AlignLeft\n"})
    assert findings == [f"good.py:{GOOD.count(chr(10)) + 2}: Qt.AlignLeft is an unscoped enum member (Qt5 only): "
                        "write Qt.AlignmentFlag.AlignLeft"]
    # only the compat module may name the moved and the old spellings
    moved = "from qgis.core import QgsProcessing\nfrom qgis.PyQt.QtCore import QVariant\n" \
            "t = QgsProcessing.SourceType.TypeRaster\nv = QVariant.Type.Double\n"
    assert scan_sources({COMPAT: moved}) == []
    assert len(scan_sources({"elsewhere.py": moved})) == 2


def test_compat_gives_what_the_running_qgis_takes(qgis_app, recwarn):
    import warnings

    from qgis.core import (Qgis, QgsField, QgsProcessingParameterFeatureSource, QgsProcessingParameterFile,
                           QgsProcessingParameterNumber)
    from processing_provider import compat

    warnings.simplefilter("always")
    # the current enum where this QGIS has it, the old scoped one otherwise
    assert type(compat.SourceType.VectorPolygon).__name__ == \
        ("ProcessingSourceType" if hasattr(Qgis, "ProcessingSourceType") else "SourceType")
    assert type(compat.WkbType.Point).__name__ == ("WkbType" if hasattr(Qgis, "WkbType") else "Type")
    assert type(compat.LayerType.Vector).__name__ == ("LayerType" if hasattr(Qgis, "LayerType") else "QgsMapLayerType")
    # QGIS takes them back unchanged
    number = QgsProcessingParameterNumber("N", "n", type=compat.NumberType.Double)
    assert number.dataType() == compat.NumberType.Double != compat.NumberType.Integer
    folder = QgsProcessingParameterFile("F", "f", behavior=compat.FileBehavior.Folder)
    assert folder.behavior() == compat.FileBehavior.Folder
    source = QgsProcessingParameterFeatureSource("S", "s", [compat.SourceType.VectorPoint], optional=True)
    assert source.dataTypes() == [compat.SourceType.VectorPoint]
    assert source.flags() & compat.ParameterFlag.Optional
    # field types: QMetaType where QgsField takes it (3.38+), QVariant before; the field gets the same type
    # either way (the ids are Qt's documented QMetaType::Type values)
    metatype = Qgis.QGIS_VERSION_INT >= 33800
    for name, kind, qt_id in (("Double", compat.FieldType.Double, 6), ("String", compat.FieldType.String, 10),
                              ("Int", compat.FieldType.Int, 2), ("LongLong", compat.FieldType.LongLong, 4),
                              ("DateTime", compat.FieldType.DateTime, 16)):
        assert type(kind).__qualname__ == ("QMetaType.Type" if metatype else "QVariant.Type"), name
        assert int(QgsField("x", kind).type()) == qt_id, name
    deprecations = [w for w in recwarn if issubclass(w.category, DeprecationWarning)]
    assert not deprecations, [str(w.message) for w in deprecations]


def test_plugin_and_algorithms_emit_no_deprecation_warning(tmp_path):
    """In a fresh interpreter (module-level code runs again): load the plugin, register every algorithm,
    run a few that build parameters, fields and sinks; no DeprecationWarning comes from our files and the
    QGIS log has no deprecation message."""
    report = tmp_path / "report.json"
    env = dict(os.environ, FOREST_CARBON_REPORT=str(report), QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "base"),
         "tests/cases/case_no_deprecation.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(report.read_text())
    assert result["algorithms"] >= 20 and result["ran"] >= 3, result
    assert result["warnings"] == [], result["warnings"]
    assert result["log"] == [], result["log"]
