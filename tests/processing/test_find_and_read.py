"""Issue 19 item 14: every algorithm can be found (tags, one-line description) and read (help that names
parameters by their labels, a help page that opens offline); the changelog covers what shipped."""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from qgis.core import QgsApplication

from forest_carbon_plugin.paths import METADATA_FILE

#: ids that are also the science's words (the quantity AGB, a CRS, BRDF): allowed in sentences
WORDS = {"AGB", "CRS", "BRDF"}


def _algorithms():
    provider = QgsApplication.processingRegistry().providerById("forestcarbon")
    return sorted(provider.algorithms(), key=lambda a: a.name())


def _ids_in(text: str, ids) -> set:
    return {i for i in ids if re.search(rf"(?<![A-Za-z0-9_]){re.escape(i)}(?![A-Za-z0-9_])", text)}


def test_every_algorithm_has_tags_and_a_short_description(forestcarbon_provider):
    algorithms = _algorithms()
    assert len(algorithms) >= 20
    vocabulary = {"biomass", "agb", "carbon", "chm", "lidar", "canopy", "uncertainty", "onnx", "landsat",
                  "sentinel-2", "sentinel-1", "gedi", "ndvi", "simulation"}
    for alg in algorithms:
        tags = alg.tags()
        assert len(tags) >= 5 and len(set(tags)) == len(tags), alg.name()
        assert vocabulary & {t.lower() for t in tags}, f"{alg.name()}: {tags}"
        short = alg.shortDescription()
        assert 20 < len(short) <= 130 and short.endswith("."), f"{alg.name()}: {short!r}"
    by_name = {a.name(): a for a in algorithms}
    assert {"carbon", "biomass", "uncertainty"} <= {t.lower() for t in by_name["carbonstock"].tags()}
    assert "CHM" in by_name["canopyheightmodel"].tags() and "LiDAR" in by_name["canopyheightmodel"].tags()
    assert "ONNX" in by_name["predictraster"].tags()
    assert {"Landsat", "Sentinel-2"} <= set(by_name["harmonizescene"].tags())


def test_toolbox_search_finds_algorithms_by_tag(forestcarbon_provider):
    """QGIS's own toolbox filter (what the search box does) finds carbonstock by 'uncertainty' (a tag only)."""
    from qgis.gui import QgsProcessingToolboxProxyModel

    model = QgsProcessingToolboxProxyModel(None, QgsApplication.processingRegistry())
    model.setFilterString("uncertainty")
    found, stack = set(), [model.index(0, 0).parent()]
    while stack:
        parent = stack.pop()
        for row in range(model.rowCount(parent)):
            index = model.index(row, 0, parent)
            alg = model.toolboxModel().algorithmForIndex(model.mapToSource(index))
            if alg is not None:
                found.add(alg.id())
            stack.append(index)
    carbon = QgsApplication.processingRegistry().algorithmById("forestcarbon:carbonstock")
    assert "uncertainty" not in carbon.displayName().lower()
    assert "forestcarbon:carbonstock" in found and "forestcarbon:validatepredictions" in found
    assert "forestcarbon:lidarinfo" not in found


def test_help_names_parameters_by_their_labels(forestcarbon_provider):
    """No parameter id in any help text; where the adapter's text says an id, the label is there instead."""
    checked = 0
    for alg in _algorithms():
        ids = {p.name() for p in alg.parameterDefinitions()} - WORDS
        shown = alg.shortHelpString()
        assert shown.strip(), alg.name()
        assert _ids_in(shown, ids) == set(), f"{alg.name()} help names ids"
        raw = type(alg).shortHelpString.__wrapped__(alg)  # the adapter's own text
        for pid in _ids_in(raw, ids):
            label = alg.parameterDefinition(pid).description().split(" (")[0]
            # up to a parameter id the label itself may hold: "Nominal coverage of"
            label = re.split(r"\b(?:" + "|".join(map(re.escape, ids)) + r")\b", label)[0].strip()
            assert f"“{label}" in shown, (alg.name(), pid, label)
            checked += 1
    assert checked > 50  # the adapters' texts named ids in many places; each became its label


def test_help_page_opens_offline(forestcarbon_provider):
    for alg in _algorithms():
        url = alg.helpUrl()
        parsed = urlparse(url)
        assert parsed.scheme == "file", url
        page = Path(unquote(parsed.path))
        text = page.read_text(encoding="utf-8")
        assert alg.displayName().replace("&", "&amp;") in text
        for p in alg.parameterDefinitions():
            assert f"<code>{p.name()}</code>" in text, (alg.name(), p.name())
        links = re.findall(r'href="([^"]+)"', text)
        assert links, alg.name()
        for link in links:
            assert link.startswith("file://") and Path(unquote(urlparse(link).path)).is_file(), link


def test_zip_ships_the_docs_the_help_links_to(plugin_zip):
    import zipfile

    names = set(zipfile.ZipFile(plugin_zip).namelist())
    root = Path(__file__).resolve().parents[2]
    for doc in (root / "docs").glob("*.md"):
        assert f"forest_carbon_plugin/docs/{doc.name}" in names
    assert "forest_carbon_plugin/README.md" in names


def test_changelog_covers_every_algorithm_and_version(forestcarbon_provider):
    parser = configparser.ConfigParser()  # QGIS's plugin manager parses with interpolation: no stray '%'
    parser.read(METADATA_FILE, encoding="utf-8")
    general = parser["general"]
    changelog = general["changelog"]
    assert re.search(rf"^\s*{re.escape(general['version'])} - ", changelog, re.MULTILINE)
    missing = [a.name() for a in _algorithms() if not re.search(rf"\b{a.name()}\b", changelog)]
    assert missing == [], f"algorithms the changelog does not mention: {missing}"


@pytest.mark.parametrize("text, expected", [
    ("Set CORRELATION_RANGE to 0.", "Set “Error correlation range” to 0."),
    ("AGB_LOWER and AGB and CORRELATION_RANGE_X", "“Lower” and AGB and CORRELATION_RANGE_X"),
])
def test_with_labels_replaces_whole_ids_only(text, expected):
    from qgis.core import QgsProcessingParameterNumber

    from processing_provider.find_and_read import with_labels

    class Alg:
        def parameterDefinitions(self):  # noqa: N802
            return [QgsProcessingParameterNumber("CORRELATION_RANGE", "Error correlation range (m; 0 = none)"),
                    QgsProcessingParameterNumber("AGB_LOWER", "Lower (Mg/ha)"),
                    QgsProcessingParameterNumber("AGB", "Above-ground biomass raster (Mg/ha)")]

    assert with_labels(Alg(), text) == expected
