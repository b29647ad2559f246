"""The sweep's input hashing, end to end: SCHED_IDLE child processes (today) against one plain background thread.

    python scripts/bench_hashing.py [--scale 1.0] [--rounds 3] [--json OUT]

Writes the four float64 lab-size files once (`--scale 1.0`: 48,754 augmented real faces, 2.9 GB; the real lab3
weights), then runs `torch-badnet sweep` on them as a fresh process in each mode, interleaved round by round (the
machine's speed drifts), and reports wall time, the `summary` phase (the wait for what is left of the hashing) and
peak RSS. Both modes must write the same sha256s into summary.json. `torch_badnet.data.files.HASHING` selects the mode:
switching the product is that one line. Decide on an idle machine; keep the simpler thread unless the children
are faster end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from bench_inputs import load_inputs
from bench_measure import CliRunner, _run_child

from torch_badnet.data.files import write_text

MODES = ("processes", "thread")


def child(mode: str, args: list[str]) -> None:
    """bench_cli_child.py's job (the CLI in this process, peak RSS written) with the hashing in `mode`."""
    import bench_cli_child

    import torch_badnet.data.files

    torch_badnet.data.files.HASHING = mode
    sys.argv = ["bench_cli_child.py", *args]
    bench_cli_child.main()


def main() -> int:
    if sys.argv[1:2] == ["--child"]:  # python bench_hashing.py --child MODE PEAK_FILE ARGS...
        child(sys.argv[2], sys.argv[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the lab's set sizes (default 1.0)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of both modes (default 3)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    inputs = load_inputs(args.scale, 0, lambda m: print(m, file=sys.stderr))
    results: dict = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "scale": args.scale,
                     "modes": {m: {"wall_s": [], "summary_s": [], "peak_mib": [], "load": []} for m in MODES}}
    digests: dict[str, object] = {}
    with CliRunner(inputs.model_path, inputs.sets, "cpu", lambda m: print(m, file=sys.stderr)) as runner:
        out = runner.root / "out"
        for _ in range(args.rounds):
            for mode in MODES:
                wall, peak, text = _run_child(runner.root, runner.sweep_args,
                                              launcher=[sys.executable, str(Path(__file__)), "--child", mode])
                row = results["modes"][mode]
                row["wall_s"].append(round(wall, 3))
                row["peak_mib"].append(round(peak, 1))
                row["load"].append(round(os.getloadavg()[0], 2))
                phases = next((line for line in text.splitlines() if line.startswith("phases:")), "")
                summary = [p for p in phases.split(" | ") if p.startswith("summary ")]
                row["summary_s"].append(float(summary[0].split()[1]) if summary else None)
                digests[mode] = json.loads((out / "summary.json").read_text())["inputs"]
    assert digests["processes"] == digests["thread"], "the two modes hashed differently"
    for mode in MODES:
        row = results["modes"][mode]
        row["median_wall_s"] = statistics.median(row["wall_s"])
        print(f"{mode:10s} wall median {row['median_wall_s']:.2f} s (runs {row['wall_s']}), summary wait "
              f"{row['summary_s']} s, peak RSS {max(row['peak_mib']):.0f} MiB, load {row['load']}")
    if args.json:
        write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
