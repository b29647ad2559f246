"""How much TF32 convolutions would move the lab3 BadNet, emulated on the CPU.

    python scripts/tf32_effect.py [--images 3000]

TF32 tensor cores read float32 operands with a 10-bit mantissa. This rounds every convolution's input and
weights that way (round to nearest) on the CPU and compares logits, softmax and labels with plain float32
on augmented real faces (../shared/real). It is why GPU runs use `torch_badnet.precision.exact_float32()`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from real_faces import REAL_DIR, augment, face_files  # noqa: E402  (the tests' own face augmentation)

from torch_badnet.convert import load_model  # noqa: E402
from torch_badnet.data import load_images  # noqa: E402


def tf32_round(t: torch.Tensor) -> torch.Tensor:
    """float32 rounded to TF32's 10-bit mantissa (to nearest)."""
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="augmented faces (default 3000)")
    args = parser.parse_args(argv)
    model = load_model(REAL_DIR / "models" / "lab3_bd_weights.h5").model.eval()
    faces = load_images(face_files())
    x = augment(faces, args.images, 5)
    conv2d = F.conv2d
    with torch.no_grad():
        exact = model(x)
        with mock.patch.object(F, "conv2d", lambda inp, w, *a, **k: conv2d(tf32_round(inp), tf32_round(w), *a, **k)):
            tf32 = model(x)
    relative = (tf32 - exact).abs().max(1).values / exact.abs().max(1).values
    print(f"images: {x.shape[0]}")
    print(f"logit change, relative to the largest logit: median {float(relative.median()):.1e}, "
          f"max {float(relative.max()):.1e}")
    print(f"softmax max |diff|: {float((tf32.softmax(1) - exact.softmax(1)).abs().max()):.1e}")
    print(f"labels changed: {int((tf32.argmax(1) != exact.argmax(1)).sum())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
