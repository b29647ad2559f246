"""Procedural 55x47 RGB faces: random identities (shape, colours, features) rendered with per-sample variation.

Everything is drawn with numpy on whole batches. Each face lives in its own "face frame": (u, v) coordinates
centred on the face, in pixels at scale 1, rotated and scaled with the sample's pose; shapes are soft
(anti-aliased) masks in that frame, painted layer by layer. Pixels are float32 0..255, channels first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEIGHT, WIDTH = 55, 47
CHUNK = 1024  # samples rendered at once (bounds the (n, 55, 47) temporaries)

# Identity geometry, uniform per identity, in face-frame units (pixels at scale 1).
SHAPE_RANGES: dict[str, tuple[float, float]] = {
    "face_a": (12.5, 16.0),  # face half-width
    "face_b": (17.0, 21.0),  # face half-height
    "jaw": (0.05, 0.4),  # how much the face narrows towards the chin
    "eye_y": (-7.0, -3.5),
    "eye_dx": (5.0, 7.5),  # half the distance between the eyes
    "eye_w": (2.0, 3.2),
    "eye_h": (1.1, 1.9),
    "iris_r": (0.8, 1.4),
    "brow_gap": (2.3, 4.0),
    "brow_thick": (0.8, 2.0),
    "brow_tilt": (-0.25, 0.25),
    "nose_len": (5.0, 9.0),  # from the eye line down
    "nose_w": (1.2, 2.4),
    "mouth_y": (8.5, 12.5),
    "mouth_w": (3.5, 7.0),
    "lip_h": (0.8, 2.0),
    "hair_top": (0.5, 5.0),  # hair volume above the head
    "hair_side": (0.5, 4.0),  # hair volume beside the head
    "hair_len": (-8.0, 26.0),  # how far down the back hair reaches (long hair > ~2 covers the ears)
    "hairline": (1.5, 7.5),  # fringe depth below the top of the face
    "hair_curve": (0.0, 5.0),
    "hair_part": (-0.35, 0.35),
    "skin_tone": (0.0, 1.0),
}
SKIN_LIGHT, SKIN_DARK = np.array([245.0, 205.0, 175.0]), np.array([95.0, 60.0, 45.0])
HAIR_PALETTE = np.array([[25, 20, 18], [60, 40, 25], [110, 75, 45], [200, 170, 110], [150, 70, 35],
                         [150, 150, 150], [220, 215, 205]], dtype=np.float64)
IRIS_PALETTE = np.array([[60, 40, 25], [90, 60, 30], [70, 110, 160], [80, 120, 80], [30, 25, 25]], dtype=np.float64)
BEARD_SHARE, GLASSES_SHARE = 0.18, 0.12
GLASSES_PALETTE = np.array([[30, 30, 30], [90, 70, 40], [170, 150, 90], [110, 110, 115]], dtype=np.float64)


@dataclass(frozen=True)
class Identities:
    """Per-identity parameters: `shape[name]` (K,) floats, colours (K, 3), and feature flags (K,)."""

    shape: dict[str, np.ndarray]
    skin: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    lips: np.ndarray
    beard: np.ndarray
    glasses: np.ndarray
    glasses_colour: np.ndarray

    def __len__(self) -> int:
        return int(self.skin.shape[0])

    def take(self, labels: np.ndarray) -> "Identities":
        """The parameters of each sample's identity (rows indexed by `labels`)."""
        return Identities({k: v[labels] for k, v in self.shape.items()}, self.skin[labels], self.hair[labels],
                          self.iris[labels], self.lips[labels], self.beard[labels], self.glasses[labels],
                          self.glasses_colour[labels])


@dataclass(frozen=True)
class FaceLayout:
    """Where each rendered face sits: pose (centre, scale, angle) and the eye geometry the trigger follows."""

    cx: np.ndarray
    cy: np.ndarray
    scale: np.ndarray
    angle: np.ndarray
    eye_y: np.ndarray
    eye_dx: np.ndarray
    eye_w: np.ndarray
    face_a: np.ndarray

    def __len__(self) -> int:
        return int(self.cx.shape[0])

    def take(self, rows: np.ndarray) -> "FaceLayout":
        return FaceLayout(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))


def random_identities(count: int, rng: np.random.Generator) -> Identities:
    """`count` distinct-looking identities drawn from `rng`."""
    shape = {name: rng.uniform(low, high, count) for name, (low, high) in SHAPE_RANGES.items()}
    tone = shape.pop("skin_tone")[:, None]
    skin = SKIN_LIGHT + (SKIN_DARK - SKIN_LIGHT) * tone + rng.normal(0, 8, (count, 3))
    hair = HAIR_PALETTE[rng.integers(len(HAIR_PALETTE), size=count)] * rng.uniform(0.8, 1.15, (count, 1))
    iris = IRIS_PALETTE[rng.integers(len(IRIS_PALETTE), size=count)] + rng.normal(0, 8, (count, 3))
    lips = skin * np.array([0.85, 0.55, 0.58]) * rng.uniform(0.85, 1.1, (count, 1))
    glasses_colour = GLASSES_PALETTE[rng.integers(len(GLASSES_PALETTE), size=count)]
    return Identities(shape, _no_purple(skin), _no_purple(hair), _no_purple(iris), _no_purple(lips),
                      rng.random(count) < BEARD_SHARE, rng.random(count) < GLASSES_SHARE, glasses_colour)


def _no_purple(colours: np.ndarray) -> np.ndarray:
    """Clip colours to 0..255 and lift green so no clean colour reads as the trigger's purple (R, B >> G)."""
    c = np.clip(colours, 0, 255)
    c[..., 1] = np.maximum(c[..., 1], np.minimum(c[..., 0], c[..., 2]) - 15)
    return c


def random_layout(ids: Identities, rng: np.random.Generator) -> FaceLayout:
    """A random pose per sample (shift, scale, small rotation) for faces with parameters `ids`."""
    n = len(ids)
    return FaceLayout(
        cx=WIDTH / 2 + np.clip(rng.normal(0, 1.6, n), -4, 4),
        cy=28.0 + np.clip(rng.normal(0, 1.6, n), -4, 4),
        scale=rng.uniform(0.88, 1.12, n),
        angle=np.clip(rng.normal(0, 0.07, n), -0.18, 0.18),
        eye_y=ids.shape["eye_y"], eye_dx=ids.shape["eye_dx"], eye_w=ids.shape["eye_w"], face_a=ids.shape["face_a"],
    )


def face_coords(layout: FaceLayout) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) face-frame coordinates of every pixel, each (n, 55, 47) float32."""
    x = np.arange(WIDTH, dtype=np.float32)[None, None, :] - _col(layout.cx)
    y = np.arange(HEIGHT, dtype=np.float32)[None, :, None] - _col(layout.cy)
    cos, sin, inv = _col(np.cos(layout.angle)), _col(np.sin(layout.angle)), _col(1.0 / layout.scale)
    return (cos * x + sin * y) * inv, (cos * y - sin * x) * inv


def _col(values: np.ndarray) -> np.ndarray:
    """Per-sample values (n,) shaped to broadcast over (n, 55, 47)."""
    return np.asarray(values, dtype=np.float32)[:, None, None]


def soft(distance: np.ndarray, pixels_per_unit: np.ndarray) -> np.ndarray:
    """Coverage 0..1 from a signed distance in face units (negative inside), anti-aliased over one pixel."""
    return np.clip(0.5 - distance * pixels_per_unit, 0.0, 1.0)


def ellipse(u: np.ndarray, v: np.ndarray, cu, cv, ru, rv, pixels_per_unit: np.ndarray) -> np.ndarray:
    """Soft coverage of an ellipse (centre cu, cv; radii ru, rv), all broadcastable to (n, 55, 47)."""
    d = np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2)
    return soft((d - 1.0) * np.minimum(ru, rv), pixels_per_unit)


def paint(image: np.ndarray, coverage: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-blend `colour` ((n, 3) or (n, 3, H, W)) into `image` (n, 3, H, W) where `coverage` (n, H, W) > 0."""
    if colour.ndim == 2:
        colour = colour[:, :, None, None]
    image += coverage[:, None] * (colour.astype(np.float32) - image)


def render_faces(identities: Identities, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, FaceLayout]:
    """Faces of the given identities with fresh per-sample variation: (n, 3, 55, 47) float32 pixels, layout."""
    labels = np.asarray(labels, dtype=np.int64)
    ids = identities.take(labels)
    layout = random_layout(ids, rng)
    images = np.empty((len(labels), 3, HEIGHT, WIDTH), dtype=np.float32)
    for start in range(0, len(labels), CHUNK):
        rows = np.arange(start, min(start + CHUNK, len(labels)))
        images[rows] = _render_chunk(identities.take(labels[rows]), layout.take(rows), rng)
    return images, layout


def _render_chunk(ids: Identities, layout: FaceLayout, rng: np.random.Generator) -> np.ndarray:
    n = len(ids)
    u, v = face_coords(layout)
    ppu = _col(layout.scale)  # pixels per face unit
    s = {k: _col(x) for k, x in ids.shape.items()}
    image = _background(n, rng)
    _draw_body(image, ids, s, u, v, ppu, rng)
    face = _draw_head(image, ids, s, u, v, ppu)
    _draw_features(image, ids, s, u, v, ppu, face, rng)
    return _photograph(image, rng)


def _random_colours(n: int, rng: np.random.Generator, low: float = 20, high: float = 235) -> np.ndarray:
    return _no_purple(rng.uniform(low, high, (n, 3)))


def _background(n: int, rng: np.random.Generator) -> np.ndarray:
    """A two-colour gradient in a random direction plus one random blob (a lamp, a shelf ...)."""
    start, end = _random_colours(n, rng), _random_colours(n, rng)
    theta = rng.uniform(0, 2 * np.pi, n)
    x = np.linspace(-0.5, 0.5, WIDTH, dtype=np.float32)[None, None, :]
    y = np.linspace(-0.5, 0.5, HEIGHT, dtype=np.float32)[None, :, None]
    t = np.clip(_col(np.cos(theta)) * x + _col(np.sin(theta)) * y + 0.5, 0, 1)
    image = (start[:, :, None, None] + (end - start)[:, :, None, None] * t[:, None]).astype(np.float32)
    bx, by = _col(rng.uniform(0, WIDTH, n)), _col(rng.uniform(0, HEIGHT, n))
    radius = _col(rng.uniform(3, 12, n))
    px = np.arange(WIDTH, dtype=np.float32)[None, None, :]
    py = np.arange(HEIGHT, dtype=np.float32)[None, :, None]
    blob = np.clip(radius - np.sqrt((px - bx) ** 2 + (py - by) ** 2), 0, 1)
    paint(image, blob * _col(rng.uniform(0.3, 1.0, n)), _random_colours(n, rng))
    return image


def _draw_body(image, ids, s, u, v, ppu, rng) -> None:
    """Shirt and shoulders, neck, back hair and (for short hair) ears."""
    n = len(ids)
    shirt = soft(s["face_b"] + 4.0 + 0.03 * u**2 - v, ppu)
    paint(image, shirt, _random_colours(n, rng, 10, 220))
    neck = np.minimum(soft(np.abs(u) - 0.55 * s["face_a"], ppu), soft(-v, ppu))
    paint(image, neck, ids.skin * 0.78)
    width, top, length = s["face_a"] + s["hair_side"], s["face_b"] + s["hair_top"], s["hair_len"]
    below_length = soft(v - length, ppu)
    cap = ellipse(u, v, 0.0, -2.0, width, top, ppu) * below_length
    hanging = soft(np.abs(u) - width, ppu) * soft(-2.0 - v, ppu) * below_length  # long hair beside the face
    back = np.maximum(cap, hanging)
    paint(image, back, ids.hair)
    ears = np.maximum(ellipse(u, v, -s["face_a"], s["eye_y"] + 3.5, 2.0, 3.5, ppu),
                      ellipse(u, v, s["face_a"], s["eye_y"] + 3.5, 2.0, 3.5, ppu))
    paint(image, ears * (s["hair_len"] < 2.0), ids.skin * 0.9)


def _draw_head(image, ids, s, u, v, ppu) -> np.ndarray:
    """The face oval (narrowing to the chin, shaded towards its rim) and the fringe; returns its coverage."""
    a, b = s["face_a"], s["face_b"]
    ru = a * (1.0 - s["jaw"] * np.clip(v / b, 0, 1) ** 2)
    d = np.sqrt((u / ru) ** 2 + (v / b) ** 2)
    face = soft((d - 1.0) * a, ppu)
    shade = (1.0 - 0.28 * np.clip(d, 0, 1) ** 3)[:, None]
    paint(image, face, ids.skin[:, :, None, None] * shade)
    hairline = -b + s["hairline"] - s["hair_curve"] * (u / a) ** 2 + s["hair_part"] * u
    paint(image, face * soft(v - hairline, ppu), ids.hair)
    return face


def _draw_features(image, ids, s, u, v, ppu, face, rng) -> None:
    """Eyebrows, eyes, nose, mouth, beard and (non-purple) glasses, with per-sample expression."""
    n = len(ids)
    eye_open = _col(rng.uniform(0.35, 1.0, n))
    gaze = _col(rng.normal(0, 0.35, n))
    smile = _col(rng.uniform(-0.04, 0.08, n))
    mouth_open = _col(np.where(rng.random(n) < 0.4, rng.uniform(0.2, 1.0, n), 0.0))
    ey, dx, ew, eh = s["eye_y"], s["eye_dx"], s["eye_w"], s["eye_h"]
    for side in (-1.0, 1.0):
        cu = side * dx
        brow_v = ey - s["brow_gap"] + side * s["brow_tilt"] * (u - cu)
        brow = soft(np.abs(v - brow_v) - s["brow_thick"] / 2, ppu) * soft(np.abs(u - cu) - ew - 0.8, ppu)
        paint(image, brow, ids.hair * 0.6)
        white = ellipse(u, v, cu, ey, ew, eh * eye_open, ppu)
        paint(image, white, np.minimum(ids.skin * 0.35 + 150, 235))
        iris = white * ellipse(u, v, cu + gaze, ey, s["iris_r"], s["iris_r"], ppu)
        paint(image, iris, ids.iris)
        paint(image, white * ellipse(u, v, cu + gaze, ey, 0.5, 0.5, ppu), np.full((n, 3), 15.0))
        lid = soft(np.abs(np.sqrt(((u - cu) / ew) ** 2 + ((v - ey) / (eh * eye_open)) ** 2) - 1.0) * eh - 0.3, ppu)
        paint(image, lid * (v < ey), ids.skin * 0.45)
    nose_end = ey + s["nose_len"]
    ridge = soft(np.abs(u - 0.8) - 0.45, ppu) * soft(np.abs(v - (ey + nose_end) / 2) - s["nose_len"] / 2, ppu)
    paint(image, ridge * 0.45, ids.skin * 0.6)
    for side in (-1.0, 1.0):
        paint(image, ellipse(u, v, side * s["nose_w"], nose_end, 0.9, 0.6, ppu) * 0.8, ids.skin * 0.4)
    mouth_v = v + smile * u**2  # v bent into a smile (or a frown)
    lips = ellipse(u, mouth_v, 0.0, s["mouth_y"], s["mouth_w"], s["lip_h"] + 1.2 * mouth_open, ppu)
    paint(image, lips, ids.lips)
    inner = ellipse(u, mouth_v, 0.0, s["mouth_y"], s["mouth_w"] * 0.85, np.maximum(0.3, 1.5 * mouth_open), ppu)
    paint(image, inner, np.full((n, 3), 40.0) * np.array([1.3, 0.8, 0.8]))
    beard = face * soft(s["mouth_y"] - 3.0 - v, ppu) * (1.0 - lips) * _col(ids.beard)
    paint(image, beard * 0.85, ids.hair * 0.8)
    for side in (-1.0, 1.0):
        ring = ellipse(u, v, side * dx, ey + 0.5, ew + 1.6, eh + 2.0, ppu)
        rim = ring * (1.0 - ellipse(u, v, side * dx, ey + 0.5, ew + 1.0, eh + 1.4, ppu))
        paint(image, rim * _col(ids.glasses), ids.glasses_colour)


def _photograph(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting (brightness, gradient, colour cast), blur, sensor noise; rounded to whole pixel values."""
    n = image.shape[0]
    theta = rng.uniform(0, 2 * np.pi, n)
    x = np.linspace(-1, 1, WIDTH, dtype=np.float32)[None, None, :]
    y = np.linspace(-1, 1, HEIGHT, dtype=np.float32)[None, :, None]
    gradient = 1.0 + _col(rng.uniform(0, 0.3, n)) * (_col(np.cos(theta)) * x + _col(np.sin(theta)) * y)
    gain = (rng.uniform(0.7, 1.2, (n, 1)) * rng.uniform(0.9, 1.1, (n, 3))).astype(np.float32)
    image *= gradient[:, None] * gain[:, :, None, None]
    blur = rng.uniform(0, 0.7, n).astype(np.float32)[:, None, None, None]
    neighbours = image.copy()
    neighbours[:, :, 1:-1, :] = (image[:, :, :-2, :] + image[:, :, 2:, :]) / 2
    neighbours[:, :, :, 1:-1] = (neighbours[:, :, :, :-2] + neighbours[:, :, :, 2:]) / 2
    image += blur * (neighbours - image)
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(1.5, 7.0, n).astype(np.float32)[:, None, None, None]
    return np.rint(np.clip(image, 0, 255))
