"""One small converter per Keras layer class: `@register("Conv2D")` turns a layer's settings and its input shapes
(torch order: (C, H, W) maps, (F,) vectors) into the torch module that computes it. A new layer is one function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from torch_badnet.errors import BadInputError

from . import modules as m
from .config import Node

Shape = tuple[int, ...]
Converter = Callable[[Node, list[Shape]], nn.Module]
CONVERTERS: dict[str, Converter] = {}

# Layers whose Keras class runs code stored in the file: named as such, never built.
CODE_LAYERS = {"Lambda", "TFOpLambda", "SlicingOpLambda"}


class LayerError(Exception):
    """A layer that cannot be built: the problem, in words (the caller adds the file)."""


def register(*class_names: str) -> Callable[[Converter], Converter]:
    def add(fn: Converter) -> Converter:
        for name in class_names:
            CONVERTERS[name] = fn
        return fn
    return add


def converter_of(node: Node, where: str) -> Converter:
    """The converter of `node`'s class; a one-line BadInputError naming the layer for anything else."""
    if node.class_name in CODE_LAYERS:
        raise BadInputError(where, f"layer '{node.name}' is a {node.class_name}: it holds code, which torch-badnet never runs "
                                   "(rebuild the model without it)")
    if node.class_name not in CONVERTERS:
        raise BadInputError(where, f"unsupported layer '{node.name}' ({node.class_name}); supported layers: "
                                   f"{', '.join(sorted(CONVERTERS))}")
    return CONVERTERS[node.class_name]


def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise LayerError(f"{name}={value!r} is not one or two integers")


def _image(node: Node, shapes: list[Shape]) -> Shape:
    (shape,) = shapes
    if len(shape) != 3:
        raise LayerError(f"takes a (H, W, C) image map, but its input has shape {_keras_shape(shape)}")
    if node.config.get("data_format", "channels_last") not in ("channels_last", None):
        raise LayerError(f"data_format={node.config['data_format']!r}; only channels_last is supported")
    return shape


def _keras_shape(shape: Shape) -> str:
    """A torch-order shape as Keras writes it: (H, W, C) or (F,)."""
    keras = (*shape[1:], shape[0]) if len(shape) == 3 else shape
    return "(" + ", ".join(map(str, keras)) + ("," if len(keras) == 1 else "") + ")"


def _activation(node: Node, default: str = "linear") -> str:
    value = node.config.get("activation", default)
    if isinstance(value, dict):  # a serialised built-in function: {"class_name": "function", "config": "relu"}
        value = value.get("config") if isinstance(value.get("config"), str) else value.get("class_name")
    value = "linear" if value is None else str(value)
    if value not in m.ACTIVATIONS:
        raise LayerError(f"uses activation '{value}'; supported: {', '.join(m.ACTIVATIONS)}")
    return value


def _padding(node: Node, hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
             dilation: tuple[int, int] = (1, 1)) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) for Keras' padding setting."""
    padding = str(node.config.get("padding", "valid")).lower()
    if padding == "valid":
        return 0, 0, 0, 0
    if padding != "same":
        raise LayerError(f"padding={padding!r}; supported: valid, same")
    top, bottom = m.same_padding(hw[0], kernel[0], stride[0], dilation[0])
    left, right = m.same_padding(hw[1], kernel[1], stride[1], dilation[1])
    return left, right, top, bottom


@register("Conv2D", "Convolution2D")
def conv2d(node: Node, shapes: list[Shape]) -> nn.Module:
    c, h, w = _image(node, shapes)
    cfg = node.config
    kernel, stride = _pair(cfg.get("kernel_size"), "kernel_size"), _pair(cfg.get("strides", 1), "strides")
    dilation, groups = _pair(cfg.get("dilation_rate", 1), "dilation_rate"), int(cfg.get("groups", 1) or 1)
    filters = cfg.get("filters")
    if not isinstance(filters, int) or filters < 1 or c % groups or filters % groups:
        raise LayerError(f"has filters={filters!r} and groups={groups} for {c} input channels")
    activation = _activation(node)
    if activation == "softmax":
        raise LayerError("uses a fused softmax; only a model's output layer may (it is dropped: logits)")
    pad = _padding(node, (h, w), kernel, stride, dilation)
    return m.KerasConv2d(c, filters, kernel, stride, dilation, groups, bool(cfg.get("use_bias", True)), pad, activation)


@register("Dense")
def dense(node: Node, shapes: list[Shape]) -> nn.Module:
    (shape,) = shapes
    if len(shape) != 1:
        raise LayerError(f"is a Dense on an input of shape {_keras_shape(shape)}; only (features,) inputs are supported")
    units = node.config.get("units")
    if not isinstance(units, int) or units < 1:
        raise LayerError(f"has units={units!r}")
    return m.KerasDense(shape[0], units, bool(node.config.get("use_bias", True)), _activation(node))


@register("MaxPooling2D", "MaxPool2D", "AveragePooling2D", "AvgPool2D")
def pool2d(node: Node, shapes: list[Shape]) -> nn.Module:
    _, h, w = _image(node, shapes)
    pool = _pair(node.config.get("pool_size", 2), "pool_size")
    strides = node.config.get("strides")
    stride = pool if strides is None else _pair(strides, "strides")
    pad = _padding(node, (h, w), pool, stride)
    if node.class_name.startswith("Max"):
        return m.KerasMaxPool(pool, stride, pad)
    return m.KerasAvgPool(pool, stride, pad, (h, w))


@register("GlobalAveragePooling2D", "GlobalAvgPool2D", "GlobalMaxPooling2D", "GlobalMaxPool2D")
def global_pool(node: Node, shapes: list[Shape]) -> nn.Module:
    _image(node, shapes)
    return m.GlobalPool("max" if "Max" in node.class_name else "avg", bool(node.config.get("keepdims", False)))


@register("Flatten")
def flatten(node: Node, shapes: list[Shape]) -> nn.Module:
    (shape,) = shapes
    if len(shape) == 3:
        _image(node, shapes)
    return m.KerasFlatten(len(shape))


@register("Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization")
def inference_identity(node: Node, shapes: list[Shape]) -> nn.Module:
    """Layers that only act while training: the identity at inference (as Keras' predict)."""
    return nn.Identity()


@register("Activation")
def activation(node: Node, shapes: list[Shape]) -> nn.Module:
    return m.KerasActivation(_activation(node))


@register("Softmax")
def softmax(node: Node, shapes: list[Shape]) -> nn.Module:
    axis = node.config.get("axis", -1)
    if axis not in (-1, len(shapes[0]), [-1]):
        raise LayerError(f"has axis={axis!r}; only the last axis (-1) is supported")
    return m.KerasActivation("softmax")


@register("ReLU")
def relu(node: Node, shapes: list[Shape]) -> nn.Module:
    cfg = node.config
    max_value = cfg.get("max_value")
    return m.KerasReLU(None if max_value is None else float(max_value), float(cfg.get("negative_slope", 0.0) or 0.0),
                       float(cfg.get("threshold", 0.0) or 0.0))


@register("LeakyReLU")
def leaky_relu(node: Node, shapes: list[Shape]) -> nn.Module:
    slope = node.config.get("negative_slope", node.config.get("alpha", 0.3))
    return m.KerasReLU(None, float(slope), 0.0)


@register("BatchNormalization")
def batch_norm(node: Node, shapes: list[Shape]) -> nn.Module:
    (shape,) = shapes
    cfg = node.config
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    if axis not in (-1, len(shape)):
        raise LayerError(f"normalises axis {axis!r}; only the channel axis (-1) is supported")
    if cfg.get("renorm"):
        raise LayerError("uses batch renormalisation, which is not supported")
    return m.KerasBatchNorm(shape[0], len(shape), float(cfg.get("epsilon", 1e-3)), float(cfg.get("momentum", 0.99)),
                            bool(cfg.get("center", True)), bool(cfg.get("scale", True)))


@register("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
def merge(node: Node, shapes: list[Shape]) -> nn.Module:
    if len(shapes) < 2 or any(s != shapes[0] for s in shapes):
        raise LayerError(f"merges inputs of shapes {', '.join(map(_keras_shape, shapes))}; they must be two or more of one shape")
    return m.Merge(node.class_name.lower())


@register("Concatenate")
def concatenate(node: Node, shapes: list[Shape]) -> nn.Module:
    rank = len(shapes[0])
    axis = node.config.get("axis", -1)
    if len(shapes) < 2 or any(len(s) != rank for s in shapes) or not isinstance(axis, int) or not -rank <= axis <= rank or axis == 0:
        raise LayerError(f"concatenates inputs of shapes {', '.join(map(_keras_shape, shapes))} on axis {axis!r}")
    keras_axis = axis % (rank + 1) or rank  # 1..rank in the NHWC tensor with its batch axis
    dim = keras_axis if rank == 1 else {1: 2, 2: 3, 3: 1}[keras_axis]
    others = [i for i in range(rank) if i != dim - 1]
    if any([s[i] for i in others] != [shapes[0][i] for i in others] for s in shapes):
        raise LayerError(f"concatenates inputs of shapes {', '.join(map(_keras_shape, shapes))} that differ off axis {axis}")
    return m.Concat(dim)


@register("ZeroPadding2D")
def zero_padding(node: Node, shapes: list[Shape]) -> nn.Module:
    _image(node, shapes)
    value = node.config.get("padding", 1)
    if isinstance(value, int):
        top = bottom = left = right = value
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        (top, left), (bottom, right) = value, value
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (list, tuple)) and len(v) == 2 for v in value):
        (top, bottom), (left, right) = value
    else:
        raise LayerError(f"padding={value!r} is not an int, (h, w) or ((top, bottom), (left, right))")
    return m.ZeroPad((int(left), int(right), int(top), int(bottom)))


@register("Rescaling")
def rescaling(node: Node, shapes: list[Shape]) -> nn.Module:
    scale, offset = node.config.get("scale", 1.0), node.config.get("offset", 0.0)
    if not isinstance(scale, (int, float)) or not isinstance(offset, (int, float)):
        raise LayerError("has a per-channel scale or offset; only numbers are supported")
    return m.Rescale(float(scale), float(offset))
