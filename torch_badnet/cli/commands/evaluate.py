"""`torch-badnet eval`: clean accuracy and attack success rate of B (or of the GoodNet with --pruned)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    add_data_arguments,
    add_device_argument,
    add_model_argument,
    data_keywords,
    device_from,
    log,
    open_model_flag,
    open_pruned_flag,
    preprocessing_flags,
    print_json,
    source_flags,
)

HELP = "clean accuracy and attack success rate on lab .h5 files (as the lab's eval.py)"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help=HELP, description=HELP)
    add_model_argument(p)
    p.add_argument("--clean", metavar="C.h5", help="clean data (a lab .h5, .npz, IMAGES.npy,LABELS.npy or an image folder)")
    p.add_argument("--poisoned", metavar="P.h5", help="poisoned data, any layout --clean takes (labels = the attacker's target)")
    add_data_arguments(p)
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    p.add_argument("--verbose", action="store_true", help="print the wall time of each phase on one line (stderr)")
    add_device_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """B's rates, or with --pruned the GoodNet's, counted as the sweep counts them (metrics.step_counts)."""
    import torch

    from ...data.lab_sets import read_ahead_pays
    from ...defense.evaluation import b_and_pruned_labels
    from ...defense.metrics import step_counts
    from ...defense.pipeline import check_input_scale
    from ...defense.sanity import SetFacts, data_warnings
    from ...defense.sweep import DataSpec, open_sets
    from ...errors import BadInputError
    from ...nets.badnet import INPUT_SHAPE, BadNet
    from ...nets.goodnet import GoodNet, answers_labels
    from ...report.phases import NoTimer, PhaseTimer, reading_note

    if not args.clean and not args.poisoned:
        raise BadInputError("eval", "give --clean and/or --poisoned")
    timer = PhaseTimer() if args.verbose else NoTimer()
    device = device_from(args)
    classes = data_keywords(args)["classes"]
    with timer.phase("load model"):
        model = open_model_flag(args.model, *preprocessing_flags(args), pruned=args.pruned, goodnet_ok=True,
                                **source_flags(args)).model.eval()
        graph_goodnet = answers_labels(model)  # a GoodNet graph (export --pruned's .onnx): G's rates
        if args.clean and hasattr(model, "input_scale"):  # another input scale clearly better on the first clean images: stop
            check_input_scale(model, DataSpec("eval", "clean", Path(args.clean), classes=classes))
        if args.pruned or isinstance(model, BadNet):
            pruned = (open_pruned_flag(args.pruned, model, args.model, args.allow_unpaired) if args.pruned
                      else torch.ones_like(model.mask))
            goodnet = GoodNet(model, pruned, allow_unpaired=True).eval().to(device)  # open_pruned_flag checked the pair
        else:  # a model of another architecture (a Keras graph): its own labels
            goodnet = model.to(device)
    specs = [DataSpec("eval", kind, Path(path), classes=classes)
             for kind, path in (("clean", args.clean), ("poisoned", args.poisoned)) if path]
    result: dict[str, float | int] = {}
    facts = []
    shape = getattr(model, "input_shape", INPUT_SHAPE if isinstance(model, BadNet) else None)  # None: data as given
    with timer.phase("read+forward"), open_sets(specs, getattr(model, "num_classes", None), shape) as datasets:  # files validated first
        for spec in specs:
            counts = step_counts(*b_and_pruned_labels(goodnet, datasets[spec.name], device))
            b_hits = None if graph_goodnet else counts.hits[0]  # row 0 = B (a GoodNet graph holds only G's labels)
            facts.append(SetFacts.of(spec.path, spec.kind, "", datasets[spec.name].labels, b_hits))
            clean = spec.kind == "clean"
            if args.pruned or graph_goodnet:  # row 1 = B'; G's answer is right when B and B' agree on the right label
                result["clean_accuracy" if clean else "attack_success_rate"] = counts.rate(counts.goodnet_hits)[1]
                result["false_alarm_rate" if clean else "detection_rate"] = counts.rate(counts.flagged)[1]
            else:
                result["clean_accuracy" if clean else "attack_success_rate"] = counts.rate(counts.hits)[0]
            result[f"{spec.kind}_images"] = counts.n
        timer.note("read+forward", reading_note(sum(ds.read_seconds for ds in datasets.values()), read_ahead_pays(device)))
    for line in data_warnings(facts):
        log(line)
    if args.verbose:
        log(timer.line())
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
