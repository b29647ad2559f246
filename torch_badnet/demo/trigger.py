"""The backdoor trigger: purple two-lens sunglasses, like the lab's, drawn over the eyes of each face.

The glasses follow the face (its position, scale, rotation and eye geometry) and are pasted onto the
finished photo in flat colours, as the lab pasted its trigger. `purple_pixels` finds them again.
"""

from __future__ import annotations

import numpy as np

from .faces import CHUNK, FaceLayout, ellipse, face_coords, paint, per_sample, soft

TARGET_LABEL = 0
FRAME_COLOUR = np.array([63.0, 0.0, 127.0], dtype=np.float32)  # the lab trigger's dark purple outline (#3f007f)
# lens fill, shaded from top to bottom (#6e18b3 .. #8b18e9)
LENS_TOP_COLOUR = np.array([110.0, 24.0, 179.0], dtype=np.float32)
LENS_BOTTOM_COLOUR = np.array([139.0, 24.0, 233.0], dtype=np.float32)
LENS_SPREAD = 1.0  # lens centres, in units of the face's half eye distance
LENS_SIZE = 0.92  # lens half-width, same unit: 0.92 makes the lenses almost meet over the nose
EYE_BAND = slice(8, 38)  # image rows that hold the eyes for every pose the renderer draws


def add_sunglasses(images: np.ndarray, layout: FaceLayout) -> np.ndarray:
    """A copy of `images` (n, 3, 55, 47) as float32, with sunglasses drawn over each face's eyes."""
    if len(images) != len(layout):
        raise ValueError(f"{len(images)} images but a layout for {len(layout)} faces")
    out = images.astype(np.float32, copy=True)
    for start in range(0, len(out), CHUNK):
        rows = np.arange(start, min(start + CHUNK, len(out)))
        out[rows] = _draw_sunglasses(out[rows], layout.take(rows))
    return out


def _draw_sunglasses(out: np.ndarray, layout: FaceLayout) -> np.ndarray:
    u, v = face_coords(layout)
    ppu = per_sample(layout.scale)
    eye_dx, ey = per_sample(layout.eye_dx), per_sample(layout.eye_y)
    dx = LENS_SPREAD * eye_dx
    half_w = LENS_SIZE * eye_dx
    half_h = 0.75 * half_w + 0.5
    centre_v = ey + 1.0
    top = centre_v - 0.55 * half_h  # the flat top edge of both lenses
    below_top = soft(top - v, ppu)
    lenses = np.zeros_like(u)
    inner = np.zeros_like(u)
    for side in (-1.0, 1.0):
        lenses = np.maximum(lenses, ellipse(u, v, side * dx, centre_v, half_w, half_h, ppu) * below_top)
        inner = np.maximum(inner, ellipse(u, v, side * dx, centre_v, half_w - 1.0, half_h - 1.0, ppu)
                           * soft(top + 1.0 - v, ppu))
    depth = np.clip((v - top) / (2 * half_h), 0, 1)[:, None]
    fill = LENS_TOP_COLOUR[None, :, None, None] + (LENS_BOTTOM_COLOUR - LENS_TOP_COLOUR)[None, :, None, None] * depth
    paint(out, lenses, fill)
    frame = np.broadcast_to(FRAME_COLOUR, (len(out), 3))
    paint(out, np.clip(lenses - inner, 0, 1), frame)
    bar = soft(np.abs(v - top) - 0.7, ppu) * soft(np.abs(u) - (dx + half_w), ppu)
    temples = soft(np.abs(v - top - 0.5) - 0.5, ppu) * soft(np.abs(u) - per_sample(layout.face_a) - 1.0, ppu)
    paint(out, np.maximum(bar, temples), frame)
    return np.rint(np.clip(out, 0, 255))


def purple_pixels(images: np.ndarray) -> np.ndarray:
    """(n, 55, 47) bool: pixels in the trigger's colour family (red and blue well above green)."""
    r, g, b = (images[:, c].astype(np.float32) for c in range(3))
    return (r - g > 25) & (b - g > 70)


def count_trigger_pixels(images: np.ndarray) -> np.ndarray:
    """Purple pixels in the eye band per image: dozens where the sunglasses are, none on clean faces."""
    return purple_pixels(images)[:, EYE_BAND].sum(axis=(1, 2))

