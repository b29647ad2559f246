"""Run the `torch-badnet ARGS...` command in this process and write its peak RSS (MiB) to a file.

    python scripts/bench_cli_child.py PEAK_FILE ARGS...

The parent cannot use its own RUSAGE_CHILDREN / wait4 figure: a child forked from a large parent inherits the
parent's resident-set high-water mark across exec. VmHWM of the exec'd process counts only its own memory.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_mib() -> float:
    """This process's peak resident set: VmHWM on Linux, else ru_maxrss (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def main() -> None:
    """As `torch_badnet.cli.main.entry` (run, flush, leave without teardown), with the peak RSS written before leaving."""
    from torch_badnet.cli.main import leave
    from torch_badnet.cli.main import main as run

    peak_file, args = Path(sys.argv[1]), sys.argv[2:]
    sys.argv = ["torch_badnet", *args]
    try:
        code = run(args)
    finally:
        peak_file.write_text(f"{peak_rss_mib():.1f}\n")
    leave(code)


if __name__ == "__main__":
    main()
