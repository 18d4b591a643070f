"""lidar.ground: SMRF (Pingel et al. 2013) and CSF (Zhang et al. 2016) with their published defaults, on a
synthetic stand whose ground points are known: an undulating slope, trees, shrubs and a flat roof."""

import numpy as np
import pytest

from forest_carbon_plugin.core.lidar.ground import CSF, SMRF, csf_ground, smrf_ground

pytest.importorskip("scipy.ndimage")


def _terrain(x, y):
    return 100 + 0.08 * x + 0.05 * y + 1.5 * np.sin(x / 15) * np.cos(y / 20)


@pytest.fixture(scope="module")
def stand():
    """60 m × 60 m: ~3 ground points per m² (3 cm noise), 35 crowns 8-25 m tall, shrubs 0.8-2 m, and a
    12 m × 12 m roof 6 m above the ground (no ground point under it)."""
    rng = np.random.default_rng(60)
    gx, gy = rng.uniform(0, 60, 12_000), rng.uniform(0, 60, 12_000)
    under_roof = (gx >= 40) & (gx <= 52) & (gy >= 5) & (gy <= 17)
    gx, gy = gx[~under_roof], gy[~under_roof]
    parts = [(gx, gy, _terrain(gx, gy) + rng.normal(0, 0.03, len(gx)))]
    for _ in range(35):
        cx, cy = rng.uniform(3, 57, 2)
        height, radius = rng.uniform(8, 25), rng.uniform(1.5, 4)
        angle, dist = rng.uniform(0, 2 * np.pi, 250), radius * np.sqrt(rng.uniform(0, 1, 250))
        px, py = cx + dist * np.cos(angle), cy + dist * np.sin(angle)
        parts.append((px, py, _terrain(px, py) + height * (1 - 0.5 * dist / radius) * rng.uniform(0.6, 1.0, 250)))
    sx, sy = rng.uniform(0, 60, 1500), rng.uniform(0, 60, 1500)
    parts.append((sx, sy, _terrain(sx, sy) + rng.uniform(0.8, 2.0, 1500)))
    bx, by = rng.uniform(40, 52, 1200), rng.uniform(5, 17, 1200)
    parts.append((bx, by, np.full(1200, _terrain(46, 11) + 6.0)))
    x, y, z = (np.concatenate(a) for a in zip(*parts))
    truth = np.zeros(len(x), dtype=bool)
    truth[: len(gx)] = True
    roof = np.zeros(len(x), dtype=bool)
    roof[-1200:] = True
    return x + 500_000, y + 4_000_000, z, truth, roof


def _recall_precision(found, truth):
    hits = np.count_nonzero(found & truth)
    return hits / truth.sum(), hits / max(found.sum(), 1)


def test_smrf_finds_the_ground(stand):
    x, y, z, truth, roof = stand
    found = smrf_ground(x, y, z, SMRF())
    recall, precision = _recall_precision(found, truth)
    # measured: recall 1.000, precision 0.995
    assert recall > 0.98 and precision > 0.98, (recall, precision)
    assert not found[roof].any()  # the 12 m roof is under SMRF's 18 m window: an object


def test_csf_finds_the_ground(stand):
    x, y, z, truth, roof = stand
    found = csf_ground(x, y, z, CSF())
    recall, precision = _recall_precision(found, truth)
    # measured: recall 0.995, precision 0.945: the soft cloth (rigidness 1, for steep terrain) lies on part
    # of the flat roof, which has no point under it to pull the cloth down
    assert recall > 0.98 and precision > 0.9, (recall, precision)
    assert found[roof].mean() < 0.5


def test_a_stiffer_cloth_bridges_the_roof(stand):
    """Zhang et al. (2016): rigidness 3 for flat terrain: the cloth spans objects instead of draping them."""
    x, y, z, truth, roof = stand
    soft, stiff = csf_ground(x, y, z, CSF(rigidness=1)), csf_ground(x, y, z, CSF(rigidness=3))
    assert stiff[roof].mean() < soft[roof].mean()
    assert _recall_precision(stiff, truth)[1] > _recall_precision(soft, truth)[1]


def test_no_points():
    assert smrf_ground(np.empty(0), np.empty(0), np.empty(0)).shape == (0,)
    assert csf_ground(np.empty(0), np.empty(0), np.empty(0)).shape == (0,)
