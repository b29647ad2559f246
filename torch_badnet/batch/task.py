"""One model of a batch, in a worker: load it, sweep it on the shared data, write its result folder.

The result folder is what `torch-badnet sweep --out` writes, plus `fingerprint.json` (what it was computed
from), staged and swapped in whole: a folder is complete or absent. Errors become the one line the CLI
prints for them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from ..report.outdir import OutputFolder, written_files
from .data import Handle, file_key, open_file, trim_heap

FINGERPRINT = "fingerprint.json"  # beside summary.json in DIR/<name>/


@dataclass
class Task:
    """What a worker needs for one model (picklable; Ray ships it as is)."""

    name: str
    model: str
    data: dict[str, Any]  # manifest.DATA_COLUMNS -> a path, a list of [NAME=]PATH, or None
    options: dict[str, Any]  # the sweep's argparse dests
    inputs: dict[str, dict[str, str]]  # summary.json's inputs: set name -> {path, sha256}
    fingerprint: dict[str, Any]
    handles: dict[str, Handle]  # file_key -> shared data
    import_roots: list[str] = dataclasses.field(default_factory=list)  # where the driver imports --arch's module from


class FingerprintedFolder(OutputFolder):
    """DIR/<name>: replaced whole when it holds only what torch-badnet wrote (the batch made sure of it before
    the run: `run.make_room`), with fingerprint.json staged beside the result."""

    def __init__(self, out: Path, fingerprint: dict[str, Any]) -> None:
        super().__init__(out)
        self.fingerprint = fingerprint

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        with super().staging() as staging:
            yield staging
            (staging / FINGERPRINT).write_text(json.dumps(self.fingerprint, indent=2) + "\n", encoding="utf-8")


def init_worker(threads: int) -> None:
    """A pool worker: torch imported once, with its share of the cores; Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import threading

    import torch
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock, which a killed worker would leak

    torch.set_num_threads(threads)


def warm_up() -> None:
    """Import what a task needs (the sweep, its report and plot), while the parent still reads the data."""
    from ..cli.commands import sweep  # noqa: F401
    from ..defense import pipeline  # noqa: F401
    from ..report.plot import import_pyplot

    import_pyplot()


def run_task(task: Task, out: str | None) -> dict[str, Any]:
    """Sweep one model; write DIR/<name> (`out` = DIR) or, with `out` None (Ray), return its files' bytes.

    Returns {name, seconds, error, summary, files}: `error` is the CLI's one line, or None."""
    from ..nets.precision import exact_float32

    started = time.perf_counter()
    outcome: dict[str, Any] = {"name": task.name, "error": None, "summary": None, "files": None}
    try:
        with exact_float32():
            result, plot = sweep_model(task)
            if out is not None:
                result.save(FingerprintedFolder(Path(out) / task.name, task.fingerprint), plot=plot)
            else:
                with tempfile.TemporaryDirectory(prefix="torch-badnet-task-") as tmp:
                    folder = Path(tmp) / task.name
                    result.save(FingerprintedFolder(folder, task.fingerprint), plot=plot)
                    outcome["files"] = {name: (folder / name).read_bytes() for name in written_files(folder)}
        outcome["summary"] = result.summary()
    except BadInputError as exc:
        outcome["error"] = f"error: {exc.path}: {exc.problem}"
    except MemoryError:
        outcome["error"] = "error: out of memory (try --device cpu or smaller inputs)"
    except Exception as exc:  # a bug, not bad input: the CLI's one line
        outcome["error"] = f"error: internal error {type(exc).__name__}: {exc}"
    outcome["seconds"] = time.perf_counter() - started
    trim_heap()
    return outcome


def sweep_model(task: Task):
    """`torch-badnet sweep`'s work for one row, on the shared data: (DefenseResult, whether to plot)."""
    from ..cli.commands.common import data_keywords, preprocessing_flags
    from ..cli.commands.sweep import sweep_keywords
    from ..data.set_names import parse_poisoned
    from ..defense.pipeline import prune_sweep
    from ..nets.loading import load_model_file

    args = argparse.Namespace(**task.options)
    if task.import_roots:
        from ..convert.torch_sources import add_import_roots  # lazy: the core never imports the converter at import time

        add_import_roots(task.import_roots)
    keywords = {**passed_through(args), **sweep_keywords(args), **data_keywords(args)}  # checked before the model loads
    rescale, mean, std = preprocessing_flags(args)  # as sweep's --rescale, --mean, --std
    source = {key: getattr(args, key, None) for key in ("arch", "arch_kwargs")}  # the row's own class, imported here
    model = load_model_file(task.model, rescale, None, mean, std, allow_pickle=bool(getattr(args, "allow_pickle", False)),
                            **source).model

    def read(path: str | None):
        handle = task.handles[file_key(path, keywords["classes"])] if path is not None else None
        return None if handle is None else dataclasses.replace(open_file(handle), path=path)

    def read_poisoned(column: str):
        values = task.data[column]
        if not values:
            return None
        return {name: read(str(path)) for name, path in parse_poisoned(values, f"--{column.replace('_', '-')}")}

    sets = (read(task.data["clean_valid"]), read_poisoned("poisoned_valid"), read(task.data["clean_test"]),
            read_poisoned("poisoned_test"))
    result = prune_sweep(model, *sets, **keywords, show_progress=False)
    result.known_inputs(task.inputs)
    return result, not args.no_plot


def passed_through(args: argparse.Namespace) -> dict[str, Any]:
    """`layer` / `rank_on` from a row, for a prune_sweep that takes them (`sweep_keywords` passes its own flags)."""
    return {key: getattr(args, key) for key in ("layer", "rank_on") if getattr(args, key, None) is not None}


def run_ray_task(task: Task) -> dict[str, Any]:
    """The Ray task: a task's worker has its CPUs' share of torch threads; files come back to the driver."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    return run_task(task, None)
