"""What the live-column probe costs a sweep, cold (no verdict cached) and cached, where a candidate passes and where none does.

    python scripts/bench_probe.py [--repeats 5] [--json OUT]

Each measurement is a fresh process (the verdict is also cached per process) that times
`live_gemm.verified_group` for the sweep head's shapes, with the cache in a temporary folder: "cold" starts from
an empty folder, "cached" from the verdict the cold run wrote. "passes" uses the real candidate list; "none passes"
leaves out the group this machine's BLAS passes (at most one candidate can pass), as on a CPU or BLAS that sums
differently. Also timed: the uncached full probe (`exact_group`), what every sweep paid before the cache. Each
process runs one GEMM of each shape before the clock starts: the BLAS's first-call set-up is the sweep's cost
anyway, not the probe's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from torch_badnet.data.files import write_text


def child(candidates: list[int], function: str) -> None:
    """Time one call in this fresh process; print seconds and the group found."""
    import torch

    from torch_badnet.engine import live_gemm
    from torch_badnet.engine.lab_head import ROW_BLOCK

    live_gemm.GROUP_CANDIDATES = tuple(candidates)
    shapes = ((960, 160), (160, 1283))  # fc_2 and the output layer, as HeadUpdater passes them
    probe = getattr(live_gemm, function)
    for inputs, outputs in shapes:  # the BLAS's own first-call set-up, which the sweep pays for its GEMMs anyway
        torch.addmm(torch.zeros(outputs), torch.ones(ROW_BLOCK, inputs), torch.ones(inputs, outputs))
    start = time.perf_counter()
    group = probe(ROW_BLOCK, shapes, torch.get_num_threads(), torch.float32)
    print(json.dumps({"seconds": time.perf_counter() - start, "group": group}))


def measure(candidates: list[int], function: str, cache: Path) -> dict:
    env = {**os.environ, "TORCH_BADNET_CACHE": str(cache)}
    done = subprocess.run([sys.executable, __file__, "--child", function, *map(str, candidates)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per case (default 5)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child([int(c) for c in args.child[1:]], args.child[0])
        return 0

    from torch_badnet.engine.live_gemm import GROUP_CANDIDATES

    with tempfile.TemporaryDirectory() as tmp:
        found = measure(list(GROUP_CANDIDATES), "exact_group", Path(tmp) / "probe")["group"]
    cases = {"passes": list(GROUP_CANDIDATES), "none passes": [c for c in GROUP_CANDIDATES if c != found]}
    results: dict = {"machine": platform.processor() or platform.machine(), "load": os.getloadavg()[0],
                     "group_found": found, "cases": {}}
    for case, candidates in cases.items():
        runs: dict[str, list[float]] = {"uncached probe (before)": [], "cold": [], "cached": []}
        groups = set()
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                cache = Path(tmp)
                for name, function in (("uncached probe (before)", "exact_group"), ("cold", "verified_group"),
                                       ("cached", "verified_group")):
                    result = measure(candidates, function, cache)
                    runs[name].append(result["seconds"])
                    groups.add(result["group"])
        assert len(groups) == 1, f"{case}: the probe gave {groups}"
        results["cases"][case] = {"group": groups.pop(), **{k: {"median_ms": 1000 * statistics.median(v),
                                                               "runs_ms": [round(1000 * s, 1) for s in v]}
                                                           for k, v in runs.items()}}
        for name, value in results["cases"][case].items():
            if isinstance(value, dict):
                print(f"{case:12s} {name:24s} median {value['median_ms']:8.1f} ms  runs {value['runs_ms']}")
    print(f"group this machine's BLAS passes: {found}; load average at the start: {results['load']:.2f}")
    if args.json:
        write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
