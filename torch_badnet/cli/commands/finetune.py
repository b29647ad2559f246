"""`torch-badnet finetune`: fine-tune B'_X on clean validation data (mask fixed), evaluate B'_ft and G_ft."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    add_allow_unpaired_argument,
    add_data_arguments,
    add_device_argument,
    add_force_argument,
    add_model_argument,
    closing_line,
    data_keywords,
    device_from,
    input_paths,
    log,
    open_model_flag,
    open_pruned_flag,
    output_folder,
    preprocessing_flags,
    source_flags,
)

HELP = "fine-tune a pruned B' on clean validation data (pruned channels stay zero) and evaluate it"


def add_finetune_options(p: argparse.ArgumentParser, seed_flag: str = "--seed") -> None:
    """Options shared by `finetune`, `sweep --finetune` and `demo --finetune` (where --seed is the demo's)."""
    from ...defense.finetune_config import OPTIMIZERS, SGD_MOMENTUM, FinetuneConfig

    d = FinetuneConfig()
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"at most E epochs (default {d.epochs})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help=f"adam, or sgd with momentum {SGD_MOMENTUM:g} (default {d.optimizer})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr:g})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, metavar="WD",
                   help=f"L2 weight decay; it removes the weights clean data does not use (default {d.weight_decay:g})")
    p.add_argument("--train-conv-1", action="store_true",
                   help="also train conv_1 (of another model: its first Conv2d; default: kept fixed, it reads the pixels)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"batch size (default {d.batch_size})")
    p.add_argument(seed_flag, dest="finetune_seed", type=int, default=d.seed,
                   help=f"seed of the holdout split and batch order (default {d.seed})")
    p.add_argument("--holdout", type=float, default=d.holdout,
                   help=f"share of the clean validation set held out for early stopping (default {d.holdout:g})")
    p.add_argument("--patience", type=int, default=d.patience,
                   help=f"stop after this many epochs without a better held-out accuracy (default {d.patience})")
    p.add_argument("--tolerance", type=float, default=d.tolerance, metavar="POINTS",
                   help="keep the last epoch whose held-out accuracy is within this many points of the best "
                   f"(default {d.tolerance:g}; 0 keeps the best)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("finetune", help=HELP, description=HELP)
    add_model_argument(p, pruned=False)
    p.add_argument("--pruned", required=True, metavar="P", help="B'_X, e.g. DIR/models/X=4/pruned.pt")
    p.add_argument("--clean-valid", required=True, metavar="C", help="clean validation file (the defender's data)")
    p.add_argument("--clean-test", metavar="CT", help="clean test file (evaluation only)")
    p.add_argument("--poisoned-test", action="append", metavar="[NAME=]PT", help="poisoned test file(s) (evaluation only)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_data_arguments(p)
    add_force_argument(p)
    add_allow_unpaired_argument(p)
    add_finetune_options(p)
    add_device_argument(p)
    p.set_defaults(run=run)


def config_from(args: argparse.Namespace):
    """The checked FinetuneConfig of the fine-tuning flags."""
    from ...defense.pipeline import checked_config

    return checked_config(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.finetune_seed,
                          holdout=args.holdout, patience=args.patience, optimizer=args.optimizer,
                          weight_decay=args.weight_decay, tolerance=args.tolerance, train_conv_1=args.train_conv_1)


def run(args: argparse.Namespace) -> int:
    from ...data.set_names import data_files
    from ...defense.pipeline import finetune

    config = config_from(args)
    device_from(args)  # refused before any work
    out = Path(args.out)
    classes = data_keywords(args)["classes"]
    data = [args.clean_valid, args.clean_test, *input_paths(args.poisoned_test, "--poisoned-test")]
    target = output_folder(args, out, [args.model, args.pruned, *(f for p in data if p is not None for f in data_files(p))])
    model = open_model_flag(args.model, *preprocessing_flags(args), pruned=args.pruned, **source_flags(args)).model
    pruned = open_pruned_flag(args.pruned, model, args.model, args.allow_unpaired)
    run = finetune(model, pruned, args.clean_valid, args.clean_test, args.poisoned_test, device=args.device, log=log,
                   allow_unpaired=True, classes=classes, **vars(config))  # open_pruned_flag checked the pair (or was told not to)
    written = run.save(target)
    facts = run.tuned.facts
    print(run.table())
    if not run.before:
        print("(--clean-test and --poisoned-test add the test metrics of B'_X, G_X and the fine-tuned nets: clean "
              "accuracy, attack success, detections)")
    print("\n" + closing_line(out, written, f" (kept epoch {facts['best_epoch']} of {facts['epochs_run']}; "
                                    f"{facts['holdout']['images']} validation images held out)"))
    if target.note():
        log(target.note())
    return 0
