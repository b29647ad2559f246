"""Issues 24 and 31: the speed of the generic engine on a ResNet-18 (32x32 inputs) at its default layer, `layer4` (the
feature map its global pooling reads, ranked on `avgpool`; issue 31), all 512 channels, on 4 sets of 1,000 images.
`--layer layer4.1.conv2` measures the default before issue 31.

Reports (and writes to --out, with the CPU's name from lscpu):
- forward_s: one forward pass of the model over the four sets (inference mode, batches of 256);
- sweep_s: the whole `tb.prune_sweep` (record pass, ranking, every step, metrics, thresholds) on the same sets;
  target sweep_s <= 1.5 x forward_s;
- full_forward_per_step_s: the plain procedure, a full forward over the four sets with the mask hook, timed on
  --timed-steps steps and extrapolated to all steps; target >= 50x slower than sweep_s.
The timed steps' clean accuracies are checked against the sweep's (the same numbers, or the script fails).

    python scripts/bench_resnet.py                       # full size (the coordinator's run, on a quiet machine)
    python scripts/bench_resnet.py --images 50 --width 8 --out /tmp/r.json   # a quick check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # torch_nets: the CIFAR ResNet shared with the tests

from torch_nets import resnet  # noqa: E402

import torch_badnet as tb  # noqa: E402
from torch_badnet.engine.prunable import channels_off  # noqa: E402

BATCH = 256


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


@torch.inference_mode()
def forward_labels(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(part).argmax(1) for part in x.split(BATCH)])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000, help="images per set (default 1000)")
    p.add_argument("--width", type=int, default=64, help="ResNet width (64 = ResNet-18, layer4 has 8x this)")
    p.add_argument("--timed-steps", type=int, default=3, help="full-forward steps to time (default 3)")
    p.add_argument("--layer", default=None, help="the layer to prune (default: the sweep's default, layer4)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "resnet18-cpu.json"))
    args = p.parse_args()

    load_before = os.getloadavg()[0]  # other work on the machine (the numbers are only comparable on a quiet one)
    model = resnet(args.width, seed=0)
    g = torch.Generator().manual_seed(1)
    sets = [torch.randn(args.images, 3, 32, 32, generator=g) for _ in range(4)]
    truth = [forward_labels(model, x).clone() for x in sets]
    for i, y in enumerate(truth):
        y[i::7] = (y[i::7] + 1) % 10  # some errors, so that accuracies move
    data = [(x, y) for x, y in zip(sets, truth)]

    forward_labels(model, sets[0][:BATCH])  # warm-up
    began = time.perf_counter()
    for x in sets:
        forward_labels(model, x)
    forward_s = time.perf_counter() - began

    began = time.perf_counter()
    result = tb.prune_sweep(model, data[0], data[1], data[2], data[3], layer=args.layer, device="cpu", log=print)
    sweep_s = time.perf_counter() - began
    net = result.sweep.net
    channels, steps = net.channels, result.sweep.steps

    layer = model.get_submodule(net.layer)
    per_step = []
    clean = result.sweep.metrics[tb.Column("pruned", "valid", "clean_acc")]
    for k in range(1, args.timed_steps + 1):
        began = time.perf_counter()
        with channels_off(layer, result.sweep.order[:k], channels):
            labels = [forward_labels(model, x) for x in sets]
        per_step.append(time.perf_counter() - began)
        accuracy = 100.0 * int((labels[0] == truth[0]).sum()) / args.images
        if accuracy != clean[k]:
            print(f"step {k}: the sweep says {clean[k]} but a full forward with the mask gives {accuracy}", file=sys.stderr)
            return 1
    full_s = sum(per_step) / len(per_step) * (steps + 1)
    report = {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": f"CIFAR ResNet-18 (width {args.width}), random weights, BatchNorm statistics set",
        "layer": net.layer,
        "rank_on": net.rank_on,
        "channels": channels,
        "steps": steps,
        "sets": 4,
        "images_per_set": args.images,
        "forward_s": round(forward_s, 4),
        "sweep_s": round(sweep_s, 4),
        "sweep_over_forward": round(sweep_s / forward_s, 3),
        "full_forward_step_s": [round(s, 4) for s in per_step],
        "full_forward_sweep_extrapolated_s": round(full_s, 3),
        "speedup_vs_full_forward_per_step": round(full_s / sweep_s, 1),
        "targets": {"sweep_over_forward_max": 1.5, "speedup_min": 50},
    }
    report["meets_targets"] = report["sweep_over_forward"] <= 1.5 and report["speedup_vs_full_forward_per_step"] >= 50
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
