#!/usr/bin/env python
"""Variants of the demo BadNet and a manifest for `torch-badnet batch` (docs/batch.md's example).

    python scripts/batch_variants.py FOLDER [--workdir DEMO_WORKDIR]

Builds (or reuses) the demo workspace, then writes FOLDER/models/noise<P>.pt|.h5: the demo BadNet with every
weight perturbed by P% of its layer's spread (seeded), as torch-badnet checkpoints and Keras full-model .h5 files,
and FOLDER/manifest.csv naming them (relative paths) and the demo's own model, with a few per-row options.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import torch

from torch_badnet.convert.keras_h5 import write_keras_model
from torch_badnet.demo import ensure_workspace
from torch_badnet.nets.checkpoint import save_checkpoint
from torch_badnet.nets.loading import load_model_file

VARIANTS = (("noise1", 0.01, ".pt", ""), ("noise3", 0.03, ".h5", ""), ("noise5", 0.05, ".pt", "2 4"),
            ("noise10", 0.10, ".h5", "4"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--workdir", type=Path, help="the demo workspace's folder (default: the user cache dir)")
    args = parser.parse_args()
    ws = ensure_workspace(args.workdir, log=print)
    demo = load_model_file(ws.model).model
    (args.folder / "models").mkdir(parents=True, exist_ok=True)
    rows = [f"demo,{os.path.relpath(ws.model, args.folder)},"]
    for seed, (name, share, suffix, thresholds) in enumerate(VARIANTS, start=1):
        net = copy.deepcopy(demo)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * p.std() * share)
        path = args.folder / "models" / f"{name}{suffix}"
        save_checkpoint(net, path) if suffix == ".pt" else write_keras_model(net, path)
        rows.append(f"{name},models/{path.name},{thresholds}")
    (args.folder / "manifest.csv").write_text("name,model,thresholds\n" + "\n".join(rows) + "\n")
    print(f"wrote {args.folder}/manifest.csv and {len(VARIANTS)} models; data: {ws.root}/data")


if __name__ == "__main__":
    main()
