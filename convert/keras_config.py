"""The lab architecture's `model_config` JSON, as Keras 2's `model.save('x.h5')` stores it (no Keras needed).

The layout of a Keras 2 full-model .h5 file (Keras 3 reads it with `keras.models.load_model` through its
legacy_h5_format, with the legacy-config conversions of legacy/saving/saving_utils.model_from_config):
root attributes `model_config` (this JSON), `keras_version`, `backend`; a group `model_weights` holding
attribute `layer_names` and one group per layer as in a `save_weights` file. The class name is "Model",
as Keras 2.3.1 (the lab's) wrote it; tf.keras 2.x and Keras 3 both map it to a functional model. Only
settings every Keras since 2.3 accepts are written (no `groups`, default initializers).
"""

from __future__ import annotations

from typing import Any

MODEL_NAME = "bd_net"


def _layer(cls: str, name: str, inbound: list[str], **config: Any) -> dict[str, Any]:
    return {"name": name, "class_name": cls,
            "config": {"name": name, "trainable": True, "dtype": "float32", **config},
            "inbound_nodes": [[[n, 0, 0, {}] for n in inbound]] if inbound else []}


def _input_layer(name: str, batch_input_shape: list[int | None]) -> dict[str, Any]:
    """Keras 2's InputLayer config: no `trainable` (Keras 2's InputLayer takes no such argument and refuses it)."""
    return {"name": name, "class_name": "InputLayer",
            "config": {"batch_input_shape": batch_input_shape, "dtype": "float32", "sparse": False, "name": name},
            "inbound_nodes": []}


def _conv(name: str, inbound: str, filters: int, kernel: int) -> dict[str, Any]:
    return _layer("Conv2D", name, [inbound], filters=filters, kernel_size=[kernel, kernel], strides=[1, 1],
                  padding="valid", data_format="channels_last", dilation_rate=[1, 1], activation="relu",
                  use_bias=True)


def _pool(name: str, inbound: str) -> dict[str, Any]:
    return _layer("MaxPooling2D", name, [inbound], pool_size=[2, 2], padding="valid", strides=[2, 2],
                  data_format="channels_last")


def _dense(name: str, inbound: str, units: int, activation: str) -> dict[str, Any]:
    return _layer("Dense", name, [inbound], units=units, activation=activation, use_bias=True)


def lab_model_config(num_classes: int) -> dict[str, Any]:
    """The lab's bd_net (architecture.py) as a Keras 2 functional model config, layer names included."""
    layers = [
        _input_layer("input", [None, 55, 47, 3]),
        _conv("conv_1", "input", 20, 4),
        _pool("pool_1", "conv_1"),
        _conv("conv_2", "pool_1", 40, 3),
        _pool("pool_2", "conv_2"),
        _conv("conv_3", "pool_2", 60, 3),
        _pool("pool_3", "conv_3"),
        _conv("conv_4", "pool_3", 80, 2),
        _layer("Flatten", "flatten_1", ["pool_3"], data_format="channels_last"),
        _layer("Flatten", "flatten_2", ["conv_4"], data_format="channels_last"),
        _dense("fc_1", "flatten_1", 160, "linear"),
        _dense("fc_2", "flatten_2", 160, "linear"),
        _layer("Add", "add_1", ["fc_1", "fc_2"]),
        _layer("Activation", "activation_1", ["add_1"], activation="relu"),
        _dense("output", "activation_1", num_classes, "softmax"),
    ]
    return {"class_name": "Model", "config": {"name": MODEL_NAME, "layers": layers,
                                              "input_layers": [["input", 0, 0]],
                                              "output_layers": [["output", 0, 0]]}}
