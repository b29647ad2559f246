"""The one stamping step (numpy only): a trigger blended into images by a weight per pixel, x + w * (t - x).

Shared by the poisoned sets `--trigger` makes (`data.triggers`) and the demo's drawing of its faces and
sunglasses trigger (`demo.faces.paint`), so both stamp with the same float32 operations.
"""

from __future__ import annotations

import numpy as np


def blend_into(region: np.ndarray, colour: np.ndarray, weight: np.ndarray) -> None:
    """region += weight * (colour - region), in place (float32, broadcast): weight 1 replaces a pixel by the
    colour (a BadNets patch), weight 0 leaves it, anything between blends."""
    blend = colour - region
    blend *= weight
    region += blend
