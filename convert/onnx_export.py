"""Write ONNX files: a BadNet (or the GoodNet around it) through torch.onnx, a Keras file through tf2onnx.

`export_onnx` uses torch's TorchScript-based exporter (`dynamo=False`): it needs only the `onnx` package,
folds the conv_3 mask into the weights, and writes the same bytes for the same model. `keras_to_onnx` reads
the Keras file with the project's own reader and rebuilds the lab architecture in Keras from code; no model,
config or code is ever deserialised from the file.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from torch_badnet.data.files import write_bytes
from torch_badnet.errors import BadInputError, first_line
from torch_badnet.nets.badnet import INPUT_SHAPE, BadNet, scale_divisor
from torch_badnet.nets.goodnet import GoodNet

DEFAULT_OPSET = 17
INPUT_NAME = "input"
LOGITS_NAME = "logits"
LABEL_NAME = "label"
KERAS_INPUT_SHAPE = (55, 47, 3)  # the Keras model's NHWC input, kept as the ONNX input of keras_to_onnx
# torch >= 2.9 defaults to the dynamo exporter (needs onnxscript); older torch has only the TorchScript one
_TORCHSCRIPT_EXPORTER = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def opset_range() -> tuple[int, int]:
    """The opsets this torch's TorchScript exporter writes, from torch.onnx's own constants (7..20 in torch 2.13)."""
    from torch.onnx import _constants

    highest = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET)
    return _constants.ONNX_MIN_OPSET, highest


def check_opset(opset: int) -> int:
    """`opset`, or a BadInputError naming --opset when torch's exporter cannot write it."""
    low, high = opset_range()
    if not low <= opset <= high:
        raise BadInputError("--opset", f"{opset} is outside the opsets torch {torch.__version__.split('+')[0]}'s "
                                       f"ONNX exporter writes ({low} to {high}; default {DEFAULT_OPSET})")
    return opset


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Keep torch.onnx's chatter from the user: its warnings, and the graph dump its C++ side prints to stdout
    (file descriptor 1) when an export fails."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def export_onnx(model: BadNet, dst: str | os.PathLike[str], pruned: torch.Tensor | torch.nn.Module | None = None,
                opset: int = DEFAULT_OPSET, allow_unpaired: bool = False) -> None:
    """Write B (output `logits`, float32 (N, classes)) or, given `pruned`, the GoodNet (output `label`, int64).

    The GoodNet is one graph whose trunk is shared by B and B'; its labels lie in [0, classes], `classes`
    meaning "backdoor detected". The input `input` is (N, 3, 55, 47) float32 pixels with a dynamic N (a
    KerasGraphNet's: (N, *net.input_shape), its preprocessing inside the graph).
    `allow_unpaired` is GoodNet's (a B' derived from another model raises ValueError without it).
    """
    if not isinstance(model, BadNet) and not hasattr(model, "input_shape"):
        raise TypeError(f"export_onnx needs a BadNet or a KerasGraphNet (a net that knows its input shape), got {type(model).__name__}")
    module: torch.nn.Module = model if pruned is None else GoodNet(model, pruned, allow_unpaired=allow_unpaired)
    output_name = LOGITS_NAME if pruned is None else LABEL_NAME
    check_opset(opset)
    module = copy.deepcopy(module).cpu().float().eval()  # same bytes whatever device or mode the model is in
    buffer = io.BytesIO()
    try:
        with quiet_exporter(), torch.no_grad():  # e.g. the TorchScript exporter announcing its successor
            torch.onnx.export(
                module, (torch.zeros((1, *getattr(model, "input_shape", INPUT_SHAPE))),), buffer, opset_version=opset,
                **_TORCHSCRIPT_EXPORTER, input_names=[INPUT_NAME], output_names=[output_name],
                dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}}, do_constant_folding=True,
            )
    except torch.onnx.errors.OnnxExporterError as exc:  # e.g. "export failed on where ... for opset 7" (the GoodNet)
        if "opset" not in str(exc):
            raise
        what = "the GoodNet" if pruned is not None else "the model"
        raise BadInputError("--opset", f"opset {opset} cannot express {what}: {first_line(exc)}") from None
    write_bytes(dst, buffer.getvalue())


def keras_to_onnx(src: str | os.PathLike[str], dst: str | os.PathLike[str], opset: int = DEFAULT_OPSET,
                  input_scale: float | None = None) -> None:
    """Convert a Keras lab model file to ONNX with tf2onnx (input `input` NHWC (N, 55, 47, 3), softmax output).

    The weights are read by convert.keras_h5 (validated) and loaded into the architecture built from code.
    `input_scale` (default: the file's record, else 1): unless 1, the graph starts by scaling its input
    (a Div by k for 1/k, else a Mul), so the ONNX file takes raw pixels 0..255 like every model here.
    """
    from .keras_h5 import load_keras
    from .keras_model import to_keras

    model, _, recorded = load_keras(src)
    model.input_scale = input_scale if input_scale is not None else recorded or 1.0
    tf, tf2onnx = import_tf2onnx()
    keras_model = to_keras(model)
    signature = (tf.TensorSpec((None, *KERAS_INPUT_SHAPE), tf.float32, name=INPUT_NAME),)
    if model.input_scale == 1.0:
        proto, _ = tf2onnx.convert.from_keras(keras_model, input_signature=signature, opset=opset)
    else:
        scaled = tf.function(lambda x: keras_model(_scale_nhwc(model, x), training=False), input_signature=signature)
        proto, _ = tf2onnx.convert.from_function(scaled, input_signature=signature, opset=opset)
    write_bytes(dst, proto.SerializeToString())


def _scale_nhwc(model: BadNet, x: Any) -> Any:
    """model.scale_input on a TensorFlow tensor: x / k for a scale 1/k, else x * scale (same arithmetic)."""
    divisor = scale_divisor(model.input_scale)
    return x / float(divisor) if divisor else x * model.input_scale


def import_tf2onnx() -> tuple[Any, Any]:
    """TensorFlow and tf2onnx, imported quietly, or a BadInputError naming the extra to install."""
    from .keras_model import import_keras

    import_keras()
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError:
        raise BadInputError("tf2onnx", "tf2onnx is not installed; install the extra: pip install 'torch-badnet[keras]'") from None
    return tf, tf2onnx
