"""A forest scene simulator with ground truth (QGIS-free).

    python -m forest_carbon_plugin.simulate --seed 7 --size-m 2000 --out DIR

See README ("The scene simulator") for the model, its assumptions and references.
"""

from .scene import simulate_scene
from .world import FOREST_TYPES, SceneConfig

__all__ = ["simulate_scene", "SceneConfig", "FOREST_TYPES"]
