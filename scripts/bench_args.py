"""Command-line pieces shared by the benchmarks (torch-free, so a child's import timing stays honest)."""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def add_results_arguments(p: argparse.ArgumentParser) -> None:
    """--json OUT and --machine NAME (benchmarks/NAME.json)."""
    p.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    p.add_argument("--machine", metavar="NAME", help="write the results to benchmarks/NAME.json")


def resolve_results_path(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--machine NAME becomes args.json = benchmarks/NAME.json; a NAME that is not plain is refused."""
    if args.machine:
        if args.json or not args.machine.replace("-", "").replace("_", "").isalnum():
            p.error("--machine takes a plain name (letters, digits, - and _) and replaces --json")
        args.json = ROOT / "benchmarks" / f"{args.machine}.json"
