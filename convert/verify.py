"""`convert --verify`: run the source in real Keras and the converted file in PyTorch on the same inputs.

The reference is Keras itself: the lab architecture rebuilt from code with the source's weights loaded by Keras'
`load_weights`; any other Keras graph (a full-model .h5 or a .keras archive) loaded by Keras' own `load_model`:
Keras 2 (`tf_keras`) for a Keras 2 .h5 where it is installed, else Keras 3. A source that is no Keras file (a .pt
or .onnx of a Keras graph) is written as a Keras 2 .h5 (`write_keras_graph`) and loaded the same way.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torch_badnet.errors import BadInputError, first_line
from torch_badnet.nets.badnet import INPUT_SHAPE, BadNet

from .keras_model import import_keras, load_into_keras, quiet_native_stderr, to_keras
from .loading import KERAS_SUFFIXES, read_model_file

VERIFY_INPUTS = 256
VERIFY_SEED = 0


def verify_against_keras(source_model: nn.Module, src: Path, converted: Path, shown: Path | None = None) -> str:
    """Compare Keras (the source file loaded by Keras itself, or the source weights) with the converted file
    (`shown`: the name errors give it, e.g. the destination of a file still being written).

    Returns a one-line report naming the Keras used; raises BadInputError if any predicted class differs.
    """
    shown = shown or converted
    keras_model, which = keras_reference(source_model, src)
    shape = tuple(getattr(source_model, "input_shape", INPUT_SHAPE))
    x = np.random.default_rng(VERIFY_SEED).uniform(0, 255, size=(VERIFY_INPUTS, *shape)).astype(np.float32)
    keras_input = source_model.scale_input(torch.from_numpy(x)).numpy()  # Keras takes the preprocessed pixels
    expected = np.asarray(keras_model.predict_on_batch(np.ascontiguousarray(keras_input.transpose(0, 2, 3, 1))),
                          dtype=np.float64)
    try:
        converted_model = read_model_file(converted).model
    except BadInputError as exc:
        raise BadInputError(shown, f"was converted, but cannot be read back for --verify: {exc.problem}") from None
    with torch.no_grad():
        got = converted_model(torch.from_numpy(x)).softmax(1).double().numpy()
    diff = float(np.abs(expected - got).max())
    same = int((expected.argmax(1) == got.argmax(1)).sum())
    if same != VERIFY_INPUTS:
        raise BadInputError(shown, f"differs from {which}: {VERIFY_INPUTS - same} of {VERIFY_INPUTS} classes differ "
                                       f"(max |softmax difference| {diff:.2e})")
    return f"verified against {which} on {VERIFY_INPUTS} random inputs: classes identical, max |softmax difference| {diff:.2e}"


def keras_reference(source_model: nn.Module, src: Path) -> tuple[Any, str]:
    """(the source as a Keras model, which Keras: "Keras 3" or "Keras 2 (tf_keras)")."""
    if isinstance(source_model, BadNet):
        keras = import_keras()
        model = load_into_keras(str(src)) if src.suffix.lower() in KERAS_SUFFIXES else to_keras(source_model)
        return model, flavour(keras)
    if getattr(source_model, "keras_config", None) is None:
        raise BadInputError("--verify", f"{src} holds no Keras model (a {type(source_model).__name__}); --verify compares "
                                        "a conversion with Keras")
    if src.suffix.lower() in KERAS_SUFFIXES:
        return load_keras_file(src)
    from .keras_graph import write_keras_graph

    with tempfile.TemporaryDirectory(prefix="torch-badnet-verify-") as tmp:
        path = Path(tmp) / "source.h5"
        write_keras_graph(source_model, path)
        return load_keras_file(path)


def load_keras_file(path: Path) -> tuple[Any, str]:
    """A full-model Keras file loaded by Keras' `load_model` (tf_keras for a .h5 where installed, else Keras 3)."""
    keras = import_keras()  # one line naming the extra when TensorFlow is missing
    if path.suffix.lower() == ".h5":
        tf_keras = _tf_keras()
        keras = tf_keras or keras
    try:
        with quiet_native_stderr():
            model = keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras' loaders raise anything; the line names it
        hint = "" if keras.__name__ == "tf_keras" or path.suffix.lower() != ".h5" else " (installing tf_keras may help)"
        raise BadInputError(path, f"{flavour(keras)} could not load it for --verify: {first_line(exc)}{hint}") from None
    return model, flavour(keras)


def _tf_keras() -> Any:
    """tf_keras (Keras 2 on TensorFlow), or None where it is not installed."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        with quiet_native_stderr():
            import tf_keras
    except ImportError:
        return None
    return tf_keras


def flavour(keras: Any) -> str:
    """"Keras 2 (tf_keras)" or "Keras <major>" for an imported Keras package."""
    if keras.__name__ == "tf_keras":
        return "Keras 2 (tf_keras)"
    return f"Keras {str(getattr(keras, '__version__', '3')).split('.')[0]}"
