#!/usr/bin/env python
"""Benchmark `torch-badnet batch` against the same models swept one by one with `torch-badnet sweep` (issue 25).

    python scripts/bench_batch.py [--scale F] [--models 10] [--workers N] [--rounds R] [--device cpu|cuda] [--json OUT]

Inputs: the real lab3 BadNet (../shared/real; else the demo's) and perturbed copies of it (seeded, saved as .pt),
sharing one set of four float64 lab files of the lab's sizes times F (scripts/bench_inputs.py, as bench_sweep.py).
Measured, each command a fresh process: `sequential_s`, the wall time of the N `torch-badnet sweep` commands run
one after another; `batch_s`, one `torch-badnet batch` over the same N models. Memory: `sweep_peak_rss_mib`, the
largest VmHWM of the sweeps (each process's own peak, scripts/bench_cli_child.py); the batch's whole process tree
(parent, pool workers, hashing children) sampled every 50 ms: `batch_peak_pss_mib`, the peak of the summed PSS
(proportional set size: pages shared by workers, such as the mapped data, count once in all) and, for reference,
`batch_peak_rss_sum_mib` (shared pages counted in every process that maps them). Targets: batch_s <= 0.7 x
sequential_s; batch_peak_pss_mib <= 1.5 x sweep_peak_rss_mib + 300 MiB per worker beyond the first; the same batch
run again (`rerun_s`, every model reused) under 10 s. `--rounds R` measures both R times, in alternating order
(sequential then batch, then batch then sequential, ...), so a machine whose speed drifts during the run weighs on
both alike: the times are the rounds' means, the ratio their sums', the memory the largest peaks.
`models_alone_over_sequential`: the batch's floor, its models' own seconds shared among the workers, without any of
the batch's start-up, reading, hashing or tail (at or above 0.7, the time target cannot be met on that machine).
Results with the CPU (lscpu) go to benchmarks/batch-cpu.json (or --json OUT; a GPU run to batch-gpu.json).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TARGET_TIME_RATIO = 0.7
TARGET_MEMORY_FACTOR, TARGET_MEMORY_PER_WORKER_MIB = 1.5, 300.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="set sizes = the lab's times F (default 1)")
    p.add_argument("--models", type=int, default=10, help="models in the batch (default 10)")
    p.add_argument("--workers", type=int, help="the batch's --workers (default: its own, one per core)")
    p.add_argument("--rounds", type=int, default=1, help="measure sequential and batch R times, alternating which goes first")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda: every sweep and the batch use it")
    p.add_argument("--json", type=Path, help="where to write the results (default benchmarks/batch-cpu.json, "
                                             "batch-gpu.json with --device cuda)")
    args = p.parse_args(argv)
    args.json = args.json or ROOT / "benchmarks" / f"batch-{'gpu' if args.device.startswith('cuda') else 'cpu'}.json"
    return args


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S} load {os.getloadavg()[0]:.2f}] {message}", file=sys.stderr, flush=True)


def make_inputs(folder: Path, scale: float, models: int) -> tuple[dict[str, Path], list[Path], str]:
    """The four float64 lab files and the models (lab3 and perturbed .pt copies)."""
    import numpy as np
    import torch
    from bench_inputs import load_inputs

    from torch_badnet.data.lab_sets import write_lab_h5
    from torch_badnet.nets.checkpoint import save_checkpoint

    inputs = load_inputs(scale, log=log)
    paths = {}
    for name, (x, y) in inputs.sets.items():
        paths[name] = folder / f"{name}.h5"
        write_lab_h5(paths[name], x.numpy().astype(np.float64), y.numpy().astype(np.float64))
    nets = [inputs.model_path]
    for k in range(1, models):
        net = copy.deepcopy(inputs.model)
        generator = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * p.std() * 0.03)
        nets.append(folder / f"model{k}.pt")
        save_checkpoint(net, nets[-1])
    if hasattr(os, "sync"):
        os.sync()
    return paths, nets, f"{inputs.model_source}; pixels: {inputs.pixel_source}; {inputs.images} images"


def data_flags(paths: dict[str, Path]) -> list[str]:
    return [f"--{name.replace('_', '-')}={paths[name]}" for name in ("clean_valid", "poisoned_valid", "clean_test", "poisoned_test")]


def run_sweeps(folder: Path, paths: dict[str, Path], nets: list[Path], device: str) -> tuple[float, float, list[float]]:
    """N sweeps one after another, each a fresh process: (wall seconds, largest peak RSS MiB, each sweep's seconds)."""
    child = ROOT / "scripts" / "bench_cli_child.py"
    peaks, walls = [], []
    start = time.perf_counter()
    for k, net in enumerate(nets):
        peak_file = folder / "peak"
        began = time.perf_counter()
        subprocess.run([sys.executable, str(child), str(peak_file), "sweep", "--model", str(net), *data_flags(paths),
                        "--out", str(folder / f"sweep{k}"), "--device", device], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL, env=_env())
        walls.append(time.perf_counter() - began)
        peaks.append(float(peak_file.read_text()))
    return time.perf_counter() - start, max(peaks), walls


def run_batch(folder: Path, paths: dict[str, Path], nets: list[Path], device: str,
              workers: int | None) -> tuple[float, float, float, str]:
    """One batch: (wall seconds, peak summed PSS MiB, peak summed RSS MiB, its last line)."""
    manifest = folder / "manifest.csv"
    manifest.write_text("name,model\n" + "".join(f"model{k},{net}\n" for k, net in enumerate(nets)))
    command = [sys.executable, "-m", "torch_badnet", "batch", str(manifest), "--out", str(folder / "batch"),
               *data_flags(paths), "--device", device, *(["--workers", str(workers)] if workers else [])]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    peaks = {"pss": 0.0, "rss": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pss, rss = tree_memory(process.pid)
            peaks["pss"], peaks["rss"] = max(peaks["pss"], pss), max(peaks["rss"], rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"the batch failed ({process.returncode}):\n{output[-3000:]}")
    return wall, peaks["pss"], peaks["rss"], output.strip().splitlines()[-1]


def tree_memory(pid: int) -> tuple[float, float]:
    """(summed PSS, summed RSS) in MiB of `pid` and all its descendants (/proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    family, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    pss = rss = 0.0
    for p in family:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1]) / 1024
        except OSError:
            continue
    return pss, rss


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def machine(device: str) -> dict[str, Any]:
    import torch

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        lscpu = ""
    info = {"lscpu": {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lscpu.splitlines()) if v},
            "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        folder = Path(tmp)
        paths, nets, source = make_inputs(folder, args.scale, args.models)
        log(f"{len(nets)} models, inputs {source}; {args.rounds} round(s) of {args.models} sequential sweeps and a batch")
        sequentials, batches, sweep_peaks, pss_peaks, rss_peaks, sweep_walls, rows = [], [], [], [], [], [], []
        for round_ in range(args.rounds):
            for what in (("sequential", "batch") if round_ % 2 == 0 else ("batch", "sequential")):
                if what == "sequential":
                    sequential, sweep_peak, walls = run_sweeps(folder, paths, nets, args.device)
                    sequentials.append(sequential)
                    sweep_peaks.append(sweep_peak)
                    sweep_walls.extend(walls)
                    log(f"round {round_ + 1}: sequential {sequential:.1f} s")
                    continue
                shutil.rmtree(folder / "batch", ignore_errors=True)
                batch, pss, rss, last = run_batch(folder, paths, nets, args.device, args.workers)
                batches.append(batch)
                pss_peaks.append(pss)
                rss_peaks.append(rss)
                log(f"round {round_ + 1}: batch {batch:.1f} s: {last}")
                rows += json.loads((folder / "batch" / "batch.json").read_text())["models"]  # before a rerun marks them reused
        rerun, _, _, rerun_last = run_batch(folder, paths, nets, args.device, args.workers)
        log(f"rerun {rerun:.1f} s: {rerun_last}")
        reused = json.loads((folder / "batch" / "batch.json").read_text())["counts"]["reused"]
        from torch_badnet.batch.run import available_cores

        workers = min(args.workers or available_cores(), len(nets))
        sizes = {n: round(p.stat().st_size / 2**20, 1) for n, p in paths.items()}
    sequential, batch = sum(sequentials) / args.rounds, sum(batches) / args.rounds
    sweep_peak, pss, rss = max(sweep_peaks), max(pss_peaks), max(rss_peaks)
    memory_limit = TARGET_MEMORY_FACTOR * sweep_peak + TARGET_MEMORY_PER_WORKER_MIB * (workers - 1)
    results = {
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(args.device), "load_1min_at_end": round(os.getloadavg()[0], 2),
        "scale": args.scale, "models": len(nets), "workers": workers, "inputs": source,
        "file_sizes_mib": sizes,
        "sequential_s": round(sequential, 2), "sweep_runs_s": [round(w, 2) for w in sweep_walls],
        "batch_s": round(batch, 2), "batch_model_seconds": [r["seconds"] for r in rows],
        "batch_over_sequential": round(batch / sequential, 3), "rounds": args.rounds,
        # the batch's floor: its models alone, `workers` at a time, with none of its own start-up, reading or tail
        "models_alone_over_sequential": round(sum(r["seconds"] for r in rows) / workers / args.rounds / sequential, 3),
        "sequential_rounds_s": [round(t, 2) for t in sequentials], "batch_rounds_s": [round(t, 2) for t in batches],
        "batch_over_sequential_per_round": [round(b / q, 3) for b, q in zip(batches, sequentials)],
        "batch_peak_pss_rounds_mib": [round(m, 1) for m in pss_peaks],
        "models_per_minute": round(60 * len(nets) / batch, 2),
        "rerun_s": round(rerun, 2), "rerun_reused": reused,
        "sweep_peak_rss_mib": round(sweep_peak, 1), "batch_peak_pss_mib": round(pss, 1),
        "batch_peak_rss_sum_mib": round(rss, 1), "memory_measure": "batch: summed PSS of the process tree, sampled "
        "every 50 ms (RSS sum for reference); sweep: VmHWM of each sweep process",
        "targets": {
            "batch_over_sequential<=0.7": batch / sequential <= TARGET_TIME_RATIO,
            f"batch_peak_pss<={memory_limit:.0f}MiB": pss <= memory_limit,
            "rerun_with_nothing_to_do<10s": rerun < 10 and reused == len(nets),
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("sequential_s", "batch_s", "batch_over_sequential", "rerun_s", "sweep_peak_rss_mib",
                                              "batch_peak_pss_mib", "batch_peak_rss_sum_mib", "targets")}, indent=2))
    log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
