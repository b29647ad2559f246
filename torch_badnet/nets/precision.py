"""Reproducible arithmetic: full float32 on GPUs (`exact_float32`) and seeded, deterministic training.

PyTorch lets cuDNN convolutions use TF32 (10-bit mantissa) on Ampere and newer GPUs by default. That moves
the lab net's logits by about 1e-3 relative, enough to flip near-tied labels and pruning steps. Inside
`exact_float32()` convolutions and matrix products run in IEEE float32 and cuDNN picks deterministic
algorithms; the previous settings come back on exit. The flags only affect CUDA; on CPU this is a no-op.

On CPU the numbers must not depend on the number of threads either: a batch worker runs with one, `sweep` with
all cores, and both must write the same results. MKL (torch's CPU BLAS) splits a GEMM's sums differently on 1
and 2 threads (the head's logits moved by up to 1.5e-5, enough to flip a near-tie: one image of the demo's
2,000 at one step). Importing torch_badnet therefore sets `MKL_CBWR=AUTO,STRICT`, MKL's strict reproducibility
mode, in which its GEMMs give the same bits on any number of threads (the fastest code path of this CPU is
kept; another instruction set may still differ). MKL reads it at its first call: a program that used torch's
BLAS before importing torch_badnet sets it itself. A user's own MKL_CBWR is left as it is. oneDNN's
convolutions (the trunk) gave the same bits on 1 and 2 threads without it. Training is made thread-independent
in `defense.finetuning` (slices of a batch on one thread each).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def _settings() -> list[tuple[Any, str, object]]:
    """(object, attribute, exact value) for each flag to set."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    conv = getattr(cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9; mixing in the old flags is an error
        precision = [(conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    else:
        precision = [(cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]
    return precision + [(cudnn, "deterministic", True), (cudnn, "benchmark", False)]


@contextmanager
def exact_float32() -> Iterator[None]:
    """IEEE float32 convolutions and matmuls and deterministic cuDNN inside the block; restored after.

    >>> with tb.exact_float32():
    ...     labels = goodnet(x.cuda())            # the CPU's labels, not TF32's
    """
    settings = _settings()
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in settings]
    try:
        for owner, name, value in settings:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


@contextmanager
def deterministic_torch(seed: int) -> Iterator[torch.Generator]:
    """Seed torch, switch on deterministic algorithms for the block, and yield a seeded generator."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # NaN-filling every buffer costs ~15% here
    try:
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.utils.deterministic.fill_uninitialized_memory = previous_fill
