"""Make the small sample point cloud shipped in resources/sample_data/.

A deterministic, synthetic 80 m × 80 m conifer stand on a slope (UTM 33N), scanned at
8 pulses/m² with up to 3 returns: ground returns class 2, canopy returns class 5, Z as
elevation (not normalized). Small enough to ship (< 1 MB), real enough to run every
LiDAR algorithm on. The full scene simulator (forest_carbon_plugin.simulate) supersedes
it for tests with ground truth.

    python scripts/make_sample_data.py resources/sample_data/sample_stand.laz
"""

import sys

import laspy
import numpy as np
import pyproj


def main(out_path: str, seed: int = 42) -> None:
    rng = np.random.default_rng(seed)
    size, density = 80.0, 8.0
    x0, y0 = 500_000.0, 5_600_000.0

    def ground(x, y):
        return 420.0 + 0.12 * (x - x0) + 0.05 * (y - y0) + 1.5 * np.sin((x - x0) / 13.0) * np.cos((y - y0) / 17.0)

    n_trees = 250
    tx = x0 + rng.uniform(0, size, n_trees)
    ty = y0 + rng.uniform(0, size, n_trees)
    th = np.clip(rng.normal(22, 5, n_trees), 6, 34)
    tr = 0.9 + 0.11 * th  # crown radius from height (m)
    depth = 0.55 * th

    # canopy surface on a 0.25 m grid: max over trees of a cone-like crown
    res = 0.25
    gx = np.arange(0, size, res) + x0 + res / 2
    gy = np.arange(0, size, res) + y0 + res / 2
    X, Y = np.meshgrid(gx, gy)
    surf = np.zeros_like(X)
    for x, y, h, r, d in zip(tx, ty, th, tr, depth):
        dist = np.hypot(X - x, Y - y)
        inside = dist < r
        surf[inside] = np.maximum(surf[inside], h - d * (dist[inside] / r) ** 1.3)

    n = int(size * size * density)
    px = x0 + rng.uniform(0, size, n)
    py = y0 + rng.uniform(0, size, n)
    ci = np.clip(((py - y0) / res).astype(int), 0, len(gy) - 1)
    cj = np.clip(((px - x0) / res).astype(int), 0, len(gx) - 1)
    canopy = surf[ci, cj]
    g = ground(px, py)

    xs, ys, zs, rn, nr, cls, inten = [], [], [], [], [], [], []
    veg = canopy > 0.5
    # pulses that miss the canopy: one ground return
    m = ~veg
    xs.append(px[m]); ys.append(py[m]); zs.append(g[m] + rng.normal(0, 0.03, m.sum()))
    rn.append(np.ones(m.sum())); nr.append(np.ones(m.sum())); cls.append(np.full(m.sum(), 2))
    inten.append(rng.normal(900, 80, m.sum()))
    # canopy pulses: first return on the crown, maybe one inside, maybe the ground last
    v = np.flatnonzero(veg)
    k = rng.choice([1, 2, 3], size=len(v), p=[0.35, 0.4, 0.25])
    first_h = canopy[v] - rng.exponential(0.4, len(v))
    first_h = np.clip(first_h, 0.5, None)
    for j in range(3):
        sel = k > j
        idx = v[sel]
        if j == 0:
            h = first_h[sel]
            c = np.full(sel.sum(), 5)
        elif j == 1:
            last_is_ground = k[sel] == 2
            h = np.where(last_is_ground, 0.0, first_h[sel] * rng.uniform(0.2, 0.8, sel.sum()))
            c = np.where(last_is_ground, 2, 5)
        else:
            h = np.zeros(sel.sum())
            c = np.full(sel.sum(), 2)
        xs.append(px[idx]); ys.append(py[idx])
        zs.append(g[idx] + h + rng.normal(0, 0.03, sel.sum()))
        rn.append(np.full(sel.sum(), j + 1)); nr.append(k[sel]); cls.append(c)
        inten.append(rng.normal(400 if j == 0 else 250, 60, sel.sum()))

    header = laspy.LasHeader(point_format=6, version="1.4")
    header.scales = np.array([0.01, 0.01, 0.01])
    header.offsets = np.array([x0, y0, 0.0])
    header.add_crs(pyproj.CRS.from_epsg(32633))
    header.generating_software = "forest_carbon_plugin sample"
    las = laspy.LasData(header)
    las.x = np.concatenate(xs)
    las.y = np.concatenate(ys)
    las.z = np.concatenate(zs)
    las.return_number = np.concatenate(rn).astype(np.uint8)
    las.number_of_returns = np.concatenate(nr).astype(np.uint8)
    las.classification = np.concatenate(cls).astype(np.uint8)
    las.intensity = np.clip(np.concatenate(inten), 0, 65535).astype(np.uint16)
    order = np.lexsort((las.return_number, las.y, las.x))  # keep pulses together
    las.points = las.points[order]
    las.write(out_path)
    print(f"{out_path}: {len(las.points):,} points, {n_trees} trees")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "resources/sample_data/sample_stand.laz")
