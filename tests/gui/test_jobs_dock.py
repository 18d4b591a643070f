"""The jobs dock with real background runs: predictraster as a QgsProcessingAlgRunnerTask, and any QgsTask
registered through jobs.register_task (the API the remote Dask jobs use)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin


def write_features(path, rows, cols):
    rng = np.random.default_rng(1)
    with rasterio.open(path, "w", driver="GTiff", width=cols, height=rows, count=3, dtype="float32",
                       crs="EPSG:32633", transform=from_origin(500_000.0, 6_000_000.0, 10.0, 10.0),
                       tiled=True, blockxsize=256, blockysize=256) as dst:
        dst.write(rng.uniform(0, 1, (3, rows, cols)).astype("float32"))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from tests.onnx_models import pixel_model

    folder = tmp_path_factory.mktemp("job_inputs")
    card = {"mlm:input": [{"name": "features"}], "forest_carbon:target": "agb_mg_ha", "forest_carbon:unit": "Mg/ha",
            "mlm:output": [{"name": "mean", "forest_carbon:meaning": "mean"},
                           {"name": "logvar", "forest_carbon:meaning": "log_variance"}]}
    model = pixel_model(folder / "model.onnx", [100.0, 50.0, 10.0], 5.0, log_variance=([1.0, 1.0, 1.0], 1.0),
                        metadata={"model_card": card})
    return {"model": model, "small": write_features(folder / "small.tif", 1200, 1200),
            "large": write_features(folder / "large.tif", 4000, 4000)}


@pytest.fixture
def dock(qgis_iface, forestcarbon_provider):
    from qgis.core import QgsProject
    from qgis.PyQt.QtCore import QCoreApplication, QEvent

    from forest_carbon_plugin.gui.jobs_dock import JobsDock

    dock = JobsDock(qgis_iface.mainWindow())
    yield dock
    dock.teardown()
    dock.setParent(None)
    dock.deleteLater()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    QgsProject.instance().removeAllMapLayers()


def predict(features, model, out_folder, name="run"):
    from forest_carbon_plugin.gui.jobs import run_algorithm

    out_folder.mkdir(exist_ok=True)
    outputs = {"OUTPUT": str(out_folder / "agb.tif"), "OUTPUT_STD": str(out_folder / "agb_std.tif")}
    job = run_algorithm("forestcarbon:predictraster", {"INPUT": [str(features)], "MODEL": str(model),
                                                       "TILE_SIZE": 64, **outputs}, name=name)
    return job, outputs


def test_a_local_run_goes_from_0_to_100_and_its_outputs_go_to_the_map(dock, inputs, tmp_path, qtbot):
    from qgis.core import QgsProject

    bars, jobs = [], []
    dock.manager.jobAdded.connect(jobs.append)
    job, outputs = predict(inputs["small"], inputs["model"], tmp_path / "out", "Predict AGB")
    dock.manager.jobAdded.disconnect(jobs.append)
    assert jobs == [job]
    row = dock.row_of(job)
    assert row is not None and row.name_label.text() == "<b>Predict AGB</b>"
    bars.append(row.progress_bar.value())
    job.changed.connect(lambda: bars.append(row.progress_bar.value()))
    qtbot.waitUntil(lambda: not job.running, timeout=120000)

    assert job.status == "finished", job.message + "\n".join(job.log)
    print(f"\nprogress bar values: {bars}")
    assert bars[0] == 0 and bars[-1] == 100
    assert any(0 < v < 100 for v in bars)
    assert bars == sorted(bars)
    assert row.status_label.text() == "finished" and row.message_label.text().startswith("Finished in")
    assert float(row.elapsed_label.text().split()[0]) == pytest.approx(job.elapsed, abs=0.05) and job.elapsed > 0
    assert any("Execution provider" in line for line in job.log)
    assert "Execution provider" in row.log_view.toPlainText()
    assert sorted(job.outputs) == sorted(outputs.values())
    assert not row.cancel_button.isEnabled() and row.add_button.isEnabled()

    row.add_button.click()
    added = {lyr.source(): lyr for lyr in QgsProject.instance().mapLayers().values()}
    assert set(outputs.values()) <= set(added)
    assert added[outputs["OUTPUT"]].renderer().type() == "singlebandpseudocolor"  # styled by its OUTPUT_KIND


def test_cancelling_a_running_job_ends_it_and_leaves_no_output(dock, inputs, tmp_path, qtbot):
    job, outputs = predict(inputs["large"], inputs["model"], tmp_path / "out")
    row = dock.row_of(job)
    qtbot.waitUntil(lambda: 0 < job.progress < 50, timeout=120000)
    assert job.status == "running" and row.cancel_button.isEnabled()
    pressed = time.perf_counter()
    row.cancel_button.click()
    qtbot.waitUntil(lambda: not job.running, timeout=60000)
    print(f"\ncancelled at {job.progress:.0f} %, ended {time.perf_counter() - pressed:.2f} s after the click")
    assert job.status == "cancelled"
    assert row.status_label.text() == "cancelled" and "no output" in row.message_label.text()
    assert not row.cancel_button.isEnabled() and not row.add_button.isEnabled()
    assert list((tmp_path / "out").iterdir()) == []  # no output, no temporary file
    assert job.outputs == []
    assert dock.row_of(job) is row  # still listed


def test_a_failed_job_stays_listed_with_its_message(dock, inputs, tmp_path, qtbot):
    bad_model = tmp_path / "not_a_model.onnx"
    bad_model.write_bytes(b"not onnx")
    job, _ = predict(inputs["small"], bad_model, tmp_path / "out")
    qtbot.waitUntil(lambda: not job.running, timeout=60000)
    assert job.status == "failed"
    row = dock.row_of(job)
    assert "not a valid ONNX model" in row.message_label.text()
    assert "not a valid ONNX model" in row.log_view.toPlainText()
    assert not row.add_button.isEnabled()


def test_any_task_registers_with_its_log_and_a_new_dock_lists_the_session(dock, tmp_path, qtbot, qgis_iface):
    """The API a remote (Dask) job uses: register_task(task, name, outputs) and job.append_log from any thread."""
    from qgis.PyQt.QtCore import QCoreApplication, QEvent

    from forest_carbon_plugin.gui.jobs import register_task
    from forest_carbon_plugin.gui.jobs_dock import JobsDock
    from forest_carbon_plugin.gui.tasks import FunctionTask

    target = tmp_path / "remote.txt"
    holder = []

    def remote(task):
        for step in range(1, 6):
            time.sleep(0.05)
            holder[0].append_log(f"chunk {step}/5 done")  # from the worker thread
            task.setProgress(20 * step)
        target.write_text("result")
        return str(target)

    task = FunctionTask("remote job", remote)
    job = register_task(task, "Remote prediction", outputs=[target, tmp_path / "never_written.tif"])
    holder.append(job)
    qtbot.waitUntil(lambda: not job.running, timeout=30000)
    row = dock.row_of(job)
    assert job.status == "finished" and row.progress_bar.value() == 100
    assert job.log == [f"chunk {i}/5 done" for i in range(1, 6)]
    assert row.log_view.toPlainText().splitlines() == job.log
    assert job.outputs == [str(target)]  # only what exists

    later = JobsDock(qgis_iface.mainWindow())  # opened later in the session: the ended jobs are there
    try:
        assert later.row_of(job) is not None
        assert later.row_of(job).status_label.text() == "finished"
        assert len(later.rows) == len(dock.manager.jobs)
    finally:
        later.teardown()
        later.setParent(None)
        later.deleteLater()
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)


def registry_name(algorithm_id: str) -> str:
    from qgis.core import QgsApplication

    return QgsApplication.processingRegistry().algorithmById(algorithm_id).displayName()


def test_runs_started_elsewhere_are_listed_and_their_cancel_reaches_the_run(dock, inputs, tmp_path, qtbot):
    """What the plugin's GUI installs (jobs.RunListener): a processing.run from the console and a background
    run as the toolbox dialog starts it (QgsProcessingAlgRunnerTask with the dialog's own feedback) are
    listed; Cancel in the dock cancels that feedback, as the dialog's Cancel button does. A run the dock
    started itself is not listed twice."""
    import processing
    from qgis.core import QgsApplication, QgsProcessingAlgRunnerTask, QgsProcessingContext, QgsProcessingFeedback
    from qgis.core import QgsProject

    from forest_carbon_plugin.gui.jobs import RunJob, RunListener
    from processing_provider.base import RUN_LISTENERS

    listener = RunListener(dock.manager).install()
    try:
        before = len(dock.manager.jobs)
        out = tmp_path / "console"
        out.mkdir()
        results = processing.run("forestcarbon:predictraster", {
            "INPUT": [str(inputs["small"])], "MODEL": str(inputs["model"]), "TILE_SIZE": 128,
            "OUTPUT": str(out / "agb.tif")})
        qtbot.waitUntil(lambda: len(dock.manager.jobs) == before + 1 and not dock.manager.jobs[-1].running,
                        timeout=20000)
        job = dock.manager.jobs[-1]
        assert isinstance(job, RunJob) and job.name == registry_name("forestcarbon:predictraster")
        assert job.status == "finished" and job.progress == 100 and job.outputs == [results["OUTPUT"]]
        assert any("Execution provider" in line for line in job.log)
        assert dock.row_of(job).status_label.text() == "finished"

        # the toolbox's way: its own feedback, the algorithm in a task
        out = tmp_path / "toolbox"
        out.mkdir()
        registry = QgsApplication.processingRegistry()
        algorithm = registry.createAlgorithmById("forestcarbon:predictraster")
        context = QgsProcessingContext()
        context.setProject(QgsProject.instance())
        feedback = QgsProcessingFeedback()
        task = QgsProcessingAlgRunnerTask(algorithm, {"INPUT": [str(inputs["large"])], "MODEL": str(inputs["model"]),
                                                      "TILE_SIZE": 64, "OUTPUT": str(out / "agb.tif")}, context, feedback)
        ended = []
        task.executed.connect(lambda ok, _results: ended.append(ok))
        QgsApplication.taskManager().addTask(task)
        qtbot.waitUntil(lambda: len(dock.manager.jobs) == before + 2 and dock.manager.jobs[-1].progress > 0,
                        timeout=60000)
        job = dock.manager.jobs[-1]
        row = dock.row_of(job)
        assert job.status == "running" and row.cancel_button.isEnabled() and row.progress_bar.value() > 0
        row.cancel_button.click()
        qtbot.waitUntil(lambda: bool(ended) and not job.running, timeout=60000)
        assert feedback.isCanceled() and ended == [False]
        assert job.status == "cancelled" and row.status_label.text() == "cancelled"
        assert list(out.iterdir()) == [] and job.outputs == []

        # started by the dock: listed once
        job, _ = predict(inputs["small"], inputs["model"], tmp_path / "dock")
        qtbot.waitUntil(lambda: not job.running, timeout=60000)
        assert job.status == "finished" and dock.manager.jobs[before + 2:] == [job]
    finally:
        listener.uninstall()
    assert listener not in RUN_LISTENERS
