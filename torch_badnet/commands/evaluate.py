"""`torch-badnet eval`: clean accuracy and attack success rate of B (or of the GoodNet with --pruned)."""

from __future__ import annotations

import argparse

from .common import add_device_argument, add_model_argument, device_from, net_for, print_json

HELP = "clean accuracy and attack success rate on lab .h5 files (as the lab's eval.py)"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help=HELP, description=HELP)
    add_model_argument(p)
    p.add_argument("--clean", metavar="C.h5", help="clean lab file (data, label)")
    p.add_argument("--poisoned", metavar="P.h5", help="poisoned lab file (labels = the attacker's target)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    add_device_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data import LabDataset
    from ..errors import BadInputError
    from ..predict import tally

    if not args.clean and not args.poisoned:
        raise BadInputError("eval", "give --clean and/or --poisoned")
    device = device_from(args)
    net = net_for(args, device)
    classes = net.model.num_classes if args.pruned else net.num_classes
    inputs = [("clean", args.clean), ("poisoned", args.poisoned)]
    datasets = {kind: LabDataset(path, classes) for kind, path in inputs if path}  # validate all first
    result: dict[str, float | int] = {}
    try:
        for kind, ds in datasets.items():
            t = tally(net, ds.chunks(), device)
            key = "clean_accuracy" if kind == "clean" else "attack_success_rate"
            result[key] = t.rate(t.hits)
            if args.pruned:
                result["false_alarm_rate" if kind == "clean" else "detection_rate"] = t.rate(t.flagged)
            result[f"{kind}_images"] = t.images
    finally:
        for ds in datasets.values():
            ds.close()
    if args.json:
        print_json(result)
    else:
        names = {"clean_accuracy": "clean accuracy", "attack_success_rate": "attack success rate",
                 "false_alarm_rate": "GoodNet false alarms (clean flagged)",
                 "detection_rate": "GoodNet detections (poisoned flagged)"}
        for key, label in names.items():
            if key in result:
                print(f"{label}: {result[key]:.3f}%")
    return 0
