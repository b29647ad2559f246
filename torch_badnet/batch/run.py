"""`tb.prune_batch` / `torch-badnet batch`: the defense over every model of a manifest, into one folder.

    >>> result = tb.prune_batch("manifest.csv", "results/", clean_valid="cl/valid.h5", poisoned_valid="bd/bd_valid.h5")
    >>> [row["status"] for row in result.rows]          # done | reused | failed

Flow: read and check the manifest (nothing runs on a bad one) -> lock DIR -> hash every input once (in
background processes) while the data files are read once into shared memory -> skip every model whose
finished result carries the same fingerprint -> run the rest on a local process pool or on Ray -> one row
per model in batch.csv/batch.json (rewritten as models finish) and batch.png.

DIR/<name>/ holds exactly what `torch-badnet sweep --out` writes for that model, plus fingerprint.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.files import remove_path
from ..errors import BadInputError, first_line
from ..report.outdir import MARKER, OutputFolder, is_result
from .data import SharedData
from .manifest import DATA_COLUMNS, RESERVED_NAMES, BatchItem, ManifestParseError, cell_argv, option_columns, option_parser, read_manifest
from .report import model_row, plot_batch, progress_line, write_tables
from .task import FINGERPRINT, Task, init_worker, run_task, warm_up

LOCK = ".batch.lock"  # in DIR: held (flock) while a batch writes there; its presence marks DIR as a batch's
MAX_RETRIES = 3  # runs of a model whose worker process died, before it is reported failed
Log = Callable[[str], None]


@dataclass
class BatchResult:
    """A finished batch: one row per model, in manifest order (see batch_report.model_row)."""

    out: Path
    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "failed"]

    def row(self, name: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["name"] == name)


def prune_batch(manifest: str | os.PathLike[str], out: str | os.PathLike[str], *, workers: int | None = None,
                ray: str | None = None, gpus_per_model: float = 0.0, device: str = "auto", rerun: bool = False,
                force: bool = False, progress: bool = False, log: Log | None = None, **options: Any) -> BatchResult:
    """Run `prune_sweep` on every model of `manifest` (a CSV: see torch_badnet.batch.manifest) into `out`/<name>/.

    `options`: what fills the cells a row leaves empty, under the column names (`clean_valid`,
    `poisoned_valid` (a path or a list of [NAME=]PATH), `thresholds`, `finetune`, `max_steps`, `seed`, ...).
    `workers`: local worker processes (default: one per core, the cores' torch threads shared among them).
    `ray`: "auto" or a cluster address to run on Ray instead (`gpus_per_model` GPUs per task). `rerun`: run
    models whose earlier result matches their fingerprint too. A failed model gets its error row; the others
    finish. Ctrl-C / SIGTERM stops the batch keeping every finished model (KeyboardInterrupt is raised).

    >>> result = tb.prune_batch("models.csv", "results/", clean_valid="cl/valid.h5", poisoned_valid="bd/bd_valid.h5",
    ...                         thresholds=[2, 4], workers=2)
    >>> result.row("student7")["x4_test_asr"], result.failed
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    items = read_manifest(manifest, defaults(options))
    for item in items:
        item.options["device"] = device
        check_options(Path(manifest), item)
    if workers is not None and workers < 1:
        raise BadInputError("--workers", "must be at least 1")
    if gpus_per_model < 0 or (gpus_per_model and ray is None):
        raise BadInputError("--gpus-per-model", "must be >= 0 and needs --ray (local workers share --device)")
    ray_module = connect_ray(ray) if ray is not None else None
    out = check_folder(Path(out), force, items, log)
    with lock(out), terminate_as_interrupt():
        clear_leftovers(out)
        make_room(out, items, force, log)
        try:
            return Batch(Path(manifest), out, items, ray_module, log, progress).run(rerun, workers, gpus_per_model)
        finally:  # the workers have ended: what those killed by Ctrl-C / SIGTERM were staging
            clear_leftovers(out)


def defaults(options: dict[str, Any]) -> dict[str, Any]:
    """prune_batch's keywords (column names) -> manifest defaults (argparse dests); unknown names: TypeError."""
    parser = option_parser()
    columns = option_columns(parser)
    result = {}
    for key, value in options.items():
        if key in DATA_COLUMNS:
            result[key] = [value] if key.startswith("poisoned") and isinstance(value, (str, os.PathLike)) else value
            if result[key] is not None and key.startswith("poisoned"):
                result[key] = [str(v) for v in result[key]]
            elif result[key] is not None:
                result[key] = str(result[key])
        elif key in columns:
            if value is not None:  # as its flag would give it (2 -> 2.0, "1/255" stays text): one fingerprint per setting
                result[columns[key].dest] = parsed_option(parser, key, columns[key], value)
        else:
            raise TypeError(f"prune_batch got an unknown option {key!r} (columns: {', '.join([*DATA_COLUMNS, *columns])})")
    return result


def parsed_option(parser: argparse.ArgumentParser, column: str, action: argparse.Action, value: Any) -> Any:
    """A keyword's value read by the sweep's parser, as a manifest cell holding it would be."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (list, tuple)):
        text = " ".join(str(v) for v in value)
    else:
        text = str(value)
    try:
        return getattr(parser.parse_args(cell_argv(column, action, text)), action.dest)
    except ManifestParseError as exc:
        raise BadInputError(column, str(exc)) from None


def check_options(manifest: Path, item: BatchItem) -> None:
    """The sweep's own checks of a row's settings, before anything runs: `MANIFEST: row R, column C: problem`."""
    from ..cli.commands.sweep import sweep_keywords
    from ..defense.pipeline import check_steps
    from ..nets.rescale import parse_rescale

    args = argparse.Namespace(**item.options)
    try:
        check_passed_through(args)
        sweep_keywords(args)
        check_steps(args.thresholds, args.max_steps)
        parse_rescale(None if args.rescale is None else str(args.rescale))
        check_preprocessing(item.model, args)
    except BadInputError as exc:
        column = exc.path.lstrip("-").replace("-", "_") if exc.path.startswith("--") else "finetune settings"
        raise BadInputError(manifest, f"row {item.row}, column {column}: {exc.problem}") from None


def check_preprocessing(model: str, args: argparse.Namespace) -> None:
    """A row's --rescale / --mean / --std against its model, as `sweep` checks them when it loads the model (a
    count of values the model does not take, a scale or normalisation the file contradicts). Other problems of
    the model file are the row's own failure, reported when it runs."""
    from ..cli.commands.common import preprocessing_flags
    from ..nets.loading import load_model_file
    from ..nets.rescale import FLAG, MEAN_FLAG, STD_FLAG

    rescale, mean, std = preprocessing_flags(args)
    if rescale is None and mean is None and std is None:
        return
    try:
        load_model_file(model, rescale, None, mean, std)
    except BadInputError as exc:
        if exc.path in (FLAG, MEAN_FLAG, STD_FLAG):
            raise


def check_passed_through(args: argparse.Namespace) -> None:
    """A row's `layer` / `rank_on` must be something this version's prune_sweep takes."""
    import inspect

    from ..defense.pipeline import PRUNABLE_LAYERS, prune_sweep
    from .task import passed_through

    takes = inspect.signature(prune_sweep).parameters
    for key, value in passed_through(args).items():
        flag = f"--{key.replace('_', '-')}"
        if key not in takes:
            raise BadInputError(flag, "this version's sweep has no such setting")
        if key == "layer" and value not in PRUNABLE_LAYERS and "rank_on" not in takes:  # before generic models
            raise BadInputError(flag, f"{value!r} cannot be pruned; the lab architecture prunes {', '.join(PRUNABLE_LAYERS)}")


def connect_ray(address: str):
    """The ray module, connected: "auto" joins the running cluster (RAY_ADDRESS, else a local one it starts)."""
    try:
        import ray
    except ImportError:
        raise BadInputError("--ray", "Ray is not installed: pip install 'torch-badnet[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "auto" else address, log_to_driver=False)
        except Exception as exc:  # Ray's connection errors have no common base class
            raise BadInputError("--ray", f"cannot connect to {address} ({first_line(exc)})") from None
    return ray


def check_folder(out: Path, force: bool, items: list[BatchItem], log: Log) -> Path:
    """DIR: new, empty, a previous batch's (it holds .batch.lock) or, with `force`, any other folder, which is
    then moved aside whole to DIR.replaced-<time> (one line says so); never one that holds an input of the
    batch."""
    from ..report.outdir import move_aside

    if out.exists() and not out.is_dir():
        raise BadInputError(out, "exists and is not a folder")
    target = Path(os.path.realpath(out))
    if target == Path(target.anchor) or Path.cwd().resolve().is_relative_to(target):
        raise BadInputError(out, "is the current folder or one above it; write the batch to a subfolder")
    foreign = out.is_dir() and any(out.iterdir()) and not (out / LOCK).exists()
    if foreign and not force:
        raise BadInputError(out, "is not empty and holds no torch-badnet batch (no .batch.lock); choose an empty "
                                 "or new folder, or pass --force to move it aside (nothing is deleted) and write the batch there")
    for item in items:
        for path in item.files():
            if foreign and Path(os.path.realpath(path)).is_relative_to(target):
                raise BadInputError(out, f"holds {path}, an input of the batch; use another folder")
            if Path(os.path.realpath(path)).is_relative_to(target / item.name):
                raise BadInputError(out, f"{item.name}/ would replace {path}, an input of the batch; use another folder")
    if foreign:
        aside = move_aside(out)
        log(f"moved {out} aside to {out.with_name(aside.name)} (--force: it held no torch-badnet batch)")
    return out


def make_room(out: Path, items: list[BatchItem], force: bool, log: Log) -> None:
    """What the batch will write in DIR (batch.csv/json/png, each model's folder) must hold nothing torch-badnet
    did not write (its FILES lists): else refused, or with `force` moved aside to `<name>.replaced-<time>`, one
    line each. Anything else in DIR is never touched."""
    from ..data.sha256_worker import sha256_of
    from ..report.outdir import foreign_entries, move_aside, name_some, recorded_files, refusal

    listed = recorded_files(out) or {}
    crowded: list[tuple[Path, str]] = []
    for name in sorted(RESERVED_NAMES):
        path = out / name
        if os.path.lexists(path) and (path.is_symlink() or not path.is_file() or listed.get(name) != sha256_of(path)):
            crowded.append((path, "was not written by torch-badnet (or changed since)"))
    for item in items:
        folder = out / item.name
        if os.path.lexists(folder) and (not folder.is_dir() or folder.is_symlink()):
            crowded.append((folder, "is not a result folder of torch-badnet"))
        elif folder.is_dir() and any(folder.iterdir()):
            foreign = foreign_entries(folder)
            if foreign:
                crowded.append((folder, refusal(folder, foreign, advice=False)))
    if crowded and not force:
        path, problem = crowded[0]
        more = f" (and {name_some([p.name for p, _ in crowded[1:]])})" if len(crowded) > 1 else ""
        raise BadInputError(path, f"{problem}{more}; move it away, or pass --force to move it aside (nothing is deleted)")
    for path, _ in crowded:
        aside = move_aside(path)
        log(f"moved {path} aside to {aside} (--force: torch-badnet did not write all of it)")


def write_table_list(out: Path) -> None:
    """DIR's FILES list: the batch's own files there (batch.csv/json/png; each model folder lists its own)."""
    from ..report.outdir import write_file_list

    write_file_list(out, [name for name in sorted(RESERVED_NAMES) if (out / name).is_file()])


@contextlib.contextmanager
def lock(out: Path) -> Iterator[None]:
    """Hold DIR against a concurrent batch (flock on DIR/.batch.lock; released when the process ends)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "a") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BadInputError(out, "another torch-badnet batch is writing into it; wait for it or choose "
                                     "another folder") from None
        yield


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the batch as Ctrl-C does (finished models kept, workers stopped)."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def clear_leftovers(out: Path) -> None:
    """Staging folders and temporary files a killed batch left in DIR (hidden; never a result)."""
    for pattern in (".*.staging", ".*.old", ".batch.*.tmp*"):
        for path in out.glob(pattern):
            remove_path(path)


class Batch:
    """One run of prune_batch: fingerprints, shared data, the workers, and the rows as models finish."""

    def __init__(self, manifest: Path, out: Path, items: list[BatchItem], ray: Any, log: Log, progress: bool) -> None:
        self.manifest, self.out, self.items, self.ray, self.log = manifest, out, items, ray, log
        self.progress = progress
        self.rows: dict[str, dict[str, Any]] = {}
        self.meta = {"manifest": str(manifest), "out": str(out), "runner": f"ray {ray.__version__}" if ray else "local"}
        self.bar = None

    def run(self, rerun: bool, workers: int | None, gpus_per_model: float) -> BatchResult:
        from tqdm import tqdm

        from ..data.files import prefetch_sha256
        from ..report.results import versions

        self.meta["versions"] = versions()
        prefetch_sha256(dict.fromkeys(p for item in self.items for p in item.files()))
        self.bar = tqdm(total=len(self.items), unit="model", desc="batch", disable=not self.progress, file=sys.stderr)
        maybe = {i.name for i in self.items if not rerun and (self.out / i.name / FINGERPRINT).is_file()}
        pool = shared = None
        try:
            if self.ray is None and len(self.items) > len(maybe):  # the workers read the data, then run the models
                pool = LocalPool(workers, len(self.items) - len(maybe))
            shared = SharedData(self.ray, pool, self.log)
            for item in self.items:  # read what must run while the inputs are hashed
                if item.name not in maybe:
                    self._read(shared, item)
            tasks = []
            for item in self.items:
                inputs, fingerprint = fingerprint_of(item)
                if item.name in maybe and self._reuse(item.name, fingerprint):
                    continue
                self._read(shared, item)
                handles = shared.handles_for(item.files()[1:], label_order(item))
                tasks.append(Task(item.name, item.model, item.data, item.options, inputs, fingerprint, handles,
                                  arch_roots(item.options.get("arch"))))
            if tasks:
                if self.ray is not None:
                    self._run_ray(tasks, gpus_per_model)
                else:
                    self._run_local(tasks, workers, pool)
        except BaseException:
            if pool is not None:  # Ctrl-C while the workers convert the data: stop them now
                pool.kill()
            raise
        finally:
            if pool is not None:
                pool.close()
            self.bar.close()
            if shared is not None:
                shared.close()
            self._write()  # also when interrupted: the finished models' rows
        result = BatchResult(self.out, self._ordered(), self.meta)
        plot_batch(result.rows, self.out / "batch.png")
        write_table_list(self.out)
        return result

    def _read(self, shared: SharedData, item: BatchItem) -> None:
        for path in item.files()[1:]:
            shared.add(path, label_order(item))

    def _reuse(self, name: str, fingerprint: dict[str, Any], status: str = "reused") -> bool:
        """A finished result in DIR/<name> with this fingerprint: its row (from its summary.json) with `status`."""
        folder = self.out / name
        try:
            stored = json.loads((folder / FINGERPRINT).read_text(encoding="utf-8"))
            summary = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if stored != fingerprint or not is_result(folder):
            return False
        self._finish(model_row(name, status, 0.0, summary, None))
        return True

    def _finish(self, row: dict[str, Any]) -> None:
        self.rows[row["name"]] = row
        if self.bar is not None and not self.bar.disable:
            self.bar.write(progress_line(row), file=sys.stderr)
            self.bar.update()
        else:
            self.log(progress_line(row))
        self._write()

    def _outcome(self, outcome: dict[str, Any]) -> None:
        status = "failed" if outcome["error"] else "done"
        self._finish(model_row(outcome["name"], status, outcome["seconds"], outcome["summary"], outcome["error"]))

    def _ordered(self) -> list[dict[str, Any]]:
        return [self.rows[i.name] for i in self.items if i.name in self.rows]

    def _write(self) -> None:
        write_tables(self.out, self._ordered(), {**self.meta, "models_in_manifest": len(self.items)})
        write_table_list(self.out)

    def _run_local(self, tasks: list[Task], workers: int | None, pool: LocalPool | None) -> None:
        """On the local pool (`pool`, if started early); a pool whose worker died is replaced and its unfinished
        models run again, at most MAX_RETRIES times each."""
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        pending = {t.name: t for t in tasks}
        tries = dict.fromkeys(pending, 0)
        while pending:
            pool = pool if pool is not None and not pool.broken else LocalPool(workers, len(pending))
            futures = {pool.submit(run_task, t, str(self.out)): t for t in pending.values()}
            try:
                for future in as_completed(futures):
                    try:
                        outcome = future.result()
                    except BrokenProcessPool:
                        pool.broken = True
                        continue
                    del pending[futures[future].name]
                    self._outcome(outcome)
            except BaseException:
                pool.kill()
                raise
            finally:
                pool.close()  # every pool this made, too (closing twice is harmless)
            if pool.broken:
                self._retry(pending, tries)

    def _retry(self, pending: dict[str, Task], tries: dict[str, int]) -> None:
        for name, task in list(pending.items()):
            tries[name] += 1
            if self._reuse(name, task.fingerprint, "done"):  # the dead pool had finished it
                del pending[name]
            elif tries[name] > MAX_RETRIES:
                del pending[name]
                self._finish(model_row(name, "failed", 0.0, None, f"error: a worker process died {tries[name]} times "
                                                                  "running this model (killed, or out of memory?)"))
        if pending:
            self.log(f"a worker process died: running {len(pending)} unfinished model(s) again in fresh workers")

    def _run_ray(self, tasks: list[Task], gpus_per_model: float) -> None:
        """One Ray task per model (retried by Ray if its worker dies); the files come back and are written here."""
        from .task import run_ray_task

        ray = self.ray
        remote = ray.remote(max_retries=MAX_RETRIES, num_cpus=1, num_gpus=gpus_per_model)(run_ray_task)
        refs = {remote.remote(task): task for task in tasks}
        waiting = list(refs)
        try:
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=1)
                for ref in ready:
                    task = refs[ref]
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        outcome = {"name": task.name, "seconds": 0.0, "summary": None,
                                   "error": f"error: Ray could not run this model ({first_line(exc)})"}
                    if outcome.get("files"):
                        install(self.out / task.name, outcome["files"])
                    self._outcome(outcome)
        except BaseException:
            for ref in waiting:
                ray.cancel(ref, force=True)
            raise


PRELOAD = ["torch", "torch_badnet.batch.task", "torch_badnet.defense.pipeline", "torch_badnet.cli.commands.sweep"]


class LocalPool:
    """Worker processes with their share of the cores' torch threads, started before the data is read.

    On Linux they are forked from multiprocessing's fork server, which imports torch and the sweep's modules
    once (`PRELOAD`) and runs no torch op: every worker shares those pages with it (copy-on-write) instead of
    importing torch into memory of its own, and, unlike a fork of the batch itself, inherits none of its
    threads, locks or files. Elsewhere: spawned, each importing torch once."""

    def __init__(self, workers: int | None, tasks: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        cores = available_cores()
        count = min(workers or cores, tasks)
        self.broken = False
        if "forkserver" in multiprocessing.get_all_start_methods():
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)  # no effect once this process's fork server runs
        else:
            context = multiprocessing.get_context("spawn")
        self.executor = ProcessPoolExecutor(count, mp_context=context, initializer=init_worker,
                                            initargs=(max(1, cores // count),))
        for _ in range(count):  # starts every worker now (the executor starts one per waiting call)
            self.executor.submit(warm_up)

    def submit(self, *call: Any):
        return self.executor.submit(*call)

    def kill(self) -> None:
        """Stop the workers now (Ctrl-C, SIGTERM)."""
        _stop_workers(self.executor)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def fingerprint_of(item: BatchItem) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """(summary.json's inputs, the fingerprint): model and input sha256s (hashed once, `files.file_sha256`) and
    every option but the device (a GPU gives the CPU's numbers)."""
    from .. import __version__
    from ..cli.commands.common import data_keywords
    from ..data.files import file_sha256
    from ..defense.pipeline import input_record, sweep_specs

    data = data_keywords(argparse.Namespace(**item.options))  # --classes and the trigger of the row
    specs = sweep_specs(item.data["clean_valid"], item.data["poisoned_valid"], item.data["clean_test"],
                        item.data["poisoned_test"], **data)
    inputs = {spec.name: input_record(spec) for spec in specs}
    options = {k: v for k, v in sorted(item.options.items()) if k != "device"}
    fingerprint = {"model": {"path": item.model, "sha256": file_sha256(item.model)}, "inputs": inputs,
                   "options": json.loads(json.dumps(options)), "torch_badnet": __version__}
    return inputs, fingerprint


def label_order(item: BatchItem) -> tuple[str, ...] | None:
    """The row's --classes (an image folder's label order), read as `sweep` reads it."""
    from ..data.formats import parse_classes

    return parse_classes(item.options.get("classes"))


def arch_roots(arch: str | None) -> list[str]:
    """Where this process imports a row's --arch module from: the workers import it from there too."""
    if not arch:
        return []
    from ..convert.torch_sources import import_roots  # lazy: the core never imports the converter at import time

    return import_roots(arch)


def install(folder: Path, files: dict[str, bytes]) -> None:
    """A result's files (from a Ray worker) into DIR/<name>, staged and swapped in whole."""
    with OutputFolder(folder).staging() as staging:  # (make_room made sure it holds only a result, if anything)
        for name, data in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _stop_workers(pool: Any) -> None:
    """Kill a pool's worker processes now (ProcessPoolExecutor has no public way before Python 3.14)."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):  # None once the pool is shut down
        with contextlib.suppress(Exception):
            process.kill()
