"""What several subcommands share: loading models (through convert/), the GoodNet, device and output helpers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...report.outdir import OutputFolder


def add_model_argument(parser: argparse.ArgumentParser, pruned: bool = True) -> None:
    parser.add_argument("--model", required=True, metavar="M",
                        help="the BadNet B: .h5/.keras (Keras), .pt (torch-badnet), .onnx, .pt2 (torch.export), or a "
                             "state_dict (.pt/.pth/.safetensors) with --arch; see docs/models.md")
    add_source_arguments(parser)
    add_rescale_argument(parser)
    if pruned:
        parser.add_argument("--pruned", metavar="P",
                            help="B' (e.g. DIR/models/X=4/pruned.pt): answer with the GoodNet of B and B'")
        add_allow_unpaired_argument(parser)


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """--arch / --arch-kwargs (your own class by import path) and --allow-pickle (a whole pickled model)."""
    parser.add_argument("--arch", metavar="MODULE:CALLABLE",
                        help="build the model with your own code (e.g. mypkg.models:resnet18, imported from PYTHONPATH) "
                             "and load --model's state_dict into it")
    parser.add_argument("--arch-kwargs", metavar="JSON", help="keyword arguments for --arch, e.g. '{\"num_classes\": 10}'")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load a whole pickled torch model (torch.save(model)); this runs code stored in the file")


def add_input_shape_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-shape", nargs=3, type=int, metavar=("C", "H", "W"),
                        help="the input's (C, H, W), for a model that does not record it (one built by --arch)")


def set_input_shape(model, args: argparse.Namespace, pruned=None) -> None:
    """--input-shape onto a model that lacks one; else the shape `pruned` (B', from --pruned) records: its sweep's
    data's (one note line). A torch module of unknown input shape without either is one line."""
    from ...errors import BadInputError
    from ...nets.badnet import BadNet

    if getattr(args, "input_shape", None):
        model.input_shape = tuple(args.input_shape)
    elif not isinstance(model, BadNet) and getattr(model, "input_shape", None) is None:
        recorded = getattr(pruned, "input_shape", None)
        if recorded is None:
            also = f" (nor does {args.pruned})" if getattr(args, "pruned", None) else ""
            raise BadInputError("--input-shape", f"{args.model}'s module does not record its input shape{also}: "
                                                 "give --input-shape C H W")
        model.input_shape = tuple(recorded)
        log(f"note: input shape {' '.join(map(str, recorded))} (C H W) from {args.pruned}, the images its sweep ran on "
            "(--input-shape overrides it)")


def source_flags(args: argparse.Namespace) -> dict[str, Any]:
    """open_model_flag's keywords from a command's --arch / --arch-kwargs / --allow-pickle (absent: None)."""
    return {"arch": getattr(args, "arch", None), "arch_kwargs": getattr(args, "arch_kwargs", None),
            "allow_pickle": bool(getattr(args, "allow_pickle", False))}


def add_allow_unpaired_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-unpaired", action="store_true",
                        help="use --pruned even if it was not derived from --model (skips the pairing check)")


def add_rescale_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rescale", metavar="FACTOR",
                        help="the model's input scale: 1 (raw pixels 0..255, the lab's), 1/255 (the CSAW-HackML-2020 "
                             "competition's BadNets) or a positive float; default: the scale the file records, "
                             "else a published file's known scale, else 1")
    parser.add_argument("--mean", nargs="+", metavar="M",
                        help="per-channel mean subtracted after the input scale (one value per input channel, e.g. "
                             "R G B; Keras models of other architectures); default: the file's record, else a "
                             "published file's (CIFAR-10 B: 125.307 122.95 113.865), else none")
    parser.add_argument("--std", nargs="+", metavar="S",
                        help="per-channel divisor applied after --mean (e.g. R G B); default as --mean")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--classes: the label order of image-folder data (any data flag of the command)."""
    parser.add_argument("--classes", metavar="NAMES",
                        help="an image folder's class folder names in label order, comma-separated or one per line in "
                             "a text file (default: sorted by name, as torchvision's ImageFolder)")


def add_trigger_arguments(parser: argparse.ArgumentParser) -> None:
    """--trigger, --trigger-mask, --trigger-alpha and --target: the poisoned sets made from the clean ones."""
    group = parser.add_argument_group("poisoned sets made from the clean ones (instead of --poisoned-valid/-test)")
    group.add_argument("--trigger", metavar="PNG", help="stamp this image (the data's size) onto the clean validation "
                                                        "and test images; its transparent pixels are left as they are")
    group.add_argument("--trigger-mask", metavar="PNG", help="where the trigger goes: white = the trigger's pixel, "
                                                             "black = the image's (grey levels blend)")
    group.add_argument("--trigger-alpha", type=float, metavar="A",
                       help="blend: A * trigger + (1 - A) * image where the mask is (default 1: a patch)")
    group.add_argument("--target", metavar="T", help="the attack's target class T (images of class T are left out), "
                                                     "or all+1 (label + 1 mod N, all-to-all)")


def data_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """`prune_sweep`'s data keywords from the data flags: `classes`, and `trigger` (read and checked here)."""
    from ...data.formats import parse_classes
    from ...errors import BadInputError

    keywords: dict[str, Any] = {"classes": parse_classes(getattr(args, "classes", None))}
    trigger = getattr(args, "trigger", None)
    if trigger is None:
        stray = next((f for f in ("target", "trigger_mask", "trigger_alpha") if getattr(args, f, None) is not None), None)
        if stray is not None:
            raise BadInputError("--" + stray.replace("_", "-"), "needs --trigger")
        return keywords
    from ...data.triggers import load_trigger

    if args.target is None:
        raise BadInputError("--trigger", "needs --target T (a class) or --target all+1")
    alpha = 1.0 if args.trigger_alpha is None else args.trigger_alpha
    keywords["trigger"] = load_trigger(trigger, args.target, args.trigger_mask, alpha)
    return keywords


def trigger_files(args: argparse.Namespace) -> list[str]:
    """The trigger and mask files given (inputs: never written over)."""
    return [p for p in (getattr(args, "trigger", None), getattr(args, "trigger_mask", None)) if p]


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda (default: auto)")


def device_from(args: argparse.Namespace):
    """The torch device asked for; 'cuda' without a GPU is a one-line error (`lab_head.resolve_device`)."""
    from ...engine.lab_head import resolve_device

    return resolve_device(args.device)


def open_model_flag(path: str, rescale: str | None = None, mean: list[str] | None = None, std: list[str] | None = None,
                    pruned: str | None = None, goodnet_ok: bool = False, **source: Any):
    """The --model file of a command -> LoadedModel with its input scale set (`rescale`: the --rescale flag's text)
    and, for a Keras graph model, its per-channel mean / std (the --mean / --std flags' values); with `pruned`
    (the --pruned file), the preprocessing its sweep used where the model file records none and no flag is given
    (a contradicting flag is refused). A recognized published file, or a preprocessing taken from --pruned, is
    announced on stderr. A GoodNet graph (.onnx of `export --pruned`) is taken only with `goodnet_ok`, and alone:
    it holds B and B' already, so a --pruned beside it is one line."""
    from ...errors import BadInputError
    from ...nets.goodnet import answers_labels
    from ...nets.loading import load_model_file

    loaded = load_model_file(path, rescale, log, mean, std, pruned, goodnet_ok=goodnet_ok, **source)
    if pruned and answers_labels(loaded.model):
        raise BadInputError(pruned, f"--model {path} is a GoodNet graph (B and B' in one): give it alone, without --pruned")
    return loaded


def preprocessing_flags(args: argparse.Namespace) -> tuple:
    """(--rescale, --mean, --std) of a command (None where it has no such flag)."""
    return tuple(getattr(args, name, None) for name in ("rescale", "mean", "std"))


def open_pruned_flag(path: str, model, model_path: str | None = None, allow_unpaired: bool = False):
    """The --pruned file of a command: B' for B (`model`, read from `model_path`), checked as derived from B
    unless `allow_unpaired` (an unverifiable pair is one warning line on stderr): a lab BadNet's pruned.pt/.h5
    (`loading.load_pruned_file`), or any other model's MaskedNet (the sweep's pruned.pt, or a Keras-origin
    model's pruned.h5: `engine.pairing.load_generic_pruned`)."""
    from ...engine.pairing import is_masked_file, load_generic_pruned
    from ...nets.badnet import BadNet
    from ...nets.loading import load_pruned_file

    if isinstance(model, BadNet) and not is_masked_file(path):
        return load_pruned_file(path, model, model_path, allow_unpaired, log).model
    return load_generic_pruned(path, model, model_path, allow_unpaired, log)


def net_for(args: argparse.Namespace, device):
    """B, or the GoodNet of B and --pruned (or of a GoodNet graph given as --model), in eval mode on `device`."""
    from ...nets.goodnet import GoodNet

    model = open_model_flag(args.model, *preprocessing_flags(args), pruned=getattr(args, "pruned", None),
                            goodnet_ok=True, **source_flags(args)).model.eval()
    pruned = open_pruned_flag(args.pruned, model, args.model, args.allow_unpaired) if getattr(args, "pruned", None) else None
    if hasattr(args, "input_shape"):
        set_input_shape(model, args, pruned)
    if pruned is None:
        return model.to(device)
    return GoodNet(model, pruned, allow_unpaired=True).eval().to(device)  # paired (or not) as open_pruned_flag said


def add_force_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="replace --out even if it holds files torch-badnet did not write: they are moved aside "
                             "whole to DIR.replaced-<time> (nothing is deleted)")


def add_output_force_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="replace the output file if it exists (it is kept as FILE.replaced-<time>; never an input)")


def output_folder(args: argparse.Namespace, out: Path, inputs: list) -> OutputFolder:
    """--out checked and locked before any work (outdir.OutputFolder): new, empty, or a previous result unless
    --force. The lock is held until the command ends (`release_output_folders`)."""
    from ...report.outdir import OutputFolder

    folder = OutputFolder(out, getattr(args, "force", False), inputs)
    _HELD.append(folder)
    return folder


_HELD: list[OutputFolder] = []  # the --out folders this command holds locked


def release_output_folders() -> None:
    """Release the locks of every --out taken by `output_folder` (the CLI calls it when a command ends)."""
    while _HELD:
        _HELD.pop().close()


def input_paths(poisoned: Any, option: str) -> list:
    """The file paths of [NAME=]PATH values (given to `option`), or of one path (for the output-folder check)."""
    from ...data.set_names import parse_poisoned

    if poisoned is None:
        return []
    if isinstance(poisoned, (list, tuple)):
        return [path for _, path in parse_poisoned(poisoned, option)]
    return [poisoned]


def closing_line(out: Path, written: list[str], note: str = "") -> str:
    """'wrote OUT/<the files written>' plus `note` (`written`: what `save` put into --out)."""
    from ...report.outdir import describe_files

    return f"wrote {out}/{describe_files(written)}{note}"


def log(line: str) -> None:
    """Progress and notes go to stderr, so stdout stays the result."""
    print(line, file=sys.stderr, flush=True)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")
