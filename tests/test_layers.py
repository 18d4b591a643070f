"""The package's layering, read from the source with ``ast`` (nothing of the package is imported).

Dependencies flow one way, lowest layer first::

    core base (errors, progress, stats, outputs, report, dependencies, archives, vector, ...),
    paths, the package's __init__ (its version)
      < core/raster, core/parallel
      < core/lidar, core/imagery
      < core/models
      < core/carbon
      < simulate, settings, styling, output_info (what the GUI and the adapters share)
      < gui, processing_provider
      < plugin

A module may import its own layer or lower. Within a layer: lidar and imagery never import each other;
parallel may use raster (a Dask run assembles its tiles with raster's writers), while raster may use only
the local pool of parallel (``parallel.pool``: threads for raster blocks), never the Dask side (``parallel.dask``,
``connect``, ``assemble``, ...) nor the tile mapper. The core
never imports QGIS or Qt. On top of the layers: no import cycle among the package's modules (function-level
imports included: they hide a cycle, they do not remove it), no private name (``_x``) taken from another
module, and no function-level import of the package's own modules (only optional heavy dependencies such
as onnxruntime, sklearn, dask, osgeo are imported inside functions).

Each rule has a self-test on a tiny synthetic package, so that a rule that stopped catching anything fails.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("forest_carbon_plugin", "processing_provider")

CORE = "forest_carbon_plugin.core"
# (module-name prefix, layer); the longest matching prefix wins; a module directly in core/ is base (0).
# A new top-level module has no layer until it is listed here (test_every_module_has_a_layer).
LAYERS = (
    ("forest_carbon_plugin", 0),  # the package's __init__ only (see layer_of)
    (CORE, 0),
    ("forest_carbon_plugin.paths", 0),
    (f"{CORE}.raster", 1),
    (f"{CORE}.parallel", 1),
    (f"{CORE}.lidar", 2),
    (f"{CORE}.imagery", 2),
    (f"{CORE}.models", 3),
    (f"{CORE}.carbon", 4),
    ("forest_carbon_plugin.simulate", 5),
    ("forest_carbon_plugin.settings", 5),
    ("forest_carbon_plugin.styling", 5),
    ("forest_carbon_plugin.output_info", 5),
    ("forest_carbon_plugin.gui", 6),
    ("processing_provider", 6),
    ("forest_carbon_plugin.plugin", 7),
)
LAYER_NAMES = {0: "core base", 1: "core/raster, core/parallel", 2: "core/lidar, core/imagery",
               3: "core/models", 4: "core/carbon", 5: "simulate, settings, styling, output_info",
               6: "gui, processing_provider", 7: "plugin"}
ROOT_PACKAGE = "forest_carbon_plugin"
# (importer prefix, imported prefix, imported modules allowed all the same, why) for modules of one layer that
# must not depend on each other. raster may use parallel's local pool (threads for blocks), nothing else of it:
# listing what is allowed, not what is forbidden, keeps the rule when parallel gains modules.
FORBIDDEN = (
    (f"{CORE}.lidar", f"{CORE}.imagery", (), "lidar and imagery are independent"),
    (f"{CORE}.imagery", f"{CORE}.lidar", (), "lidar and imagery are independent"),
    (f"{CORE}.raster", f"{CORE}.parallel", (f"{CORE}.parallel.pool",),
     "raster may use only parallel's local pool (parallel.pool), never the Dask side nor the tile mapper"),
)
# what the QGIS-free core must never import
CORE_FORBIDDEN_EXTERNAL = ("qgis", "PyQt5", "PyQt6", "sip", "processing")
# function-level imports of the package's own modules that must stay lazy, with the reason
LAZY_ALLOWED = {
    # QGIS calls classFactory to load the plugin; importing plugin (and so QGIS) at the package's import
    # would make `import forest_carbon_plugin.core` need QGIS, on a Dask worker too
    ("forest_carbon_plugin", "forest_carbon_plugin.plugin"),
}


@dataclass(frozen=True)
class Import:
    """One import statement's reference to a module of the package, or to an outside module."""

    importer: str  # module name of the file holding the statement
    target: str  # the module imported (the deepest existing module for `from a import b`)
    path: Path
    line: int
    in_function: bool
    names: tuple = ()  # the names a `from ... import` takes from `target` (not submodules)
    internal: bool = True
    typing_only: bool = False  # under `if TYPE_CHECKING:`: never runs, so no cycle; still a dependency


def _allowed_lazy(imp: Import) -> bool:
    """An allowed function-level import: it runs only after both modules are imported, so it is no edge."""
    return imp.in_function and (imp.importer, imp.target) in LAZY_ALLOWED


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path, packages=PACKAGES) -> dict:
    """Module name -> file, for every .py file of the packages under ``root``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            modules[module_name(path, root)] = path
    return modules


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _resolve_base(node: ast.ImportFrom, module: str, path: Path) -> str:
    if not node.level:
        return node.module or ""
    base = _package_of(module, path).split(".")
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


def _deepest_module(name: str, modules) -> str | None:
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


class _Collector(ast.NodeVisitor):
    def __init__(self, module, path, modules):
        self.module, self.path, self.modules = module, path, modules
        self.depth = 0
        self.typing_only = False
        self.imports: list[Import] = []
        self.aliases: dict[str, str] = {}  # local name -> package module it is bound to
        self.attribute_uses: list[tuple] = []  # (alias, attribute, line)

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node):
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
                (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            outer, self.typing_only = self.typing_only, True
            for child in node.body:
                self.visit(child)
            self.typing_only = outer
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _add(self, target, line, names=()):
        internal = _deepest_module(target, self.modules)
        self.imports.append(Import(self.module, internal or target, self.path, line, self.depth > 0,
                                   tuple(names), internal is not None, self.typing_only))

    def visit_Import(self, node):
        for alias in node.names:
            self._add(alias.name, node.lineno)
            if alias.asname and alias.name in self.modules:
                self.aliases[alias.asname] = alias.name

    def visit_ImportFrom(self, node):
        base = _resolve_base(node, self.module, self.path)
        plain = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in self.modules:  # `from . import grid`: the submodule is what is imported
                self._add(sub, node.lineno)
                self.aliases[alias.asname or alias.name] = sub
            else:
                plain.append(alias.name)
        if plain or not node.names:
            self._add(base, node.lineno, plain)

    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name) and node.value.id in self.aliases:
            self.attribute_uses.append((node.value.id, node.attr, node.lineno))
        self.generic_visit(node)


def collect(modules: dict) -> tuple[list[Import], list[tuple]]:
    """Every import of every module, and every ``module_alias._private`` attribute use."""
    imports, private_uses = [], []
    for module, path in modules.items():
        collector = _Collector(module, path, modules)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        imports += collector.imports
        for alias, attr, line in collector.attribute_uses:
            private_uses.append((module, collector.aliases[alias], attr, path, line))
    return imports, private_uses


def layer_of(module: str) -> int | None:
    best = None
    for prefix, layer in LAYERS:
        if prefix == ROOT_PACKAGE and module != prefix:
            continue
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return best[1] if best else None


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _where(imp: Import, root: Path) -> str:
    return f"{imp.path.relative_to(root)}:{imp.line}"


def find_cycles(imports: list[Import]) -> list[list[str]]:
    """The import cycles among the package's modules: one cycle per strongly connected component."""
    graph: dict[str, set] = {}
    for imp in imports:
        if imp.internal and imp.target != imp.importer and not _allowed_lazy(imp) and not imp.typing_only:
            graph.setdefault(imp.importer, set()).add(imp.target)
            graph.setdefault(imp.target, set())
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def strongconnect(v):  # Tarjan's algorithm, iterative over the successors
        work = [(v, iter(sorted(graph[v])))]
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        while work:
            node, successors = work[-1]
            for w in successors:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == node:
                            break
                    if len(component) > 1:
                        components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_one_cycle(sorted(c), graph) for c in components]


def _one_cycle(component: list[str], graph) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first), for the message."""
    start, members = component[0], set(component)
    parents, frontier = {start: None}, [start]
    while frontier:
        following = []
        for node in frontier:
            for w in sorted(graph[node] & members):
                if w == start:
                    path = [node]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return list(reversed(path)) + [start]
                if w not in parents:
                    parents[w] = node
                    following.append(w)
        frontier = following
    return component


def cycle_messages(imports: list[Import], root: Path) -> list[str]:
    where = {}
    for imp in imports:
        where.setdefault((imp.importer, imp.target), _where(imp, root))
    return ["import cycle: " + " -> ".join(cycle) + "\n    "
            + "\n    ".join(f"{a} -> {b} at {where[(a, b)]}" for a, b in zip(cycle, cycle[1:]))
            for cycle in find_cycles(imports)]


def layer_messages(imports: list[Import], root: Path) -> list[str]:
    messages = []
    for imp in imports:
        if _allowed_lazy(imp):
            continue
        here = layer_of(imp.importer)
        if not imp.internal:
            top = imp.target.split(".")[0]
            if here is not None and _under(imp.importer, CORE) and top in CORE_FORBIDDEN_EXTERNAL:
                messages.append(f"{_where(imp, root)}: the core module {imp.importer} imports {imp.target} "
                                "(the core runs without QGIS)")
            continue
        there = layer_of(imp.target)
        if here is not None and there is not None and there > here:
            messages.append(f"{_where(imp, root)}: upward import: {imp.importer} ({LAYER_NAMES[here]}) imports "
                            f"{imp.target} ({LAYER_NAMES[there]})")
        for importer, imported, allowed, why in FORBIDDEN:
            if _under(imp.importer, importer) and _under(imp.target, imported) and imp.target not in allowed:
                messages.append(f"{_where(imp, root)}: {imp.importer} imports {imp.target}: {why}")
    return messages


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_messages(imports: list[Import], private_uses: list[tuple], root: Path) -> list[str]:
    messages = [f"{_where(imp, root)}: {imp.importer} imports the private name {name} of {imp.target}"
                for imp in imports if imp.internal and imp.target != imp.importer
                for name in imp.names if _is_private(name)]
    messages += [f"{path.relative_to(root)}:{line}: {importer} uses the private name {attr} of {target}"
                 for importer, target, attr, path, line in private_uses
                 if target != importer and _is_private(attr)]
    return messages


def lazy_messages(imports: list[Import], root: Path) -> list[str]:
    return [f"{_where(imp, root)}: function-level import of the package's own {imp.target} in {imp.importer} "
            "(import it at the top; only optional heavy dependencies are imported inside functions)"
            for imp in imports if imp.internal and imp.in_function and not _allowed_lazy(imp)]


def check(root: Path = ROOT, packages=PACKAGES) -> dict:
    """Every violation under ``root``, by rule: {"cycles": [...], "layers": [...], "private": [...],
    "lazy": [...]}, each a readable message naming file:line."""
    modules = find_modules(root, packages)
    imports, private_uses = collect(modules)
    return {"cycles": cycle_messages(imports, root), "layers": layer_messages(imports, root),
            "private": private_messages(imports, private_uses, root), "lazy": lazy_messages(imports, root)}


def _report(messages: list[str], rule: str) -> str:
    return f"{len(messages)} {rule}:\n" + "\n".join(messages)


# --- the package itself ---------------------------------------------------------------------------

def test_every_module_has_a_layer():
    modules = find_modules(ROOT)
    assert f"{CORE}.errors" in modules and "processing_provider.provider" in modules
    assert all(layer_of(m) is not None for m in modules), [m for m in modules if layer_of(m) is None]


RULES = {"cycles": "import cycles", "layers": "imports against the layers",
         "private": "private names taken from another module",
         "lazy": "function-level imports of the package's modules"}


@pytest.fixture(scope="module")
def violations():
    return check()


@pytest.mark.parametrize("rule", list(RULES))
def test_the_package_keeps_the_rule(violations, rule):
    """cycles: no import cycle; layers: imports flow down the layers; private: no ``_name`` from another
    module; lazy: no function-level import of the package's own modules."""
    assert not violations[rule], _report(violations[rule], RULES[rule])


# --- self-tests: each rule catches its violation in a synthetic package ---------------------------

def _package(tmp_path: Path, files: dict) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
        for folder in [tmp_path / package, *(tmp_path / package).rglob("*")]:
            if folder.is_dir() and not (folder / "__init__.py").exists():
                (folder / "__init__.py").write_text("")
    return tmp_path


CLEAN = {
    "forest_carbon_plugin/core/errors.py": "class ForestCarbonError(Exception):\n    pass\n",
    "forest_carbon_plugin/core/raster/grid.py": "from ..errors import ForestCarbonError\n",
    "forest_carbon_plugin/core/parallel/assemble.py": "from ..raster import grid\n",
    "forest_carbon_plugin/core/parallel/pool.py": "def thread_map():\n    pass\n",
    "forest_carbon_plugin/core/lidar/chm.py": "import numpy\nfrom ..raster.grid import ForestCarbonError\n",
    "forest_carbon_plugin/core/models/train.py": "def fit():\n    import sklearn\n",
    "forest_carbon_plugin/core/carbon/stock.py": "from ..models import train\nfrom ..lidar.chm import numpy\n",
    "forest_carbon_plugin/gui/docks.py": "from qgis.core import QgsProject\nfrom ..core.carbon import stock\n",
    "forest_carbon_plugin/plugin.py": "from .gui import docks\n",
    "forest_carbon_plugin/__init__.py": "def classFactory(iface):\n    from .plugin import Plugin\n",
    "processing_provider/carbon_stock.py": "from forest_carbon_plugin.core.carbon.stock import train\n",
}


def test_a_clean_synthetic_package_passes(tmp_path):
    assert check(_package(tmp_path, CLEAN)) == {"cycles": [], "layers": [], "private": [], "lazy": []}


def test_a_cycle_is_caught_even_through_a_function_level_import(tmp_path):
    files = dict(CLEAN)
    files["forest_carbon_plugin/core/lidar/metrics.py"] = "from . import normalize\n"
    files["forest_carbon_plugin/core/lidar/normalize.py"] = "from .tin import x\n"
    files["forest_carbon_plugin/core/lidar/tin.py"] = "def f():\n    from .metrics import y\n"
    # an import only for type checkers never runs: no cycle through chm
    files["forest_carbon_plugin/core/lidar/chm.py"] += ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                        "    from .metrics import Cell\n")
    files["forest_carbon_plugin/core/lidar/metrics.py"] += "from . import chm\n"
    cycles = check(_package(tmp_path, files))["cycles"]
    assert len(cycles) == 1, cycles
    assert ("forest_carbon_plugin.core.lidar.metrics -> forest_carbon_plugin.core.lidar.normalize -> "
            "forest_carbon_plugin.core.lidar.tin -> forest_carbon_plugin.core.lidar.metrics") in cycles[0]
    assert "forest_carbon_plugin/core/lidar/tin.py:2" in cycles[0]


def test_the_plugin_menu_cycle_is_caught(tmp_path):
    files = dict(CLEAN)
    files["forest_carbon_plugin/gui/cluster_settings.py"] = "def menu():\n    from ..plugin import MENU\n"
    files["forest_carbon_plugin/plugin.py"] = "from .gui import cluster_settings\nMENU = 'x'\n"
    result = check(_package(tmp_path, files))
    assert len(result["cycles"]) == 1 and "forest_carbon_plugin.plugin" in result["cycles"][0]
    assert any("gui/cluster_settings.py:2" in m and "upward import" in m for m in result["layers"])
    assert any("gui/cluster_settings.py:2" in m for m in result["lazy"])


def test_upward_and_sideways_imports_are_caught(tmp_path):
    files = dict(CLEAN)
    files["forest_carbon_plugin/core/lidar/metrics.py"] = "from ..models.train import fit\n"
    files["forest_carbon_plugin/core/imagery/masks.py"] = "import forest_carbon_plugin.core.lidar.chm as chm\n"
    files["forest_carbon_plugin/core/raster/blocks.py"] = "from ..parallel.dask import grid\n"
    files["forest_carbon_plugin/core/raster/write.py"] = "from ..parallel.pool import thread_map\n"
    files["forest_carbon_plugin/core/errors.py"] = "from qgis.core import QgsMessageLog\n"
    files["forest_carbon_plugin/core/models/predict.py"] = "from processing_provider import carbon_stock\n"
    layers = "\n".join(check(_package(tmp_path, files))["layers"])
    assert ("forest_carbon_plugin/core/lidar/metrics.py:1: upward import: forest_carbon_plugin.core.lidar.metrics"
            " (core/lidar, core/imagery) imports forest_carbon_plugin.core.models.train (core/models)") in layers
    assert "core/imagery/masks.py:1: forest_carbon_plugin.core.imagery.masks imports " \
           "forest_carbon_plugin.core.lidar.chm: lidar and imagery are independent" in layers
    assert "core/raster/blocks.py:1" in layers and "never the Dask side" in layers
    assert "core/raster/write.py" not in layers  # the local pool is allowed
    assert "core/errors.py:1: the core module forest_carbon_plugin.core.errors imports qgis.core" in layers
    assert "core/models/predict.py:1: upward import" in layers and "processing_provider.carbon_stock" in layers
    assert layers.count("\n") == 4  # nothing else: the clean modules stay clean


def test_private_names_from_another_module_are_caught(tmp_path):
    files = dict(CLEAN)
    files["forest_carbon_plugin/core/lidar/pixel_metrics.py"] = "def _normalized():\n    pass\n"
    files["forest_carbon_plugin/core/lidar/plot_metrics.py"] = (
        "from .pixel_metrics import _normalized, __doc__\nfrom . import chm\nchm._private_helper()\n"
        "def _mine():\n    pass\n_mine()\n")
    files["processing_provider/plot_metrics.py"] = "from forest_carbon_plugin.core.raster.blocks import _to_cog\n"
    files["forest_carbon_plugin/core/raster/blocks.py"] = "_to_cog = None\n"
    private = check(_package(tmp_path, files))["private"]
    assert len(private) == 3, private
    assert any("core/lidar/plot_metrics.py:1" in m and "_normalized" in m for m in private)
    assert any("core/lidar/plot_metrics.py:3" in m and "_private_helper" in m for m in private)
    assert any("processing_provider/plot_metrics.py:1" in m and "_to_cog" in m for m in private)


def test_function_level_imports_of_the_package_are_caught(tmp_path):
    files = dict(CLEAN)
    files["forest_carbon_plugin/core/lidar/metrics.py"] = (
        "def f():\n    import laspy\n    from ..raster import grid\n    return grid\n")
    lazy = check(_package(tmp_path, files))["lazy"]
    assert len(lazy) == 1 and "core/lidar/metrics.py:3" in lazy[0] and "raster.grid" in lazy[0], lazy
