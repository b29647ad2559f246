#!/usr/bin/env python
"""How much the two faster-head candidates of issue 16 could save, measured on the engine's own states.

    python scripts/head_candidates.py [--scale F]

Runs the sweep's head step by step (augmented real faces at F times the lab's set sizes, the real lab3 model)
and counts, over the rows each pruned channel touches:
- the rows whose output GEMM a certified skip could leave out: the old top-1/top-2 logit margin exceeds the
  change bound plus float32 rounding slack, for the per-class L1 bound sum_i max_j |W_ji - W_ti| |dh_i| and for
  the Cauchy-Schwarz bound max_j ||W_t - W_j|| ||dh||. Optimistic: the margin is the exact one of the step
  before, where a real skip would have to carry a growing bound across skipped steps;
- the share of conv_4's 2x2 windows that see a non-zero of the pruned channel: the part of conv_4 and fc_2 a
  sparse update would still recompute;
- the rows whose label a bfloat16 output GEMM (AVX-512 BF16: ~2.3x the float32 GEMM's speed here) would
  certify, so that only the others need the float32 GEMM: the top-1/top-2 margin of the bfloat16 logits exceeds
  both classes' error bounds (inputs rounded to bfloat16, the product's bfloat16 result, float32 accumulation,
  and the float32 reference's own rounding), with the per-class sum S_j = sum_i |h_i| |W_ji| bounded by
  Cauchy-Schwarz, by sum_i |h_i| max_j |W_ji|, or taken exactly (a second GEMM: the ceiling of any bound).
  Every certified label is checked against the float32 label. Also timed: the output GEMM on 512 rows in
  float32 and in bfloat16.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests")]

from bench_inputs import load_inputs  # noqa: E402
from bench_measure import timed  # noqa: E402

from torch_badnet.pruning import channel_scores, pruning_order  # noqa: E402
from torch_badnet.sweep import HeadUpdater, extract_features, prepare_model  # noqa: E402

UNIT_ROUNDOFF = 2.0 ** -24
BF16_UNIT_ROUNDOFF = 2.0 ** -8
BF16_BOUNDS = ("cauchy_schwarz", "l1", "exact")


def bf16_certified(h: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor, labels: torch.Tensor,
                   gamma: float) -> dict[str, torch.Tensor]:
    """Per bound in `BF16_BOUNDS`, which rows' bfloat16 logits certify their float32 label `labels` (asserted)."""
    u = BF16_UNIT_ROUNDOFF
    product = torch.mm(h.bfloat16(), weight_t.bfloat16()).float()  # float32 accumulation, bfloat16 result
    logits = product + bias
    sums = {"cauchy_schwarz": h.norm(dim=1, keepdim=True) * weight_t.norm(dim=0),
            "l1": (h.abs() @ weight_t.abs().max(1).values)[:, None].expand_as(logits),
            "exact": h.abs() @ weight_t.abs()}
    top = logits.argmax(1, keepdim=True)
    certified = {}
    for name, s in sums.items():
        error = 1.01 * ((2 * u + u * u) * s + u * product.abs()) + 2 * gamma * (s + bias.abs()) + 1e-6
        gap = logits.gather(1, top) - error.gather(1, top) - logits - error
        gap.scatter_(1, top, float("inf"))
        certified[name] = gap.min(1).values > 0
        assert torch.equal(top[certified[name], 0], labels[certified[name]]), "a certified label differs"
    return certified


def gemm_ms(h: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor, repeats: int = 50) -> dict[str, float]:
    """Median milliseconds of the output GEMM on `h`'s rows: float32 `addmm` as the engine runs it, and bfloat16."""
    h_bf16, weight_bf16 = h.bfloat16(), weight_t.bfloat16()
    runs = {"float32": lambda: torch.addmm(bias, h, weight_t), "bfloat16": lambda: torch.mm(h_bf16, weight_bf16)}
    result = {}
    for name, run in runs.items():
        run()  # warm-up, untimed
        result[name] = timed(run, repeats, torch.device("cpu")).median * 1e3
    return result


def hidden(head: HeadUpdater, pre: torch.Tensor) -> torch.Tensor:
    h = torch.addmm(head.fc_2_bias, pre[:, head.split :].relu(), head.fc_2_weight_t)
    return h.add_(pre[:, : head.split]).relu_()


@torch.inference_mode()
def measure(scale: float) -> dict[str, float]:
    inputs = load_inputs(scale, 0, lambda _: None)
    device = torch.device("cpu")
    model = prepare_model(inputs.model, device)
    sets = [extract_features(model, name, [(x, y)], len(y), device) for name, (x, y) in inputs.sets.items()]
    order = pruning_order(channel_scores(sets[0].features))
    head = HeadUpdater(model)
    weight = model.output.weight  # (classes, 160)
    l1_rows = torch.stack([(weight - weight[t]).abs().max(0).values for t in range(weight.shape[0])])
    cs_norm = torch.stack([(weight - weight[t]).norm(dim=1).max() for t in range(weight.shape[0])])
    n = weight.shape[1] + 2
    gamma = n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)  # float32 dot products of length 160 plus the bias
    abs_weight_max, bias_max = weight.abs().max(0).values, model.output.bias.abs().max()
    counts = dict.fromkeys(("rows", "touched", "l1", "cs", "windows", "all_windows", *(f"bf16_{b}" for b in BF16_BOUNDS)), 0)
    for s in sets:
        pre = head.initial(s.features)
        h = hidden(head, pre)
        logits = torch.addmm(head.output_bias, h, head.output_weight_t)
        for channel in order:
            plane = s.features[:, channel]
            rows = plane.flatten(1).ne(0).any(1).nonzero().squeeze(1)
            counts["rows"] += plane.shape[0]
            counts["touched"] += rows.shape[0]
            windows = F.max_pool2d(plane[rows].ne(0).float()[:, None], 2, stride=1)  # conv_4 windows seeing a non-zero
            counts["windows"] += int(windows.sum())
            counts["all_windows"] += windows.numel()
            pre.index_add_(0, rows, -(plane[rows].flatten(1) @ head.per_channel[channel]))
            h_new = hidden(head, pre[rows])
            change = (h_new - h[rows]).abs()
            top2 = logits[rows].topk(2, 1)
            label, margin = top2.indices[:, 0], top2.values[:, 0] - top2.values[:, 1]
            slack = 2 * gamma * (bias_max + (abs_weight_max * (h[rows] + h_new)).sum(1))
            counts["l1"] += int((margin > (l1_rows[label] * change).sum(1) + slack).sum())
            counts["cs"] += int((margin > cs_norm[label] * change.norm(dim=1) + slack).sum())
            h[rows] = h_new
            logits[rows] = torch.addmm(head.output_bias, h_new, head.output_weight_t)
            certified = bf16_certified(h_new, head.output_weight_t, head.output_bias, logits[rows].argmax(1), gamma)
            for name, rows_certified in certified.items():
                counts[f"bf16_{name}"] += int(rows_certified.sum())
    gemm = gemm_ms(hidden(head, head.initial(sets[0].features[:512])), head.output_weight_t, head.output_bias)
    return {"images": sum(len(s.labels) for s in sets), "touched_share": counts["touched"] / counts["rows"],
            "skippable_l1": counts["l1"] / counts["touched"], "skippable_cauchy_schwarz": counts["cs"] / counts["touched"],
            "conv_4_windows_changed": counts["windows"] / counts["all_windows"],
            **{f"bf16_certified_{name}": counts[f"bf16_{name}"] / counts["touched"] for name in BF16_BOUNDS},
            "output_gemm_512_rows_ms": gemm}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.1, help="set sizes = the lab's times F (default 0.1)")
    result = measure(parser.parse_args().scale)
    print(f"{result['images']} images; rows touched per step {result['touched_share']:.3f}; of those, output GEMM "
          f"skippable with the per-class L1 bound {result['skippable_l1']:.3f}, with Cauchy-Schwarz "
          f"{result['skippable_cauchy_schwarz']:.3f}; conv_4 windows that change per touched row "
          f"{result['conv_4_windows_changed']:.3f}; bfloat16 output GEMM certifies the label with Cauchy-Schwarz "
          f"{result['bf16_certified_cauchy_schwarz']:.3f}, with the L1 bound {result['bf16_certified_l1']:.3f}, "
          f"with the exact per-class sum {result['bf16_certified_exact']:.3f}; output GEMM on 512 rows: "
          + ", ".join(f"{name} {ms:.2f} ms" for name, ms in result["output_gemm_512_rows_ms"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
