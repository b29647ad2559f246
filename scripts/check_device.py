"""GPU correctness check: the sweep engine and the GoodNet on a device give the CPU's labels exactly.

    python scripts/check_device.py --device cuda [--images 2000]

Runs the real lab3 BadNet (../shared/real) on augmented real faces: pool_3 ranking, fast_sweep at all 61
steps and GoodNet labels for three masks, on the CPU and on --device; prints where they differ and exits 1
if any label differs. (A different float summation order on a GPU may flip an exact near-tie; the script
reports how many.) `--device cpu` runs it against itself, as a smoke test of the script.
"""

from __future__ import annotations

import argparse
import sys

import torch

from torch_badnet.convert import read_model_file
from torch_badnet.data.images import load_images
from torch_badnet.data.real_faces import REAL_DIR, augment, face_files
from torch_badnet.engine.lab_head import FeatureSet, extract_features, fast_sweep, prepare_model
from torch_badnet.engine.pruning import channel_scores, pruning_order
from torch_badnet.nets.goodnet import GoodNet
from torch_badnet.nets.precision import exact_float32
from torch_badnet.nets.predict import labels_in_batches


def faces(kind: str, count: int, seed: int) -> torch.Tensor:
    return augment(load_images(face_files(kind)), count, seed)


@exact_float32()
def run_on(device: torch.device, sets: dict[str, torch.Tensor]) -> tuple[list[int], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Ranking, sweep labels per set, and GoodNet labels for three masks, computed on `device`."""
    model = prepare_model(read_model_file(REAL_DIR / "models" / "lab3_bd_weights.h5").model, device)
    features: list[FeatureSet] = []
    for name, x in sets.items():
        chunks = [(x[i : i + 512], torch.zeros(len(x[i : i + 512]), dtype=torch.int64)) for i in range(0, len(x), 512)]
        features.append(extract_features(model, name, chunks, len(x), device))
    order = pruning_order(channel_scores(features[0].features))
    sweep = fast_sweep(model, features, order)
    goodnet = {}
    with torch.no_grad():
        for k in (20, 45, 52):
            mask = torch.ones(60)
            mask[order[:k]] = 0
            g = GoodNet(model, mask).to(device)
            goodnet[f"mask{k}"] = torch.cat([labels_in_batches(g, x.to(device), 512).cpu() for x in sets.values()])
    return order, sweep, goodnet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=2000, help="images per set (default 2000)")
    args = parser.parse_args(argv)
    sets = {"clean": faces("cl", args.images, 1), "poisoned": faces("sun", args.images, 2)}
    cpu = run_on(torch.device("cpu"), sets)
    other = run_on(torch.device(args.device), sets)
    problems = 0
    if cpu[0] != other[0]:
        print(f"ranking differs: cpu {cpu[0][:10]}... {args.device} {other[0][:10]}...")
        problems += 1
    for name in cpu[1]:
        diff = int((cpu[1][name] != other[1][name]).sum())
        print(f"sweep {name}: {diff} of {cpu[1][name].numel()} step labels differ")
        problems += diff
    for name in cpu[2]:
        diff = int((cpu[2][name] != other[2][name]).sum())
        print(f"GoodNet {name}: {diff} of {cpu[2][name].numel()} labels differ")
        problems += diff
    print("identical" if problems == 0 else f"{problems} differences")
    return 0 if problems == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
