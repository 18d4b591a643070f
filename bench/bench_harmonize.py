"""harmonizescene on a large Landsat Collection-2 L2 product (made here, block by block)
against the I/O floor: a plain rasterio read of the same seven bands and a write of them as
a float32 tiled GeoTIFF, in the same run. Two sizes show whether peak memory follows the
raster size (it should not)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .common import measure

MAKE = """
import numpy as np, rasterio
from rasterio.transform import from_origin
from pathlib import Path
folder = Path({folder!r}); folder.mkdir(parents=True, exist_ok=True)
n = {size}
name = "LC08_L2SP_190025_20230716_20230725_02_T1"
profile = dict(driver="GTiff", width=n, height=n, count=1, crs="EPSG:32633",
               transform=from_origin(500040, 5600040 + 0 * n, 30, 30), tiled=True, blockxsize=512,
               blockysize=512, compress="deflate", predictor=2)
rng = np.random.default_rng(0)
def write(path, dtype, nodata, fill):
    with rasterio.open(path, "w", dtype=dtype, nodata=nodata, **profile) as dst:
        for row in range(0, n, 512):
            h = min(512, n - row)
            y, x = np.mgrid[row:row + h, 0:n]
            dst.write(fill(y, x).astype(dtype)[None], window=((row, row + h), (0, n)))
for b in range(1, 8):
    write(folder / f"{{name}}_SR_B{{b}}.TIF", "uint16", 0,
          lambda y, x, b=b: 7273 + 2000 * b + 3000 * np.sin(x / 300.0) * np.cos(y / 400.0)
          + rng.normal(0, 300, x.shape))
write(folder / f"{{name}}_QA_PIXEL.TIF", "uint16", 1,
      lambda y, x: np.where(np.hypot((x % 2000) - 1000, (y % 2000) - 1000) < 300, 8 | (3 << 8), 64 | (1 << 8)))
for kind, value in (("SZA", 3400), ("SAA", 14500), ("VZA", 200), ("VAA", 10000)):
    write(folder / f"{{name}}_{{kind}}.TIF", "int16", -32768, lambda y, x, v=value: np.full(x.shape, v) + x // 1000)
lines = ["GROUP = LANDSAT_METADATA_FILE", "  GROUP = PRODUCT_CONTENTS", '    PROCESSING_LEVEL = "L2SP"']
lines += [f'    FILE_NAME_BAND_{{b}} = "{{name}}_SR_B{{b}}.TIF"' for b in range(1, 8)]
lines += [f'    FILE_NAME_QUALITY_L1_PIXEL = "{{name}}_QA_PIXEL.TIF"', "  END_GROUP = PRODUCT_CONTENTS",
          "  GROUP = IMAGE_ATTRIBUTES", '    SPACECRAFT_ID = "LANDSAT_8"', "    DATE_ACQUIRED = 2023-07-16",
          '    SCENE_CENTER_TIME = "09:52:11.0000000Z"', "    SUN_AZIMUTH = 145.0", "    SUN_ELEVATION = 56.0",
          "  END_GROUP = IMAGE_ATTRIBUTES", "END_GROUP = LANDSAT_METADATA_FILE", "END"]
(folder / f"{{name}}_MTL.txt").write_text("\\n".join(lines) + "\\n")
RESULT = n
"""

HARMONIZE = """
from forest_carbon_plugin.core.imagery.harmonize import harmonize_scene
result = harmonize_scene({folder!r}, {out!r}, max_workers={workers})
RESULT = result.valid_fraction
"""

FLOOR = """
import glob, numpy as np, rasterio
files = sorted(glob.glob({folder!r} + "/*_SR_B*.TIF"))
srcs = [rasterio.open(f) for f in files]
profile = dict(srcs[0].profile, count=len(files), dtype="float32", nodata=float("nan"), predictor=3)
with rasterio.open({out!r}, "w", **profile) as dst:
    for _, window in srcs[0].block_windows(1):
        dst.write(np.stack([s.read(1, window=window).astype("float32") for s in srcs]), window=window)
RESULT = len(files)
"""


def run():
    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="fc_bench_harmonize_"))
    try:
        peaks = {}
        for size in (5120, 10240):
            folder = workdir / f"product_{size}"
            measure(MAKE.format(folder=str(folder), size=size), timeout=3600)
            floor = measure(FLOOR.format(folder=str(folder), out=str(workdir / "floor.tif")))
            ours = measure(HARMONIZE.format(folder=str(folder), out=str(workdir / "harmonized.tif"), workers=0))
            one = measure(HARMONIZE.format(folder=str(folder), out=str(workdir / "harmonized1.tif"), workers=1))
            megapixels = size * size / 1e6
            peaks[size] = ours["peak_mib"]
            for label, result in (("all cores", ours), ("1 thread", one)):
                ratio = result["seconds"] / floor["seconds"]
                rows.append({
                    "name": f"harmonizescene {size}² ({label})",
                    "workload": f"Landsat C2 L2, 7 SR bands + QA + 4 angle bands, {megapixels:.0f} Mpx "
                                f"({megapixels / result['seconds']:.1f} Mpx/s), COG with overviews",
                    "seconds": result["seconds"], "peak_mib": result["peak_mib"],
                    "baseline": "rasterio read of the 7 bands + float32 GeoTIFF write (I/O floor)",
                    "baseline_seconds": floor["seconds"], "target": "≤ 2× the floor",
                    "ok": ratio <= 2.0 if label == "all cores" else "",
                })
            for f in workdir.glob("*.tif"):
                f.unlink()
            shutil.rmtree(folder)
        rows.append({
            "name": "harmonizescene peak memory vs size", "workload": "5120² → 10240² (4× the pixels)",
            "seconds": 0, "peak_mib": peaks[10240], "baseline": "peak at 5120²", "baseline_seconds": 0,
            "target": "peak independent of raster size (≤ 1.25×)",
            "ok": peaks[10240] <= 1.25 * peaks[5120], "note": f"{peaks[5120]:.0f} → {peaks[10240]:.0f} MiB",
        })
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return rows
