"""Peak memory of streaming one lab-size float64 file: `torch-badnet eval --clean` on 11,547 images (~716 MB).

    python scripts/bench_read_rss.py [--json OUT]

Writes a float64 lab-layout file to a temp folder, runs the CLI in a child process and reads the child's
own peak RSS (VmHWM, see bench_cli_child.py). Target (issue 2): under 600 MB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from torch_badnet.data.files import write_text
from torch_badnet.data.real_faces import REAL_DIR

HERE = Path(__file__).resolve().parent

REAL_MODEL = REAL_DIR / "models" / "lab3_bd_weights.h5"
IMAGES = 11_547
TARGET_MB = 600


def write_lab_file(path: Path, n: int, seed: int = 0) -> None:
    """A float64 lab file written in slices, so this process never holds it whole."""
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        data = f.create_dataset("data", shape=(n, 3, 55, 47), dtype="f8")
        for start in range(0, n, 1000):
            stop = min(start + 1000, n)
            data[start:stop] = rng.integers(0, 256, size=(stop - start, 3, 55, 47)).astype(np.float64)
        f["label"] = rng.integers(0, 1283, size=n).astype(np.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--model", type=Path, default=REAL_MODEL, help="model file (default: the real lab3 weights)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data, peak = Path(tmp) / "valid.h5", Path(tmp) / "peak.txt"
        write_lab_file(data, IMAGES)
        started = time.perf_counter()
        subprocess.run([sys.executable, str(HERE / "bench_cli_child.py"), str(peak), "eval", "--model", str(args.model),
                        "--clean", str(data), "--device", "cpu"], check=True, stdout=subprocess.DEVNULL)
        result = {"images": IMAGES, "file_mb": round(data.stat().st_size / 2**20, 1),
                  "eval_wall_s": round(time.perf_counter() - started, 2),
                  "peak_rss_mb": float(peak.read_text()), "target_mb": TARGET_MB}
    result["met"] = result["peak_rss_mb"] < TARGET_MB
    print(json.dumps(result, indent=2))
    if args.json:
        write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
