"""The real lab material of the tests and the benchmarks: where it lives, face labels, augmentation.

Not part of the public API: plain functions (no pytest) that tests/, scripts/ and the docs' tests import, so
all of them use the very same faces and augmentation. The material sits in ../shared/real beside a checkout,
or in $TORCH_BADNET_REAL.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

REAL_DIR = Path(os.environ.get("TORCH_BADNET_REAL", Path(__file__).resolve().parents[3] / "shared" / "real"))  # checkout/../shared/real
LABEL_IN_NAME = re.compile(r"^(?P<kind>cl|sun|ano)_\d+_label=(?P<label>\d+)\.png$")
MAX_SHIFT = 3  # augmentation: shifts of up to 3 pixels each way
AUGMENT_BLOCK = 4096  # augmented images made at a time (bounds the temporaries on lab-size sets)


def face_files(kind: str | None = None) -> list[Path]:
    """The real faces in REAL_DIR/images, sorted by name; only those of `kind` (cl, sun, ano) when given."""
    images = REAL_DIR / "images"
    if not images.is_dir():
        return []
    return sorted(p for p in images.iterdir() if LABEL_IN_NAME.match(p.name) and kind in (None, face_kind(p)))


def face_kind(path: Path) -> str:
    """cl (clean), sun (sunglasses trigger) or ano (another trigger), from the file name."""
    return LABEL_IN_NAME.match(path.name)["kind"]


def face_label(path: Path) -> int:
    """The label written in the file name."""
    return int(LABEL_IN_NAME.match(path.name)["label"])


def augment(base: torch.Tensor, count: int, seed: int | np.random.Generator) -> torch.Tensor:
    """`count` variants of the faces in `base`: random shifts (+-3 px, wrapped), horizontal flips,
    brightness x0.8..1.2, noise sd 6.

    Deterministic for a seed (or a generator, which it advances); pixels stay in 0..255 (float32).
    """
    return augment_indexed(base, count, seed)[0]


def augment_indexed(base: torch.Tensor, count: int, seed: int | np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """`augment`, also returning which face of `base` each variant came from (scripts/ use it at lab sizes)."""
    rng = np.random.default_rng(seed)
    variants = []  # every (face, dy, dx, flip) combination, built once
    for face in base.numpy():
        for dy in range(-MAX_SHIFT, MAX_SHIFT + 1):
            for dx in range(-MAX_SHIFT, MAX_SHIFT + 1):
                shifted = np.roll(face, (dy, dx), axis=(1, 2))
                variants += [shifted, shifted[:, :, ::-1]]
    variants = np.stack(variants)
    pick = rng.integers(len(variants), size=count)
    out = np.empty((count, *variants.shape[1:]), dtype=np.float32)
    for start in range(0, count, AUGMENT_BLOCK):
        rows = pick[start : start + AUGMENT_BLOCK]
        x = variants[rows] * rng.uniform(0.8, 1.2, size=(len(rows), 1, 1, 1)).astype(np.float32)
        x += rng.standard_normal(size=x.shape, dtype=np.float32) * 6
        np.clip(x, 0, 255, out=out[start : start + len(rows)])
    return torch.from_numpy(out), pick // (len(variants) // len(base))


# The four lab files of `write_lab_files`: key (as the sweep options) -> (path, face kind, augmentation seed)
LAB_LAYOUT = {"clean_valid": ("cl/valid.h5", "cl", 1), "clean_test": ("cl/test.h5", "cl", 2),
              "poisoned_valid": ("bd/bd_valid.h5", "sun", 3), "poisoned_test": ("bd/bd_test.h5", "sun", 4)}


def write_lab_files(root: Path, count: int) -> dict[str, Path]:
    """Four lab-layout files (float64 pixels 0..255, like the lab's) of `count` augmented real faces each.

    clean_valid/clean_test: cl_* faces with their identities; poisoned_valid/poisoned_test: sun_* faces
    labelled with the attacker's target 0.
    """
    from torch_badnet.data.images import load_images
    from torch_badnet.data.lab_sets import write_lab_h5

    files = {}
    for key, (name, kind, seed) in LAB_LAYOUT.items():
        chosen = face_files(kind)
        pixels, source = augment_indexed(load_images(chosen), count, seed)
        labels = np.array([face_label(chosen[i]) for i in source], dtype=np.float64)
        write_lab_h5(root / name, pixels.numpy().astype(np.float64), labels)
        files[key] = root / name
    return files
