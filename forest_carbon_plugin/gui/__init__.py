"""Dock widgets and other desktop UI. They read the core's outputs and provenance only;
no science here. Imported by the plugin (:mod:`..plugin`), never by the core or the adapters."""

#: the plugin's menu under Plugins: every action of the plugin goes there
MENU = "&Forest Carbon"
#: the tag of the plugin's messages in QGIS's log panel
LOG_TAG = "Forest Carbon"
