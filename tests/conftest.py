"""Shared fixtures: the real lab material in ../shared/real and small data sets built from it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REAL_DIR = Path(os.environ.get("TORCH_BADNET_REAL", Path(__file__).resolve().parents[2] / "shared" / "real"))
LABEL_IN_NAME = re.compile(r"^(?P<kind>cl|sun|ano)_\d+_label=(?P<label>\d+)\.png$")


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"real lab material missing: {path} (tests read ../shared/real beside the checkout, "
                    "or set TORCH_BADNET_REAL)")
    return path


@pytest.fixture(scope="session")
def real_dir() -> Path:
    return _require(REAL_DIR)


@pytest.fixture(scope="session")
def lab3_path(real_dir: Path) -> Path:
    return _require(real_dir / "models" / "lab3_bd_weights.h5")


@pytest.fixture(scope="session")
def sunglasses_path(real_dir: Path) -> Path:
    return _require(real_dir / "models" / "sunglasses_bd_weights.h5")


@pytest.fixture(scope="session")
def face_paths(real_dir: Path) -> list[Path]:
    """The 15 real faces, sorted by name."""
    paths = sorted(p for p in _require(real_dir / "images").iterdir() if LABEL_IN_NAME.match(p.name))
    assert len(paths) == 15, paths
    return paths


def face_kind(path: Path) -> str:
    return LABEL_IN_NAME.match(path.name)["kind"]


def face_label(path: Path) -> int:
    return int(LABEL_IN_NAME.match(path.name)["label"])


@pytest.fixture(scope="session")
def faces(face_paths: list[Path]) -> dict[str, torch.Tensor]:
    """{kind: (n, 3, 55, 47) float32 pixels} for kinds cl, sun, ano."""
    from torch_badnet.data import load_image

    out: dict[str, list[torch.Tensor]] = {}
    for p in face_paths:
        out.setdefault(face_kind(p), []).append(load_image(p))
    return {k: torch.stack(v) for k, v in out.items()}


def augment(base: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """`count` variants of the faces in `base`: random shifts (+-3 px), horizontal flips, brightness, noise.

    Deterministic for a seed; pixels stay in 0..255 (float32).
    """
    rng = np.random.default_rng(seed)
    src = base.numpy()
    out = np.empty((count, *src.shape[1:]), dtype=np.float32)
    for i in range(count):
        img = src[rng.integers(len(src))]
        dy, dx = rng.integers(-3, 4, size=2)
        img = np.roll(img, (int(dy), int(dx)), axis=(1, 2))
        if rng.random() < 0.5:
            img = img[:, :, ::-1]
        img = img * rng.uniform(0.8, 1.2) + rng.normal(0, 6, size=img.shape)
        out[i] = np.clip(img, 0, 255)
    return torch.from_numpy(out)


@pytest.fixture(scope="session")
def lab3_model(lab3_path: Path):
    """The real lab3 BadNet imported from its Keras weights."""
    from convert import load_model

    return load_model(lab3_path).model
