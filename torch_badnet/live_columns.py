"""Exact GEMMs over only the input columns that are not all zero: the sweep head's fc_2 and output layers on CPU.

After their ReLUs most of the head's inputs are zero: on lab3 about half of conv_4's 960 outputs and 40% of the
160 hidden units are zero on every input of a 512-row block. A zero input adds nothing to a sum, so a GEMM over
the other columns gives the same numbers, bit for bit, provided it adds the products of each output in the same
order and in the same groups as the dense GEMM does. MKL's sgemm (torch's CPU BLAS) sums each output in order,
within groups of K inputs (its K block: 192 on the AMD EPYC with AVX-512 measured), and adds each group's sum to the
output in turn; `addmm_live` reproduces that with one GEMM per group over the group's live columns.

Whether the BLAS at hand sums that way, and in which groups, is not assumed: `exact_group` tries each candidate
group size once per process on random blocks of the sweep's shapes and keeps the first that gives the dense
GEMM's bits in every case; where none does, callers keep the dense GEMM.
"""

from __future__ import annotations

import functools
import math

import torch

GROUP_CANDIDATES = (192, 256, 384, 128, 96, 64, 160, 224, 288, 320, 448, 512, 640, 768, 1024)  # likeliest first
PROBE_KEEP_SHARES = (0.9, 0.4, 0.02)  # share of live columns in the probe's blocks: near-dense, the head's, nearly empty


def live_indices(x: torch.Tensor) -> torch.Tensor:
    """Indices (ascending) of the columns of `x` that are not all zero. `x` is >= 0, as after a ReLU; a column
    holding a NaN counts as live, so a NaN reaches the output as it does in the dense GEMM."""
    return x.amax(0).ne(0).nonzero().flatten()


def addmm_live(bias: torch.Tensor, x: torch.Tensor, weight_t: torch.Tensor, group: int) -> torch.Tensor:
    """`torch.addmm(bias, x, weight_t)` computed over `x`'s live columns only, summed in groups of `group` inputs
    (the BLAS's K block, from `exact_group`): the same bits as the dense GEMM where that group is right."""
    live = live_indices(x)
    counts = torch.bincount(live // group, minlength=math.ceil(x.shape[1] / group)).tolist()
    x_live, w_live = x.index_select(1, live), weight_t.index_select(0, live)
    out: torch.Tensor | None = None
    start = 0
    for count in counts:
        if count:
            part_x, part_w = x_live[:, start : start + count], w_live[start : start + count]
            out = torch.addmm(bias, part_x, part_w) if out is None else out.addmm_(part_x, part_w)
            start += count
    if out is None:  # no live column: the dense GEMM adds +0 to the bias
        out = torch.zeros(x.shape[0], weight_t.shape[1], dtype=x.dtype, device=x.device).add_(bias)
    return out


@functools.cache
def exact_group(rows: int, shapes: tuple[tuple[int, int], ...], threads: int,
                dtype: torch.dtype = torch.float32) -> int | None:
    """The candidate group for which `addmm_live` gives `torch.addmm`'s bits on every probe block of `rows` x
    in_features (for each (in_features, out_features) in `shapes`) in `dtype`, with `threads` intra-op threads
    (the caller's `torch.get_num_threads()`, part of the cache key); None if no candidate does.

    At most one candidate below in_features can pass: a group smaller than the BLAS's K block adds sums the BLAS
    does not, and a larger one hands the BLAS more live columns than its block, which it then splits elsewhere.
    """
    generator = torch.Generator().manual_seed(0)
    probes = [probe_block(rows, inputs, outputs, keep, generator, dtype) for inputs, outputs in shapes
              for keep in PROBE_KEEP_SHARES]
    with torch.inference_mode():
        dense = [torch.addmm(b, x, w) for b, x, w in probes]
        for group in GROUP_CANDIDATES:
            if all(torch.equal(addmm_live(b, x, w, group), d) for (b, x, w), d in zip(probes, dense)):
                return group
    return None


def probe_block(rows: int, inputs: int, outputs: int, keep: float, generator: torch.Generator,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """A bias, a ReLU-like (rows, inputs) block whose columns are live with probability `keep` (and 30% zeros
    inside live ones), and a (inputs, outputs) weight."""
    x = torch.rand(rows, inputs, generator=generator, dtype=dtype)
    x[torch.rand(rows, inputs, generator=generator) < 0.3] = 0
    x[:, torch.rand(inputs, generator=generator) >= keep] = 0
    bias = torch.randn(outputs, generator=generator, dtype=dtype)
    return bias, x, torch.randn(inputs, outputs, generator=generator, dtype=dtype)
