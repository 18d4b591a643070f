"""Dock widgets and other desktop UI. They read the core's outputs and provenance only;
no science here. Imported by the plugin's initGui, never by the core."""
