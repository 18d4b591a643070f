"""predictraster inside QGIS (processing.run in a headless QgsApplication) on a 6000 × 6000
3-band raster, through a small CNN (3→32→32→1, 3×3 convolutions, 256-px tiles, 32-px
overlap) and a tree ensemble, against two baselines measured in the same run:

* the compute floor: the same tiles (or pixels) run by onnxruntime from memory, batched,
  with the same session options (for the CNN, the faster of intra-op threads and one
  single-threaded run per core);
* a Deepness-style loop: one tile at a time, batch 1, read → run → write in sequence.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .common import ROOT, measure

SIZE = 6000

MAKE = """
import sys, numpy as np, rasterio
from rasterio.transform import from_origin
sys.path.insert(0, {tests!r})
from onnx_models import conv_model, tree_model
n = {size}
rng = np.random.default_rng(0)
profile = dict(driver="GTiff", width=n, height=n, count=3, dtype="float32", crs="EPSG:32633",
               transform=from_origin(500000, 6000000, 10, 10), tiled=True, blockxsize=512, blockysize=512)
with rasterio.open({image!r}, "w", **profile) as dst:
    for row in range(0, n, 512):
        h = min(512, n - row)
        dst.write(rng.uniform(0, 1, (3, h, n)).astype("float32"), window=((row, row + h), (0, n)))
with rasterio.open({small!r}, "w", **dict(profile, width=512, height=512)) as dst:
    dst.write(rng.uniform(0, 1, (3, 512, 512)).astype("float32"))
conv_model({cnn!r}, channels=3, hidden=32, seed=0)
tree_model({trees!r}, n_features=3, n_trees=100, depth=6, seed=0)
RESULT = n
"""

IN_QGIS = """
import sys, time
sys.path.append("/usr/share/qgis/python/plugins")
from qgis.core import QgsApplication
app = QgsApplication([], False)
app.initQgis()
from processing.core.Processing import Processing
Processing.initialize()
from processing_provider.provider import ForestCarbonProvider
provider = ForestCarbonProvider()  # keep a reference: the registry does not own the Python object
QgsApplication.processingRegistry().addProvider(provider)
import processing
# a first run on a small raster loads the Python modules and ONNX Runtime's session for the model, as any
# earlier run does in a QGIS session; the floor does not count them either (the cold run is reported)
start = time.perf_counter()
processing.run("forestcarbon:predictraster", {{"INPUT": [{small!r}], "MODEL": {model!r}, "TILE_SIZE": 256,
               "OVERLAP": 32, "BATCH_SIZE": {batch}, "OUTPUT": {warm_out!r}}})
cold = time.perf_counter() - start
start = time.perf_counter()
processing.run("forestcarbon:predictraster", {{"INPUT": [{image!r}], "MODEL": {model!r}, "TILE_SIZE": 256,
               "OVERLAP": 32, "BATCH_SIZE": {batch}, "OUTPUT": {out!r}}})
RESULT = [time.perf_counter() - start, cold]
"""

FLOOR_PATCH = """
import time, numpy as np, rasterio, concurrent.futures as cf
from forest_carbon_plugin.core.models.onnx import session_for
from forest_carbon_plugin.core.parallel.pool import default_workers
cores = default_workers(None)
with rasterio.open({image!r}) as src:
    data = src.read()
n, tile, step = data.shape[1], 256, 224
starts = list(range(0, n - tile + 1, step))
if starts[-1] + tile < n:
    starts.append(n - tile)
tiles = [(y, x) for y in starts for x in starts]
batches = [np.stack([data[:, y:y + tile, x:x + tile] for y, x in tiles[i:i + {batch}]])
           for i in range(0, len(tiles), {batch})]
del data
# both ways to use the cores, the faster one is the floor: every core on each batch (intra-op threads),
# or one single-threaded run per core on its own batch (what predictraster does with a patch model)
times = []
session = session_for({model!r}, ["CPUExecutionProvider"], cores)
start = time.perf_counter()
for batch in batches:
    session.run(None, {{"x": batch}})
times.append(time.perf_counter() - start)
session = session_for({model!r}, ["CPUExecutionProvider"], 1)
start = time.perf_counter()
with cf.ThreadPoolExecutor(cores) as pool:
    list(pool.map(lambda batch: session.run(None, {{"x": batch}}), batches))
times.append(time.perf_counter() - start)
RESULT = min(times)
"""

FLOOR_PIXEL = """
import time, numpy as np, rasterio
from forest_carbon_plugin.core.models.onnx import session_for
from forest_carbon_plugin.core.parallel.pool import default_workers
session = session_for({model!r}, ["CPUExecutionProvider"], default_workers(None))
with rasterio.open({image!r}) as src:
    data = src.read()
features = np.ascontiguousarray(data.reshape(3, -1).T)
del data
start = time.perf_counter()
for i in range(0, len(features), 262144):
    session.run(None, {{"features": features[i:i + 262144]}})
RESULT = time.perf_counter() - start
"""

DEEPNESS_PATCH = """
import time, numpy as np, rasterio, onnxruntime as ort
from rasterio.windows import Window
session = ort.InferenceSession({model!r}, providers=["CPUExecutionProvider"])
start = time.perf_counter()
with rasterio.open({image!r}) as src:
    profile = dict(src.profile, count=1)
    n, tile, step, margin = src.width, 256, 224, 16
    starts = list(range(0, n - tile + 1, step))
    if starts[-1] + tile < n:
        starts.append(n - tile)
    with rasterio.open({out!r}, "w", **profile) as dst:
        for y in starts:
            for x in starts:
                patch = src.read(window=Window(x, y, tile, tile))[None]
                pred = session.run(None, {{"x": patch}})[0][0, 0]
                dst.write(pred[margin:-margin, margin:-margin][None],
                          window=Window(x + margin, y + margin, tile - 2 * margin, tile - 2 * margin))
RESULT = time.perf_counter() - start
"""

DEEPNESS_PIXEL = """
import time, numpy as np, rasterio, onnxruntime as ort
from rasterio.windows import Window
session = ort.InferenceSession({model!r}, providers=["CPUExecutionProvider"])
start = time.perf_counter()
with rasterio.open({image!r}) as src:
    profile = dict(src.profile, count=1)
    with rasterio.open({out!r}, "w", **profile) as dst:
        for y in range(0, src.height, 256):
            for x in range(0, src.width, 256):
                w = Window(x, y, min(256, src.width - x), min(256, src.height - y))
                block = src.read(window=w)
                pred = session.run(None, {{"features": np.ascontiguousarray(block.reshape(3, -1).T)}})[0]
                dst.write(pred[:, 0].reshape(1, int(w.height), int(w.width)), window=w)
RESULT = time.perf_counter() - start
"""


def _seconds(runs) -> str:
    return ", ".join(f"{r['extra']:.2f}" for r in runs)


def run():
    rows = []
    work = Path(tempfile.mkdtemp(prefix="fc_bench_predict_"))
    try:
        image, small, cnn, trees = work / "image.tif", work / "small.tif", work / "cnn.onnx", work / "trees.onnx"
        measure(MAKE.format(tests=str(ROOT / "tests"), size=SIZE, image=str(image), small=str(small), cnn=str(cnn),
                            trees=str(trees)))
        os.sync()  # the 430 MB just written go to disk now, not during the first measured run
        for label, model, batch, floor_code, deepness_code in (
                ("CNN 3→32→32→1", cnn, 4, FLOOR_PATCH, DEEPNESS_PATCH),
                ("tree ensemble (100 trees, depth 6)", trees, 262144, FLOOR_PIXEL, DEEPNESS_PIXEL)):
            # the CNN runs are short and this machine's speed drifts by 10 % from minute to minute: each is
            # measured five times, interleaved, and the fastest of each kept (noise only ever adds time)
            repeats = 5 if batch < 1000 else 1
            runs = {"ours": [], "floor": [], "loop": []}
            for _ in range(repeats):
                for f in work.glob("*.tif"):  # every run writes a new file (replacing one costs ext4 a flush)
                    if f not in (image, small):
                        f.unlink()
                result = measure(IN_QGIS.format(image=str(image), small=str(small), model=str(model), batch=batch,
                                                out=str(work / "ours.tif"), warm_out=str(work / "warm.tif")))
                runs["ours"].append(dict(result, extra=result["extra"][0], cold=result["extra"][1]))
                runs["floor"].append(measure(floor_code.format(model=str(model), image=str(image), batch=batch)))
                runs["loop"].append(measure(deepness_code.format(model=str(model), image=str(image),
                                                                 out=str(work / "loop.tif"))))
            ours, floor, loop = (min(runs[k], key=lambda r: r["extra"]) for k in ("ours", "floor", "loop"))
            ours = dict(ours, peak_mib=max(r["peak_mib"] for r in runs["ours"]))
            seconds = ours["extra"]
            mpx = SIZE * SIZE / 1e6
            rows.append({
                "name": f"predictraster {label}", "workload": f"{SIZE}² × 3 bands ({mpx / seconds:.1f} Mpx/s), "
                f"in QGIS after a 512² warm-up run ({ours['cold']:.1f} s: imports, ONNX Runtime session); "
                f"Deepness-style loop {loop['extra']:.1f} s ({loop['extra'] / seconds:.2f}× ours); "
                f"runs: ours {_seconds(runs['ours'])}, floor {_seconds(runs['floor'])}",
                "seconds": seconds, "peak_mib": ours["peak_mib"],
                "baseline": "onnxruntime on the same tiles from memory, batched (compute floor)",
                "baseline_seconds": floor["extra"], "target": "≤ 1.15× the floor, QGIS process < 1536 MiB",
                "ok": seconds <= 1.15 * floor["extra"] and ours["peak_mib"] < 1536,
            })
            for f in work.glob("*.tif"):
                if f not in (image, small):
                    f.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows
