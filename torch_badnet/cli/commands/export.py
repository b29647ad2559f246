"""`torch-badnet export`: B, or the GoodNet of B and B' as one graph, to ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    add_input_shape_argument,
    add_model_argument,
    add_output_force_argument,
    log,
    open_model_flag,
    open_pruned_flag,
    preprocessing_flags,
    set_input_shape,
    source_flags,
)

HELP = "export B (or, with --pruned, the GoodNet as one graph, or B' alone) to ONNX"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help=HELP, description=HELP)
    add_model_argument(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="output .onnx file")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the project's tested opset; "
                   "torch's exporter writes 7 to its highest, the GoodNet needs 9 or above)")
    p.add_argument("--net", choices=("goodnet", "pruned"), default="goodnet",
                   help="with --pruned, what to write: the GoodNet of B and B' (default; output 'label'), or B' alone "
                        "(output 'logits', its pruned channels zeroed in the graph)")
    add_input_shape_argument(p)
    add_output_force_argument(p)
    p.set_defaults(run=run)


def scale_note(model) -> str:
    """Where the model's input scale lives in the written graph ('' for raw pixels, scale 1)."""
    from ...nets.rescale import format_scale

    scale = getattr(model, "input_scale", 1.0)  # a torch module of another source takes its data as given
    return "" if scale == 1.0 else f" pixels 0..255 (scaled by {format_scale(scale)} inside the graph)"


def run(args: argparse.Namespace) -> int:
    from torch_badnet.convert.onnx_export import DEFAULT_OPSET, check_opset, export_onnx

    from ...data.files import check_output_file
    from ...errors import BadInputError
    from ...nets.badnet import BadNet

    if not args.output.lower().endswith(".onnx"):
        raise BadInputError(args.output, "the output of export must be a .onnx file")
    if args.net == "pruned" and not args.pruned:
        raise BadInputError("--net pruned", "needs --pruned (the B' to write)")
    opset = DEFAULT_OPSET if args.opset is None else check_opset(args.opset)
    check_output_file(args.output, [p for p in (args.model, args.pruned) if p], args.force)
    model = open_model_flag(args.model, *preprocessing_flags(args), pruned=args.pruned, **source_flags(args)).model
    pruned = open_pruned_flag(args.pruned, model, args.model, args.allow_unpaired) if args.pruned else None
    set_input_shape(model, args, pruned)
    alone = args.net == "pruned" and pruned is not None
    if alone and not isinstance(pruned, BadNet) and getattr(pruned, "input_shape", None) is None:
        pruned.input_shape = model.input_shape  # a B' of a generic model takes B's images
    from ...report.outdir import previous_file_kept

    with previous_file_kept(Path(args.output), log):  # an existing file (--force) is kept aside, never deleted
        if alone:
            export_onnx(pruned, args.output, opset=opset)
        else:
            export_onnx(model, args.output, pruned=pruned, opset=opset, allow_unpaired=True)  # open_pruned_flag checked the pair
    classes = getattr(model, "num_classes", None) or _classes(model)
    kind = ("B' (output 'logits')" if alone else f"GoodNet (output 'label', int64 in [0, {classes}])"
            if pruned is not None else "BadNet (output 'logits')")
    shape = ",".join(map(str, getattr(model, "input_shape", (3, 55, 47))))
    print(f"wrote {args.output}: {kind}, input 'input' (N,{shape}) float32{scale_note(model)}, opset {opset}")
    return 0


def _classes(model) -> int:
    """The class count of a torch module of another source: its output width on one zero image."""
    import torch

    with torch.no_grad():
        return int(model.eval()(torch.zeros(1, *model.input_shape)).shape[1])
