"""Fine-tuning settings compared on the demo: B'_X fine-tuned under each setting, test ASR and clean accuracy.

    python scripts/finetune_grid.py [--workdir DIR] [--x 4] [--out benchmarks/finetune_grid.csv] [--only NAME ...]

Uses the demo workspace (the shipped BadNet and the demo's data), prunes B to B'_X with the sweep's default
rule, fine-tunes B'_X under every setting of GRID on the clean validation file (early stopping on a held-out
share of it: no poisoned image is read during fine-tuning) and then evaluates each B'_ft on the test files.
Writes one CSV row per setting (B'_X itself first) and prints the same as a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch_badnet as tb
from torch_badnet.data.files import write_text
from torch_badnet.defense.evaluation import evaluate_pruned
from torch_badnet.defense.finetune_config import FinetuneConfig
from torch_badnet.defense.finetuning import train_masked
from torch_badnet.defense.pipeline import sweep_specs
from torch_badnet.demo import ensure_workspace
from torch_badnet.report.results import csv_table

CLEAN, ATTACK = tb.Column("pruned", "test", "clean_acc"), tb.Column("pruned", "test", "asr")

DEFAULT = FinetuneConfig()
OLD = FinetuneConfig(optimizer="adam", lr=1e-4, weight_decay=0.0, train_conv_1=True, patience=3, tolerance=0.0)
FIXED = dataclasses.replace(OLD, train_conv_1=False)  # conv_1 kept fixed
GRID: dict[str, FinetuneConfig] = {
    "old default (adam 1e-4, best epoch)": OLD,
    "adam 1e-3": dataclasses.replace(OLD, lr=1e-3),
    "adam 1e-3, wd 1e-2, last within 2": dataclasses.replace(DEFAULT, train_conv_1=True),
    "adam 1e-3, conv_1 fixed": dataclasses.replace(FIXED, lr=1e-3),
    "sgd 1e-2, conv_1 fixed": dataclasses.replace(FIXED, optimizer="sgd", lr=1e-2),
    "adam 1e-3, conv_1 fixed, wd 1e-3, last within 2": dataclasses.replace(DEFAULT, weight_decay=1e-3),
    "adam 1e-3, conv_1 fixed, wd 1e-2, best epoch": dataclasses.replace(FIXED, lr=1e-3, weight_decay=1e-2),
    "adam 1e-3, conv_1 fixed, wd 1e-2, last within 1, patience 5": dataclasses.replace(DEFAULT, patience=5, tolerance=1.0),
    "adam 1e-3, conv_1 fixed, wd 1e-2, last within 2 (default)": DEFAULT,
    "adam 3e-3, conv_1 fixed, wd 1e-2, last within 2": dataclasses.replace(DEFAULT, lr=3e-3),
    "sgd 1e-2, conv_1 fixed, wd 1e-2, last within 2": dataclasses.replace(DEFAULT, optimizer="sgd", lr=1e-2),
}
COLUMNS = ["setting", "optimizer", "lr", "weight_decay", "train_conv_1", "epochs", "patience", "tolerance",
           "kept_epoch", "epochs_run", "holdout_acc", "test_clean_acc", "test_asr", "seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="demo workspace (default: the demo's cache folder)")
    parser.add_argument("--x", type=float, default=4.0, help="the X of B'_X (default 4)")
    parser.add_argument("--out", default="benchmarks/finetune_grid.csv")
    parser.add_argument("--only", nargs="*", type=int, metavar="I", help="run only these settings (0-based indices into GRID)")
    args = parser.parse_args()

    ws = ensure_workspace(Path(args.workdir) if args.workdir else None)
    model = tb.load_model(ws.model)
    result = tb.prune_sweep(model, ws.clean_valid, ws.poisoned_valid, ws.clean_test, ws.poisoned_test,
                            thresholds=(args.x,), device="cpu")
    threshold, pruned = result.threshold(args.x), result.pruned(args.x)
    test_specs = [s for s in sweep_specs(ws.clean_valid, ws.poisoned_valid, ws.clean_test, ws.poisoned_test)
                  if s.split == "test"]
    before = evaluate_pruned(model, pruned, test_specs, _cpu())
    rows = [[f"B'_{args.x:g} (no fine-tuning)", *[None] * 7, 0, 0, None, before[CLEAN], before[ATTACK], 0.0]]
    pixels, labels = tb.load_lab_set(ws.clean_valid, model.num_classes)
    names = list(GRID)
    for name in [names[i] for i in args.only] if args.only else names:
        config = GRID[name]
        started = time.perf_counter()
        tuned = train_masked(pruned, pixels, labels, config)
        seconds = time.perf_counter() - started
        metrics = evaluate_pruned(model, tuned.model, test_specs, _cpu())
        rows.append([name, config.optimizer, config.lr, config.weight_decay, config.train_conv_1, config.epochs,
                     config.patience, config.tolerance, tuned.best_epoch,
                     len(tuned.history) - 1, tuned.history[tuned.best_epoch]["holdout_acc"],
                     metrics[CLEAN], metrics[ATTACK], round(seconds, 1)])
        print(f"{name:<58} kept epoch {tuned.best_epoch:>2}/{len(tuned.history) - 1:<2} "
              f"clean {metrics[CLEAN]:7.3f}  attack {metrics[ATTACK]:7.3f}  ({seconds:.0f} s)", flush=True)
    write_text(Path(args.out), csv_table(COLUMNS, rows))
    print(f"B'_{args.x:g}: {len(threshold.pruned_channels)} channels pruned; wrote {args.out}")


def _cpu():
    import torch

    return torch.device("cpu")


if __name__ == "__main__":
    main()
