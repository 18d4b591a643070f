"""Atomic writes and provenance (core.outputs)."""

import json
import os
import platform
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forest_carbon_plugin import __version__
from forest_carbon_plugin.core.outputs import (
    UNDO_PREFIX,
    OutputTransaction,
    atomic_output,
    provenance,
    recover_killed_runs,
    write_json,
)

ROOT = Path(__file__).resolve().parents[2]


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.tif"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"partial")
            assert tmp.parent == tmp_path and tmp.suffix == ".tif"
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_survives_a_failed_overwrite(tmp_path):
    target = tmp_path / "report.json"
    write_json(target, {"run": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(target, "w") as handle:
            handle.write("{\"run\": 2")
            raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"run": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_provenance_record():
    record = provenance("forestcarbon:x", {"A": 1, "P": tmp_path_like()}, inputs=["a.laz"], model_id="m1")
    assert record["plugin_version"] == __version__
    assert record["algorithm"] == "forestcarbon:x"
    assert record["parameters"] == {"A": 1, "P": "/data/p"}
    assert record["model_id"] == "m1" and record["inputs"] == ["a.laz"]
    json.dumps(record)


def tmp_path_like():
    from pathlib import PurePosixPath

    return PurePosixPath("/data/p")


def test_outputs_get_the_permissions_of_any_new_file(tmp_path):
    # mkstemp's private 0600 would hide outputs from the other users of a shared project folder
    umask = os.umask(0o022)
    os.umask(umask)
    write_json(tmp_path / "report.json", {"run": 1})
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o666 & ~umask


_KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from forest_carbon_plugin.core.outputs import OutputTransaction, atomic_output

out = Path(sys.argv[1])
with OutputTransaction([out, out.with_name("report.html")]):
    tmp = out.with_name(".map.tif.part")
    tmp.write_text("new, half written")
    os.replace(tmp, out)  # writers replace the file (atomic_output, GDAL, OGR): the kept link keeps the old one
    out.with_name("map.aux.xml").write_text("side file of the new run")
    out.with_name("report.html").write_text("a report the old run never had")
    os.kill(os.getpid(), signal.SIGKILL)  # no __exit__, no rollback: the journal stays
"""


def test_a_killed_run_is_rolled_back_by_the_next_one(tmp_path):
    """A run killed mid-write (SIGKILL, a real process): the next transaction on the same outputs puts the
    previous file back, removes the killed run's partial outputs and its hidden folders, and says so."""
    out = tmp_path / "map.tif"
    out.write_text("the user's previous map")
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(out)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert out.read_text() == "new, half written"
    assert any(n.startswith(UNDO_PREFIX) for n in os.listdir(tmp_path))
    with OutputTransaction([out]) as tx:
        assert len(tx.recovered) == 1 and str(out) in tx.recovered[0]
        assert out.read_text() == "the user's previous map"
        assert [n for n in os.listdir(tmp_path) if not n.startswith(UNDO_PREFIX)] == ["map.tif"]
        assert not (tmp_path / "report.html").exists() and not (tmp_path / "map.aux.xml").exists()
    assert os.listdir(tmp_path) == ["map.tif"]  # this run's journal is gone with it


def test_the_journal_of_a_running_process_is_left_alone(tmp_path):
    """A journal whose process still runs (a second QGIS writing there now) is not touched."""
    out = tmp_path / "map.tif"
    out.write_text("being written by another process")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        journal_dir = tmp_path / (UNDO_PREFIX + "other")
        journal_dir.mkdir()
        (journal_dir / "journal.json").write_text(json.dumps({
            "pid": sleeper.pid, "host": platform.node(), "files": [str(out)], "folders": [], "before": [],
            "kept": [], "undo_dirs": [], "created": []}))
        assert recover_killed_runs([tmp_path]) == []
        assert out.exists() and journal_dir.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    time.sleep(0.1)
    assert len(recover_killed_runs([tmp_path])) == 1  # now its process is gone: rolled back
    assert not out.exists() and not journal_dir.exists()  # it made map.tif (nothing was there before)
