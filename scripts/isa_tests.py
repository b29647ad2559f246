"""Run the fidelity tests (and, with --docs, the docs' blocks) again on the lower instruction sets of this CPU.

A float32 result depends on the kernels the CPU's instruction set selects (AVX-512, AVX2/FMA, AVX, SSE): another
accumulation order, another rounding. A test that passes only with this machine's best kernels is a defect, so
each lower level reruns the tests in a fresh process (the libraries read these variables when they load):

    level   oneDNN (torch, TensorFlow)   MKL              torch's own kernels   numpy's dispatched kernels off
    avx2    ONEDNN_MAX_CPU_ISA=AVX2       AVX2             ATEN_CPU_CAPABILITY=avx2     X86_V4 AVX512_ICL AVX512_SPR
    avx     AVX                           AVX              default              X86_V3 and the above
    sse41   SSE41                         SSE4_2           default              X86_V3 and the above

Levels at or above what the CPU has are skipped (on an AVX2 machine: avx and sse41). Usage:

    python scripts/isa_tests.py                 # the fidelity files on every lower level
    python scripts/isa_tests.py --quick         # what .ci/run adds: the core fidelity tests, next lower level only
    python scripts/isa_tests.py --docs          # also tests/test_docs.py on the docs that print Keras fidelity
    python scripts/isa_tests.py --all --level avx   # the whole test suite on one level (about as long as the suite)
    python scripts/isa_tests.py --level avx -- -k lab3   # one level; pytest arguments after --

Exit status: 0 when every level passed, else the first failing level's pytest status.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMPY_AVX512 = "X86_V4 AVX512_ICL AVX512_SPR"
LEVELS: dict[str, dict[str, str]] = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
             "NPY_DISABLE_CPU_FEATURES": NUMPY_AVX512},
    "avx": {"ONEDNN_MAX_CPU_ISA": "AVX", "MKL_ENABLE_INSTRUCTIONS": "AVX", "ATEN_CPU_CAPABILITY": "default",
            "NPY_DISABLE_CPU_FEATURES": f"X86_V3 {NUMPY_AVX512}"},
    "sse41": {"ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ATEN_CPU_CAPABILITY": "default",
              "NPY_DISABLE_CPU_FEATURES": f"X86_V3 {NUMPY_AVX512}"},
}
RANK = {"sse41": 0, "avx": 1, "avx2": 2, "avx512": 3}
# the tests that compare our numbers with Keras / onnxruntime / float64 (docs/fidelity.md)
FIDELITY_FILES = ["tests/test_keras_import.py", "tests/test_keras_graph.py", "tests/test_onnx.py", "tests/test_verify.py",
                  "tests/test_keras_reference.py", "tests/test_keras_model_files.py",
                  "tests/test_cli.py::test_convert_to_checkpoint_with_verify"]
# what CI runs (--quick, one level: the one right below the CPU's): the float32-vs-Keras comparisons on the real
# weights, the Keras graphs and `convert --verify`, without the long Keras procedure and model-file round trips
QUICK_FILES = ["tests/test_keras_import.py", "tests/test_keras_graph.py", "tests/test_verify.py",
               "tests/test_cli.py::test_convert_to_checkpoint_with_verify"]
# the docs whose shown output holds a CPU-dependent number (checked within its stated bound)
DOC_TESTS = ["tests/test_docs.py::test_code_blocks_run_as_printed[cli]",
             "tests/test_docs.py::test_code_blocks_run_as_printed[formats]"]


def cpu_level(flags: set[str]) -> str:
    """The best level of a CPU with these /proc/cpuinfo flags."""
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags and "fma" in flags:
        return "avx2"
    return "avx" if "avx" in flags else "sse41"


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((row for row in text.splitlines() if row.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def lower_levels(best: str) -> list[str]:
    """The levels below `best`, highest first."""
    return sorted((level for level in LEVELS if RANK[level] < RANK[best]), key=RANK.get, reverse=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--level", choices=sorted(LEVELS), action="append", help="run only this level (repeatable)")
    parser.add_argument("--docs", action="store_true", help="also run the docs' blocks that print fidelity numbers")
    parser.add_argument("--quick", action="store_true", help="CI's pass: the next lower level only, on the core fidelity tests")
    parser.add_argument("--all", action="store_true", help="the whole test suite, not only the fidelity files")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args(argv)
    best = cpu_level(cpu_flags())
    levels = args.level or lower_levels(best)[: 1 if args.quick else None]
    if not levels:
        print(f"isa_tests: this CPU's best level is {best}; there is no lower level to test")
        return 0
    if args.all and (args.quick or args.docs):
        parser.error("--all runs every test already; it takes neither --quick nor --docs")
    targets = [] if args.all else (QUICK_FILES if args.quick else FIDELITY_FILES) + (DOC_TESTS if args.docs else [])
    for level in levels:
        env = {**os.environ, **LEVELS[level], "TF_CPP_MIN_LOG_LEVEL": "3"}
        started = time.perf_counter()
        print(f"isa_tests: {level} (this CPU: {best}): " + " ".join(f"{k}={v}" for k, v in LEVELS[level].items()), flush=True)
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets, *args.pytest_args],
                              cwd=ROOT, env=env)
        print(f"isa_tests: {level} {'passed' if done.returncode == 0 else 'FAILED'} in {time.perf_counter() - started:.0f} s",
              flush=True)
        if done.returncode:
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
