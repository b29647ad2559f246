"""What several subcommands share: loading models (through convert/), the GoodNet, device and output helpers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import BadInputError


def add_model_argument(parser: argparse.ArgumentParser, pruned: bool = True) -> None:
    parser.add_argument("--model", required=True, metavar="M",
                        help="the BadNet B: .h5/.keras (Keras), .pt (torch-badnet) or .onnx")
    add_rescale_argument(parser)
    if pruned:
        parser.add_argument("--pruned", metavar="P",
                            help="B' (e.g. DIR/models/X=4/pruned.pt): answer with the GoodNet of B and B'")


def add_rescale_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rescale", metavar="FACTOR",
                        help="the model's input scale: 1 (raw pixels 0..255, the lab's), 1/255 (the CSAW-HackML-2020 "
                             "competition's BadNets) or a positive float; default: the scale the file records, "
                             "else a published file's known scale, else 1")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda (default: auto)")


def device_from(args: argparse.Namespace):
    """The torch device asked for; 'cuda' without a GPU is a one-line error."""
    from ..sweep import resolve_device

    try:
        return resolve_device(args.device)
    except (ValueError, RuntimeError) as exc:
        raise BadInputError("--device", str(exc)) from None


def load_model(path: str, rescale: str | None = None):
    """Any supported model file -> LoadedModel with its input scale set (`rescale`: the --rescale flag's text);
    a recognized published file is announced on stderr."""
    from ..loading import load_file

    return load_file(path, rescale, log)


def load_pruned(path: str, model):
    """B' (a LoadedModel) from any model file; it must have as many classes as B and take B's input scale."""
    from ..loading import load_pruned_file

    return load_pruned_file(path, model)


def net_for(args: argparse.Namespace, device):
    """B, or the GoodNet of B and --pruned, in eval mode on `device`."""
    from ..goodnet import GoodNet

    model = load_model(args.model, args.rescale).model.eval()
    if not getattr(args, "pruned", None):
        return model.to(device)
    return GoodNet(model, load_pruned(args.pruned, model).model).eval().to(device)


def check_out_dir(out: Path) -> None:
    """An output folder may exist (files are added to it) but must not be a file; checked before any work."""
    if out.exists() and not out.is_dir():
        raise BadInputError(out, "exists and is not a folder")


def log(line: str) -> None:
    """Progress and notes go to stderr, so stdout stays the result."""
    print(line, file=sys.stderr, flush=True)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")
