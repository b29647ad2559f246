"""`torch-badnet sweep`: the whole pruning defense on lab files (`pipeline.prune_sweep`), written to --out."""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import (
    add_data_arguments,
    add_device_argument,
    add_force_argument,
    add_model_argument,
    add_trigger_arguments,
    closing_line,
    data_keywords,
    device_from,
    input_paths,
    log,
    open_model_flag,
    output_folder,
    source_flags,
    trigger_files,
)
from .finetune import add_finetune_options, config_from

if TYPE_CHECKING:
    from ...report.outdir import OutputFolder

HELP = ("rank the pruned layer's channels (--layer; the lab nets: conv_3, ranked on pool_3), prune them one by one, "
        "pick B'_X per threshold X, build the GoodNet")
DEFAULT_THRESHOLDS = (2.0, 4.0, 10.0)


def add_sweep_options(p: argparse.ArgumentParser, finetune_seed_flag: str = "--seed") -> None:
    """Options shared by `sweep` and `demo`."""
    from ...defense.rules import DROP_KINDS, STOP_RULES

    p.add_argument("--thresholds", nargs="+", type=float, default=list(DEFAULT_THRESHOLDS), metavar="X",
                   help="accuracy drops X in (0, 100) that define B'_X (default: 2 4 10)")
    p.add_argument("--stop", choices=STOP_RULES, default=STOP_RULES[0],
                   help="first-over (default, the lab's): first step whose drop is >= X; "
                        "last-within: the step before it, whose drop is still < X")
    p.add_argument("--drop", choices=DROP_KINDS, default=DROP_KINDS[0],
                   help="X in percentage points (default) or in percent of the original accuracy")
    p.add_argument("--max-steps", type=int, metavar="K", help="prune at most K channels (default: all of the layer's)")
    p.add_argument("--layer", metavar="NAME", help="the layer whose output channels are pruned (default: conv_3 for the "
                                                   "lab nets, the last Conv2D for Keras models, the feature map that "
                                                   "the classifier's pooling or flatten reads for torch models, e.g. "
                                                   "layer4); a Keras model's layer name")
    p.add_argument("--rank-on", metavar="NAME", help="the layer whose output ranks the channels (default: the pooling "
                                                     "layer right after --layer, else --layer itself)")
    p.add_argument("--no-plot", action="store_true", help="skip sweep.png")
    p.add_argument("--verbose", action="store_true", help="print the wall time of each phase on one line (stderr)")
    add_force_argument(p)
    p.add_argument("--finetune", action="store_true",
                   help="also fine-tune every B'_X on the clean validation data (Fine-Pruning) and report B'_ft and G_ft")
    add_device_argument(p)
    group = p.add_argument_group("fine-tuning (with --finetune)")
    add_finetune_options(group, finetune_seed_flag)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sweep", help=HELP, description=HELP)
    add_model_argument(p, pruned=False)
    p.add_argument("--clean-valid", required=True, metavar="C", help="clean validation set: ranks channels, defines X "
                   "(a lab .h5 file, an .npz file, IMAGES.npy,LABELS.npy or an image folder DIR/<class>/*.png)")
    p.add_argument("--poisoned-valid", action="append", metavar="[NAME=]P",
                   help="poisoned validation set (any layout --clean-valid takes); repeat as NAME=PATH for several "
                        "triggers; or none, with --trigger")
    p.add_argument("--clean-test", metavar="CT", help="clean test set")
    p.add_argument("--poisoned-test", action="append", metavar="[NAME=]PT",
                   help="poisoned test set; repeat as NAME=PATH for several triggers")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_data_arguments(p)
    add_trigger_arguments(p)
    add_sweep_options(p)
    p.set_defaults(run=run, before_torch=start_hashing)


def start_hashing(args: argparse.Namespace) -> None:
    """Start hashing the input files (summary.json's sha256s) before torch is imported: the hashing child
    process then has the core the import leaves idle."""
    from ...data.files import prefetch_sha256

    files = input_files(args.model, args.clean_valid, args.poisoned_valid, args.clean_test, args.poisoned_test)
    prefetch_sha256(p for p in files if not Path(p).is_dir())


def run(args: argparse.Namespace) -> int:
    run_defense(args, args.model, args.clean_valid, args.poisoned_valid, args.clean_test, args.poisoned_test)
    return 0


def input_files(model_path: str | Path, clean_valid: Any, poisoned_valid: Any, clean_test: Any = None,
                poisoned_test: Any = None) -> list:
    """The model and data files of one run (both files of an .npy pair; an image folder as itself)."""
    from ...data.set_names import data_files  # torch-free: hashing starts before torch is imported

    poisoned = [*input_paths(poisoned_valid, "--poisoned-valid"), *input_paths(poisoned_test, "--poisoned-test")]
    data = [f for p in (clean_valid, clean_test, *poisoned) if p is not None for f in data_files(p)]
    return [model_path, *data]


def run_defense(args: argparse.Namespace, model_path: str | Path, clean_valid: Any, poisoned_valid: Any,
                clean_test: Any = None, poisoned_test: Any = None, title: str | None = None,
                target: OutputFolder | None = None) -> None:
    """Parse-free core of `sweep` and `demo`: call `pipeline.prune_sweep`, save to --out, print the table.
    `target`: --out as the caller (the demo) already checked and locked it."""
    from ...defense.pipeline import prune_sweep
    from ...report.phases import NoTimer, PhaseTimer

    timer = PhaseTimer() if args.verbose else NoTimer()  # its first phase, startup, covers the imports
    out = Path(args.out)
    device_from(args)  # a bad --device or fine-tuning flag is refused before any work
    keywords = sweep_keywords(args)
    data = data_keywords(args)  # --classes and the trigger, read and checked before any work
    if target is None:
        inputs = input_files(model_path, clean_valid, poisoned_valid, clean_test, poisoned_test) + trigger_files(args)
        target = output_folder(args, out, inputs)  # checked and locked before any work
    with timer.phase("load model"):
        flags = (getattr(args, f, None) for f in ("rescale", "mean", "std"))  # demo: no --rescale
        model = open_model_flag(str(model_path), *flags, **source_flags(args)).model
    with ThreadPoolExecutor(1, thread_name_prefix="torch-badnet-background") as pool:
        if not args.no_plot:
            from ...report.plot import import_pyplot

            pool.submit(import_pyplot)  # matplotlib's imports (~0.5 s) overlap the sweep
        result = prune_sweep(model, clean_valid, poisoned_valid, clean_test, poisoned_test, **keywords, **data,
                             show_progress=sys.stderr.isatty(), log=log, timer=timer)
    written = result.save(target, plot=not args.no_plot, timer=timer)
    if result.sweep.net is not None and any(t.reached for t in result.thresholds):
        from ...defense.pipeline import keras_h5_problem

        problem = keras_h5_problem(model, result.sweep.net.layer)
        if problem:
            log(f"note: no pruned.h5 (the Keras model) was written, only pruned.pt: {problem}")
    if args.verbose:
        log(timer.line())
    if data.get("trigger") is not None:
        print(data["trigger"].describe())
    print(result.table(title or f"Pruning defense of {model_path} ({args.stop}, {args.drop} drop)"))
    print("\n" + closing_line(out, written, f" ({timing_note(result, getattr(args, 'started', None))}){unreached_note(result)}"))
    if target.note():
        log(target.note())


def sweep_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """`prune_sweep`'s keywords from the sweep's flags (shared with `batch`, whose rows hold the same flags)."""
    return {"thresholds": args.thresholds, "stop": args.stop, "drop": args.drop, "max_steps": args.max_steps,
            "layer": getattr(args, "layer", None), "rank_on": getattr(args, "rank_on", None),
            "device": args.device, "finetune": config_from(args) if args.finetune else False}


def timing_note(result, started: float | None) -> str:
    """What the closing line says about time: the sweep's, fine-tuning's, and the whole run's since `started`
    (the command's start: with the demo, its workspace too; None: the sweep's start)."""
    import time

    tuned = len(result.finetuned)
    finetuning = f", fine-tuning {tuned} net{'s' if tuned != 1 else ''} in {result.finetune_seconds:.1f} s" if tuned else ""
    total = time.perf_counter() - started if started is not None else None
    whole = f"; {total:.1f} s in all" if total is not None else ""
    net = result.sweep.net  # a generic model's pruned layer and ranking point
    layer = f" of {net.layer}, ranked on {net.rank_on}," if net is not None else ""
    return (f"{result.sweep.steps} steps{layer} on {sum(result.sweep.sizes.values())} images in {result.seconds:.1f} s"
            f"{finetuning}{whole} on {result.device}")


def unreached_note(result) -> str:
    """What the closing line says about thresholds the sweep did not reach (and so wrote no model for)."""
    missed = [f"{t.x:g}" for t in result.thresholds if not t.reached]
    if not missed:
        return ""
    xs = ", ".join(missed)
    if len(missed) == len(result.thresholds):
        return f"; no threshold was reached (X = {xs} within {result.sweep.steps} steps), so no pruned model was written"
    return f"; X = {xs} not reached within {result.sweep.steps} steps, so no model for it"
