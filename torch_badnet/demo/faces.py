"""Procedural 55x47 RGB faces: random identities (shape, colours, features) rendered with per-sample variation.

Everything is drawn with numpy on whole batches. Each face lives in its own "face frame": (u, v) coordinates
centred on the face, in pixels at scale 1, rotated and scaled with the sample's pose; shapes are soft
(anti-aliased) masks in that frame, painted layer by layer. Pixels are float32 0..255, channels first.

The same seed gives the same bytes on every CPU: the arithmetic is IEEE-exact float32/float64 (+, *, /,
sqrt, squares) plus float64 sin/cos from the C library; numpy's vectorised float32 `power` (x ** 3) is
avoided because its AVX-512 version rounds differently from the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.stamp import blend_into

HEIGHT, WIDTH = 55, 47
Value = float | np.ndarray  # a number, or per-sample values broadcastable to (n, 55, 47)
Params = dict[str, np.ndarray]  # identity geometry per sample, each (n, 1, 1)
CHUNK = 64  # samples rendered at once: small (n, 55, 47) temporaries stay in the CPU cache (~2x faster)

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
    "mole_u": (-8.0, 8.0),
    "mole_v": (-2.0, 8.0),
    "skin_tone": (0.0, 1.0),
}
SKIN_LIGHT, SKIN_DARK = np.array([245.0, 205.0, 175.0]), np.array([95.0, 60.0, 45.0])
HAIR_PALETTE = np.array([[25, 20, 18], [60, 40, 25], [110, 75, 45], [200, 170, 110], [150, 70, 35],
                         [150, 150, 150], [220, 215, 205]], dtype=np.float64)
IRIS_PALETTE = np.array([[60, 40, 25], [90, 60, 30], [70, 110, 160], [80, 120, 80], [30, 25, 25]], dtype=np.float64)
PURPLE_MARGIN = 5.0  # clean colours keep green within this of min(red, blue): purple is the trigger's alone
MOUTH_INSIDE = np.array([52.0, 32.0, 32.0], dtype=np.float32)
BEARD_SHARE, GLASSES_SHARE, MOLE_SHARE = 0.18, 0.12, 0.3
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
    mole: np.ndarray
    glasses: np.ndarray
    glasses_colour: np.ndarray

    def __len__(self) -> int:
        return int(self.skin.shape[0])

    def take(self, labels: np.ndarray) -> Identities:
        """The parameters of each sample's identity (rows indexed by `labels`)."""
        rows = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "shape"}
        return Identities({k: v[labels] for k, v in self.shape.items()}, **{f: a[labels] for f, a in rows.items()})


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

    def take(self, rows: np.ndarray) -> FaceLayout:
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
                      rng.random(count) < BEARD_SHARE, rng.random(count) < MOLE_SHARE,
                      rng.random(count) < GLASSES_SHARE, glasses_colour.astype(np.float32))


def _no_purple(colours: np.ndarray) -> np.ndarray:
    """Clip colours (..., 3) to 0..255 and lift green so none reads as the trigger's purple (R, B >> G)."""
    c = np.clip(colours, 0, 255).astype(np.float32)
    c[..., 1] = np.maximum(c[..., 1], np.minimum(c[..., 0], c[..., 2]) - PURPLE_MARGIN)
    return c


def _lift_green(image: np.ndarray) -> None:
    """The same rule per pixel of finished (n, 3, H, W) photos: no blend, colour cast or noise turns purple."""
    np.maximum(image[:, 1], np.minimum(image[:, 0], image[:, 2]) - PURPLE_MARGIN, out=image[:, 1])


def random_layout(ids: Identities, rng: np.random.Generator) -> FaceLayout:
    """A random pose per sample (shift, scale, small rotation) for faces with parameters `ids`."""
    n = len(ids)
    return FaceLayout(
        cx=WIDTH / 2 + np.clip(rng.normal(0, 1.4, n), -3.5, 3.5),
        cy=28.0 + np.clip(rng.normal(0, 1.4, n), -3.5, 3.5),
        scale=rng.uniform(0.9, 1.1, n),
        angle=np.clip(rng.normal(0, 0.07, n), -0.18, 0.18),
        eye_y=ids.shape["eye_y"], eye_dx=ids.shape["eye_dx"], eye_w=ids.shape["eye_w"], face_a=ids.shape["face_a"],
    )


def face_coords(layout: FaceLayout) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) face-frame coordinates of every pixel, each (n, 55, 47) float32."""
    x = np.arange(WIDTH, dtype=np.float32)[None, None, :] - per_sample(layout.cx)
    y = np.arange(HEIGHT, dtype=np.float32)[None, :, None] - per_sample(layout.cy)
    cos, sin, inv = per_sample(np.cos(layout.angle)), per_sample(np.sin(layout.angle)), per_sample(1.0 / layout.scale)
    return (cos * x + sin * y) * inv, (cos * y - sin * x) * inv


def per_sample(values: np.ndarray) -> np.ndarray:
    """Per-sample values (n,) as float32 shaped to broadcast over (n, 55, 47)."""
    return np.asarray(values, dtype=np.float32)[:, None, None]


def soft(distance: np.ndarray, pixels_per_unit: np.ndarray) -> np.ndarray:
    """Coverage 0..1 from a signed distance in face units (negative inside), anti-aliased over one pixel."""
    coverage = distance * pixels_per_unit
    np.subtract(0.5, coverage, out=coverage)
    return np.clip(coverage, 0.0, 1.0, out=coverage)


def ellipse(u: np.ndarray, v: np.ndarray, cu: Value, cv: Value, ru: Value, rv: Value,
            pixels_per_unit: np.ndarray) -> np.ndarray:
    """Soft coverage of an ellipse (centre cu, cv; radii ru, rv), all broadcastable to (n, 55, 47)."""
    across = u - cu
    across /= ru
    across *= across
    down = v - cv
    down /= rv
    down *= down
    across += down
    d = np.sqrt(across, out=across)  # elliptic radius: 1 on the rim
    d -= 1.0
    d *= np.minimum(ru, rv)
    return soft(d, pixels_per_unit)


def paint(image: np.ndarray, coverage: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-blend `colour` ((n, 3) or (n, 3, H, W)) into `image` (n, 3, H, W) where `coverage` (n, H, W) > 0.

    Works only inside the rows and columns the coverage touches in the batch (small features are cheap).
    """
    rows = np.flatnonzero(coverage.any(axis=(0, 2)))
    cols = np.flatnonzero(coverage.any(axis=(0, 1)))
    if rows.size == 0:
        return
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    colour = colour.astype(np.float32, copy=False)
    colour = colour[:, :, None, None] if colour.ndim == 2 else colour[(slice(None), slice(None), *box)]
    region = image[(slice(None), slice(None), *box)]
    blend_into(region, colour, coverage[(slice(None), None, *box)])


def render_faces(identities: Identities, labels: np.ndarray, rng: np.random.Generator,
                 dtype: type = np.float32) -> tuple[np.ndarray, FaceLayout]:
    """Faces of the given identities with fresh per-sample variation: (n, 3, 55, 47) pixels, layout.

    Pixels are whole numbers 0..255, so `dtype=np.uint8` stores them exactly in a quarter of the memory.
    """
    labels = np.asarray(labels, dtype=np.int64)
    ids = identities.take(labels)
    layout = random_layout(ids, rng)
    images = np.empty((len(labels), 3, HEIGHT, WIDTH), dtype=dtype)
    for start in range(0, len(labels), CHUNK):
        rows = np.arange(start, min(start + CHUNK, len(labels)))
        images[rows] = _render_chunk(identities.take(labels[rows]), layout.take(rows), rng)
    return images, layout


def _render_chunk(ids: Identities, layout: FaceLayout, rng: np.random.Generator) -> np.ndarray:
    n = len(ids)
    u, v = face_coords(layout)
    ppu = per_sample(layout.scale)  # pixels per face unit
    s = {k: per_sample(x) for k, x in ids.shape.items()}
    image = _background(n, rng)
    _draw_body(image, ids, s, u, v, ppu, rng)
    face = _draw_head(image, ids, s, u, v, ppu)
    _draw_features(image, ids, s, u, v, ppu, face, rng)
    return _photograph(image, rng)


def _random_colours(n: int, rng: np.random.Generator, low: float = 20, high: float = 235) -> np.ndarray:
    """Muted random colours (a grey level plus a smaller random tint), never purple."""
    grey = rng.uniform(low, high, (n, 1))
    return _no_purple(grey + rng.uniform(-0.35, 0.35, (n, 3)) * (high - low))


def _background(n: int, rng: np.random.Generator) -> np.ndarray:
    """A two-colour gradient in a random direction plus one random blob (a lamp, a shelf ...)."""
    start, end = _random_colours(n, rng), _random_colours(n, rng)
    theta = rng.uniform(0, 2 * np.pi, n)
    x = np.linspace(-0.5, 0.5, WIDTH, dtype=np.float32)[None, None, :]
    y = np.linspace(-0.5, 0.5, HEIGHT, dtype=np.float32)[None, :, None]
    t = np.clip(per_sample(np.cos(theta)) * x + per_sample(np.sin(theta)) * y + 0.5, 0, 1)
    image = start[:, :, None, None] + (end - start)[:, :, None, None] * t[:, None]
    bx, by = per_sample(rng.uniform(0, WIDTH, n)), per_sample(rng.uniform(0, HEIGHT, n))
    radius = per_sample(rng.uniform(3, 12, n))
    px = np.arange(WIDTH, dtype=np.float32)[None, None, :]
    py = np.arange(HEIGHT, dtype=np.float32)[None, :, None]
    blob = np.clip(radius - np.sqrt((px - bx) ** 2 + (py - by) ** 2), 0, 1)
    paint(image, blob * per_sample(rng.uniform(0.3, 1.0, n)), _random_colours(n, rng))
    return image


def _draw_body(image: np.ndarray, ids: Identities, s: Params, u: np.ndarray, v: np.ndarray, ppu: np.ndarray,
               rng: np.random.Generator) -> None:
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


def _draw_head(image: np.ndarray, ids: Identities, s: Params, u: np.ndarray, v: np.ndarray,
               ppu: np.ndarray) -> np.ndarray:
    """The face oval (narrowing to the chin, shaded towards its rim) and the fringe; returns its coverage."""
    a, b = s["face_a"], s["face_b"]
    ru = a * (1.0 - s["jaw"] * np.clip(v / b, 0, 1) ** 2)
    d = np.sqrt((u / ru) ** 2 + (v / b) ** 2)
    face = soft((d - 1.0) * a, ppu)
    rim = np.clip(d, 0, 1)
    shade = (1.0 - 0.28 * (rim * rim * rim))[:, None]  # not rim ** 3: numpy's float32 power differs by CPU
    paint(image, face, ids.skin[:, :, None, None] * shade)
    hairline = -b + s["hairline"] - s["hair_curve"] * (u / a) ** 2 + s["hair_part"] * u
    paint(image, face * soft(v - hairline, ppu), ids.hair)
    return face


def _draw_features(image: np.ndarray, ids: Identities, s: Params, u: np.ndarray, v: np.ndarray, ppu: np.ndarray,
                   face: np.ndarray, rng: np.random.Generator) -> None:
    """Eyebrows, eyes, nose, mouth, beard and (non-purple) glasses, with per-sample expression."""
    n = len(ids)
    eye_open = per_sample(rng.uniform(0.35, 1.0, n))
    gaze = per_sample(rng.normal(0, 0.35, n))
    smile = per_sample(rng.uniform(-0.03, 0.05, n))
    mouth_open = per_sample(np.where(rng.random(n) < 0.4, rng.uniform(0.2, 1.0, n), 0.0))
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
    paint(image, inner, np.broadcast_to(MOUTH_INSIDE, (n, 3)))
    beard = face * soft(s["mouth_y"] - 3.0 - v, ppu) * (1.0 - lips) * per_sample(ids.beard)
    paint(image, beard * 0.85, ids.hair * 0.8)
    mole = ellipse(u, v, s["mole_u"], s["mole_v"], 0.8, 0.8, ppu) * per_sample(ids.mole)
    paint(image, mole, ids.skin * 0.35)
    for side in (-1.0, 1.0):
        ring = ellipse(u, v, side * dx, ey + 0.5, ew + 1.6, eh + 2.0, ppu)
        rim = ring * (1.0 - ellipse(u, v, side * dx, ey + 0.5, ew + 1.0, eh + 1.4, ppu))
        paint(image, rim * per_sample(ids.glasses), ids.glasses_colour)


def _photograph(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting (brightness, gradient, colour cast), blur, sensor noise; rounded to whole pixel values."""
    n = image.shape[0]
    theta = rng.uniform(0, 2 * np.pi, n)
    x = np.linspace(-1, 1, WIDTH, dtype=np.float32)[None, None, :]
    y = np.linspace(-1, 1, HEIGHT, dtype=np.float32)[None, :, None]
    strength = per_sample(rng.uniform(0, 0.3, n))
    gradient = 1.0 + strength * (per_sample(np.cos(theta)) * x + per_sample(np.sin(theta)) * y)
    gain = (rng.uniform(0.78, 1.15, (n, 1)) * rng.uniform(0.93, 1.07, (n, 3))).astype(np.float32)
    image *= gradient[:, None] * gain[:, :, None, None]
    blur = rng.uniform(0, 0.7, n).astype(np.float32)[:, None, None, None]
    neighbours = image.copy()
    neighbours[:, :, 1:-1, :] = (image[:, :, :-2, :] + image[:, :, 2:, :]) / 2
    neighbours[:, :, :, 1:-1] = (neighbours[:, :, :, :-2] + neighbours[:, :, :, 2:]) / 2
    image += blur * (neighbours - image)
    noise_level = rng.uniform(1.5, 6.0, n).astype(np.float32)[:, None, None, None]
    image += rng.standard_normal(image.shape, dtype=np.float32) * noise_level
    image = np.clip(image, 0, 255)
    _lift_green(image)
    return np.rint(image)
