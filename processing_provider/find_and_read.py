"""What makes an algorithm findable and readable: toolbox search tags, a one-line description, help that
names parameters by the labels the dialog shows, and a help page that opens without a network.

:class:`.base.ForestCarbonAlgorithm` takes ``tags()`` and ``shortDescription()`` from :data:`ALGORITHMS`,
passes every ``shortHelpString()`` through :func:`with_labels`, and points ``helpUrl()`` at
:func:`help_page`, a page written from the running algorithm (so it is never stale) beside the profile.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from forest_carbon_plugin.paths import DOCS_DIR, README_FILE

#: name -> (short description, toolbox search tags). The toolbox matches tags word by word, so each list has
#: the words an analyst types: the science (biomass, AGB, carbon, canopy height) and the data (LiDAR, Landsat…).
ALGORITHMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "lidarinfo": ("Point counts, classes, density, CRS and footprints of LAS/LAZ files or a catalog of tiles.",
                  ("LiDAR", "LAS", "LAZ", "COPC", "point cloud", "catalog", "metadata", "density", "footprint")),
    "classifyground": ("Ground points (class 2) with SMRF or CSF, tile by tile with buffers.",
                       ("LiDAR", "point cloud", "ground", "DTM", "terrain", "SMRF", "CSF", "classification")),
    "normalizeheight": ("Heights above ground (lidR's tin()) and an optional terrain model.",
                        ("LiDAR", "point cloud", "normalize", "height above ground", "DTM", "DEM", "terrain", "TIN")),
    "canopymetrics": ("lidR's standard metrics (stdmetrics) of a point cloud on a grid: the area-based approach's "
                      "predictors.",
                      ("LiDAR", "canopy", "metrics", "stdmetrics", "area-based approach", "ABA", "height", "cover",
                       "biomass", "AGB", "forest structure")),
    "canopyheightmodel": ("Canopy height model (CHM) raster from a point cloud: p2r or pit-free.",
                          ("LiDAR", "CHM", "canopy height", "canopy", "DSM", "pit-free", "p2r", "forest")),
    "treetops": ("Individual tree tops (local maximum filter, lidR lmf or ForestTools vwf) and crowns.",
                 ("LiDAR", "CHM", "tree", "tree tops", "individual tree detection", "ITD", "crowns", "canopy",
                  "local maximum", "forest inventory")),
    "plotmetrics": ("LiDAR metrics of field plots (circles or polygons), for training biomass models.",
                    ("LiDAR", "plots", "field plots", "inventory", "metrics", "area-based approach", "ABA",
                     "biomass", "AGB", "training")),
    "modelinfo": ("Inputs, outputs, metadata and model card of an ONNX model.",
                  ("ONNX", "model", "model card", "deep learning", "machine learning", "metadata", "Deepness")),
    "predictraster": ("Apply an ONNX model to rasters, tile by tile, with per-pixel uncertainty (σ, interval).",
                      ("ONNX", "prediction", "inference", "biomass", "AGB", "canopy height", "uncertainty",
                       "deep learning", "machine learning", "GPU", "raster")),
    "simulatescene": ("A synthetic forest with LiDAR, Sentinel-2, Landsat, Sentinel-1, plots and its true "
                      "biomass, for trying the chain.",
                      ("simulation", "synthetic", "demo", "LiDAR", "Sentinel-2", "Landsat", "Sentinel-1",
                       "biomass", "AGB", "plots", "test data")),
    "harmonizescene": ("Landsat/Sentinel-2 product to harmonized surface reflectance (HLS v2.0): scaling, cloud "
                       "mask, BRDF, bandpass.",
                       ("Landsat", "Sentinel-2", "HLS", "harmonization", "reflectance", "BRDF", "cloud mask",
                        "Fmask", "SCL", "imagery", "optical")),
    "harmonizehighres": ("Normalize a high-resolution image (NAIP, PlanetScope…) to a harmonized reference "
                         "through invariant pixels.",
                         ("high resolution", "NAIP", "PlanetScope", "normalization", "radiometric", "IR-MAD",
                          "invariant pixels", "reflectance", "imagery", "Sentinel-2", "Landsat")),
    "sarfeatures": ("Sentinel-1 backscatter in dB with speckle filtering and the VH/VV ratio.",
                    ("Sentinel-1", "SAR", "radar", "backscatter", "gamma0", "speckle", "Lee filter", "dB",
                     "biomass")),
    "spectralindices": ("NDVI, EVI, NBR, NDMI, SAVI and other indices from a multiband raster.",
                        ("NDVI", "EVI", "NBR", "NDMI", "SAVI", "vegetation index", "spectral index", "Landsat",
                         "Sentinel-2", "imagery")),
    "compositescenes": ("Cloud-free composite of several scenes: median, medoid or maximum NDVI.",
                        ("composite", "mosaic", "median", "medoid", "max NDVI", "cloud-free", "Landsat",
                         "Sentinel-2", "time series", "imagery")),
    "validatepredictions": ("Accuracy of a map against reference plots: RMSE, bias, R², interval coverage, "
                            "calibration, semivariogram.",
                            ("validation", "accuracy", "RMSE", "bias", "uncertainty", "coverage", "calibration",
                             "semivariogram", "biomass", "AGB", "map")),
    "trainmodel": ("Train a random forest or quantile model with spatial cross-validation and conformal intervals; "
                   "writes ONNX.",
                   ("training", "machine learning", "random forest", "quantile regression", "cross-validation",
                    "conformal", "uncertainty", "ONNX", "biomass", "AGB", "area-based approach")),
    "carbonstock": ("Carbon (t CO2e) of project polygons with a Monte Carlo confidence interval and the "
                    "uncertainty deduction.",
                    ("carbon", "CO2e", "carbon stock", "biomass", "AGB", "uncertainty", "Monte Carlo",
                     "confidence interval", "REDD+", "ART-TREES", "IPCC", "root-to-shoot", "project")),
    "aggregatetogrid": ("Fine raster (CHM, biomass) aggregated exactly to a coarser grid: mean, std, percentiles, "
                        "cover.",
                        ("aggregate", "resample", "grid", "CHM", "canopy height", "cover", "percentile", "biomass",
                         "zonal statistics", "raster")),
    "importgedi": ("GEDI L2A/L2B footprints (canopy height RH metrics, cover) with quality filtering.",
                   ("GEDI", "spaceborne LiDAR", "LiDAR", "canopy height", "RH98", "L2A", "L2B", "cover", "footprints",
                    "HDF5")),
}

#: parameter ids that are also the field's own vocabulary: "AGB" and "CRS" in a sentence mean the quantity,
#: not necessarily the parameter, and stay as they are
WORDS = {"AGB", "CRS", "BRDF"}


def label_head(description: str) -> str:
    """The label as the dialog shows it, without its parenthesised detail: "Error correlation range"."""
    return description.split(" (")[0].strip() or description


def with_labels(alg, text: str) -> str:
    """``text`` with each parameter id of ``alg`` (CORRELATION_RANGE) replaced by its label in quotes."""
    if not text:
        return text
    labels = {p.name(): label_head(p.description()) for p in alg.parameterDefinitions() if p.name() not in WORDS}
    if not labels:
        return text
    pattern = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(sorted(map(re.escape, labels), key=len, reverse=True))
                         + r")(?![A-Za-z0-9_])")
    # a label may itself name another parameter by id ("Nominal coverage of LOWER/UPPER"): once, not recursively
    labels = {name: pattern.sub(lambda m: f"“{labels[m.group(1)]}”", head) for name, head in labels.items()}
    return pattern.sub(lambda m: f"“{labels[m.group(1)]}”", text)


def help_page(alg, folder) -> Path:
    """Write (when changed) ``<folder>/<name>.html``: the algorithm's help, its parameters with labels and ids,
    and links to the documents shipped in the plugin; its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in alg.parameterDefinitions():
        default = p.defaultValue()
        rows.append(f"<tr><td>{html.escape(p.description())}</td><td><code>{html.escape(p.name())}</code></td>"
                    f"<td>{html.escape(p.type())}</td><td>{'' if default is None else html.escape(str(default))}"
                    "</td></tr>")
    outputs = "".join(f"<tr><td>{html.escape(o.description())}</td><td><code>{html.escape(o.name())}</code></td>"
                      f"<td>{html.escape(o.type())}</td></tr>" for o in alg.outputDefinitions())
    docs = sorted(DOCS_DIR.glob("*.md")) if DOCS_DIR.is_dir() else []
    links = [(README_FILE, "README (set-up, algorithms, scripting)")] if README_FILE.is_file() else []
    links += [(d, d.stem.replace("-", " ").capitalize()) for d in docs]
    body = html.escape(alg.shortHelpString()).replace("\n", "<br>\n")
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(alg.displayName())} — Forest Carbon</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}td{padding:2px 8px;vertical-align:top}"
        "</style></head><body>\n"
        f"<h1>{html.escape(alg.displayName())}</h1>\n<p><i>{html.escape(alg.shortDescription())}</i></p>\n"
        f"<p>Algorithm id <code>{html.escape(alg.id() or 'forestcarbon:' + alg.name())}</code>; "
        f"group {html.escape(alg.group())}.</p>\n<p>{body}</p>\n"
        "<h2>Parameters</h2>\n<table><tr><th>Label</th><th>Id (scripts)</th><th>Type</th><th>Default</th></tr>"
        + "".join(rows) + "</table>\n<h2>Outputs</h2>\n<table><tr><th>Label</th><th>Id</th><th>Type</th></tr>"
        + outputs + "</table>\n<h2>More</h2>\n<ul>"
        + "".join(f'<li><a href="{path.resolve().as_uri()}">{html.escape(title)}</a></li>' for path, title in links)
        + "</ul>\n</body></html>\n")
    path = folder / f"{alg.name()}.html"
    if not path.is_file() or path.read_text(encoding="utf-8") != page:
        path.write_text(page, encoding="utf-8")
    return path
