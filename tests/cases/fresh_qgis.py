"""A fresh QGIS session (standalone PyQGIS) that starts the INSTALLED plugin the way QGIS desktop does, then
does the steps named on the command line and writes what it saw as JSON. Run by test_installer.py and
test_plugin_namespace.py as ``python fresh_qgis.py SPEC.json`` with QGIS_CUSTOM_CONFIG_PATH set to a
throwaway folder (its profiles/default/python/plugins holds the unzipped plugin); never imported.

SPEC: {"report": path, "steps": [...]}; steps: "start" (desktop start with a stub iface: initGui), "train" (export both model types to ONNX),
"start_processing" (what qgis_process does: initProcessing only), "install" (the installer's core function,
with SPEC["pip_args"]), "run" (SPEC["runs"]: [[algorithm id, parameters, key of the report]]), "edit_help"
and "reload" (SPEC["edit"]: [file in the plugin, old, new]; then qgis.utils.reloadPlugin).
"""

import json
import os
import sys
import traceback

SPEC = json.load(open(sys.argv[1]))
REPORT = {"errors": []}
PATH_BEFORE = list(sys.path)


def snapshot(key):
    import qgis.utils

    REPORT[key] = {
        "processing_provider_loaded": "processing_provider" in sys.modules,
        "new_sys_path": [p for p in sys.path if p not in PATH_BEFORE],
        "sys_path": list(sys.path),
        "plugin_file": getattr(sys.modules.get("forest_carbon_plugin"), "__file__", None),
        "active": list(qgis.utils.active_plugins),
    }
    import numpy

    REPORT[key]["numpy"] = [numpy.__version__, numpy.__file__]


def main():
    if SPEC.get("gui"):
        # pytest-qgis's stub iface declares its slots with QGIS types: imported before the application, as
        # pytest-qgis itself does, or the slot signatures do not match
        from pytest_qgis.mock_qgis_classes import MockMessageBar  # noqa: F401
        from pytest_qgis.qgis_interface import QgisInterface  # noqa: F401
    from qgis.core import QgsApplication

    app = QgsApplication([], bool(SPEC.get("gui")))  # the stub iface of "start" needs a GUI application
    app.initQgis()
    PATH_BEFORE.append("/usr/share/qgis/python/plugins")
    sys.path.append("/usr/share/qgis/python/plugins")  # Processing, as QGIS desktop has it
    from processing.core.Processing import Processing

    Processing.initialize()
    import qgis.utils

    settings = QgsApplication.qgisSettingsDirPath()
    plugins_dir = os.path.join(settings, "python", "plugins")
    REPORT["settings_dir"] = settings
    PATH_BEFORE.append(plugins_dir)  # QGIS desktop puts the profile's plugins folder on sys.path itself
    sys.path.append(plugins_dir)
    qgis.utils.plugin_paths = [plugins_dir]
    qgis.utils.updateAvailablePlugins()
    for step in SPEC["steps"]:
        if step in ("start", "start_processing"):
            if step == "start":
                from pytest_qgis.mock_qgis_classes import MockMessageBar
                from pytest_qgis.qgis_interface import QgisInterface
                from qgis.gui import QgsMapCanvas
                from qgis.PyQt.QtWidgets import QMainWindow

                window = QMainWindow()
                qgis.utils.iface = QgisInterface(QgsMapCanvas(window), MockMessageBar(), window)
                assert qgis.utils.loadPlugin("forest_carbon_plugin")
                assert qgis.utils.startPlugin("forest_carbon_plugin")
            else:
                assert qgis.utils.loadPlugin("forest_carbon_plugin")
                assert qgis.utils.startProcessingPlugin("forest_carbon_plugin")
            from forest_carbon_plugin.core import dependencies

            REPORT["missing"] = [d.module for d in dependencies.missing_dependencies()]
            REPORT["deps_dir"] = str(dependencies.deps_dir(settings))
            snapshot("after_start")
        elif step == "install":
            from forest_carbon_plugin.core import dependencies

            lines = []
            plan = dependencies.install_dependencies(
                dependencies.missing_dependencies(), dependencies.deps_dir(settings),
                pip_args=SPEC.get("pip_args", []), log=lines.append)
            REPORT["installed"] = plan.requirements
            REPORT["skipped"] = plan.skipped
            REPORT["pip_log"] = lines[-40:]
        elif step == "run":
            import processing
            from qgis.core import QgsApplication as App

            for algorithm, parameters, key in SPEC["runs"]:
                alg = App.processingRegistry().algorithmById(algorithm)
                REPORT[key] = {"result": processing.run(algorithm, parameters), "help": alg.shortHelpString()}
            import laspy
            import onnxruntime

            REPORT["laspy_file"], REPORT["onnxruntime_file"] = laspy.__file__, onnxruntime.__file__
            snapshot("after_run")
        elif step == "train":
            # trainmodel's two model types exported to ONNX and run, with what the installer put in the folder
            import numpy as np
            import onnxruntime

            from forest_carbon_plugin.core.models import export, fit

            rng = np.random.default_rng(0)
            x = rng.normal(size=(300, 3)).astype(np.float32)
            y = (x @ np.array([3.0, 2.0, 1.0]) + rng.normal(size=300)).astype(np.float32)
            REPORT["train"] = {}
            for fitter in (fit.fit_forest_ensemble, fit.fit_quantile_gbm):
                path = export.export_onnx(fitter(x, y), os.path.join(SPEC["work"], fitter.__name__ + ".onnx"),
                                          {"target": "agb"}, 3)
                session = onnxruntime.InferenceSession(str(path))
                outputs = session.run(None, {session.get_inputs()[0].name: x[:4]})
                REPORT["train"][fitter.__name__] = [list(o.shape) for o in outputs]
        elif step == "edit_help":
            path, old, new = SPEC["edit"]
            full = os.path.join(plugins_dir, "forest_carbon_plugin", path)
            text = open(full, encoding="utf-8").read()
            assert old in text, f"{old!r} not in {full}"
            open(full, "w", encoding="utf-8").write(text.replace(old, new, 1))
            alg = QgsApplication.processingRegistry().algorithmById(SPEC["edit_algorithm"])
            REPORT["help_before_reload"] = alg.shortHelpString()
        elif step == "reload":
            before = {name: id(module) for name, module in sys.modules.items() if name.startswith("forest_carbon")}
            REPORT["reloaded"] = qgis.utils.reloadPlugin("forest_carbon_plugin")
            REPORT["modules_before_reload"] = len(before)
            REPORT["modules_kept_by_reload"] = sorted(name for name, module in sys.modules.items()
                                                      if before.get(name) == id(module))
            alg = QgsApplication.processingRegistry().algorithmById(SPEC["edit_algorithm"])
            REPORT["help_after_reload"] = alg.shortHelpString() if alg else None
            snapshot("after_reload")


try:
    main()
except BaseException:  # noqa: BLE001 (reported to the test, which prints it)
    REPORT["errors"].append(traceback.format_exc())
finally:
    with open(SPEC["report"], "w") as out:
        json.dump(REPORT, out, default=str)
    os._exit(0)  # QGIS's exit handlers are not what is tested
