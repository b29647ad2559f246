"""`torch-badnet demo`: build (or reuse) the embedded demo BadNet and data, then run the whole defense."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import device_from, log, output_folder
from .finetune import config_from
from .sweep import add_sweep_options, run_defense

TRAIN_TIME = "about 90 s on 2 CPU cores"  # demo.workspace.train_estimate of the default config (not imported: --help)
HELP = "build the embedded demo (its own BadNet and lab-layout data, cached) and run the defense on it"
DEFAULT_OUT = "demo-results"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help=HELP, description=HELP)
    p.add_argument("--workdir", metavar="DIR", help="where the demo workspace is built and cached "
                   "(default: the user cache dir, e.g. ~/.cache/torch-badnet)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: ./{DEFAULT_OUT})")
    p.add_argument("--data-seed", type=int, metavar="S", help="seed of the demo's faces (default 0; only data seed 0 "
                   f"has shipped weights: any other trains its BadNet here first, {TRAIN_TIME})")
    p.add_argument("--seed", type=int, dest="old_seed", metavar="S", help="deprecated name of --data-seed")
    p.add_argument("--retrain", action="store_true", help="train the demo BadNet on this machine into the workspace "
                   "instead of using the weights shipped in the package (numbers then depend on the CPU)")
    add_sweep_options(p, finetune_seed_flag="--finetune-seed")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ...demo import DemoConfig, ensure_workspace

    seed = data_seed(args)
    device_from(args)  # bad flags are refused before the (first-run) build
    if args.finetune:
        config_from(args)
    target = output_folder(args, Path(args.out), [])  # refuse a foreign or busy --out before the (first-run) build
    config = DemoConfig(seed=seed)
    ws = ensure_workspace(Path(args.workdir) if args.workdir else None, config, log=log, retrain=args.retrain)
    log(f"demo workspace: {ws.root} ({'built now' if ws.built else 'reused from cache'})")
    weights = "the package's weights" if ws.model_source == "package" else f"trained here: {ws.model}"
    run_defense(args, ws.model, ws.clean_valid, ws.poisoned_valid, ws.clean_test, ws.poisoned_test,
                title=f"Pruning defense on the demo BadNet, seed {seed} ({weights})", target=target)
    return 0


def data_seed(args: argparse.Namespace) -> int:
    """--data-seed, or the deprecated --seed (with a warning: other seeds than 0 retrain the BadNet)."""
    from ...errors import BadInputError

    for flag, value in (("--data-seed", args.data_seed), ("--seed", args.old_seed)):
        if value is not None and value < 0:
            raise BadInputError(flag, f"{value} is not a seed (a whole number >= 0)")
    if args.old_seed is None:
        return 0 if args.data_seed is None else args.data_seed
    if args.data_seed is not None and args.data_seed != args.old_seed:
        raise BadInputError("--seed", "is the old name of --data-seed: give only --data-seed")
    retrains = (f"; data seed {args.old_seed} has no shipped weights: the demo trains its own BadNet for it "
                f"({TRAIN_TIME}, once, then cached)")
    log(f"warning: --seed: deprecated in the demo, use --data-seed: it seeds the demo's faces, not fine-tuning "
        f"(that is --finetune-seed){retrains if args.old_seed != 0 else ''}")
    return args.old_seed
