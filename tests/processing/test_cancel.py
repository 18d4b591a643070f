"""Cancel in the long phases: normalizeheight with 2 worker processes and treetops' crowns return within
5 s of Cancel and leave nothing at their output paths; crowns grown in strips equal the whole-raster
growth (the reference implementation below)."""

from __future__ import annotations

import threading
import time

import numpy as np
import psutil
import pytest
from qgis.core import QgsProcessingException, QgsProcessingFeedback

from forest_carbon_plugin.core.parallel import pool as workerpool
from forest_carbon_plugin.core.lidar.crowns import Dalponte, crown_polygons, grow_crowns
from tests import sample_catalogs


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """16 tiles (4 x 4 copies of the 80 m sample stand, 1.4 M points), as elevations and as heights."""
    return sample_catalogs.write_catalogs(tmp_path_factory.mktemp("mosaic"), sample_catalogs.mosaic)


class CancelAt(QgsProcessingFeedback):
    """Cancels ``delay`` seconds after the first progress report that ``when`` accepts (from a timer
    thread, as the Cancel button does from the GUI thread), and notes when."""

    def __init__(self, when, delay: float):
        super().__init__()
        self.when, self.delay = when, delay
        self.cancelled_at = None
        self.history = []
        self.progressChanged.connect(self._progress)

    def _progress(self, percent):
        self.history.append(percent)
        if self.cancelled_at is None and self.when(self.history):
            self.cancelled_at = float("inf")
            threading.Timer(self.delay, self._cancel).start()

    def _cancel(self):
        self.cancelled_at = time.monotonic()
        self.cancel()


def _workers():
    return [p for p in psutil.Process().children(recursive=True) if workerpool.__name__ in " ".join(p.cmdline())]


def _run_cancelled(algorithm, parameters, feedback):
    import processing

    with pytest.raises(QgsProcessingException) as excinfo:
        processing.run(algorithm, parameters, feedback=feedback)
    returned = time.monotonic()
    assert "ancel" in str(excinfo.value)
    assert feedback.cancelled_at is not None and feedback.cancelled_at != float("inf")
    return returned - feedback.cancelled_at


def test_cancel_normalizeheight_with_two_workers(tmp_path, forestcarbon_provider, mosaic):
    out = tmp_path / "out"
    out.mkdir()
    feedback = CancelAt(lambda history: history[-1] > 0, delay=0.5)  # once the workers deliver tiles
    took = _run_cancelled("forestcarbon:normalizeheight", {
        "INPUT": str(mosaic[0]), "MAX_WORKERS": 2, "OUTPUT": str(out / "n.laz"), "OUTPUT_DTM": str(out / "dtm.tif")},
        feedback)
    assert took < 5.0
    assert max(feedback.history) < 100  # cancelled in the middle
    assert list(out.iterdir()) == []
    assert _workers() == []


def test_cancel_treetops_in_the_crowns_phase(tmp_path, forestcarbon_provider, mosaic):
    out = tmp_path / "out"
    out.mkdir()

    def in_crown_growth(history):  # the tops' phase reached 100 %, the crowns' phase restarted and grows
        return 100 in history and history[-1] < 100 and history[-1] >= 20 and history.index(100) < len(history) - 1

    feedback = CancelAt(in_crown_growth, delay=0.0)
    took = _run_cancelled("forestcarbon:treetops", {
        "INPUT": str(mosaic[1]), "MAX_WORKERS": 2, "OUTPUT": str(out / "t.gpkg"),
        "OUTPUT_CROWNS": str(out / "crowns.gpkg")}, feedback)
    assert took < 5.0
    assert list(out.iterdir()) == []  # no tops, no crowns, no -journal
    assert _workers() == []


def _reference_growth(chm, seed_rows, seed_cols, params):
    """Dalponte region growing over the whole raster at once (the implementation before strips)."""
    chm = np.where(np.isfinite(chm), chm, -np.inf)
    labels = np.zeros(chm.shape, dtype=np.int32)
    n = len(seed_rows)
    labels[seed_rows, seed_cols] = np.arange(1, n + 1)
    seed_h = np.r_[0.0, chm[seed_rows, seed_cols]]
    seed_r, seed_c = np.r_[0, seed_rows], np.r_[0, seed_cols]
    rows, cols = np.indices(chm.shape)
    for _ in range(params.max_cr):
        total = np.bincount(labels.ravel(), weights=np.where(labels > 0, chm, 0).ravel(), minlength=n + 1)
        count = np.bincount(labels.ravel(), minlength=n + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_h = total / count
        k = np.zeros(chm.shape, dtype=np.int32)
        padded = np.pad(labels, 1)
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            neighbour = padded[1 + dr:1 + dr + chm.shape[0], 1 + dc:1 + dc + chm.shape[1]]
            take = (k == 0) & (labels == 0) & (neighbour > 0)
            k[take] = neighbour[take]
        ok = (k > 0) & (chm > params.th_tree) & (chm > seed_h[k] * params.th_seed) & \
            (chm > mean_h[k] * params.th_cr) & (chm <= seed_h[k] * 1.05) & \
            (np.hypot(rows - seed_r[k], cols - seed_c[k]) <= params.max_cr / 2)
        if not ok.any():
            break
        labels[ok] = k[ok]
    return labels


def test_crowns_in_strips_equal_whole_raster_growth():
    from affine import Affine
    from scipy.ndimage import gaussian_filter, maximum_filter

    rng = np.random.default_rng(4)
    chm = gaussian_filter(rng.gamma(2.0, 6.0, (300, 260)), 3) * 3
    chm[rng.random(chm.shape) < 0.02] = np.nan
    tops = (chm == maximum_filter(np.nan_to_num(chm), 9)) & (chm > 4)
    seed_rows, seed_cols = np.nonzero(tops)
    params = Dalponte(max_cr=14)
    expected = _reference_growth(chm, seed_rows, seed_cols, params)
    assert len(seed_rows) > 50 and (expected > 0).mean() > 0.3
    calls = []

    class Progress:
        def set_progress(self, percent):
            calls.append(percent)

        def is_canceled(self):
            return False

    for strip in (1, 7, 64, 1000):
        calls.clear()
        labels = grow_crowns(chm, seed_rows, seed_cols, params, Progress(), strip_rows=strip)
        assert np.array_equal(labels, expected), strip
        assert calls == sorted(calls) and calls[-1] < 100 and len(calls) >= 300 // strip
    transform = Affine(0.5, 0, 1000.0, 0, -0.5, 2000.0)
    whole = crown_polygons(expected, transform, chm, strip_rows=10_000)
    for strip in (3, 32):
        parts = crown_polygons(expected, transform, chm, strip_rows=strip)
        assert [p[0] for p in parts] == [p[0] for p in whole] == sorted(set(expected[expected > 0].tolist()))
        for (k, poly, area, diameter, height), (_, poly0, area0, _, height0) in zip(parts, whole):
            assert poly.symmetric_difference(poly0).area < 1e-9 and area == pytest.approx(area0, abs=1e-9)
            assert height == height0 == np.nanmax(chm[expected == k])
            assert area == pytest.approx((expected == k).sum() * 0.25)
