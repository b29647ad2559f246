#!/usr/bin/env python
"""A first sweep in a fresh process against a second sweep in the same process (issue 34): phases of each.

    python scripts/bench_warm.py [--count N] [--scale F] [--rounds R] [--machine NAME | --json OUT]

Two cases, each round in a fresh child process that runs the same sweep twice (`defense.sweep.run_sweep`, as
`torch-badnet sweep` runs it, without file output): `files`, the four lab-layout files of N real-face images each
(`real_faces.write_lab_files`, the tests' lab files; N = 520 gives the issue's 2,080 images), and `lab_size`,
the lab's set sizes times F in memory (`bench_inputs.load_inputs`, as scripts/bench_sweep.py). Per sweep: its
phases (read+trunk, rank, prune, metrics), wall and process CPU seconds, minor page faults, context switches
and the 1-minute load average. A per-process cost shows as a first sweep slower than the second; the prune /
read+trunk ratio is issue 34's target (<= 0.3 at lab size, prune <= 1.0 s on 2,080 images).
On a shared machine wall seconds mostly measure the load: compare first and second sweep within a child, and
see benchmarks/README.md (issue 34) for how the load inflates the phases.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_args import add_results_arguments, resolve_results_path

ROOT = Path(__file__).resolve().parents[1]
REAL_MODEL = Path(os.environ.get("TORCH_BADNET_REAL", ROOT.parent / "shared" / "real")) / "models" / "lab3_bd_weights.h5"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=520, help="images per lab file in the files case (default 520: 2,080 in all)")
    p.add_argument("--scale", type=float, default=1.0, help="lab_size case: the lab's set sizes times F (default 1; 0 skips it)")
    p.add_argument("--rounds", type=int, default=3, help="fresh child processes per case (default 3)")
    p.add_argument("--threads", type=int, help="torch CPU threads in the children (default: torch's own choice)")
    add_results_arguments(p)
    p.add_argument("--child", choices=("files", "lab_size"), help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.count < 1 or args.scale < 0 or args.rounds < 1:
        p.error("--count and --rounds must be positive, --scale at least 0")
    resolve_results_path(p, args)
    return args


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Two sweeps of one case in this (fresh) process; imports timed apart from the sweeps."""
    started = time.perf_counter()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from torch_badnet.defense import sweep
    from torch_badnet.engine import lab_head
    from torch_badnet.report.phases import PhaseTimer

    machine_busy = getattr(lab_head, "machine_busy", lambda: False)  # before issue 34 the head had no pool

    if args.child == "files":
        from torch_badnet.convert import read_model_file

        model = read_model_file(REAL_MODEL).model.eval()
        d = args.dir
        specs = [sweep.DataSpec("valid", "clean", d / "cl" / "valid.h5"), sweep.DataSpec("valid", "poisoned", d / "bd" / "bd_valid.h5"),
                 sweep.DataSpec("test", "clean", d / "cl" / "test.h5"), sweep.DataSpec("test", "poisoned", d / "bd" / "bd_test.h5")]

        def run(timer: PhaseTimer) -> None:
            sweep.run_sweep(model, specs, sweep.SweepConfig(), timer)
    else:
        sys.path.insert(0, str(ROOT / "scripts"))
        from bench_inputs import load_inputs
        from bench_measure import sweep_in_memory

        inputs = load_inputs(args.scale, 0, lambda _: None)
        model, sets = inputs.model, inputs.sets

        def run(timer: PhaseTimer) -> None:
            sweep_in_memory(model, sets, torch.device("cpu"), timer=timer)

    out: dict[str, Any] = {"setup_s": round(time.perf_counter() - started, 3), "threads": torch.get_num_threads(), "sweeps": []}
    for _ in range(2):
        timer = PhaseTimer()
        busy = machine_busy() and torch.get_num_threads() > 1  # lab_head.head_pool's choice (taken again in the sweep)
        before, wall, cpu = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), time.process_time()
        run(timer)
        after = resource.getrusage(resource.RUSAGE_SELF)
        phases = {name: round(s, 3) for name, s in timer.seconds.items() if name != "startup"}
        out["sweeps"].append({
            "wall_s": round(time.perf_counter() - wall, 3), "cpu_s": round(time.process_time() - cpu, 3), "phases_s": phases,
            "prune_over_trunk": round(phases["prune"] / phases["read+trunk"], 3),
            "minor_faults": after.ru_minflt - before.ru_minflt, "voluntary_switches": after.ru_nvcsw - before.ru_nvcsw,
            "involuntary_switches": after.ru_nivcsw - before.ru_nivcsw, "load_1min": round(os.getloadavg()[0], 2),
            "head_pool": busy})
    return out


def rounds(args: argparse.Namespace, case: str, data: Path | None) -> list[dict[str, Any]]:
    """`args.rounds` fresh children of one case."""
    results = []
    for r in range(args.rounds):
        cmd = [sys.executable, __file__, "--child", case, "--scale", str(args.scale)]
        cmd += ["--dir", str(data)] if data else []
        cmd += ["--threads", str(args.threads)] if args.threads else []
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results.append(json.loads(done.stdout.splitlines()[-1]))
        first, second = (s["phases_s"] for s in results[-1]["sweeps"])
        print(f"[{datetime.datetime.now():%H:%M:%S}] {case} round {r + 1}: first {first}, second {second}", file=sys.stderr, flush=True)
    return results


def summary(case_rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per phase, the first and the second sweep's median over the rounds."""
    def median(values: list[float]) -> float:
        return round(float(statistics.median(values)), 3)

    out: dict[str, Any] = {}
    for which, index in (("first", 0), ("second", 1)):
        sweeps = [r["sweeps"][index] for r in case_rounds]
        out[which] = {"prune_s": median([s["phases_s"]["prune"] for s in sweeps]),
                      "read+trunk_s": median([s["phases_s"]["read+trunk"] for s in sweeps]),
                      "prune_over_trunk": median([s["prune_over_trunk"] for s in sweeps]),
                      "minor_faults": median([s["minor_faults"] for s in sweeps])}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    sys.path.insert(0, str(ROOT / "scripts"))
    import torch
    from bench_sweep import machine

    from torch_badnet.data.files import write_text
    from torch_badnet.data.real_faces import write_lab_files

    results: dict[str, Any] = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                               "machine": machine(torch.device("cpu")), "model": str(REAL_MODEL.name),
                               "load_before": [round(v, 2) for v in os.getloadavg()], "cases": {}}
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        write_lab_files(Path(tmp), args.count)
        files = rounds(args, "files", Path(tmp))
    results["cases"]["files"] = {"images": 4 * args.count, "rounds": files, "median": summary(files)}
    if args.scale:
        lab = rounds(args, "lab_size", None)
        results["cases"]["lab_size"] = {"scale": args.scale, "rounds": lab, "median": summary(lab)}
    results["load_after"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(results, indent=2) + "\n"
    print(json.dumps({case: value["median"] for case, value in results["cases"].items()}, indent=2))
    if args.json:
        write_text(args.json, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
