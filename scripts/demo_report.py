"""The HTML report of ``make demo``: PNG maps, the validation plots, the carbon table and the printed summary.

Reads only files: the chain's outputs (``forest_carbon_chain.model3`` run by ``qgis_process``), their JSON
reports and the simulator's manifest (the truth). No QGIS: matplotlib (Agg), rasterio, geopandas.

The accuracy figures printed and written to ``summary.json`` are the validation report's JSON values
(``validation_report.json``: ``metrics.rmse``, ``metrics.r2``, the observed coverage of the interval the
report itself uses at the nominal level), copied, not recomputed.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np

MAPS = ("chm", "agb", "std", "value_by_alpha")


def _read(path, band=1):
    import rasterio

    with rasterio.open(path) as src:
        data = src.read(band, masked=True).astype("float64")
        bounds = src.bounds
    data = np.ma.masked_invalid(data)
    return data, (bounds.left, bounds.right, bounds.bottom, bounds.top)


def _figure(path, draw, size=(6.4, 5.6)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=size, dpi=100)
    try:
        draw(fig)
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _projects_outline(ax, projects):
    if projects is None:
        return
    for _, row in projects.iterrows():
        geom = row.geometry
        for poly in getattr(geom, "geoms", [geom]):
            x, y = poly.exterior.xy
            ax.plot(x, y, color="white", lw=2.2)
            ax.plot(x, y, color="black", lw=1.0)
        c = geom.representative_point()
        ax.annotate(str(row.get("project", "")), (c.x, c.y), ha="center", fontsize=8,
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", alpha=0.8, lw=0))


def raster_map(path, out_png, title, label, cmap, projects=None, vmin=None, vmax=None):
    data, extent = _read(path)
    lo = float(np.nanpercentile(data.compressed(), 2)) if vmin is None else vmin
    hi = float(np.nanpercentile(data.compressed(), 98)) if vmax is None else vmax

    def draw(fig):
        ax = fig.add_subplot(111)
        im = ax.imshow(data, extent=extent, cmap=cmap, vmin=lo, vmax=max(hi, lo + 1e-9), interpolation="nearest")
        _projects_outline(ax, projects)
        ax.set_title(title)
        ax.set_xlabel("easting (m)")
        ax.set_ylabel("northing (m)")
        ax.ticklabel_format(useOffset=False, style="plain")
        ax.tick_params(labelsize=7)
        fig.colorbar(im, ax=ax, shrink=0.8, label=label)

    return _figure(out_png, draw)


VALUE_BY_ALPHA_THRESHOLD = 0.5  # relative uncertainty: opaque up to 25 %, 10 % opacity from 100 %


def value_by_alpha_map(pred_path, std_path, out_png, projects=None):
    """Prediction colour (viridis) with the uncertainty explorer's opacity (``gui.stats.alpha_of`` of σ/prediction,
    threshold :data:`VALUE_BY_ALPHA_THRESHOLD`): opaque where the map is certain, fading to the white background
    where σ approaches the prediction or exceeds it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import cm, colors

    from forest_carbon_plugin.gui.stats import alpha_of, relative_uncertainty

    cmap = matplotlib.colormaps["viridis"] if hasattr(matplotlib, "colormaps") else cm.get_cmap("viridis")
    pred, extent = _read(pred_path)
    std, _ = _read(std_path)
    lo, hi = 0.0, float(np.nanpercentile(pred.compressed(), 98))
    rgba = cmap(colors.Normalize(lo, max(hi, lo + 1e-9))(pred.filled(np.nan)))
    alpha = alpha_of(relative_uncertainty(pred.filled(np.nan), std.filled(np.nan)), VALUE_BY_ALPHA_THRESHOLD) / 255
    rgba[..., 3] = np.where(np.isfinite(pred.filled(np.nan)), alpha, 0.0)

    def draw(fig):
        ax = fig.add_subplot(111)
        ax.imshow(rgba, extent=extent, interpolation="nearest")
        _projects_outline(ax, projects)
        ax.set_title(f"AGB, value by alpha (opaque to σ / prediction = {VALUE_BY_ALPHA_THRESHOLD / 2:.0%}, "
                     f"faded from {2 * VALUE_BY_ALPHA_THRESHOLD:.0%})")
        ax.ticklabel_format(useOffset=False, style="plain")
        ax.tick_params(labelsize=7)
        sm = cm.ScalarMappable(colors.Normalize(lo, hi), cmap="viridis")
        fig.colorbar(sm, ax=ax, shrink=0.8, label="AGB (Mg/ha)")

    return _figure(out_png, draw)


def projects_plot(rows, out_png):
    def draw(fig):
        ax = fig.add_subplot(111)
        y = np.arange(len(rows))
        est = np.array([r["co2e_t"] for r in rows])
        low = np.array([r["co2e_low_t"] for r in rows])
        high = np.array([r["co2e_high_t"] for r in rows])
        ax.errorbar(est, y, xerr=[est - low, high - est], fmt="o", color="#21918c", capsize=5,
                    label="estimate and 90 % interval")
        truth = [r.get("true_co2e_t") for r in rows]
        if all(t is not None for t in truth):
            ax.plot(truth, y, "x", color="#b2182b", ms=10, mew=2, label="simulator's true total")
        ax.set_yticks(y, [r["project"] for r in rows])
        ax.set_xlabel("t CO2e")
        ax.set_xlim(0, None)
        ax.invert_yaxis()
        ax.legend(loc="best", fontsize=8)
        ax.set_title("Project totals")

    return _figure(out_png, draw, size=(6.4, 1.4 + 0.6 * len(rows)))


def accuracy_from_validation(doc: dict) -> dict:
    """RMSE, bias, R², n and the observed coverage at the nominal level, as the validation JSON states them."""
    metrics = doc["metrics"]
    level = doc.get("coverage_parameter")
    source = doc.get("interval_source")
    coverage = None
    for item in doc.get("intervals", []):
        if item.get("source") == source and item.get("level") == level:
            coverage = item.get("coverage")
    return {"n": metrics["n"], "rmse": metrics["rmse"], "relative_rmse_pct": metrics.get("relative_rmse_pct"),
            "bias": metrics["bias"], "r2": metrics["r2"], "coverage_level": level, "coverage_source": source,
            "observed_coverage": coverage}


def carbon_rows(carbon_gpkg, truth_projects=None) -> list:
    import geopandas as gpd

    frame = gpd.read_file(carbon_gpkg)
    truth = {t["project"]: t for t in truth_projects or []}
    rows = []
    for i, rec in frame.iterrows():
        name = str(rec.get("project", f"feature {i}"))
        row = {"project": name, "area_ha": float(rec["area_ha"]), "agb_mean_mg_ha": float(rec["agb_mean_mg_ha"]),
               "co2e_t": float(rec["co2e_total_t"]), "co2e_low_t": float(rec["co2e_ci_low_t"]),
               "co2e_high_t": float(rec["co2e_ci_high_t"]), "uncertainty_pct": float(rec["uncertainty_pct"]),
               "co2e_creditable_t": float(rec["co2e_creditable_t"])}
        if name in truth:
            row["true_co2e_t"] = float(truth[name]["co2e_t"])
            row["inside"] = bool(row["co2e_low_t"] <= row["true_co2e_t"] <= row["co2e_high_t"])
        rows.append(row)
    return rows


def _carbon_error_model(outputs: dict) -> dict:
    """The correlation range carbonstock used (set, or fitted to the validation report) from its JSON."""
    settings = json.loads(Path(outputs["carbon_report"]).with_suffix(".json").read_text())["settings"]
    return {"correlation_range_m": settings.get("correlation_range_m"),
            "correlation_source": settings.get("correlation_source")}


def summary_lines(summary: dict) -> list:
    acc = summary["accuracy"]
    level = acc["coverage_level"]
    corr = summary.get("correlation_range_m")
    lines = [f"Project carbon (t CO2e, above-ground; {level:.0%} Monte Carlo interval, "
             + ("fully correlated errors" if corr is None else f"error correlation range {corr:.4g} m")
             + f" from {summary.get('correlation_source') or 'CORRELATION_RANGE'}):"]
    for r in summary["projects"]:
        truth = (f"   true {r['true_co2e_t']:>9,.0f}   inside: {'yes' if r['inside'] else 'NO'}"
                 if "true_co2e_t" in r else "")
        lines.append(f"  {r['project']:<10} {r['co2e_t']:>9,.0f}   "
                     f"[{r['co2e_low_t']:>9,.0f}, {r['co2e_high_t']:>9,.0f}]"
                     f"{truth}")
    lines.append(f"Accuracy against {acc['n']} independent validation plots (validation_report.json): "
                 f"RMSE {acc['rmse']:.1f} Mg/ha ({acc['relative_rmse_pct']:.1f} %), bias {acc['bias']:+.1f} Mg/ha, "
                 f"R² {acc['r2']:.3f}, coverage of the {level:.0%} intervals {acc['observed_coverage']:.3f}")
    return lines


def _table(rows, columns):
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in columns)
    body = []
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            value = r.get(key)
            cells.append(f"<td>{html.escape(fmt(value) if value is not None else '')}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def write_report(out_dir, outputs: dict, manifest: dict | None, settings: dict, extra_maps=(), timings=None) -> dict:
    """Maps, plots, the carbon table, ``report.html`` and ``summary.json`` in ``out_dir``; returns the summary.

    ``outputs``: model output name → path (``chm``, ``agb``, ``std``, ``carbon``, ``validation_report``,
    ``training_report``, ``carbon_report``). ``extra_maps``: (title, png path) of other maps (real samples)."""
    import geopandas as gpd

    out_dir = Path(out_dir)
    maps_dir = out_dir / "maps"
    maps_dir.mkdir(parents=True, exist_ok=True)
    projects = gpd.read_file(outputs["carbon"])
    maps = [
        ("Canopy height model (LiDAR, 1 m p2r; white: cells without a return)",
         raster_map(outputs["chm"], maps_dir / "chm.png", "Canopy height model (LiDAR)",
                                                  "height (m)", "Greens", projects, vmin=0.0)),
        ("AGB prediction", raster_map(outputs["agb"], maps_dir / "agb.png", "Above-ground biomass (prediction)",
                                      "AGB (Mg/ha)", "viridis", projects, vmin=0.0)),
        ("AGB uncertainty (σ)", raster_map(outputs["std"], maps_dir / "agb_std.png",
                                           "AGB standard deviation", "σ (Mg/ha)", "Oranges", projects)),
        ("Value by alpha", value_by_alpha_map(outputs["agb"], outputs["std"], maps_dir / "agb_value_by_alpha.png",
                                             projects)),
    ]
    maps += list(extra_maps)
    validation_json = Path(outputs["validation_report"]).with_suffix(".json")
    validation = json.loads(validation_json.read_text())
    accuracy = accuracy_from_validation(validation)
    training = json.loads(Path(outputs["training_report"]).with_suffix(".json").read_text())
    truth = (manifest or {}).get("truth", {}).get("projects")
    rows = carbon_rows(outputs["carbon"], truth)
    plots = [("Project totals", projects_plot(rows, maps_dir / "projects.png"))]
    plots += [(f"Validation: {name}", Path(path)) for name, path in validation["outputs"]["figures"].items()]
    summary = {"projects": rows, "accuracy": accuracy, "validation_json": str(validation_json),
               **_carbon_error_model(outputs),
               "training": {"n_samples": training["n_samples"], "model_type": training["model_type"],
                            "conformal_factor": training["conformal_factor"],
                            "rmse_spatial_cv": training["cv"]["spatial"]["rmse"]},
               "settings": settings, "timings_s": timings or {}}

    def rel(p):
        return html.escape(os.path.relpath(p, out_dir))

    columns = [("project", "project", str), ("area_ha", "area (ha)", lambda v: f"{v:,.1f}"),
               ("agb_mean_mg_ha", "mean AGB (Mg/ha)", lambda v: f"{v:,.1f}"),
               ("co2e_t", "CO2e (t)", lambda v: f"{v:,.0f}"), ("co2e_low_t", "90 % low", lambda v: f"{v:,.0f}"),
               ("co2e_high_t", "90 % high", lambda v: f"{v:,.0f}"),
               ("uncertainty_pct", "uncertainty (%)", lambda v: f"{v:.1f}"),
               ("co2e_creditable_t", "creditable CO2e (t)", lambda v: f"{v:,.0f}"),
               ("true_co2e_t", "simulator's true CO2e (t)", lambda v: f"{v:,.0f}"),
               ("inside", "truth inside?", lambda v: "yes" if v else "NO")]
    acc_rows = [{"metric": k, "value": v} for k, v in (
        ("validation plots (n)", f"{accuracy['n']}"), ("RMSE (Mg/ha)", f"{accuracy['rmse']:.2f}"),
        ("relative RMSE (%)", f"{accuracy['relative_rmse_pct']:.1f}"), ("bias (Mg/ha)", f"{accuracy['bias']:+.2f}"),
        ("R²", f"{accuracy['r2']:.3f}"),
        (f"observed coverage of the {accuracy['coverage_level']:.0%} intervals",
         f"{accuracy['observed_coverage']:.3f}"),
        ("training plots", f"{training['n_samples']}"),
        ("spatial-CV RMSE of training (Mg/ha)", f"{training['cv']['spatial']['rmse']:.2f}"),
        ("conformal factor", f"{training['conformal_factor']:.3f}"))]
    figure_html = "".join(f"<figure><img src='{rel(p)}' alt='{html.escape(t)}'><figcaption>{html.escape(t)}"
                          f"</figcaption></figure>" for t, p in maps)
    plot_html = "".join(f"<figure><img src='{rel(p)}' alt='{html.escape(t)}'><figcaption>{html.escape(t)}"
                        f"</figcaption></figure>" for t, p in plots)
    links = "".join(f"<li><a href='{rel(outputs[k])}'>{label}</a></li>" for k, label in (
        ("training_report", "Training report (trainmodel)"), ("validation_report", "Validation report"),
        ("carbon_report", "Carbon report (carbonstock)")) if k in outputs)
    settings_html = html.escape(json.dumps(settings, indent=1))
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Forest Carbon demo</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right}}
th{{background:#eee}}figure{{display:inline-block;margin:8px;vertical-align:top}}img{{max-width:620px}}
figcaption{{font-size:90%;color:#555}}pre{{background:#f6f6f6;padding:8px;font-size:85%}}</style></head><body>
<h1>Forest Carbon demo: simulated scene → project carbon</h1>
<p>The graphical model <code>resources/models/forest_carbon_chain.model3</code> was run by <code>qgis_process</code> on
a scene made by the simulator with a fixed seed (LiDAR catalog, Sentinel-2, Landsat, Sentinel-1, field plots,
project polygons). The simulator knows the true biomass of every tree, so each project's estimate is shown beside
its true total. Numbers from the simulator validate the code, not ecology.</p>
<h2>Project carbon</h2>{_table(rows, columns)}
<h2>Accuracy (validation plots not used in training)</h2>{_table(acc_rows, [("metric", "", str), ("value", "", str)])}
<p>Figures copied from <a href='{rel(validation_json)}'>{html.escape(validation_json.name)}</a>.</p>
<h2>Maps</h2>{figure_html}
<h2>Plots</h2>{plot_html}
<h2>Reports of the chain</h2><ul>{links}</ul>
<h2>Settings</h2><pre>{settings_html}</pre>
</body></html>
"""
    (out_dir / "report.html").write_text(page, encoding="utf-8")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    summary["report"] = str(out_dir / "report.html")
    summary["maps"] = {t: str(p) for t, p in maps}
    summary["plots"] = {t: str(p) for t, p in plots}
    return summary
