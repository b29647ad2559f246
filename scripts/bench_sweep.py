#!/usr/bin/env python
"""Benchmark the pruning sweep against the reference procedure (mask + full forward per step), PyTorch and Keras.

    python scripts/bench_sweep.py [--scale F] [--machine NAME | --json OUT] [--device cpu|cuda]

Inputs are the lab's set sizes times F (valid 11,547 and test 12,830 images, clean and poisoned). Measured:
forward_s (one plain forward over all images), seed_torch_s_per_step / seed_keras_s_per_step (the reference
procedure, k steps, per step; Keras also as the fastest step), sweep_s (the engine's whole run_sweep from
in-memory pixels: trunk, ranking, every step, B' and G metrics) and what a user runs, each command a fresh
process on float64 lab files on disk: cli_sweep_s (`torch-badnet sweep`), cli_eval_s (`torch-badnet eval` of
the four sets: two commands) and peak_rss_mb; then the ratios of the issue-16 targets (on a GPU also its goal,
sweep_s <= 0.3 s). sweep_phases_s: the engine's phases in a first run (on a GPU it pays CUDA's warm-up); each
round also records its run's phases. The engine sweep, the Keras steps and the
CLI commands run interleaved, in --repeats rounds (`rounds` in the results), so each target compares runs made
within minutes of each other: this machine's speed drifts by 10-20% over tens of minutes.
Timings are medians; the 1-minute load average is recorded with each run (the machine may be shared: on a busy
machine run with OMP_WAIT_POLICY=passive, see benchmarks/README.md; the setting is recorded under machine.env).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_args import add_results_arguments, resolve_results_path
from bench_inputs import load_inputs
from bench_measure import (
    CliRunner,
    KerasReference,
    Sets,
    Timing,
    forward_all,
    goodnet_throughput,
    sweep_in_memory,
    time_torch_reference,
    timed,
)

from torch_badnet.data.files import write_text
from torch_badnet.engine.lab_head import CPU_TRUNK_BATCH, prepare_model, resolve_device
from torch_badnet.nets.badnet import BadNet
from torch_badnet.nets.precision import exact_float32
from torch_badnet.nets.predict import GPU_FORWARD_BATCH
from torch_badnet.report.phases import PhaseTimer

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ENV_KNOBS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "KMP_BLOCKTIME", "TF_NUM_INTRAOP_THREADS")
TARGET_KERAS_SPEEDUP = 30.0  # seed_keras_s_per_step * steps / sweep_s at least this
TARGET_SWEEP_OVER_FORWARD = 2.0  # sweep_s / forward_s at most this
TARGET_PEAK_RSS_MB = 1500.0  # CLI children's peak RSS at most this (MiB)
TARGET_CLI_SWEEP_KERAS_SPEEDUP = 60.0  # fastest Keras step * steps / cli_sweep_s at least this
TARGET_CLI_EVAL_KERAS_SPEEDUP = 1.3  # fastest Keras step (one predict of the four sets) / cli_eval_s at least this
TARGET_CLI_SWEEP_OVER_EVAL = 1.5  # cli_sweep_s / cli_eval_s at most this
TARGET_CLI_SWEEP_OVER_ENGINE = 1.25  # cli_sweep_s / sweep_s at most this
TARGET_GPU_SWEEP_S = 0.3  # on a GPU (issue 16: an H100): sweep_s at most this many seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="set sizes = the lab's times F (default 1)")
    add_results_arguments(p)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--repeats", type=int, default=3, help="runs per timing; the median is reported (default 3)")
    p.add_argument("--reference-steps", type=int, default=3, metavar="K",
                   help="steps of the reference procedures to time (default 3)")
    p.add_argument("--batch", type=int, help="batch size of the plain forward passes (default: the engine's trunk "
                                             f"batch on CPU, {CPU_TRUNK_BATCH}; on CUDA {GPU_FORWARD_BATCH}, the commands' own)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--keras-batch", type=int, help="Keras predict batch size (default: Keras' own, 32, as the lab)")
    p.add_argument("--no-keras", action="store_true", help="skip the Keras reference")
    p.add_argument("--keras-lab-form", action="store_true",
                   help="also time each Keras step on what the lab's eval.py passes to predict (float64, a transposed "
                        "view; ~6 GB more memory at scale 1): seed_keras_lab_form_*, for information, not a target")
    p.add_argument("--no-cli", action="store_true", help="skip the CLI run on lab files (peak RSS)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.scale <= 0 or args.repeats < 1 or args.reference_steps < 1:
        p.error("--scale, --repeats and --reference-steps must be positive")
    resolve_results_path(p, args)
    return args


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "device": str(device), "mkldnn": torch.backends.mkldnn.is_available(),
            "env": {k: os.environ[k] for k in ENV_KNOBS if k in os.environ}}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    elif not torch.cuda.is_available():
        info["gpu"] = "none: no CUDA device on this machine, so no GPU run was done here"
    return info


def log(message: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S} load {os.getloadavg()[0]:.2f}] {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch is None:
        args.batch = CPU_TRUNK_BATCH if device.type == "cpu" else GPU_FORWARD_BATCH
    inputs = load_inputs(args.scale, args.seed, log)
    sets = {name: (x.to(device), y.to(device)) for name, (x, y) in inputs.sets.items()}
    model = prepare_model(inputs.model, device)
    results: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "scale": args.scale,
        "images": inputs.images, "set_sizes": {n: int(x.shape[0]) for n, (x, _) in sets.items()},
        "model": inputs.model_source, "pixels": inputs.pixel_source, "machine": machine(device),
        "load_before": [round(v, 2) for v in os.getloadavg()],
    }
    log(f"{inputs.images} images ({inputs.pixel_source}), model {inputs.model_source}, device {device}")

    timer = PhaseTimer()  # a first engine run: its phases, and the order the references prune in
    result = sweep_in_memory(model, sets, device, timer=timer)
    results.update(steps=result.steps)
    results["sweep_phases_s"] = engine_phases(timer)
    log(f"sweep phases {results['sweep_phases_s']}")

    forward = timed(lambda: forward_all(model, sets, args.batch), args.repeats, device)
    results.update(forward_s=forward.median, forward=forward.as_dict(), forward_batch=args.batch)
    log(f"forward_s {forward.median:.2f} {forward.seconds}")

    torch_ref = time_torch_reference(model, sets, result.order, args.reference_steps, args.batch, device)
    results.update(seed_torch_s_per_step=torch_ref.median, seed_torch=torch_ref.as_dict())
    log(f"seed_torch_s_per_step {torch_ref.median:.2f} {torch_ref.seconds}")

    pruned = result.thresholds[-1].pruned_channels if result.thresholds[-1].reached else result.order[:result.steps // 2]
    rate = goodnet_throughput(model, sets, pruned, args.batch, device, args.repeats)
    results.update(goodnet_images_per_s=rate)
    log(f"goodnet {rate:.0f} images/s")

    keras = None if args.no_keras else KerasReference.build(model, sets, result.order, args.keras_batch, args.keras_lab_form)
    model = prepare_model(model, device)  # to_keras moved it to the CPU
    cli = None if args.no_cli else CliRunner(inputs.model_path, sets, "cuda" if device.type == "cuda" else "cpu", log)
    with cli or contextlib.nullcontext():
        results.update(side_by_side(args, model, sets, device, keras, cli))
    if keras is not None:
        results.update(seed_keras_s_per_step=keras.timing.median, seed_keras_fastest_s=min(keras.timing.seconds),
                       seed_keras=keras.timing.as_dict(), keras=keras.version, keras_batch=args.keras_batch or 32)
        if keras.lab_form_timing.seconds:
            results.update(seed_keras_lab_form_fastest_s=min(keras.lab_form_timing.seconds),
                           seed_keras_lab_form=keras.lab_form_timing.as_dict())
    else:
        results["seed_keras_s_per_step"] = results["seed_keras_fastest_s"] = None
    if cli is not None:
        results.update(cli.results())
        log(f"cli sweep {results['cli_sweep_s']:.2f} s, eval {results['cli_eval_s']:.2f} s, "
            f"peak RSS {results['peak_rss_mb']:.0f} MiB; {results['cli_sweep_phases']}")
    else:
        results["peak_rss_mb"] = None
    results["load_after"] = [round(v, 2) for v in os.getloadavg()]
    results["targets"] = targets(results)
    if results.get("seed_keras_lab_form_fastest_s") and results.get("cli_sweep_s"):
        fastest = results["seed_keras_lab_form_fastest_s"]  # information beside the targets, which use seed_keras_fastest_s
        results["against_keras_lab_form"] = {"cli_sweep_keras_speedup": fastest * results["steps"] / results["cli_sweep_s"],
                                             "cli_eval_keras_speedup": fastest / results["cli_eval_s"]}
    return results


def engine_phases(timer: PhaseTimer) -> dict[str, float]:
    """An in-memory engine run's phases in seconds (its timer's startup phase is the process's, not the run's)."""
    return {name: round(seconds, 4) for name, seconds in timer.seconds.items() if name != "startup"}


def side_by_side(args: argparse.Namespace, model: BadNet, sets: Sets, device: torch.device,
                 keras: KerasReference | None, cli: CliRunner | None) -> dict[str, Any]:
    """The timings the targets compare, interleaved: each round runs the engine sweep, its share of the Keras
    steps and the CLI commands, so every ratio compares runs made within minutes of each other (this machine's
    speed drifts by 10-20% over tens of minutes). sweep_s is the median of the rounds' engine runs."""
    sweep = Timing()
    rounds: list[dict[str, Any]] = []
    keras_steps = [len(range(r, args.reference_steps, args.repeats)) for r in range(args.repeats)]  # round-robin
    k = 0
    for r in range(args.repeats):
        timer = PhaseTimer()
        timed(lambda t=timer: sweep_in_memory(model, sets, device, timer=t), 1, device, sweep)
        row: dict[str, Any] = {"sweep_s": round(sweep.seconds[-1], 3), "sweep_phases_s": engine_phases(timer)}
        if keras is not None:
            row["keras_steps_s"] = []
            for _ in range(keras_steps[r]):
                k += 1
                row["keras_steps_s"].append(round(keras.step(k), 3))
                if keras.lab_form:
                    row.setdefault("keras_lab_form_steps_s", []).append(round(keras.step(k, lab_form=True), 3))
        if cli is not None:
            row["cli_sweep_s"], row["cli_eval_s"] = (round(t, 3) for t in cli.run_round())
        rounds.append(row)
        log(f"round {r + 1}: {row}")
    return {"sweep_s": sweep.median, "sweep": sweep.as_dict(), "rounds": rounds}


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """The targets (engine: issue 3; what users run: issue 16), each with its measured value and whether it holds."""
    out: dict[str, Any] = {}

    def check(name: str, value: float, limit: float, at_least: bool) -> None:
        out[name] = {"value": value, "target": f"{'>=' if at_least else '<='} {limit:g}",
                     "met": value >= limit if at_least else value <= limit}

    if r.get("seed_keras_s_per_step"):
        check("keras_speedup", r["seed_keras_s_per_step"] * r["steps"] / r["sweep_s"], TARGET_KERAS_SPEEDUP, True)
    check("sweep_over_forward", r["sweep_s"] / r["forward_s"], TARGET_SWEEP_OVER_FORWARD, False)
    if r["machine"]["device"].startswith("cuda"):
        check("gpu_sweep_s", r["sweep_s"], TARGET_GPU_SWEEP_S, False)
    if r.get("peak_rss_mb") is not None:
        check("peak_rss_mb", r["peak_rss_mb"], TARGET_PEAK_RSS_MB, False)
    if r.get("cli_sweep_s") is not None:
        if r.get("seed_keras_fastest_s"):
            check("cli_sweep_keras_speedup", r["seed_keras_fastest_s"] * r["steps"] / r["cli_sweep_s"],
                  TARGET_CLI_SWEEP_KERAS_SPEEDUP, True)
            check("cli_eval_keras_speedup", r["seed_keras_fastest_s"] / r["cli_eval_s"], TARGET_CLI_EVAL_KERAS_SPEEDUP, True)
        check("cli_sweep_over_eval", r["cli_sweep_s"] / r["cli_eval_s"], TARGET_CLI_SWEEP_OVER_EVAL, False)
        check("cli_sweep_over_engine", r["cli_sweep_s"] / r["sweep_s"], TARGET_CLI_SWEEP_OVER_ENGINE, False)
    return out


def table(r: dict[str, Any]) -> str:
    m = r["machine"]
    rows = [
        ("machine", f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['device']}"),
        ("images", f"{r['images']} (scale {r['scale']:g}), {r['steps']} steps"),
        ("forward_s", f"{r['forward_s']:.2f} (batch {r['forward_batch']}; CPU {r['forward']['cpu_median_s']:.2f})"),
        ("seed_torch_s_per_step", f"{r['seed_torch_s_per_step']:.2f}"),
        ("seed_keras_s_per_step", "not measured" if r["seed_keras_s_per_step"] is None
         else f"{r['seed_keras_s_per_step']:.2f} (fastest {r['seed_keras_fastest_s']:.2f}; batch {r['keras_batch']})"),
        *([("seed_keras_lab_form", f"fastest {r['seed_keras_lab_form_fastest_s']:.2f} (runs {r['seed_keras_lab_form']['runs_s']}; "
            f"the lab's float64 view; not a target)")] if r.get("seed_keras_lab_form_fastest_s") else []),
        ("sweep_s", f"{r['sweep_s']:.3f} (CPU {r['sweep']['cpu_median_s']:.2f}; runs {r['sweep']['runs_s']})"),
        ("sweep phases", ", ".join(f"{k} {v:.3f} s" for k, v in r.get("sweep_phases_s", {}).items())),
        ("goodnet_images_per_s", f"{r['goodnet_images_per_s']:.0f}"),
    ]
    if r.get("peak_rss_mb") is not None:
        rows += [("cli_sweep_s", f"{r['cli_sweep_s']:.2f} {r['cli_sweep_runs_s']}"),
                 ("cli_eval_s", f"{r['cli_eval_s']:.2f} {r['cli_eval_runs_s']} (two eval commands: valid, test)"),
                 ("peak_rss_mb", f"{r['peak_rss_mb']:.0f} {r['peak_rss_mb_by_command']}"),
                 ("cli sweep phases", r["cli_sweep_phases"])]
    scale_note = "" if r["scale"] == 1 else " (the targets are set for scale 1)"
    rows += [(f"target {name}", f"{t['value']:.2f} ({t['target']}): {'met' if t['met'] else 'NOT met'}{scale_note}")
             for name, t in r["targets"].items()]
    rows += [(f"vs lab-form Keras: {name}", f"{value:.2f} (information)") for name, value in r.get("against_keras_lab_form", {}).items()]
    rows.append(("load average", f"{r['load_before']} -> {r['load_after']}"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with exact_float32():  # on a GPU: the IEEE float32 path the CLI runs, not TF32
        results = run(args)
    print(table(results))
    if args.json:
        write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
