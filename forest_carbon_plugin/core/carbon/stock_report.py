"""The HTML report of a carbon stock run: settings, per-polygon table, interval bounds, map, histograms."""

from __future__ import annotations

import math

import numpy as np

from ..report import Report
from .polygons import NOT_POLYGONAL, polygonal

__all__ = ["build_report"]


def build_report(doc, sims, geoms, raster, grid, transformer):
    """The HTML report of a :func:`~.stock.carbon_stock` document.

    Parameters
    ----------
    doc : dict
        The document carbon_stock returns (``settings``, ``records``, ``details``, ``citations``, ``notes``,
        ``warnings``).
    sims : list
        Per polygon, the simulated CO2e totals (t) or None.
    geoms : list
        The project geometries as read (shapely, in the projects' CRS).
    raster : str
        The biomass (or height) raster drawn under the polygons.
    grid : Grid
        That raster's grid.
    transformer : pyproj.Transformer or None
        From the projects' CRS to the raster's, when they differ.

    Returns
    -------
    Report
        Text, tables and figures, for :func:`core.report.write_report`.
    """

    rep = Report("Forest Carbon — project carbon stock")
    s = doc["settings"]
    rep.paragraph(f"Carbon fraction {s['carbon_fraction']}, CO2/C = 44/12, root-to-shoot "
                  f"{s['root_shoot'] if s['root_shoot'] is not None else 'IPCC default for ' + str(s['ecozone'])}, "
                  f"{100 * s['confidence']:.0f}% intervals from {s['simulations']} Monte Carlo simulations "
                  f"(seed {s['seed']}), error correlation: {s['correlation_note']} Allowed uncertainty "
                  f"{s['allowed_uncertainty_pct']}%.")
    headers = ["feature", "area (ha)", "AGB mean (Mg/ha)", "CO2e (t)", "CI low", "CI high", "U (%)", "deduction (%)",
               "creditable CO2e (t)"]
    rows = [[i, r["area_ha"], r["agb_mean_mg_ha"], r["co2e_total_t"], r["co2e_ci_low_t"], r["co2e_ci_high_t"],
             r["uncertainty_pct"], r["deduction_pct"], r["co2e_creditable_t"]] for i, r in enumerate(doc["records"])]
    rep.table(headers, rows, caption="Per polygon (feature = order in the input layer)")
    brow = [[d["feature"], d.get("halfwidth_independent_t"), d.get("halfwidth_gaussian_t"), d.get("halfwidth_mc_t"),
             d.get("halfwidth_correlated_t"), d["status"]] for d in doc["details"]]
    rep.table(["feature", "independent bound", "Gaussian (given range)", "Monte Carlo", "fully correlated bound",
               "status"], brow, caption="Half-widths of the CO2e interval (t): the Monte Carlo value lies between the "
                                        "independent-pixel and the fully-correlated bound (map error only)")
    rep.heading("Rules and sources")
    for text in doc["citations"].values():
        rep.paragraph(text)
    for text in doc["notes"]:
        rep.paragraph(text)
    if doc["warnings"]:
        rep.heading("Warnings")
        for text in doc["warnings"]:
            rep.paragraph(text)

    def draw_map(fig):
        _draw_map(fig, geoms, raster, grid, transformer)

    rep.figure("map", draw_map, "Project polygons over the biomass (or height) raster")
    if any(x is not None for x in sims):
        def draw_hist(fig):
            _draw_histograms(fig, doc, sims)

        rep.figure("totals", draw_hist, "Distribution of the simulated CO2e totals per polygon, with the interval")
    return rep


def _draw_map(fig, geoms, raster, grid, transformer):
    import rasterio
    from rasterio.windows import from_bounds
    from shapely.ops import transform as shp_transform

    ax = fig.add_subplot(111)
    shapes = [g for g in (polygonal(g) for g in geoms) if g is not None and g != NOT_POLYGONAL]
    shapes = [shp_transform(transformer.transform, g) if transformer is not None else g for g in shapes]
    gx0, gy0, gx1, gy1 = grid.bounds
    if shapes:
        xs = [g.bounds for g in shapes]
        x0, y0 = min(b[0] for b in xs), min(b[1] for b in xs)
        x1, y1 = max(b[2] for b in xs), max(b[3] for b in xs)
        pad = 0.05 * max(x1 - x0, y1 - y0, 1e-9)
        x0, y0, x1, y1 = max(gx0, x0 - pad), max(gy0, y0 - pad), min(gx1, x1 + pad), min(gy1, y1 + pad)
    else:
        x0, y0, x1, y1 = gx0, gy0, gx1, gy1
    if x1 > x0 and y1 > y0:
        with rasterio.open(raster) as src:
            win = from_bounds(x0, y0, x1, y1, src.transform)
            scale = max(1.0, max(win.width, win.height) / 800.0)
            data = src.read(1, window=win, masked=True, boundless=False,
                            out_shape=(max(1, int(win.height / scale)), max(1, int(win.width / scale))))
        image = ax.imshow(np.ma.masked_invalid(data.astype(float)), extent=(x0, x1, y0, y1), cmap="YlGn")
        fig.colorbar(image, ax=ax, shrink=0.8)
    for i, g in enumerate(shapes):
        for part in getattr(g, "geoms", [g]):
            ax.plot(*part.exterior.xy, color="crimson", lw=1)
            for hole in part.interiors:
                ax.plot(*hole.xy, color="crimson", lw=0.8, ls="--")
        c = g.representative_point()
        ax.annotate(str(i), (c.x, c.y), color="black", fontsize=8)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)


def _draw_histograms(fig, doc, sims):
    chosen = [i for i, s in enumerate(sims) if s is not None][:12]
    n = len(chosen)
    cols = min(3, n)
    rows = int(math.ceil(n / cols))
    for k, i in enumerate(chosen):
        ax = fig.add_subplot(rows, cols, k + 1)
        rec = doc["records"][i]
        ax.hist(sims[i], bins=40, color="#7fa97f")
        for v, style in ((rec["co2e_ci_low_t"], "--"), (rec["co2e_ci_high_t"], "--"), (rec["co2e_total_t"], "-")):
            ax.axvline(v, color="black", ls=style, lw=0.8)
        ax.set_title(f"feature {i}", fontsize=8)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
