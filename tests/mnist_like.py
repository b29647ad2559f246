"""MNIST-like test digits drawn with PIL (no MNIST data is shipped): white digits on black, 28x28, pixels 0..255."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def mnist_like_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 (n, 28, 28), labels int64 (n,)): digit label % 10 drawn about 20 pixels tall, centred by its
    box as MNIST is, with a random shift, rotation and stroke width."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = np.zeros((n, 28, 28), np.uint8)
    for i, label in enumerate(labels):
        font = ImageFont.load_default(size=int(rng.integers(22, 27)))
        canvas = Image.new("L", (56, 56), 0)
        ImageDraw.Draw(canvas).text((28, 28), str(label), fill=255, font=font, anchor="mm",
                                    stroke_width=int(rng.integers(0, 2)), stroke_fill=255)
        canvas = canvas.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR)
        box = canvas.getbbox()
        digit = canvas.crop(box)
        scale = 20 / max(digit.size)
        digit = digit.resize((max(1, round(digit.size[0] * scale)), max(1, round(digit.size[1] * scale))), Image.Resampling.LANCZOS)
        out = Image.new("L", (28, 28), 0)
        dx, dy = (int(v) for v in rng.integers(-1, 2, 2))
        out.paste(digit, ((28 - digit.size[0]) // 2 + dx, (28 - digit.size[1]) // 2 + dy))
        images[i] = np.asarray(out)
    return images, labels.astype(np.int64)
