"""`torch-badnet finetune`: fine-tune B'_X on clean validation data (mask fixed), evaluate B'_ft and G_ft."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from ..errors import BadInputError
from .common import (add_allow_unpaired_argument, add_device_argument, add_force_argument, closing_line, device_from,
                     load_model, load_pruned, log, output_folder)
from .sweep import parse_poisoned

HELP = "fine-tune a pruned B' on clean validation data (pruned channels stay zero) and evaluate it"


def add_finetune_options(p: argparse.ArgumentParser, seed_flag: str = "--seed") -> None:
    """Options shared by `finetune`, `sweep --finetune` and `demo --finetune` (where --seed is the demo's)."""
    from ..finetune_config import FinetuneConfig

    d = FinetuneConfig()
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"at most E epochs (default {d.epochs})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr:g})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"batch size (default {d.batch_size})")
    p.add_argument(seed_flag, dest="finetune_seed", type=int, default=d.seed, help=f"seed of the holdout split and batch order (default {d.seed})")
    p.add_argument("--holdout", type=float, default=d.holdout,
                   help=f"share of the clean validation set held out for early stopping (default {d.holdout:g})")
    p.add_argument("--patience", type=int, default=d.patience,
                   help=f"stop after this many epochs without a better held-out accuracy (default {d.patience})")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("finetune", help=HELP, description=HELP)
    p.add_argument("--model", required=True, metavar="M", help="the BadNet B")
    p.add_argument("--pruned", required=True, metavar="P", help="B'_X, e.g. DIR/models/X=4/pruned.pt")
    p.add_argument("--clean-valid", required=True, metavar="C", help="clean validation file (the defender's data)")
    p.add_argument("--clean-test", metavar="CT", help="clean test file (evaluation only)")
    p.add_argument("--poisoned-test", action="append", metavar="[NAME=]PT", help="poisoned test file(s) (evaluation only)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_force_argument(p)
    add_allow_unpaired_argument(p)
    add_finetune_options(p)
    add_device_argument(p)
    p.set_defaults(run=run)


def config_from(args: argparse.Namespace):
    from ..finetune_config import FinetuneConfig

    if args.epochs < 0 or args.batch_size < 1 or args.lr <= 0 or args.patience < 1:
        raise BadInputError("finetune", "--epochs >= 0, --batch-size >= 1, --lr > 0 and --patience >= 1 are needed")
    if not 0 < args.holdout < 1:
        raise BadInputError("--holdout", f"{args.holdout:g} is outside (0, 1)")
    return FinetuneConfig(args.epochs, args.lr, args.batch_size, args.finetune_seed, args.holdout, args.patience)


def load_pixels(path: str | Path, num_classes: int):
    """A whole lab file as float32 tensors (the clean validation set is small enough to train from memory)."""
    import torch

    from ..data import LabDataset

    with LabDataset(path, num_classes) as ds:
        chunks = list(ds.chunks())
    return torch.cat([x for x, _ in chunks]), torch.cat([y for _, y in chunks])


def history_csv(history: list[dict[str, float]]) -> str:
    """history.csv: epoch, loss (empty for epoch 0, before training), held-out accuracy."""
    from ..report import csv_table

    rows = ([h["epoch"], None if h["loss"] != h["loss"] else h["loss"], h["holdout_acc"]] for h in history)  # NaN -> empty
    return csv_table(["epoch", "loss", "holdout_acc"], rows)


def finetune_and_evaluate(model, pruned, pixels, labels, eval_specs: list, config, device, folder: Path,
                          write_keras: Callable | None) -> dict[str, Any]:
    """Fine-tune B', write finetuned.pt/.h5 and history.csv into `folder`, return B'_ft/G_ft metrics and facts."""
    from ..checkpoint import save_checkpoint
    from ..evaluation import evaluate_pruned
    from ..files import write_text
    from ..finetune import finetune
    from ..pairing import mark_derived

    result = finetune(pruned, pixels, labels, config, log)
    mark_derived(result.model, model)  # finetuned.pt records B's fingerprint; G_ft below pairs it with B
    save_checkpoint(result.model, folder / "finetuned.pt", finetuned=True, epochs_run=len(result.history) - 1,
                    best_epoch=result.best_epoch, **vars(config))
    if write_keras is not None:
        write_keras(result.model, folder / "finetuned.h5")
    write_text(folder / "history.csv", history_csv(result.history))
    metrics = evaluate_pruned(model, result.model, eval_specs, device) if eval_specs else {}
    return {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history) - 1,
        "holdout": {"share": config.holdout, "images": result.holdout_images, "train_images": result.train_images},
        "holdout_acc_before": result.history[0]["holdout_acc"],
        "holdout_acc": result.history[result.best_epoch]["holdout_acc"],
        **metrics,
    }


def run(args: argparse.Namespace) -> int:
    from ..defense import DataSpec, open_sets
    from ..evaluation import evaluate_pruned
    from ..files import write_text
    from ..finetune import effective_mask
    from ..report import versions
    from .sweep import _keras_writer

    config = config_from(args)
    device = device_from(args)
    out = Path(args.out)
    specs = [DataSpec("test", "clean", Path(args.clean_test))] if args.clean_test else []
    specs += [DataSpec("test", "poisoned", p, n) for n, p in parse_poisoned(args.poisoned_test, "--poisoned-test")]
    target = output_folder(args, out, [args.model, args.pruned, args.clean_valid, *(s.path for s in specs)])
    loaded = load_model(args.model)
    loaded_pruned = load_pruned(args.pruned, loaded.model, args.model, args.allow_unpaired)
    model, pruned = loaded.model, loaded_pruned.model
    with open_sets(specs, model.num_classes):  # validate every file before training
        pass
    pixels, labels = load_pixels(args.clean_valid, model.num_classes)
    pruned_channels = [int(c) for c in (effective_mask(pruned) == 0).nonzero().flatten()]
    log(f"fine-tuning B' ({len(pruned_channels)} channels pruned) on {pixels.shape[0]} clean validation images")
    with target.staging() as staging:
        facts = finetune_and_evaluate(model, pruned, pixels, labels, specs, config, device, staging, _keras_writer())
        before = evaluate_pruned(model, pruned, specs, device, allow_unpaired=True) if specs else {}  # pair checked
        content = {
            "model": {"path": args.model, "sha256": loaded.source_sha256},
            "pruned": {"path": args.pruned, "sha256": loaded_pruned.source_sha256, "pruned_channels": pruned_channels},
            "clean_valid": {"path": args.clean_valid, "images": int(pixels.shape[0])},
            "config": vars(config),
            **facts,
            "before_finetuning": before,
            "versions": versions(),
        }
        write_text(staging / "summary.json", json.dumps(content, indent=2) + "\n")
    print(finetune_table(before, facts))
    print("\n" + closing_line(out, f" (best epoch {facts['best_epoch']} of {facts['epochs_run']}; "
                                    f"{facts['holdout']['images']} validation images held out)"))
    if target.note():
        log(target.note())
    return 0


def finetune_table(before: dict[str, float], after: dict[str, float]) -> str:
    """B' and G before and after fine-tuning, for every metric both have."""
    names = [n for n in before if n in after]
    lines = [f"{'metric (test, percent)':<36} {'B_X / G_X':>10} {'fine-tuned':>11}"]
    lines += [f"{n:<36} {before[n]:>10.3f} {after[n]:>11.3f}" for n in names]
    return "\n".join(lines)
