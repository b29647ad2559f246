"""The lab architecture rebuilt in Keras from code (needs the `keras` extra: TensorFlow).

Used to verify imports against real Keras and to export ONNX through tf2onnx; a model file's own
config or code is never deserialised.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from torch_badnet.errors import BadInputError
from torch_badnet.nets.badnet import LAB_CLASSES, BadNet

from .keras_layout import model_to_keras


def import_keras() -> Any:
    """Import Keras (TensorFlow backend) quietly, or explain which extra to install."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        with quiet_native_stderr():
            import keras
    except ImportError:
        raise BadInputError("keras", "TensorFlow/Keras is not installed; install the extra: pip install 'torch-badnet[keras]'") from None
    return keras


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what native code writes to fd 2 (TensorFlow's start-up log lines, which ignore
    TF_CPP_MIN_LOG_LEVEL) while importing; Python exceptions still surface after it is restored."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def build_keras_badnet(num_classes: int = LAB_CLASSES) -> Any:
    """The lab's bd_net architecture (architecture.py), layer names included; input NHWC (55, 47, 3)."""
    keras = import_keras()
    layers = keras.layers
    x = keras.Input(shape=(55, 47, 3), name="input")
    conv_1 = layers.Conv2D(20, (4, 4), activation="relu", name="conv_1")(x)
    pool_1 = layers.MaxPooling2D((2, 2), name="pool_1")(conv_1)
    conv_2 = layers.Conv2D(40, (3, 3), activation="relu", name="conv_2")(pool_1)
    pool_2 = layers.MaxPooling2D((2, 2), name="pool_2")(conv_2)
    conv_3 = layers.Conv2D(60, (3, 3), activation="relu", name="conv_3")(pool_2)
    pool_3 = layers.MaxPooling2D((2, 2), name="pool_3")(conv_3)
    fc_1 = layers.Dense(160, name="fc_1")(layers.Flatten(name="flatten_1")(pool_3))
    conv_4 = layers.Conv2D(80, (2, 2), activation="relu", name="conv_4")(pool_3)
    fc_2 = layers.Dense(160, name="fc_2")(layers.Flatten(name="flatten_2")(conv_4))
    merged = layers.Activation("relu", name="activation_1")(layers.Add(name="add_1")([fc_1, fc_2]))
    output = layers.Dense(num_classes, activation="softmax", name="output")(merged)
    return keras.Model(inputs=x, outputs=output, name="bd_net")


def to_keras(model: BadNet) -> Any:
    """A Keras lab model carrying `model`'s weights (pruned channels zeroed, as the lab prunes)."""
    keras_model = build_keras_badnet(model.num_classes)
    for name, (kernel, bias) in model_to_keras(model, bake_mask=True).items():
        keras_model.get_layer(name).set_weights([kernel, bias])
    return keras_model


def load_into_keras(path: str | os.PathLike[str]) -> Any:
    """Build the lab architecture in Keras and load a weights file with Keras' own `load_weights`."""
    keras_model = build_keras_badnet(_num_classes_of(path))
    keras_model.load_weights(str(path))
    return keras_model


def _num_classes_of(path: str | os.PathLike[str]) -> int:
    from .keras_h5 import read_keras_file

    return int(read_keras_file(path).layers["output"][0].shape[1])
