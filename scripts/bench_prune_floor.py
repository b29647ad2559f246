#!/usr/bin/env python
"""Issue 34's floor: the lab-size prune phase next to its own matrix products run alone, and next to the trunk.

    python scripts/bench_prune_floor.py [--scale F] [--rounds R] [--threads N] [--machine NAME | --json OUT]

One process, the lab's set sizes times F in memory (`bench_inputs.load_inputs`, as scripts/bench_sweep.py). Each
round, in turn:
- trunk: `lab_head.extract_features` on the four sets (seconds; FLOPs of conv_1..conv_3 per image, from their
  output shapes);
- prune: `lab_head.fast_sweep` on each set's cached features (seconds);
- replay: every matrix product the prune phase ran (shapes recorded once, in order, by an untimed sweep) run
  again alone, on random operands of the same shapes: the prune phase without its gathers, ReLUs, argmaxes and
  Python, so a floor for this algorithm on this CPU (FLOPs and GFLOP/s).
prune / trunk is issue 34's target (<= 0.3 at lab size); replay / trunk is the least any cut of the overhead
could give without fewer FLOPs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench_args import add_results_arguments, resolve_results_path

ROOT = Path(__file__).resolve().parents[1]

Shape = tuple[int, int, int, str]  # rows M, inner K, outputs N, and C: "bias" (N,), "matrix" (M, N), "in place"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="the lab's set sizes times F (default 1: 48,754 images)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of trunk, prune and replay (default 3)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    add_results_arguments(p)
    args = p.parse_args(argv)
    if args.scale <= 0 or args.rounds < 1:
        p.error("--scale and --rounds must be positive")
    resolve_results_path(p, args)
    return args


@contextmanager
def recorded_products(shapes: list[Shape]) -> Iterator[None]:
    """Appends the shape of every `torch.addmm` and `Tensor.addmm_` called inside (the engine's only GEMMs)."""
    import torch

    addmm, addmm_ = torch.addmm, torch.Tensor.addmm_

    def counted(bias, x, weight, **kwargs):
        shapes.append((x.shape[0], x.shape[1], weight.shape[1], "matrix" if bias.dim() == 2 else "bias"))
        return addmm(bias, x, weight, **kwargs)

    def counted_(self, x, weight, **kwargs):
        shapes.append((x.shape[0], x.shape[1], weight.shape[1], "in place"))
        return addmm_(self, x, weight, **kwargs)

    torch.addmm, torch.Tensor.addmm_ = counted, counted_
    try:
        yield
    finally:
        torch.addmm, torch.Tensor.addmm_ = addmm, addmm_


def trunk_macs_per_image(model) -> int:
    """Multiply-adds of conv_1..conv_3 for one image, from their output shapes."""
    import torch

    from torch_badnet.nets.badnet import INPUT_SHAPE

    macs = []
    hooks = [getattr(model, name).register_forward_hook(
        lambda module, _, out: macs.append(out[0].numel() * module.weight[0].numel())) for name in ("conv_1", "conv_2", "conv_3")]
    try:
        with torch.inference_mode():
            model.trunk(torch.zeros(1, *INPUT_SHAPE))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(macs)


def product_kind(shape: Shape) -> str:
    """A name for a product by its outputs: the head's output layer, its hidden layers, the pre-activation update."""
    m, k, n, target = shape
    if n == 1120:
        return "update (rows x 20 x 1120)"
    return f"{'output' if n > 1120 else 'hidden'} (N={n}){' in place' if target == 'in place' else ''}"


def replay(shapes: list[Shape]) -> Callable[[], dict[str, float]]:
    """A function that runs the recorded products in order on random operands of their shapes (made once per
    shape; the sweep's pre-activation update adds to a whole matrix, the layers to a bias row) and returns the
    seconds spent per `product_kind`."""
    import torch

    generator = torch.Generator().manual_seed(0)
    operands: dict[Shape, tuple] = {}
    for shape in shapes:
        if shape not in operands:
            m, k, n, target = shape
            x, w = torch.rand(m, k, generator=generator), torch.randn(k, n, generator=generator)
            c = torch.randn(n, generator=generator) if target == "bias" else torch.rand(m, n, generator=generator)
            operands[shape] = (c, x, w)
    calls = [(product_kind(shape), shape[3] == "in place", operands[shape]) for shape in shapes]

    def run() -> dict[str, float]:
        seconds: dict[str, float] = {}
        clock = time.perf_counter
        for kind, in_place, (target, x, w) in calls:
            started = clock()
            if in_place:
                target.addmm_(x, w, alpha=-1)
            else:
                torch.addmm(target, x, w, alpha=-1)
            seconds[kind] = seconds.get(kind, 0.0) + clock() - started
        return seconds
    return run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT / "scripts"))
    import torch
    from bench_inputs import load_inputs
    from bench_sweep import log, machine

    from torch_badnet.data.files import write_text
    from torch_badnet.engine.lab_head import extract_features, fast_sweep, prepare_model
    from torch_badnet.engine.pruning import channel_scores, pruning_order
    from torch_badnet.nets.precision import exact_float32

    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    inputs = load_inputs(args.scale, 0, log)
    model = prepare_model(inputs.model, cpu)
    images = inputs.images

    def trunk() -> dict:
        return {name: extract_features(model, name, iter([(x, y)]), x.shape[0], cpu) for name, (x, y) in inputs.sets.items()}

    with exact_float32():
        features = trunk()
        order = pruning_order(channel_scores(features["clean_valid"].features))

        def prune() -> None:
            for fs in features.values():
                fast_sweep(model, [fs], order)

        shapes: list[Shape] = []
        with recorded_products(shapes):
            prune()
        products = replay(shapes)
        gemm_flops = 2 * sum(m * k * n for m, k, n, _ in shapes)
        kind_gflop: dict[str, float] = {}
        for shape in shapes:
            kind_gflop[product_kind(shape)] = kind_gflop.get(product_kind(shape), 0.0) + 2 * shape[0] * shape[1] * shape[2] / 1e9
        kind_gflop = {kind: round(value, 1) for kind, value in sorted(kind_gflop.items())}
        trunk_flops = 2 * trunk_macs_per_image(model) * images
        rounds = []
        for r in range(args.rounds):
            row: dict[str, Any] = {}
            for name, step in (("trunk_s", trunk), ("prune_s", prune), ("replay_s", products)):
                started = time.perf_counter()
                out = step()
                row[name] = round(time.perf_counter() - started, 3)
            row["replay_by_kind_s"] = {kind: round(seconds, 3) for kind, seconds in sorted(out.items())}
            row["load_1min"] = round(os.getloadavg()[0], 2)
            rounds.append(row)
            log(f"round {r + 1}: {row}")

    def median(key: str) -> float:
        return round(float(statistics.median(r[key] for r in rounds)), 3)

    summary: dict[str, Any] = {key: median(key) for key in ("trunk_s", "prune_s", "replay_s")}
    summary["replay_by_kind_s"] = {kind: round(float(statistics.median(r["replay_by_kind_s"][kind] for r in rounds)), 3)
                                   for kind in kind_gflop}
    summary.update({
        "prune_over_trunk": round(summary["prune_s"] / summary["trunk_s"], 3),
        "replay_over_trunk": round(summary["replay_s"] / summary["trunk_s"], 3),
        "replay_over_prune": round(summary["replay_s"] / summary["prune_s"], 3),
        "trunk_gflop": round(trunk_flops / 1e9, 1), "prune_gemm_gflop": round(gemm_flops / 1e9, 1),
        "trunk_gflop_per_s": round(trunk_flops / 1e9 / summary["trunk_s"], 1),
        "prune_gflop_per_s": round(gemm_flops / 1e9 / summary["prune_s"], 1),
        "replay_gflop_per_s": round(gemm_flops / 1e9 / summary["replay_s"], 1),
    })
    results = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(cpu),
               "model": inputs.model_source, "pixels": inputs.pixel_source, "images": images, "steps": len(order),
               "products": len(shapes), "gflop_by_kind": kind_gflop, "rounds": rounds, "median": summary}
    print(json.dumps(summary, indent=2))
    if args.json:
        write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
