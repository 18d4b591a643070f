"""Map tools of the uncertainty explorer."""

from __future__ import annotations

from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject
from qgis.gui import QgsMapTool
from qgis.PyQt.QtCore import Qt, pyqtSignal

from .stats import Sources, sample_pixel


class PixelInfoTool(QgsMapTool):
    """Click a pixel: emits ``pixelReported`` with :func:`stats.sample_pixel`'s dict (value, std,
    interval, relative uncertainty, row and column) plus ``x``, ``y`` in the raster's CRS, or None
    when the click falls outside the raster."""

    pixelReported = pyqtSignal(object)  # noqa: N815 (Qt's style)

    def __init__(self, canvas, sources: Sources, raster_crs: QgsCoordinateReferenceSystem):
        super().__init__(canvas)
        self.sources = sources
        self.raster_crs = raster_crs
        self.setCursor(Qt.CursorShape.CrossCursor)

    def canvasReleaseEvent(self, event):  # noqa: N802
        if event.button() != Qt.MouseButton.LeftButton:
            return
        point = event.mapPoint()
        canvas_crs = self.canvas().mapSettings().destinationCrs()
        if canvas_crs.isValid() and canvas_crs != self.raster_crs:
            point = QgsCoordinateTransform(canvas_crs, self.raster_crs, QgsProject.instance()).transform(point)
        report = sample_pixel(self.sources, point.x(), point.y())
        if report is not None:
            report.update(x=point.x(), y=point.y())
        self.pixelReported.emit(report)
