"""`torch-badnet demo`: build (or reuse) the embedded demo BadNet and data, then run the whole defense."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import device_from, log, output_folder
from .finetune import config_from
from .sweep import add_sweep_options, run_defense

HELP = "build the embedded demo (its own BadNet and lab-layout data, cached) and run the defense on it"
DEFAULT_OUT = "demo-results"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help=HELP, description=HELP)
    p.add_argument("--workdir", metavar="DIR", help="where the demo workspace is built and cached "
                   "(default: the user cache dir, e.g. ~/.cache/torch-badnet)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: ./{DEFAULT_OUT})")
    p.add_argument("--seed", type=int, default=0, help="demo seed (default 0; only seed 0 has shipped weights, "
                   "other seeds train their BadNet here)")
    p.add_argument("--retrain", action="store_true", help="train the demo BadNet on this machine into the workspace "
                   "instead of using the weights shipped in the package (numbers then depend on the CPU)")
    add_sweep_options(p, finetune_seed_flag="--finetune-seed")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoConfig, ensure_workspace

    device_from(args)  # bad flags are refused before the (first-run) build
    if args.finetune:
        config_from(args)
    target = output_folder(args, Path(args.out), [])  # refuse a foreign or busy --out before the (first-run) build
    config = DemoConfig(seed=args.seed)
    ws = ensure_workspace(Path(args.workdir) if args.workdir else None, config, log=log, retrain=args.retrain)
    log(f"demo workspace: {ws.root} ({'built now' if ws.built else 'reused from cache'})")
    weights = "the package's weights" if ws.model_source == "package" else f"trained here: {ws.model}"
    run_defense(args, ws.model, ws.clean_valid, ws.poisoned_valid, ws.clean_test, ws.poisoned_test,
                title=f"Pruning defense on the demo BadNet, seed {args.seed} ({weights})", target=target)
    return 0
