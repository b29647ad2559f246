"""Wall time per phase of a command (`--verbose`): one line such as

    phases: startup 2.31 s | load model 0.09 s | read+trunk 5.10 s (reading 0.90 s) | prune 3.05 s | total 10.55 s
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator


class PhaseTimer:
    """Accumulates wall seconds per named phase, in first-seen order; `notes` annotate a phase."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.notes: dict[str, str] = {}
        startup = seconds_since_process_start()
        if startup is not None:
            self.seconds["startup"] = startup

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def note(self, name: str, text: str) -> None:
        self.notes[name] = text

    def total(self) -> float:
        """Wall seconds from the process start (or the timer's creation) to now."""
        return self.seconds.get("startup", 0.0) + time.perf_counter() - self.started

    def line(self) -> str:
        parts = [f"{name} {s:.2f} s" + (f" ({self.notes[name]})" if name in self.notes else "")
                 for name, s in self.seconds.items()]
        return "phases: " + " | ".join(parts + [f"total {self.total():.2f} s"])


def reading_note(seconds: float, read_ahead: bool) -> str:
    """The note on a read+compute phase: how much of it went to reading files."""
    return f"reading {seconds:.2f} s of it" + (", in a background thread" if read_ahead else "")


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (interpreter start and imports), from /proc; None elsewhere."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class NoTimer(PhaseTimer):
    """A timer that measures nothing (the default when --verbose is off)."""

    def __init__(self) -> None:
        self.started, self.seconds, self.notes = time.perf_counter(), {}, {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        yield
