"""`torch-badnet sweep`: the whole pruning defense on lab files, written atomically to --out."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import BadInputError
from .common import add_device_argument, add_force_argument, closing_line, device_from, load_model, log, output_folder

HELP = "rank pool_3 channels, prune them one by one, pick B'_X per threshold X, build the GoodNet"
DEFAULT_THRESHOLDS = (2.0, 4.0, 10.0)
TRIGGER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def add_sweep_options(p: argparse.ArgumentParser, finetune_seed_flag: str = "--seed") -> None:
    """Options shared by `sweep` and `demo`."""
    from .finetune import add_finetune_options

    p.add_argument("--thresholds", nargs="+", type=float, default=list(DEFAULT_THRESHOLDS), metavar="X",
                   help="accuracy drops X in (0, 100) that define B'_X (default: 2 4 10)")
    p.add_argument("--stop", choices=("first-over", "last-within"), default="first-over",
                   help="first-over (default, the lab's): first step whose drop is >= X; "
                        "last-within: the step before it, whose drop is still < X")
    p.add_argument("--drop", choices=("absolute", "relative"), default="absolute",
                   help="X in percentage points (default) or in percent of the original accuracy")
    p.add_argument("--max-steps", type=int, metavar="K", help="prune at most K channels (default: all 60)")
    p.add_argument("--no-plot", action="store_true", help="skip sweep.png")
    add_force_argument(p)
    p.add_argument("--finetune", action="store_true",
                   help="also fine-tune every B'_X on the clean validation data (Fine-Pruning) and report B'_ft and G_ft")
    add_device_argument(p)
    group = p.add_argument_group("fine-tuning (with --finetune)")
    add_finetune_options(group, finetune_seed_flag)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sweep", help=HELP, description=HELP)
    p.add_argument("--model", required=True, metavar="M", help="the BadNet B (.h5, .keras, .pt or .onnx)")
    p.add_argument("--clean-valid", required=True, metavar="C", help="clean validation file: ranks channels, defines X")
    p.add_argument("--poisoned-valid", required=True, action="append", metavar="[NAME=]P",
                   help="poisoned validation file; repeat as NAME=PATH for several triggers")
    p.add_argument("--clean-test", metavar="CT", help="clean test file")
    p.add_argument("--poisoned-test", action="append", metavar="[NAME=]PT",
                   help="poisoned test file; repeat as NAME=PATH for several triggers")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_sweep_options(p)
    p.set_defaults(run=run)


def parse_poisoned(values: Sequence[str] | None, option: str) -> list[tuple[str, Path]]:
    """[NAME=]PATH values -> (trigger name or '', path); a plain PATH may be given once."""
    parsed: list[tuple[str, Path]] = []
    for value in values or []:
        name, sep, path = value.partition("=")
        if sep and TRIGGER_NAME.match(name) and not Path(value).exists():
            parsed.append((name, Path(path)))
        else:
            parsed.append(("", Path(value)))
    names = [n for n, _ in parsed]
    if len(parsed) > 1 and "" in names:
        raise BadInputError(option, "several poisoned files need a NAME=PATH form each")
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise BadInputError(option, f"trigger name '{duplicate}' is given twice")
    return parsed


def data_specs(clean_valid: str, poisoned_valid: Sequence[str], clean_test: str | None,
               poisoned_test: Sequence[str] | None) -> list:
    from ..defense import DataSpec

    specs = [DataSpec("valid", "clean", Path(clean_valid))]
    specs += [DataSpec("valid", "poisoned", p, n) for n, p in parse_poisoned(poisoned_valid, "--poisoned-valid")]
    if clean_test:
        specs.append(DataSpec("test", "clean", Path(clean_test)))
    specs += [DataSpec("test", "poisoned", p, n) for n, p in parse_poisoned(poisoned_test, "--poisoned-test")]
    return specs


def check_options(args: argparse.Namespace) -> None:
    bad = [x for x in args.thresholds if not 0 < x < 100]
    if bad:
        raise BadInputError("--thresholds", f"{bad[0]:g} is outside (0, 100)")
    if args.max_steps is not None and args.max_steps < 1:
        raise BadInputError("--max-steps", "must be at least 1")


def run(args: argparse.Namespace) -> int:
    specs = data_specs(args.clean_valid, args.poisoned_valid, args.clean_test, args.poisoned_test)
    run_defense(args, args.model, specs, Path(args.out))
    return 0


def run_defense(args: argparse.Namespace, model_path: str | Path, specs: list, out: Path,
                title: str | None = None) -> dict[str, Any]:
    """Load B, sweep, write every output through a staging folder, print the table; returns the summary."""
    from ..defense import run_sweep
    from ..files import file_sha256
    from ..report import table, versions, write_report

    check_options(args)
    target = output_folder(args, out, [model_path, *(spec.path for spec in specs)])
    config = None
    if args.finetune:
        from .finetune import config_from

        config = config_from(args)
    device = device_from(args)
    loaded = load_model(str(model_path))
    started = time.perf_counter()
    result = run_sweep(loaded.model, specs, sorted(set(args.thresholds)), args.stop, args.drop, device,
                       args.max_steps, show_progress=sys.stderr.isatty())
    elapsed = time.perf_counter() - started
    context = {
        "model": {"path": str(model_path), "sha256": loaded.source_sha256, "format": loaded.source_format,
                  "num_classes": loaded.model.num_classes},
        "inputs": {spec.name: {"path": str(spec.path), "sha256": file_sha256(spec.path)} for spec in specs},
        "rule": {"stop": args.stop, "drop": args.drop},
        "versions": versions(),
    }
    with target.staging() as staging:
        finetuned = finetune_thresholds(result, loaded.model, specs, config, device, staging) if config else {}
        content = write_report(result, loaded.model, staging, context, _keras_writer(), plot=not args.no_plot,
                               finetuned=finetuned)
    print(table(result, title or f"Pruning defense of {model_path} ({args.stop}, {args.drop} drop)", finetuned))
    print("\n" + closing_line(out, f" ({result.steps} steps on {sum(result.sizes.values())} images in {elapsed:.1f} s "
                                    f"on {device.type}){unreached_note(result)}"))
    if target.note():
        log(target.note())
    return content


def unreached_note(result) -> str:
    """What the closing line says about thresholds the sweep did not reach (and so wrote no model for)."""
    from ..report import format_x

    missed = [format_x(t.x) for t in result.thresholds if not t.reached]
    if not missed:
        return ""
    xs = ", ".join(missed)
    if len(missed) == len(result.thresholds):
        return f"; no threshold was reached (X = {xs} within {result.steps} steps), so no pruned model was written"
    return f"; X = {xs} not reached within {result.steps} steps, so no model for it"


def finetune_thresholds(result, model, specs: list, config, device, staging: Path) -> dict[float, dict[str, Any]]:
    """Fine-tune every B'_X; evaluate B'_ft and G_ft on the test files (else on the poisoned validation files)."""
    from ..report import model_dir
    from .finetune import finetune_and_evaluate, load_pixels

    clean_valid = next(s for s in specs if s.is_clean_valid)
    pixels, labels = load_pixels(clean_valid.path, model.num_classes)
    eval_specs = [s for s in specs if s.split == "test"] or [s for s in specs if s.split == "valid" and s.kind == "poisoned"]
    finetuned = {}
    for t, pruned in result.pruned_models(model):
        log(f"fine-tuning B'_{t.x:g} ({len(t.pruned_channels)} channels pruned)")
        facts = finetune_and_evaluate(model, pruned, pixels, labels, eval_specs, config, device,
                                      staging / model_dir(t), _keras_writer())
        facts["model"] = f"{model_dir(t)}/finetuned.pt"
        finetuned[t.x] = facts
    return finetuned


def _keras_writer():
    from torch_badnet.convert.keras_h5 import write_keras_weights

    return write_keras_weights
