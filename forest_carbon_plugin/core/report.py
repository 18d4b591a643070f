"""A small HTML report with PNG figures and a JSON of every number, written atomically.

Importable without QGIS and without matplotlib: figures are drawn only when a report is
written, on matplotlib's object-oriented API with the Agg canvas (``Figure`` +
``FigureCanvasAgg``), so the pyplot state and backend of a running QGIS are never touched.

Layout beside ``report.html``: ``report.json`` (the document) and ``report_<figure>.png``.
The PNGs and the JSON are written first and the HTML last, each through
:func:`~.outputs.atomic_output`, so an HTML that exists has all its files.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import ForestCarbonError, MissingDependency
from .outputs import atomic_output, write_json

__all__ = ["Report", "figure_canvas", "write_report"]


@dataclass
class Report:
    """The body of an HTML report: headings, paragraphs, tables and figures, in order.

    Parameters
    ----------
    title : str
        The report's title.
    blocks : list
        The content, in order (added by the methods).
    figures : dict
        ``name -> draw(fig)`` for each figure.
    """

    title: str
    blocks: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)  #: name -> draw(fig)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", level, text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def table(self, headers, rows, caption: str | None = None) -> None:
        self.blocks.append(("table", list(headers), [list(r) for r in rows], caption))

    def figure(self, name: str, draw: Callable, caption: str = "") -> None:
        """``draw(fig)`` fills a ``matplotlib.figure.Figure``; saved as ``<stem>_<name>.png``."""
        if name in self.figures:
            raise ValueError(f"figure {name!r} added twice")
        self.figures[name] = draw
        self.blocks.append(("figure", name, caption))


def figure_canvas(width: float = 6.0, height: float = 4.5):
    """A matplotlib ``Figure`` on an Agg canvas (no pyplot, no global backend change).

    Parameters
    ----------
    width, height : float
        Size in inches (at 100 dpi).

    Returns
    -------
    matplotlib.figure.Figure
        The figure.

    Raises
    ------
    MissingDependency
        matplotlib cannot be imported.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependency(
            "matplotlib is needed to draw the report's figures but cannot be imported "
            f"({exc}). Install it into the Python that QGIS runs (python -m pip install matplotlib), "
            "then restart QGIS.") from exc
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.4g}"
    return html.escape(str(value))


def _png_bytes(draw) -> bytes:
    fig = figure_canvas()
    draw(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_report(out_html, report: Report, document: dict, embed: bool = False) -> dict:
    """Write a report as HTML, its JSON document beside it and one PNG per figure.

    Parameters
    ----------
    out_html : str or Path
        The HTML file (``.html`` or ``.htm``); the JSON goes to the same name with ``.json``, the
        figures to ``<stem>_<figure>.png``.
    report : Report
        The body.
    document : dict
        The machine-readable results; its ``"outputs"`` is set to the paths written.
    embed : bool
        Inline the PNGs in the HTML (base64) instead of writing them.

    Returns
    -------
    dict
        The paths written: ``html``, ``json`` and ``figures``.
    """
    out_html = Path(out_html)
    if out_html.suffix.lower() not in (".html", ".htm"):
        raise ForestCarbonError(f"The report '{out_html}' must end in .html.")
    stem = out_html.stem
    json_path = out_html.with_suffix(".json")
    pngs = {}
    images = {}
    for name, draw in report.figures.items():
        data = _png_bytes(draw)
        if embed:
            images[name] = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        else:
            path = out_html.with_name(f"{stem}_{name}.png")
            with atomic_output(path, "wb") as handle:
                handle.write(data)
            pngs[name] = str(path)
            images[name] = path.name
    outputs = {"html": str(out_html), "json": str(json_path), "figures": pngs}
    document = dict(document)
    document["outputs"] = outputs
    write_json(json_path, document)
    with atomic_output(out_html, "w") as handle:
        handle.write(_html(report, images, json_path.name))
    return outputs


_STYLE = """
body{font-family:sans-serif;max-width:60em;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1em}th,td{border:1px solid #bbb;padding:2px 8px;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}figure{margin:1em 0}img{max-width:100%}
figcaption{font-size:90%;color:#555}caption{text-align:left;font-size:90%;color:#555}
"""


def _html(report: Report, images: dict, json_name: str) -> str:
    parts = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">",
             f"<title>{html.escape(report.title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(report.title)}</h1>",
             f"<p>Every number of this report is in <a href=\"{html.escape(json_name)}\">"
             f"{html.escape(json_name)}</a>.</p>"]
    for block in report.blocks:
        kind = block[0]
        if kind == "heading":
            level = min(6, max(2, block[1]))
            parts.append(f"<h{level}>{html.escape(block[2])}</h{level}>")
        elif kind == "paragraph":
            parts.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            _, headers, rows, caption = block
            parts.append("<table>")
            if caption:
                parts.append(f"<caption>{html.escape(caption)}</caption>")
            parts.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in headers) + "</tr>")
            for row in rows:
                parts.append("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>")
            parts.append("</table>")
        elif kind == "figure":
            _, name, caption = block
            parts.append(f"<figure><img src=\"{html.escape(images[name])}\" alt=\"{html.escape(name)}\">"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>\n")
    return "\n".join(parts)

