"""Inputs of the sweep benchmark: the BadNet (real lab3 weights, else the demo's) and four lab-sized pixel sets.

Pixels are augmented faces (shifts, flips, brightness, noise) from the real lab images in ../shared/real, else
from the demo workspace's sets, else uniform noise; real faces matter because pool_3 sparsity drives the engine.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from torch_badnet.data.real_faces import REAL_DIR, augment_indexed, face_files, face_label  # the tests' real material and augmentation
from torch_badnet.nets.badnet import BadNet

LAB_SIZES = {"valid": 11_547, "test": 12_830}  # images per set in the lab's files (clean and poisoned alike)
SET_NAMES = ("clean_valid", "poisoned_valid", "clean_test", "poisoned_test")


@dataclass
class BenchInputs:
    """The model, where it came from, and {set name: (pixels float32 (n, 3, 55, 47), labels int64 (n,))}."""

    model: BadNet
    model_path: Path
    model_source: str
    pixel_source: str
    sets: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def images(self) -> int:
        return sum(int(x.shape[0]) for x, _ in self.sets.values())


def set_sizes(scale: float) -> dict[str, int]:
    """Images per set: the lab's sizes times `scale` (at least 1)."""
    return {name: max(1, round(LAB_SIZES[name.split("_")[1]] * scale)) for name in SET_NAMES}


def load_inputs(scale: float, seed: int = 0, log: Callable[[str], None] = print) -> BenchInputs:
    """Model and pixel sets for one benchmark run."""
    from torch_badnet.convert import read_model_file

    model_path, model_source, demo = _model_path(log)
    model = read_model_file(model_path).model.eval()
    faces, pixel_source = _base_faces(demo, model.num_classes)
    rng = np.random.default_rng(seed)
    sets = {}
    for name, size in set_sizes(scale).items():
        base, labels = faces["poisoned" if name.startswith("poisoned") else "clean"]
        pixels, source = augment_indexed(torch.from_numpy(base), size, rng)
        sets[name] = pixels, torch.from_numpy(labels[source].astype(np.int64))
    return BenchInputs(model, model_path, model_source, pixel_source, sets)


def _model_path(log: Callable[[str], None]):
    """The real lab3 weights; else the demo workspace's model; else a seeded random BadNet saved as a checkpoint."""
    real = REAL_DIR / "models" / "lab3_bd_weights.h5"
    if real.is_file():
        return real, "lab3_bd_weights.h5 (real lab weights)", None
    log(f"{real} not found: using the demo model")
    try:
        from torch_badnet.demo import ensure_workspace

        demo = ensure_workspace(log=log)
        return demo.model, "demo bd_net.h5", demo
    except Exception as exc:  # the demo is optional here: any failure falls back to random weights
        log(f"demo workspace unavailable ({type(exc).__name__}: {exc}): using a seeded random BadNet")
    from torch_badnet.nets.checkpoint import save_checkpoint

    torch.manual_seed(0)
    path = Path(tempfile.gettempdir()) / "bench-sweep-random-badnet.pt"
    save_checkpoint(BadNet(), path, source="scripts/bench_sweep.py random weights (seed 0)")
    return path, "random BadNet (seed 0)", None


def _base_faces(demo, num_classes: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    """{'clean'|'poisoned': (faces (k, 3, 55, 47) float32, labels (k,))} to augment from."""
    if face_files("cl") and face_files("sun"):
        from torch_badnet.data.images import load_images

        def faces(kind: str) -> tuple[np.ndarray, np.ndarray]:
            paths = face_files(kind)
            return load_images(paths).numpy(), np.array([face_label(p) for p in paths], dtype=np.int64)

        return {"clean": faces("cl"), "poisoned": faces("sun")}, "augmented real faces (../shared/real/images)"
    if demo is not None:
        from torch_badnet.data.lab_sets import LabDataset

        def first(path: Path) -> tuple[np.ndarray, np.ndarray]:
            with LabDataset(path) as ds:
                x, y = next(ds.chunks(256))
            return x.numpy(), y.numpy()

        return {"clean": first(demo.clean_valid), "poisoned": first(demo.poisoned_valid)}, "augmented demo faces"
    rng = np.random.default_rng(1)
    noise = rng.uniform(0, 255, size=(16, 3, 55, 47)).astype(np.float32)
    labels = rng.integers(0, num_classes, 16)
    return {"clean": (noise, labels), "poisoned": (noise[::-1].copy(), np.zeros(16, np.int64))}, "uniform noise"
