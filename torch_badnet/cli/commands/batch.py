"""`torch-badnet batch MANIFEST --out DIR`: the sweep on every model of a manifest (`batch.run.prune_batch`)."""

from __future__ import annotations

import argparse
import sys

from .common import add_data_arguments, add_rescale_argument, log
from .sweep import add_sweep_options

HELP = "run the sweep on every model of a manifest CSV (a local process pool, or Ray), with one combined table"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("batch", help=HELP, description=HELP + ". Manifest columns: name, model (required), "
                              "clean_valid, poisoned_valid, clean_test, poisoned_test, and any sweep option under its "
                              "flag name without dashes (thresholds, finetune, max_steps, ...); the flags below fill "
                              "the cells a row leaves empty; relative paths resolve against the manifest's folder.")
    p.add_argument("manifest", metavar="MANIFEST", help="CSV with a header row and one row per model")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder: DIR/<name>/ per model, DIR/batch.csv|json|png")
    p.add_argument("--clean-valid", metavar="C", help="clean validation file for rows that name none")
    p.add_argument("--poisoned-valid", action="append", metavar="[NAME=]P", help="poisoned validation file(s) for rows that name none")
    p.add_argument("--clean-test", metavar="CT", help="clean test file for rows that name none")
    p.add_argument("--poisoned-test", action="append", metavar="[NAME=]PT", help="poisoned test file(s) for rows that name none")
    p.add_argument("--workers", type=int, metavar="N", help="local worker processes (default: one per core, with the "
                                                            "cores' torch threads shared among them)")
    p.add_argument("--ray", metavar="auto|ADDRESS", help="run on a Ray cluster instead (auto: the running one, else "
                                                         "a local one); needs pip install 'torch-badnet[ray]'")
    p.add_argument("--gpus-per-model", type=float, default=0.0, metavar="F",
                   help="GPUs per model on Ray (e.g. 0.25: four sweeps share a GPU; default 0)")
    p.add_argument("--rerun", action="store_true", help="run every model again, even those whose result matches its fingerprint")
    add_rescale_argument(p)
    add_data_arguments(p)
    add_sweep_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ...batch.manifest import DATA_COLUMNS, option_columns, option_parser
    from ...batch.run import prune_batch

    options = {column: getattr(args, column) for column in DATA_COLUMNS}
    options.update({column: getattr(args, action.dest, None) for column, action in option_columns(option_parser()).items()})
    try:
        result = prune_batch(args.manifest, args.out, workers=args.workers, ray=args.ray, gpus_per_model=args.gpus_per_model,
                             device=args.device, rerun=args.rerun, force=args.force, progress=sys.stderr.isatty(),
                             log=log, **options)
    except KeyboardInterrupt:
        log(f"error: interrupted: the finished models are kept in {args.out} (rerun the same command to run the rest)")
        return 130
    counts = {s: sum(r["status"] == s for r in result.rows) for s in ("done", "reused", "failed")}
    print(f"wrote {args.out}/batch.csv, batch.json and batch.png: {len(result.rows)} models "
          f"({counts['done']} done, {counts['reused']} reused, {counts['failed']} failed)")
    return 1 if counts["failed"] else 0
