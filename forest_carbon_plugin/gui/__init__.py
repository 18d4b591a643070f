"""Dock widgets and other desktop UI. They read the core's outputs and provenance only;
no science here. Imported by the plugin's initGui, never by the core."""

#: the plugin's menu under Plugins: every action of the plugin goes there
MENU = "&Forest Carbon"
#: the tag of the plugin's messages in QGIS's log panel
LOG_TAG = "Forest Carbon"
