#!/usr/bin/env python
"""Time the sweep engine's settings on a device, each checked against the engine's defaults.

    python scripts/gpu_options.py --device cuda [--scale F] [--json OUT]

On the benchmark's four lab-size sets (scripts/bench_inputs.py): the trunk (pool_3 features of every set) per
batch size and memory layout, the ranking, the head steps of `fast_sweep` (sparse rows as the engine does, or
every row each step) and the GoodNet per batch size. Every variant's features or labels are compared with the
default's (bitwise), so a faster setting that changes a label shows up as such. Medians of --repeats runs,
device synchronised around each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from bench_inputs import load_inputs
from bench_measure import timed

from torch_badnet.data.files import write_text
from torch_badnet.engine import lab_head
from torch_badnet.engine.pruning import channel_scores, mask_for, pruning_order
from torch_badnet.nets.goodnet import GoodNet
from torch_badnet.nets.precision import exact_float32
from torch_badnet.nets.predict import labels_in_batches


def trunk_features(model: torch.nn.Module, sets: dict[str, tuple[torch.Tensor, torch.Tensor]], batch: int,
                   device: torch.device) -> list[lab_head.FeatureSet]:
    """Every set's pool_3 features, `batch` images per trunk pass."""
    out = []
    for name, (x, y) in sets.items():
        chunks = [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
        out.append(lab_head.extract_features(model, name, chunks, len(x), device))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    inputs = load_inputs(args.scale, 0, lambda m: print(m, file=sys.stderr))
    sets = {name: (x.to(device), y.to(device)) for name, (x, y) in inputs.sets.items()}
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                               "torch": torch.__version__, "images": inputs.images}
    report = lambda key, value: (results.__setitem__(key, value), print(f"{key}: {value}", flush=True))  # noqa: E731

    with exact_float32(), torch.inference_mode():
        base = lab_head.prepare_model(inputs.model, device)
        reference = trunk_features(base, sets, 1024, device)
        trunk = {}
        for layout in ("contiguous", "channels_last"):
            model = base.to(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
            for batch in (1024, 4096, 16384):
                cl = layout == "channels_last"
                moved = {n: (x.contiguous(memory_format=torch.channels_last) if cl else x, y) for n, (x, y) in sets.items()}
                timing = timed(lambda m=model, b=batch, s=moved: trunk_features(m, s, b, device), args.repeats, device)
                same = all(torch.equal(a.features, b.features) for a, b in zip(reference, trunk_features(model, moved, batch, device)))
                trunk[f"{layout} batch {batch}"] = {"s": round(timing.median, 5), "features_equal_default": same}
        report("trunk", trunk)
        base = base.to(memory_format=torch.contiguous_format)

        timing = timed(lambda: pruning_order(channel_scores(reference[0].features)), args.repeats, device)
        order = pruning_order(channel_scores(reference[0].features))
        report("rank_s", round(timing.median, 5))

        default_labels = lab_head.fast_sweep(base, reference, order)
        head = {}
        for name, share in (("sparse rows (default)", lab_head.DENSE_SHARE), ("every row each step", 0.0)):
            saved, lab_head.DENSE_SHARE = lab_head.DENSE_SHARE, share
            try:
                timing = timed(lambda: lab_head.fast_sweep(base, reference, order), args.repeats, device)
                labels = lab_head.fast_sweep(base, reference, order)
            finally:
                lab_head.DENSE_SHARE = saved
            same = all(torch.equal(labels[k], default_labels[k]) for k in labels)
            head[name] = {"s": round(timing.median, 5), "labels_equal_default": same}
        report("head_steps", head)

        goodnet = GoodNet(base, mask_for(order[:45], 60)).eval().to(device)
        default = {n: labels_in_batches(goodnet, x, 1024) for n, (x, _) in sets.items()}
        rates = {}
        for batch in (1024, 4096, 16384):
            timing = timed(lambda b=batch: [labels_in_batches(goodnet, x, b) for x, _ in sets.values()], args.repeats, device)
            same = all(torch.equal(labels_in_batches(goodnet, x, batch), default[n]) for n, (x, _) in sets.items())
            rates[f"batch {batch}"] = {"images_per_s": round(inputs.images / timing.median), "labels_equal_default": same}
        report("goodnet", rates)
    if args.json:
        write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
