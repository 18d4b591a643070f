"""Clusters that differ from this machine or misbehave (issue 18): real `dask scheduler`/`dask worker` processes on
127.0.0.1 (see test_remote.Cluster), some of them with other package versions put first on their path (`pip install
--target`), and listeners that are not Dask at all. Every case must end within a bounded time with a message that
names the problem, or give the local run's output; it must leave no output, no job folder and no task on the
scheduler."""

from __future__ import annotations

import http.server
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from forest_carbon_plugin.core.parallel import files as job_files
from forest_carbon_plugin.core.parallel.assemble import JOB_OWNER, job_folder, process_start
from forest_carbon_plugin.core.parallel.connect import connect
from forest_carbon_plugin.core.parallel.dask import DaskExecutor
from forest_carbon_plugin.core.parallel.files import cache_folder, external_data_files, materialize, model_bundle
from forest_carbon_plugin.core.errors import ForestCarbonError
from forest_carbon_plugin.core.models.predict import PredictSettings, predict_raster
from forest_carbon_plugin.core.parallel.tilemap import executor_scope

from tests.onnx_models import conv_model
from tests.integration.test_remote import (  # noqa: F401 - fixtures
    ROOT,
    WORKER_BIN,
    Cluster,
    _pixels,
    _run,
    _same_bits,
    big,
    features,
    job_in_middle,
    worker_venv,
)

pytestmark = pytest.mark.filterwarnings("ignore::distributed.versions.VersionMismatchWarning")


def _worker_version(name: str) -> str:
    probe = subprocess.run([str(WORKER_BIN / "python"), "-c", f"from importlib.metadata import version; "
                            f"print(version({name!r}))"], capture_output=True, text=True, timeout=60, cwd="/")
    return probe.stdout.strip()


def _other_versions(folder: Path, name: str, candidates) -> tuple[str, str]:
    """``(folder, version)``: the first of ``candidates`` whose major.minor differs from .venv-worker's ``name``,
    installed (wheels only) into ``folder``, to put first on a worker's path."""
    mine = _worker_version(name)
    chosen = next(v for v in candidates if v.split(".")[:2] != mine.split(".")[:2])
    if not (folder / ".done").exists():
        try:
            done = subprocess.run([str(WORKER_BIN / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                                   "--only-binary=:all:", "--disable-pip-version-check", "--target", str(folder),
                                   f"{name}=={chosen}"], capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired:
            pytest.skip(f"pip could not install {name} {chosen} for a skewed worker within 240 s")
        if done.returncode != 0:
            pytest.skip(f"pip could not install {name} {chosen} for a skewed worker (no package index, or no wheel "
                        f"for this Python?): {done.stderr[-400:]}")
        (folder / ".done").touch()
    return str(folder), chosen


@pytest.fixture(scope="session")
def affine_other(tmp_path_factory, worker_venv):
    """Another affine major than the workers' (3 beside 2.4, as `pip install .[worker]` without constraints gives)."""
    return _other_versions(tmp_path_factory.mktemp("affine"), "affine", ["3.0.1", "2.4.0"])


@pytest.fixture(scope="session")
def numpy_other_minor(tmp_path_factory, worker_venv):
    """Another numpy minor than the workers' (with a wheel for their Python: 1.26 up to 3.12, 2.x from 3.13)."""
    candidates = ["1.26.4", "2.1.3"] if sys.version_info < (3, 13) else ["2.1.3", "2.3.5"]
    return _other_versions(tmp_path_factory.mktemp("numpy"), "numpy", candidates)


def _no_job_left(folder: Path, cluster: Cluster):
    assert not list(folder.glob(".*dask-*")), "a job folder was left behind"
    client = cluster.client()
    try:
        deadline = time.monotonic() + 10
        while cluster.job_keys(client) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cluster.job_keys(client) == [], "the scheduler still holds the job's tasks"
    finally:
        client.close()


@pytest.fixture
def short_wait(monkeypatch):
    monkeypatch.setenv("FOREST_CARBON_WORKER_WAIT", "3")
    return 3.0


# --------------------------------------------------------------------------- not a Dask scheduler


class _Silent:
    """A port that accepts connections and never answers."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.held = []
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.held.append(connection)

    def close(self):
        self.server.close()
        for connection in self.held:
            connection.close()


class _Http:
    """A plain HTTP server (what a dashboard port or a wrong service answers)."""

    def __init__(self):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("listener", [_Silent, _Http], ids=["silent", "http"])
def test_a_listener_that_is_not_dask_fails_within_the_timeout(listener, features, tmp_path, forestcarbon_provider):
    from qgis.core import QgsProcessingException

    from forest_carbon_plugin.settings import load_spec

    timeout = load_spec().timeout
    server = listener()
    address = f"tcp://127.0.0.1:{server.port}"
    try:
        started = time.monotonic()
        with pytest.raises(QgsProcessingException, match=rf"Cannot connect to the Dask scheduler at {address}"):
            _run("predictraster", INPUT=[features["raster"]], MODEL=features["pixel"], EXECUTION=1,
                 SCHEDULER=address, OUTPUT=str(tmp_path / "never.tif"))
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert elapsed < timeout + 4, f"{elapsed:.1f} s with a {timeout:g} s connection timeout"
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- a scheduler without the plugin's core


def test_scheduler_without_the_core_is_refused_naming_it(worker_venv, features, tmp_path, short_wait):
    """A scheduler from the client's .venv (Dask, but not the plugin's core): refused on connect, for the scheduler
    (not "no workers"); forced to run anyway, the message says that the scheduler cannot read the tasks."""
    c = Cluster(tmp_path / "dask", workers=0, scheduler_bin=ROOT / ".venv" / "bin")
    try:
        client = c.client()
        try:
            started = time.monotonic()
            with pytest.raises(ForestCarbonError, match=r"forest-carbon-plugin is missing on the scheduler at "
                                                        r".*the scheduler needs the worker package too"):
                DaskExecutor(client).check()
            assert time.monotonic() - started < short_wait, "it waited for workers before naming the scheduler"
            with pytest.raises(ForestCarbonError, match=r"scheduler could not read the job's tasks .*No module "
                                                        r"named 'forest_carbon_plugin'.*not about the workers"):
                DaskExecutor(client, check=False).check_visible([features["raster"]])
        finally:
            client.close()
        _no_job_left(tmp_path, c)
    finally:
        c.stop()


# --------------------------------------------------------------------------- no worker, or every worker lost


@pytest.fixture(scope="module")
def lonely(worker_venv, tmp_path_factory):
    """A scheduler that starts without workers."""
    c = Cluster(tmp_path_factory.mktemp("lonely"), workers=0)
    yield c
    c.stop()


def test_scheduler_without_workers_fails_within_the_wait(lonely, features, tmp_path, short_wait,
                                                         forestcarbon_provider):
    from qgis.core import QgsProcessingException

    started = time.monotonic()
    with pytest.raises(QgsProcessingException, match=rf"No Dask worker is attached to the scheduler at "
                                                     rf"{lonely.address} \(waited 3 s\)"):
        _run("predictraster", INPUT=[features["raster"]], MODEL=features["pixel"], EXECUTION=1,
             SCHEDULER=lonely.address, OUTPUT=str(tmp_path / "never.tif"))
    elapsed = time.monotonic() - started
    assert short_wait <= elapsed < short_wait + 10, elapsed
    assert list(tmp_path.iterdir()) == []
    _no_job_left(tmp_path, lonely)


def test_job_fails_when_every_worker_is_lost(lonely, big, tmp_path):
    """The only worker killed in the middle of a job: the job fails within the wait (3 s) naming the cause, cancels
    its tasks and leaves nothing (before, the scheduler logged "Lost all workers" and the job waited forever)."""
    raster, model = big
    lonely.add_worker()
    client = lonely.client()
    try:
        thread, errors = job_in_middle(DaskExecutor(client, worker_wait=3), raster, model, tmp_path / "lost.tif", 5)
        lonely.kill_worker(len(lonely.workers) - 1)
        killed = time.monotonic()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the job still waits after its last worker was lost"
        assert time.monotonic() - killed < 3 + 10
    finally:
        client.close()
    assert len(errors) == 1 and isinstance(errors[0], ForestCarbonError), errors
    assert "no Dask worker has been attached" in str(errors[0]) and "for 3 s" in str(errors[0])
    assert list(tmp_path.iterdir()) == []
    _no_job_left(tmp_path, lonely)


# --------------------------------------------------------------------------- workers with other versions


@pytest.fixture(scope="module")
def external_model(tmp_path_factory):
    """A CNN whose weights are in a separate file (ONNX external data)."""
    import onnx

    folder = tmp_path_factory.mktemp("external")
    source = conv_model(folder / "plain.onnx", channels=3, hidden=8, seed=5)[0]
    model = onnx.load(str(source))
    target = folder / "model" / "cnn.onnx"
    target.parent.mkdir()
    onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="cnn.weights", size_threshold=256)
    assert (target.parent / "cnn.weights").stat().st_size > 1000
    return target


@pytest.fixture(scope="module")
def sentinel2(tmp_path_factory):
    from forest_carbon_plugin.simulate import SceneConfig, simulate_scene

    scene = tmp_path_factory.mktemp("skew_scene") / "scene"
    manifest = simulate_scene(scene, SceneConfig(size_m=240, seed=4, pulse_density=0.5))
    return scene / manifest["sentinel2"]["product"]


def test_worker_with_another_affine_gives_the_local_result(worker_venv, affine_other, features, external_model,
                                                           sentinel2, tmp_path):
    """affine 3 on the worker, 2.4 here: an Affine pickled by this machine does not load there ('Affine' object has no
    attribute 'a'); the job's tasks travel as plain data, so it runs, with a warning naming affine, and gives the
    local run's bits: predictraster (its grid), and harmonizescene (a product with CRS and transforms). The model keeps
    its weights in an external data file, which is sent with the job."""
    from forest_carbon_plugin.core.imagery.harmonize import TargetGrid, harmonize_scene

    from affine import Affine

    assert external_data_files(external_model) == ["cnn.weights"]
    path, theirs = affine_other
    c = Cluster(tmp_path / "dask", workers=1, pythonpath=path)
    try:
        client = c.client()
        try:
            assert set(client.run(lambda: __import__("affine").__version__).values()) == {theirs}
            if theirs.startswith("3.") and not version("affine").startswith("3."):
                with pytest.raises(AttributeError, match=r"Affine' object has no attribute 'a'"):
                    client.submit(lambda t: t.a, Affine(10, 0, 5, 0, -10, 9), pure=False).result(timeout=30)
            worker = next(iter(client.scheduler_info(n_workers=-1)["workers"]))
            with pytest.raises(ForestCarbonError, match="it answered as a Dask worker, not as a scheduler"):
                connect(worker, timeout=5)
            executor = DaskExecutor(client, worker_wait=30)
            warnings = executor.check()
            assert any(w.startswith(f"affine {theirs} on 1 worker(s)") and f"{version('affine')} here" in w
                       for w in warnings), warnings
            result: dict = {}

            def job():
                try:
                    with executor_scope(executor):
                        predict_raster([features["raster"]], external_model, tmp_path / "dask.tif",
                                       settings=PredictSettings(tile_size=48, overlap=16))
                        harmonize_scene(sentinel2, tmp_path / "s2_dask.tif", TargetGrid(resolution_m=10))
                    result["ok"] = True
                except BaseException as exc:  # noqa: BLE001
                    result["error"] = exc

            started = time.monotonic()
            thread = threading.Thread(target=job)
            thread.start()
            thread.join(timeout=90)
            assert not thread.is_alive(), "the job on the skewed worker did not end within 90 s"
            assert "error" not in result, result.get("error")
            assert time.monotonic() - started < 90
            executor.close()  # releases the model sent with the job
        finally:
            client.close()
        _no_job_left(tmp_path, c)
    finally:
        c.stop()
    predict_raster([features["raster"]], external_model, tmp_path / "here.tif",
                   settings=PredictSettings(tile_size=48, overlap=16))
    local, dask = _pixels(tmp_path / "here.tif")[0], _pixels(tmp_path / "dask.tif")[0]
    assert _same_bits(local, dask)
    assert np.isfinite(local).any()
    harmonize_scene(sentinel2, tmp_path / "s2_here.tif", TargetGrid(resolution_m=10))
    local, dask = _pixels(tmp_path / "s2_here.tif"), _pixels(tmp_path / "s2_dask.tif")
    assert _same_bits(local[0], dask[0]) and local[1] == dask[1]
    assert json.loads(dask[2]["FOREST_CARBON_PROVENANCE"])["execution"] == "dask"
    assert np.isfinite(local[0]).mean() > 0.2  # the rest is cloud and shadow


def test_worker_with_another_numpy_minor_is_refused(worker_venv, numpy_other_minor, features, tmp_path,
                                                    forestcarbon_provider):
    from qgis.core import QgsProcessingException

    here = version("numpy")
    path, theirs = numpy_other_minor
    c = Cluster(tmp_path / "dask", workers=1, pythonpath=path)
    try:
        started = time.monotonic()
        with pytest.raises(QgsProcessingException) as err:
            _run("predictraster", INPUT=[features["raster"]], MODEL=features["pixel"], EXECUTION=1,
                 SCHEDULER=c.address, OUTPUT=str(tmp_path / "out" / "never.tif"))
        assert time.monotonic() - started < 90
        message = str(err.value)
        assert f"numpy {theirs} on 1 worker(s) ({c.address.rsplit(':', 1)[0]}" in message, message
        assert f"{here} here" in message and "constraints-worker.txt" in message, message
        assert not (tmp_path / "out").exists()
        _no_job_left(tmp_path, c)
    finally:
        c.stop()


# --------------------------------------------------------------------------- files on this machine and the workers


def test_external_data_outside_the_model_folder_is_refused(tmp_path, external_model):
    import shutil

    folder = tmp_path / "models"
    folder.mkdir()
    data = external_model.read_bytes().replace(b"cnn.weights", b"../w.weight")  # same length: the protobuf holds
    (folder / "cnn.onnx").write_bytes(data)
    shutil.copy(external_model.parent / "cnn.weights", tmp_path / "w.weight")
    with pytest.raises(ForestCarbonError, match=r"keeps weights in '\.\./w\.weight', which is not a file in the "
                                                r"model's folder"):
        model_bundle(folder / "cnn.onnx")
    name, files = model_bundle(external_model)
    assert name == "cnn.onnx" and sorted(files) == ["cnn.onnx", "cnn.weights"]


@pytest.fixture
def private_temp(tmp_path, monkeypatch):
    """The system temporary folder is ``tmp_path/tmp`` for the test; the cache folder is looked up again."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(job_files, "_CACHE", {})
    return temp


def test_model_cache_is_private_owned_and_cleaned(private_temp):
    uid = os.getuid()
    shared = private_temp / f"forest_carbon_jobs_{uid}"
    shared.mkdir(mode=0o755)  # as an older version made it
    os.chmod(shared, 0o755)
    old, recent = shared / "old-entry", shared / "recent-entry"
    old.mkdir()
    recent.mkdir()
    os.utime(old, (time.time() - 8 * 86400, time.time() - 8 * 86400))
    folder = cache_folder()
    assert folder == shared
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert not old.exists() and recent.exists()
    path = materialize(("m.onnx", {"m.onnx": b"model", "w.bin": b"weights"}))
    assert path.read_bytes() == b"model" and (path.parent / "w.bin").read_bytes() == b"weights"
    assert path.parent.parent == folder


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give a folder away")
def test_model_cache_of_someone_else_is_not_used(private_temp):
    foreign = private_temp / f"forest_carbon_jobs_{os.getuid()}"
    foreign.mkdir(mode=0o777)
    os.chmod(foreign, 0o777)
    os.chown(foreign, 65534, 65534)  # made by another user before us (or to catch our models)
    folder = cache_folder()
    assert folder != foreign and folder.is_dir()
    info = os.stat(folder)
    assert info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700
    path = materialize(b"model bytes")
    assert folder in path.parents and not list(foreign.iterdir())


def test_stale_job_folders_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    owners = {".a.dask-dead": {"host": host, "pid": dead.pid, "started": 1.0},
              ".b.dask-alive": {"host": host, "pid": os.getpid(),
                                "started": process_start(os.getpid())},
              ".c.dask-reused": {"host": host, "pid": os.getpid(), "started": 12345.0},  # the pid went to another
              ".d.dask-elsewhere": {"host": host + "-other", "pid": dead.pid, "started": 1.0}}
    for name, owner in owners.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / JOB_OWNER).write_text(json.dumps(owner))
        (tmp_path / name / "tile.tif").write_bytes(b"x")
    with job_folder(tmp_path / "out.tif") as folder:
        assert json.loads((folder / JOB_OWNER).read_text())["pid"] == os.getpid()
        left = sorted(p.name for p in tmp_path.glob(".*.dask-*") if p != folder)
        assert left == [".b.dask-alive", ".d.dask-elsewhere"]
    assert not folder.exists()
    with pytest.raises(RuntimeError), job_folder(tmp_path / "out.tif") as folder:
        raise RuntimeError("a failed job")
    assert not folder.exists()
