"""Atomic writes and provenance (core.outputs)."""

import json
import os
import stat

import pytest

from forest_carbon_plugin import __version__
from forest_carbon_plugin.core.outputs import atomic_output, provenance, write_json


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
