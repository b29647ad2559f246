"""`torch-badnet convert SRC -o DST`: Keras/ONNX/.pt -> .pt, .h5 (Keras weights) or .onnx, optionally verified."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...data.files import atomic_path, check_output_file
from ...errors import BadInputError
from .common import (
    add_input_shape_argument,
    add_output_force_argument,
    add_rescale_argument,
    add_source_arguments,
    log,
    open_model_flag,
    preprocessing_flags,
    set_input_shape,
    source_flags,
)

HELP = "convert a model: .h5/.keras/.onnx/.pt (or a state_dict with --arch) -> .pt, .h5 (Keras model) or .onnx"
TARGETS = (".pt", ".h5", ".onnx")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help=HELP, description=HELP)
    p.add_argument("src", metavar="SRC", help="model file (.h5, .keras, .pt, .onnx), or a state_dict (.pt, .pth, "
                                               ".safetensors) with --arch")
    p.add_argument("-o", "--output", required=True, metavar="DST", help="output file: .pt, .h5 or .onnx")
    p.add_argument("--verify", action="store_true",
                   help="compare the result with the source run in Keras (tf_keras for a Keras 2 .h5 where installed, "
                        "else Keras 3; needs the keras extra): classes identical, and the max |softmax difference| printed")
    add_rescale_argument(p)
    add_source_arguments(p)
    add_input_shape_argument(p)
    add_output_force_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    src, dst = Path(args.src), Path(args.output)
    if dst.suffix.lower() not in TARGETS:
        raise BadInputError(dst, f"unknown output type '{dst.suffix}' (expected .pt, .h5 or .onnx)")
    check_output_file(dst, [src], args.force)
    if args.verify:
        from torch_badnet.convert.keras_model import import_keras

        import_keras()  # fail before writing anything when TensorFlow is missing
    from ...nets.loading import TORCH_SOURCES

    loaded = open_model_flag(str(src), *preprocessing_flags(args), **source_flags(args))
    if loaded.source_format in TORCH_SOURCES:
        check_torch_target(loaded, args, src, dst)
    from ...report.outdir import previous_file_kept

    with previous_file_kept(dst, log), atomic_path(dst) as tmp:  # nothing reaches dst unless writing (and --verify) succeeded
        write_converted(loaded, src, tmp)
        if args.verify:
            from torch_badnet.convert.verify import verify_against_keras

            print(verify_against_keras(loaded.model, src, tmp, dst))
    from ...nets.rescale import format_scale

    scale = getattr(loaded.model, "input_scale", 1.0)  # a torch module of another source takes its data as given
    scale_text = "" if scale == 1.0 else f", input scale {format_scale(scale)}"
    print(f"wrote {dst} ({described(loaded.model)}, from {loaded.source_format} {src}, "
          f"sha256 {loaded.source_sha256[:12]}...{scale_text})")
    return 0


def check_torch_target(loaded, args: argparse.Namespace, src: Path, dst: Path) -> None:
    """A torch module of another source (--arch, .pt2, an ONNX graph, a pickle) converts to .onnx (its input shape
    known or given) and, from --arch, to .pt (`save_arch_checkpoint`); anything else is one line."""
    suffix = dst.suffix.lower()
    if args.verify:
        raise BadInputError("--verify", f"compares with Keras, and {src} is a torch model ({loaded.source_format})")
    if suffix == ".h5":
        raise BadInputError(dst, f"{src} is a torch model ({loaded.source_format}), which has no Keras form: write .pt or .onnx")
    if suffix == ".pt" and loaded.source_format != "arch":
        raise BadInputError(dst, f"{src} ({loaded.source_format}) is used as it is (--model takes it); a .pt checkpoint "
                                 "is written for an --arch model only: write .onnx")
    if suffix == ".onnx":
        set_input_shape(loaded.model, argparse.Namespace(model=str(src), input_shape=args.input_shape))
    elif args.input_shape:
        loaded.model.input_shape = tuple(args.input_shape)


def described(model) -> str:
    """'N classes'; for a torch module of another source, its output width on a zero image of its input shape."""
    if hasattr(model, "num_classes"):
        return f"{model.num_classes} classes"
    shape = getattr(model, "input_shape", None)
    if shape is None:
        return "input shape unknown"
    import torch

    with torch.no_grad():
        classes = int(model.eval()(torch.zeros(1, *shape)).shape[1])
    return f"{classes} classes, input {' '.join(map(str, shape))}"


def write_converted(loaded, src: Path, dst: Path) -> None:
    """Write `loaded` (read from `src`) as dst's type."""
    from torch_badnet.convert.loading import KERAS_SUFFIXES

    suffix = dst.suffix.lower()
    graph = hasattr(loaded.model, "keras_config")  # a Keras model of another architecture (KerasGraphNet)
    if suffix == ".pt" and loaded.source_format == "arch":
        from torch_badnet.convert.torch_sources import save_arch_checkpoint

        save_arch_checkpoint(loaded, dst)
    elif suffix == ".pt":
        from ...nets.checkpoint import save_checkpoint

        save_checkpoint(loaded.model, dst, source=str(src), source_format=loaded.source_format,
                        source_sha256=loaded.source_sha256)
    elif suffix == ".h5" and graph:
        from torch_badnet.convert.keras_graph import write_keras_graph

        write_keras_graph(loaded.model, dst)
    elif suffix == ".h5":
        from torch_badnet.convert.keras_h5 import write_keras_model

        write_keras_model(loaded.model, dst)
    elif src.suffix.lower() in KERAS_SUFFIXES and not graph:
        from torch_badnet.convert.onnx_export import keras_to_onnx

        keras_to_onnx(src, dst, input_scale=loaded.model.input_scale)
    else:
        from torch_badnet.convert.onnx_export import export_onnx

        export_onnx(loaded.model, dst)
