"""Exact GEMMs over only the input columns that are not all zero: the sweep head's fc_2 and output layers on CPU.

After their ReLUs most of the head's inputs are zero: on lab3 about half of conv_4's 960 outputs and 40% of the
160 hidden units are zero on every input of a 512-row block. A zero input adds nothing to a sum, so a GEMM over
the other columns gives the same numbers, bit for bit, provided it adds the products of each output in the same
order and in the same groups as the dense GEMM does. MKL's sgemm (torch's CPU BLAS) sums each output in order,
within groups of K inputs (its K block: 192 on the AMD EPYC with AVX-512 measured), and adds each group's sum to the
output in turn; `addmm_live` reproduces that with one GEMM per group over the group's live columns.

Whether the BLAS at hand sums that way, and in which groups, is not assumed: `exact_group` tries each candidate
group size on random blocks of the sweep's shapes and keeps the first that gives the dense GEMM's bits in every
case; where none does, callers keep the dense GEMM. Trying all 15 costs about a second where none passes, so
`verified_group` keeps the verdict in the user's cache folder, per CPU, BLAS, torch version, dtype, threads and
shapes: a cached "none" is taken as it is (the dense GEMM is always exact), a cached group is probed again alone
(the cost of the likeliest candidate passing, tens of ms) and the full probe runs only when that fails.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform

import torch

from ..data.files import cache_dir, write_text

GROUP_CANDIDATES = (192, 256, 384, 128, 96, 64, 160, 224, 288, 320, 448, 512, 640, 768, 1024)  # likeliest first
PROBE_KEEP_SHARES = (0.9, 0.4, 0.02)  # share of live columns in the probe's blocks: near-dense, the head's, nearly empty
VERDICT_VERSION = 1  # bump when the probe changes what it accepts


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
def verified_group(rows: int, shapes: tuple[tuple[int, int], ...], threads: int,
                   dtype: torch.dtype = torch.float32) -> int | None:
    """`exact_group`'s answer, through the verdict cached for this machine (see the module's docstring); once per
    process. An unreadable or foreign cache file is ignored and rewritten; an unwritable cache folder only means
    probing again next time."""
    key = verdict_key(rows, shapes, threads, dtype)
    path = cache_dir() / "live-columns" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        valid = cached["key"] == key and (cached["group"] is None or cached["group"] in GROUP_CANDIDATES)
    except (OSError, ValueError, TypeError, KeyError):
        valid = False
    if valid:
        if cached["group"] is None:
            return None
        if _exact_group(rows, shapes, threads, dtype, (cached["group"],)) == cached["group"]:
            return cached["group"]
    group = _exact_group(rows, shapes, threads, dtype, GROUP_CANDIDATES)
    try:
        write_text(path, json.dumps({"key": key, "group": group}) + "\n")
    except OSError:
        pass
    return group


def verdict_key(rows: int, shapes: tuple[tuple[int, int], ...], threads: int, dtype: torch.dtype) -> str:
    """What the BLAS's summation order may depend on: CPU model and the kernels torch picks for it, BLAS build and
    its environment knobs, torch version, dtype, threads, and the probe itself (shapes, rows, candidates)."""
    return json.dumps({"version": VERDICT_VERSION, "cpu": cpu_model(), "capability": torch.backends.cpu.get_cpu_capability(),
                       "blas": blas_build(), "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("MKL_", "OMP_", "KMP_"))},
                       "torch": torch.__version__, "dtype": str(dtype), "threads": threads, "rows": rows,
                       "shapes": [list(s) for s in shapes], "candidates": list(GROUP_CANDIDATES)}, sort_keys=True)


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what the platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}".strip()


@functools.cache
def blas_build() -> str:
    """The lines of torch's build configuration that name its BLAS and math libraries."""
    return "\n".join(line.strip() for line in torch.__config__.show().splitlines()
                     if any(word in line for word in ("Math Kernel", "BLAS", "LAPACK", "oneDNN", "OpenMP")))


@functools.cache
def exact_group(rows: int, shapes: tuple[tuple[int, int], ...], threads: int,
                dtype: torch.dtype = torch.float32) -> int | None:
    """The candidate group for which `addmm_live` gives `torch.addmm`'s bits on every probe block of `rows` x
    in_features (for each (in_features, out_features) in `shapes`) in `dtype`, with `threads` intra-op threads
    (the caller's `torch.get_num_threads()`, part of the cache key); None if no candidate does.

    At most one candidate below in_features can pass: a group smaller than the BLAS's K block adds sums the BLAS
    does not, and a larger one hands the BLAS more live columns than its block, which it then splits elsewhere.
    """
    return _exact_group(rows, shapes, threads, dtype, GROUP_CANDIDATES)


def _exact_group(rows: int, shapes: tuple[tuple[int, int], ...], threads: int, dtype: torch.dtype,
                 candidates: tuple[int, ...]) -> int | None:
    """The first of `candidates` that gives the dense bits on every probe block (`threads` only keys caches)."""
    generator = torch.Generator().manual_seed(0)
    probes = [probe_block(rows, inputs, outputs, keep, generator, dtype) for inputs, outputs in shapes
              for keep in PROBE_KEEP_SHARES]
    with torch.inference_mode():
        dense = [torch.addmm(b, x, w) for b, x, w in probes]
        for group in candidates:
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
