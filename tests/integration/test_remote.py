"""Remote jobs on Dask (issue #10): a real `dask scheduler` and `dask worker` processes on 127.0.0.1, the
workers from .venv-worker (`pip install .[worker]`: no QGIS, no PyQt), driven through processing.run and
the core. Outputs must equal the local runs bit for bit; a killed worker must not change them; a cancelled
job must leave nothing behind; TLS must work with the right certificates only; a wrong address must fail
fast, naming it."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import operator
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from forest_carbon_plugin.core.parallel.connect import check_address, connect, security
from forest_carbon_plugin.core.parallel.dask import DaskExecutor
from forest_carbon_plugin.core.errors import Cancelled, ForestCarbonError
from forest_carbon_plugin.core.models.predict import PredictSettings, predict_raster
from forest_carbon_plugin.core.parallel.tilemap import executor_scope

from tests.onnx_models import conv_model, pixel_model, tree_model

# the client's Python has lz4 and pandas, the workers' does not need them: Dask says so, harmlessly
pytestmark = pytest.mark.filterwarnings("ignore::distributed.versions.VersionMismatchWarning")

ROOT = Path(__file__).resolve().parents[2]
WORKER_VENV = ROOT / ".venv-worker"
WORKER_BIN = WORKER_VENV / "bin"


# --------------------------------------------------------------------------- the cluster

def _worker_env(tmp):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PROJ_DATA", "PROJ_LIB", "GDAL_DATA", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{WORKER_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(tmp)
    env["DASK_DISTRIBUTED__WORKER__DAEMON"] = "False"
    return env


@pytest.fixture(scope="session")
def worker_venv():
    """.venv-worker, checked: no QGIS, no PyQt, and the repository's core installed (not a stale copy)."""
    python = WORKER_BIN / "python"
    if not python.exists():
        pytest.skip(f"{WORKER_VENV} is absent: `make setup` builds it (a venv with only `pip install .[worker]`)")
    probe = subprocess.run([str(python), "-c", (
        "import importlib.util as u, json, forest_carbon_plugin.core as c, os\n"
        "print(json.dumps({'qgis': u.find_spec('qgis') is not None, 'pyqt': u.find_spec('PyQt5') is not None,"
        " 'core': os.path.dirname(c.__file__)}))")], capture_output=True, text=True, cwd="/", timeout=60,
        env=_worker_env(Path("/tmp")))
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert not found["qgis"] and not found["pyqt"], found
    installed = Path(found["core"])
    core = ROOT / "forest_carbon_plugin" / "core"
    stale = [str(p.relative_to(core)) for p in core.rglob("*.py")
             if not (installed / p.relative_to(core)).exists()
             or hashlib.sha256(p.read_bytes()).digest()
             != hashlib.sha256((installed / p.relative_to(core)).read_bytes()).digest()]
    assert not stale, f"{WORKER_VENV} holds an old copy of the core ({', '.join(stale)}): run `make setup`"
    return python


class Cluster:
    """A scheduler and workers started as process groups; stopped by :meth:`stop`."""

    def __init__(self, folder: Path, workers: int = 2, tls: dict | None = None, scheduler_bin: Path = WORKER_BIN,
                 pythonpath: str = ""):
        """``scheduler_bin``: the venv whose `dask scheduler` runs; ``pythonpath``: put first on the workers' path (a
        folder of other package versions)."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.procs: list = []
        self.workers: list = []
        self.killed: set = set()
        sched_file = folder / "scheduler.json"
        args = [str(scheduler_bin / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                "--scheduler-file", str(sched_file)]
        self.tls_args = []
        if tls:
            self.tls_args = ["--tls-ca-file", tls["ca"], "--tls-cert", tls["cert"], "--tls-key", tls["key"]]
            args += ["--protocol", "tls"] + self.tls_args
        self.procs.append(self._start(args, _worker_env(folder), "scheduler"))
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            self._alive()
            time.sleep(0.1)
        self.address = json.loads(sched_file.read_text())["address"]
        for _ in range(workers):
            self.add_worker(pythonpath, wait=False)
        self.wait_for_workers(workers)

    def add_worker(self, pythonpath: str = "", wait: bool = True):
        i = len(self.workers)
        env = _worker_env(self.folder)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        proc = self._start([str(WORKER_BIN / "dask"), "worker", self.address, "--nthreads", "1", "--no-dashboard",
                            "--name", f"w{i}", "--local-directory", str(self.folder / f"w{i}"),
                            "--death-timeout", "60"] + self.tls_args, env, f"worker{i}")
        self.procs.append(proc)
        self.workers.append(proc)
        if wait:
            self.wait_for_workers(sum(p.poll() is None for p in self.workers))
        return proc

    def _start(self, args, env, name):
        log = open(self.folder / f"{name}.log", "w")
        return subprocess.Popen(args, env=env, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def _alive(self):
        for p in self.procs:
            if p.poll() is not None and p.pid not in self.killed:
                logs = "\n".join(f.read_text()[-2000:] for f in self.folder.glob("*.log"))
                raise RuntimeError(f"a cluster process exited ({p.args[:2]}):\n{logs}")

    def client(self, timeout=10):
        sec = security(self.tls["ca"], self.tls["cert"], self.tls["key"]) if self.tls else None
        return connect(self.address, sec, timeout=timeout)

    def wait_for_workers(self, n):
        client = self.client(timeout=30)
        try:
            deadline = time.monotonic() + 90
            while len(client.scheduler_info(n_workers=-1)["workers"]) < n:
                self._alive()
                assert time.monotonic() < deadline, "the workers did not register with the scheduler"
                time.sleep(0.2)
        finally:
            client.close()

    def job_keys(self, client):
        return client.run_on_scheduler(
            lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks if "forestcarbon" in str(k)])

    def kill_worker(self, i):
        self.killed.add(self.workers[i].pid)
        os.killpg(self.workers[i].pid, signal.SIGKILL)

    def stop(self):
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture(scope="module")
def cluster(worker_venv, tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("dask"))
    yield c
    c.stop()


# --------------------------------------------------------------------------- data

def _write(path, data, res=10.0):
    data = np.asarray(data, dtype=np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype="float32", crs="EPSG:32633", transform=from_origin(500_000, 6_000_000, res, res),
                       nodata=float("nan")) as dst:
        dst.write(data)
    return str(path)


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    folder = tmp_path_factory.mktemp("remote_features")
    rng = np.random.default_rng(3)
    data = rng.normal(0.3, 0.15, (3, 300, 260)).astype(np.float32)
    data[:, 40:47, 11:30] = np.nan  # nodata crossing nothing special
    data[1, 200:260, 100] = np.nan
    card = {"mlm:input": [{"name": "features"}],
            "mlm:output": [{"name": "mean", "forest_carbon:meaning": "mean"},
                           {"name": "logvar", "forest_carbon:meaning": "log_variance"}]}
    return {
        "raster": _write(folder / "features.tif", data),
        "pixel": str(pixel_model(folder / "linear.onnx", [1.5, -2.0, 0.7], 3.0, log_variance=([0.2, 0.1, -0.3], -1.0),
                                 metadata={"model_card": card})),
        "cnn": str(conv_model(folder / "cnn.onnx", channels=3, hidden=8, seed=1)[0]),
    }


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A job of a few seconds on two workers: a 1200² raster through a tree ensemble."""
    folder = tmp_path_factory.mktemp("remote_big")
    rng = np.random.default_rng(4)
    raster = _write(folder / "big.tif", rng.uniform(0, 1, (3, 1200, 1200)))
    model, _ = tree_model(folder / "trees.onnx", n_features=3, n_trees=60, depth=6, seed=2)
    return raster, str(model)


def _pixels(path):
    with rasterio.open(path) as src:
        return src.read(), src.descriptions, dict(src.tags())


def _same_bits(a, b):
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _provenance(tags):
    return json.loads(tags["FOREST_CARBON_PROVENANCE"])


def _run(alg, **params):
    import processing

    return processing.run(f"forestcarbon:{alg}", params)


# --------------------------------------------------------------------------- 1. same bits as local runs

@pytest.mark.parametrize("model, extra", [("pixel", {"TILE_SIZE": 32, "OUTPUT_STD": True, "OUTPUT_UPPER": True}),
                                          ("cnn", {"TILE_SIZE": 48, "OVERLAP": 16})])
def test_predictraster_on_cluster_equals_local(model, extra, cluster, features, tmp_path, forestcarbon_provider):
    outputs = {}
    for label, execution in (("local", {"EXECUTION": 0}), ("dask", {"EXECUTION": 1, "SCHEDULER": cluster.address})):
        params = {"INPUT": [features["raster"]], "MODEL": features[model], "OUTPUT": str(tmp_path / f"{label}.tif")}
        for key, value in extra.items():
            params[key] = str(tmp_path / f"{label}_{key.lower()}.tif") if value is True else value
        result = _run("predictraster", **params, **execution)
        outputs[label] = {k: result[k] for k in ("OUTPUT", "OUTPUT_STD", "OUTPUT_UPPER") if result.get(k)}
    assert outputs["local"].keys() == outputs["dask"].keys()
    for key in outputs["local"]:
        local, dask = _pixels(outputs["local"][key]), _pixels(outputs["dask"][key])
        assert _same_bits(local[0], dask[0]), key
        assert np.isnan(local[0]).any() and np.isfinite(local[0]).any()
        assert local[1] == dask[1]
        for tag in ("OUTPUT_KIND", "UNIT", "MODEL_ID", "EXECUTION_PROVIDER", "COVERAGE"):
            assert local[2].get(tag) == dask[2].get(tag)
        record = _provenance(dask[2])
        assert record["execution"] == "dask" and record["scheduler"] == cluster.address
        assert "execution" not in _provenance(local[2])
    assert not list(tmp_path.glob(".*dask-*")), "the job folder was left behind"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    from forest_carbon_plugin.simulate import SceneConfig, simulate_scene

    scene = tmp_path_factory.mktemp("remote_scene") / "scene"
    simulate_scene(scene, SceneConfig(size_m=240, seed=21, tile_m=80, pulse_density=2))  # 9 tiles, not normalized
    return scene / "lidar"


def test_canopymetrics_on_cluster_equals_local(cluster, catalog, tmp_path, forestcarbon_provider):
    common = {"INPUT": str(catalog), "RESOLUTION": 10, "NORMALIZE": 0, "INTENSITY": True}
    _run("canopymetrics", **common, EXECUTION=0, MAX_WORKERS=1, OUTPUT=str(tmp_path / "local.tif"))
    _run("canopymetrics", **common, EXECUTION=1, SCHEDULER=cluster.address, OUTPUT=str(tmp_path / "dask.tif"))
    local, dask = _pixels(tmp_path / "local.tif"), _pixels(tmp_path / "dask.tif")
    assert _same_bits(local[0], dask[0])
    assert local[1] == dask[1] and np.isfinite(local[0]).any()
    assert _provenance(dask[2])["scheduler"] == cluster.address
    # canopyheightmodel runs its catalog tiles through the same executor
    for execution in ({"EXECUTION": 0}, {"EXECUTION": 1, "SCHEDULER": cluster.address}):
        _run("canopyheightmodel", INPUT=str(catalog), METHOD=1, RESOLUTION=1, **execution,
             OUTPUT=str(tmp_path / f"chm{execution['EXECUTION']}.tif"))
    assert _same_bits(_pixels(tmp_path / "chm0.tif")[0], _pixels(tmp_path / "chm1.tif")[0])


def test_failed_tile_fails_the_job_with_its_error(cluster, features, tmp_path):
    """An input the workers cannot read: the job fails early, naming it; a tile's own error is passed on."""
    client = cluster.client()
    try:
        executor = DaskExecutor(client, retries=0)
        with pytest.raises(ForestCarbonError, match="cannot read .*gone.tif"):
            executor.check_visible([str(tmp_path / "gone.tif")])
        # a core function raising on the worker (tile functions must be importable there: the installed core's)
        with pytest.raises(ForestCarbonError, match=r"Tile 2 of 3 failed on the cluster: The scheduler address "
                                                    r"'http://x' is not a Dask address"):
            list(executor.map(check_address, [("tcp://a:1",), ("http://x",), ("tcp://b:2",)]))
        with pytest.raises(ForestCarbonError, match=r"Tile 1 of 2 failed on the cluster \(ZeroDivisionError"):
            list(executor.map(operator.truediv, [(1, 0), (1, 1)]))
    finally:
        client.close()


# --------------------------------------------------------------------------- 3. cancel

class _CancelAfter:
    def __init__(self, percent):
        self.percent, self.seen, self.cancelled_at = percent, 0.0, None

    def set_progress(self, p):
        self.seen = max(self.seen, p)
        if p >= self.percent and self.cancelled_at is None:
            self.cancelled_at = time.monotonic()

    def is_canceled(self):
        return self.cancelled_at is not None

    def info(self, m):
        pass

    def warning(self, m):
        pass


def test_cancel_leaves_nothing(cluster, big, tmp_path):
    raster, model = big
    client = cluster.client()
    out = tmp_path / "cancelled.tif"
    progress = _CancelAfter(5.0)
    try:
        with executor_scope(DaskExecutor(client)), pytest.raises(Cancelled):
            predict_raster([raster], model, out, settings=PredictSettings(tile_size=32), progress=progress)
        returned = time.monotonic()
        assert progress.cancelled_at is not None and progress.seen < 95
        assert returned - progress.cancelled_at < 3.0, "the call did not return promptly"
        deadline = time.monotonic() + 5
        while cluster.job_keys(client) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cluster.job_keys(client) == []
    finally:
        client.close()
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "cancelled job left files"


# --------------------------------------------------------------------------- 5. wrong address

@pytest.mark.parametrize("address", ["tcp://127.0.0.1:1", "tcp://10.255.255.1:8786"])
def test_unreachable_scheduler_fails_fast_naming_it(address):
    started = time.monotonic()
    with pytest.raises(ForestCarbonError) as err:
        connect(address, timeout=2)
    assert time.monotonic() - started < 8
    assert address in str(err.value) and "Cannot connect" in str(err.value)


def test_wrong_address_from_processing(features, tmp_path, forestcarbon_provider):
    from qgis.core import QgsProcessingException

    for address, expected in (("tcp://127.0.0.1:1", "tcp://127.0.0.1:1"), ("http://example.org", "not a Dask address")):
        started = time.monotonic()
        with pytest.raises(QgsProcessingException, match=expected):
            _run("predictraster", INPUT=[features["raster"]], MODEL=features["pixel"], EXECUTION=1,
                 SCHEDULER=address, OUTPUT=str(tmp_path / "never.tif"))
        assert time.monotonic() - started < 10
    assert not (tmp_path / "never.tif").exists()


def test_execution_parameters_on_the_four_algorithms(forestcarbon_provider):
    from qgis.core import QgsApplication

    for alg in ("canopymetrics", "canopyheightmodel", "harmonizescene", "predictraster"):
        algorithm = QgsApplication.processingRegistry().algorithmById(f"forestcarbon:{alg}")
        execution = algorithm.parameterDefinition("EXECUTION")
        assert execution is not None and execution.defaultValue() == 0 and len(execution.options()) == 3, alg
        scheduler = algorithm.parameterDefinition("SCHEDULER")
        assert scheduler is not None and scheduler.flags() & scheduler.FlagOptional, alg


# --------------------------------------------------------------------------- 2. a worker lost mid-job

def test_killed_worker_does_not_change_the_result(worker_venv, big, tmp_path):
    raster, model = big
    predict_raster([raster], model, tmp_path / "local.tif", settings=PredictSettings(tile_size=32))
    c = Cluster(tmp_path / "cluster2")
    try:
        client = c.client()
        thread, errors = job_in_middle(DaskExecutor(client, retries=2), raster, model, tmp_path / "dask.tif", 10)
        c.kill_worker(0)
        thread.join(timeout=180)
        assert not thread.is_alive() and not errors, errors
        client.close()
    finally:
        c.stop()
    assert _same_bits(_pixels(tmp_path / "local.tif")[0], _pixels(tmp_path / "dask.tif")[0])
    # the cluster's output is assembled the way the local run writes (core.cog): the same overviews too
    with rasterio.open(tmp_path / "local.tif") as a, rasterio.open(tmp_path / "dask.tif") as b:
        assert a.overviews(1) == b.overviews(1) == [2, 4]
        for factor in (2, 4):
            shape = (1200 // factor, 1200 // factor)
            assert _same_bits(a.read(1, out_shape=shape), b.read(1, out_shape=shape)), factor


class _Recorder(_CancelAfter):
    def __init__(self):
        super().__init__(101)


def job_in_middle(executor, raster, model, out, percent):
    """predict_raster on ``executor`` in a thread, returned once it is ``percent`` % done: (thread, its errors)."""
    progress = _Recorder()
    errors: list = []

    def job():
        try:
            with executor_scope(executor):
                predict_raster([raster], model, out, settings=PredictSettings(tile_size=32), progress=progress)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.monotonic() + 60
    while progress.seen < percent and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    assert 0 < progress.seen < 90, f"the job was not in the middle when the worker was killed ({progress.seen}%)"
    return thread, errors


# --------------------------------------------------------------------------- 4. TLS

def _certificates(folder: Path, name: str):
    """A self-signed CA and a certificate + key it signed (for 127.0.0.1/localhost), as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = _dt.datetime.utcnow()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - _dt.timedelta(days=1))
          .not_valid_after(now + _dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(days=1)).not_valid_after(now + _dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": folder / f"{name}_ca.pem", "cert": folder / f"{name}_cert.pem", "key": folder / f"{name}_key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    os.chmod(paths["key"], 0o600)
    return {k: str(v) for k, v in paths.items()}


def test_tls_scheduler_needs_the_certificates(worker_venv, features, tmp_path):
    certs = _certificates(tmp_path, "good")
    other = _certificates(tmp_path, "other")
    c = Cluster(tmp_path / "tls", workers=1, tls=certs)
    try:
        assert c.address.startswith("tls://")
        client = c.client()
        try:
            with executor_scope(DaskExecutor(client)):
                predict_raster([features["raster"]], features["pixel"], tmp_path / "tls.tif",
                               settings=PredictSettings(tile_size=64))
        finally:
            client.close()
        predict_raster([features["raster"]], features["pixel"], tmp_path / "here.tif",
                       settings=PredictSettings(tile_size=64))
        assert _same_bits(_pixels(tmp_path / "tls.tif")[0], _pixels(tmp_path / "here.tif")[0])
        with pytest.raises(ForestCarbonError, match="speaks TLS"):
            connect(c.address, None, timeout=3)
        for wrong in (other, {**other, "ca": certs["ca"]}):  # a stranger's certificate, or trusting the wrong CA
            started = time.monotonic()
            with pytest.raises(ForestCarbonError, match=c.address.replace(".", r"\.")):
                connect(c.address, security(wrong["ca"], wrong["cert"], wrong["key"]), timeout=3)
            assert time.monotonic() - started < 10
        with pytest.raises(ForestCarbonError, match="does not exist"):
            security(certs["ca"], str(tmp_path / "missing.pem"), certs["key"])
    finally:
        c.stop()
