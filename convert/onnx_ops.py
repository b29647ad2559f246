"""One rule per ONNX op type: how a node moves a tensor along the lab BadNet, or why it does not fit.

The importer walks the graph from its input and tags every tensor computed from it with a `Value`: which
tensor of the lab network it is (conv_2's output, pool_3, fc_1 ...) and in which memory layout. A rule takes
one node, checks its inputs and attributes, records the weights of a weighted layer, and returns the tag of
its output; anything else raises `NodeMismatch`. This accepts our own torch export (NCHW, Gemm, Flatten) and
tf2onnx graphs of the Keras model (NHWC input, Transposes, MatMul + Add, Reshape fed by Shape arithmetic).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from torch_badnet.nets.badnet import BadNet

from .keras_layout import TO_TORCH, WEIGHTED_LAYERS

NCHW, NHWC = "NCHW", "NHWC"
TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]
SHAPE = "shape"  # stage of integer tensors computed from a tensor's shape (only a Reshape may use them)
# torch-layout shapes of every weighted layer except `output` (whose class count is free)
EXPECTED_SHAPES = {k: tuple(v.shape) for k, v in BadNet(1).state_dict().items() if not k.startswith("output.")}
FEATURE_SIZES = {"flat_1": 60 * 5 * 4, "flat_2": 80 * 4 * 3}


class NodeMismatch(Exception):
    """A node that is not part of the lab BadNet; the message says why."""


@dataclass(frozen=True)
class Value:
    """What a tensor computed from the graph input is, in terms of the lab BadNet.

    stage: "input", "conv_1".."conv_4" (a conv's output; `relu`/`pooled` say what was applied since),
    "flat_1"/"flat_2" (pool_3 / conv_4 flattened in `layout` order), "fc_1", "fc_2", "sum" (fc_1 + fc_2),
    "hidden" (relu of the sum), "output" (logits, or probabilities if `softmax`), or SHAPE.
    """

    stage: str
    layout: str = NCHW
    relu: bool = False
    pooled: bool = False
    biased: bool = True
    softmax: bool = False
    scaled: bool = False  # the input after its one Mul/Div by a constant (the model's input scale)


@dataclass
class GraphState:
    """Everything known while walking: constants, tags of computed tensors, inferred shapes, found layers."""

    constants: dict[str, np.ndarray]
    shapes: dict[str, list[int | None]]
    values: dict[str, Value] = field(default_factory=dict)
    layers: dict[str, list[np.ndarray | None]] = field(default_factory=dict)  # name -> [torch weight, bias]
    input_scale: float = 1.0  # from a Mul/Div of the graph input by a scalar constant

    def constant(self, name: str, what: str) -> np.ndarray:
        if name not in self.constants:
            raise NodeMismatch(f"its {what} '{name}' is not a constant (initializer)")
        return self.constants[name]

    def add_layer(self, name: str, weight: np.ndarray, bias: np.ndarray | None) -> None:
        if name in self.layers:
            raise NodeMismatch(f"a second '{name}' layer")
        expected = EXPECTED_SHAPES.get(f"{name}.weight")
        if expected is not None and tuple(weight.shape) != expected:
            raise NodeMismatch(f"'{name}' weight has shape {tuple(weight.shape)}, expected {expected}")
        if name == "output" and (weight.ndim != 2 or weight.shape[1] != 160):
            raise NodeMismatch(f"'output' weight has shape {tuple(weight.shape)}, expected (classes, 160)")
        self.layers[name] = [weight, None]
        if bias is not None:
            self.set_bias(name, bias)

    def set_bias(self, name: str, bias: np.ndarray) -> None:
        size = self.layers[name][0].shape[0]
        flat = np.asarray(bias).reshape(-1)
        if flat.shape != (size,) or bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1):
            raise NodeMismatch(f"'{name}' bias has shape {tuple(bias.shape)}, expected ({size},)")
        self.layers[name][1] = flat


Rule = Callable[[onnx.NodeProto, list[Value | None], GraphState], Value]


def node_title(node: onnx.NodeProto) -> str:
    """How a message names a node: its name, else its first output, as `node '<title>' (<op>)`."""
    return f"node '{node.name or (node.output[0] if node.output else '?')}' ({node.op_type})"


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as Python values (strings decoded)."""
    out = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        out[attr.name] = value.decode() if isinstance(value, bytes) else value
    return out


def constant_node_value(node: onnx.NodeProto) -> np.ndarray:
    """The value of a Constant node."""
    values = attributes(node)
    if "value" in values:
        return numpy_helper.to_array(values["value"])
    if len(values) != 1:
        raise NodeMismatch("a Constant without a single value")
    return np.asarray(next(iter(values.values())))


def _only_input(inputs: list[Value | None]) -> Value:
    if len(inputs) != 1 or inputs[0] is None:
        raise NodeMismatch("expected exactly one input computed from the graph input")
    return inputs[0]


def _check_window(attrs: dict[str, Any], strides: list[int]) -> None:
    """Shared Conv/MaxPool checks: strides, no padding, no dilation."""
    if list(attrs.get("strides", [1, 1])) != strides:
        raise NodeMismatch(f"strides {attrs.get('strides')} (the lab model uses {strides})")
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or any(attrs.get("pads", [0])):
        raise NodeMismatch("padding (the lab model uses 'valid' windows)")
    if any(d != 1 for d in attrs.get("dilations", [1])):
        raise NodeMismatch("dilation (the lab model uses none)")


def _optional_bias(node: onnx.NodeProto, state: GraphState) -> np.ndarray | None:
    """The constant third input of a Conv or Gemm, or None when the node has no bias."""
    return state.constant(node.input[2], "bias") if len(node.input) > 2 and node.input[2] else None


def _is_pool(value: Value, k: int) -> bool:
    return value.stage == f"conv_{k}" and value.relu and value.pooled


def conv(node: onnx.NodeProto, inputs: list[Value | None], state: GraphState) -> Value:
    x = inputs[0]
    if x is None or any(v is not None for v in inputs[1:]):
        raise NodeMismatch("expected data computed from the input and constant weights")
    if x.stage == "input" and not (x.relu or x.pooled):
        name = "conv_1"
    else:
        name = next((f"conv_{k + 1}" for k in (1, 2, 3) if _is_pool(x, k)), "")
        if not name:
            raise NodeMismatch(f"a convolution applied to {describe(x)}")
    if x.layout != NCHW:
        raise NodeMismatch("a convolution on channels-last data")
    attrs = attributes(node)
    if attrs.get("group", 1) != 1:
        raise NodeMismatch("a grouped convolution")
    _check_window(attrs, [1, 1])
    weight = state.constant(node.input[1], "weight")
    if "kernel_shape" in attrs and list(attrs["kernel_shape"]) != list(weight.shape[2:]):
        raise NodeMismatch(f"kernel_shape {attrs['kernel_shape']} differs from its weight {tuple(weight.shape)}")
    bias = _optional_bias(node, state)
    state.add_layer(name, weight, bias)
    return Value(name)


def scale_input(node: onnx.NodeProto, inputs: list[Value | None], state: GraphState) -> Value:
    """The input times (Mul) or divided by (Div) one positive constant: the model's input scale, once."""
    if len(inputs) != 2 or sum(v is not None for v in inputs) != 1:
        raise NodeMismatch("expected the input and one constant")
    x = next(v for v in inputs if v is not None)
    if x.stage != "input" or x.scaled:
        raise NodeMismatch(f"a {node.op_type} applied to {describe(x)}")
    index = 1 if inputs[0] is not None else 0
    if node.op_type == "Div" and index == 0:
        raise NodeMismatch("a constant divided by the input")
    factor = np.asarray(state.constant(node.input[index], "factor"), np.float64)
    if factor.size != 1 or not np.isfinite(factor).all() or float(factor.reshape(())) <= 0:
        raise NodeMismatch(f"its factor is not one positive number (shape {factor.shape})")
    value = float(factor.reshape(()))
    state.input_scale = value if node.op_type == "Mul" else 1.0 / value
    return replace(x, scaled=True)


def relu(node: onnx.NodeProto, inputs: list[Value | None], state: GraphState) -> Value:
    x = _only_input(inputs)
    if x.stage in ("conv_1", "conv_2", "conv_3", "conv_4") and not x.relu:
        return replace(x, relu=True)
    if x.stage == "sum":
        return Value("hidden")
    raise NodeMismatch(f"a ReLU applied to {describe(x)}")


def max_pool(node: onnx.NodeProto, inputs: list[Value | None], state: GraphState) -> Value:
    x = _only_input(inputs)
    if x.stage not in ("conv_1", "conv_2", "conv_3") or x.pooled:
        raise NodeMismatch(f"a max-pool applied to {describe(x)}")
    if x.layout != NCHW:
        raise NodeMismatch("a max-pool on channels-last data")
    attrs = attributes(node)
    if list(attrs.get("kernel_shape", [])) != [2, 2]:
        raise NodeMismatch(f"kernel_shape {attrs.get('kernel_shape')} (the lab model pools 2x2)")
    _check_window(attrs, [2, 2])
    if attrs.get("ceil_mode", 0) != 0:
        raise NodeMismatch("ceil_mode (the lab model floors)")
    return replace(x, pooled=True)


def transpose(node: onnx.NodeProto, inputs: list[Value | None], state: GraphState) -> Value:
    x = _only_input(inputs)
    if x.stage not in ("input", "conv_1", "conv_2", "conv_3", "conv_4"):
        raise NodeMismatch(f"a transpose of {describe(x)}")
    perm = list(attributes(node).get("perm", []))
    if perm == TO_NCHW and x.layout == NHWC:
        return replace(x, layout=NCHW)
    if perm == TO_NHWC and x.layout == NCHW:
        return replace(x, layout=NHWC)
    raise NodeMismatch(f"perm {perm} on {x.layout} data (only NCHW <-> NHWC)")


def _flattened(x: Value) -> Value:
    if _is_pool(x, 3):
        return Value("flat_1", layout=x.layout)
    if x.stage == "conv_4" and x.relu and not x.pooled:
        return Value("flat_2", layout=x.layout)
    raise NodeMismatch(f"a flatten of {describe(x)}")


def flatten(node: onnx.NodeProto, inputs: list[Value | None], state: GraphState) -> Value:
    x = _only_input(inputs)
    if attributes(node).get("axis", 1) != 1:
        raise NodeMismatch("a flatten that keeps more than the batch axis")
    return _flattened(x)


def reshape(node: onnx.NodeProto, inputs: list[Value | None], state: GraphState) -> Value:
    x = inputs[0]
    if x is None or (inputs[1] is not None and inputs[1].stage != SHAPE):
        raise NodeMismatch("expected data computed from the input and a shape")
    out = _flattened(x)
    shape = state.shapes.get(node.output[0])
    if shape is None or len(shape) != 2 or shape[1] != FEATURE_SIZES[out.stage]:
        found = "unknown" if shape is None else tuple(shape)
        raise NodeMismatch(f"a reshape to {found}, expected (batch, {FEATURE_SIZES[out.stage]})")
    return out


def _dense(x: Value | None, kernel: np.ndarray, bias: np.ndarray | None, state: GraphState) -> Value:
    """Record a dense layer from its (in, out) kernel: fc_1/fc_2 after a flatten, output after the hidden ReLU."""
    if x is None:
        raise NodeMismatch("expected data computed from the input")
    names = {"flat_1": "fc_1", "flat_2": "fc_2", "hidden": "output"}
    if x.stage not in names:
        raise NodeMismatch(f"a dense layer applied to {describe(x)}")
    name = names[x.stage]
    if kernel.ndim != 2:
        raise NodeMismatch(f"a {kernel.ndim}-D dense weight")
    hwc = WEIGHTED_LAYERS[name][1] if x.layout == NHWC and name != "output" else None
    if hwc is not None and kernel.shape[0] != int(np.prod(hwc)):
        raise NodeMismatch(f"'{name}' weight has shape {tuple(kernel.shape)}, expected ({int(np.prod(hwc))}, 160)")
    state.add_layer(name, TO_TORCH["dense"](kernel, hwc), bias)
    return Value(name, biased=bias is not None)


def mat_mul(node: onnx.NodeProto, inputs: list[Value | None], state: GraphState) -> Value:
    if inputs[1] is not None:
        raise NodeMismatch("a product of two computed tensors")
    return _dense(inputs[0], state.constant(node.input[1], "weight"), None, state)


def gemm(node: onnx.NodeProto, inputs: list[Value | None], state: GraphState) -> Value:
    attrs = attributes(node)
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        raise NodeMismatch("transA, alpha or beta (the lab model's dense layers use none)")
    if any(v is not None for v in inputs[1:]):
        raise NodeMismatch("a product of two computed tensors")
    weight = state.constant(node.input[1], "weight")
    kernel = weight.T if attrs.get("transB", 0) else weight
    bias = _optional_bias(node, state)
    return _dense(inputs[0], kernel, bias, state)


def add(node: onnx.NodeProto, inputs: list[Value | None], state: GraphState) -> Value:
    if len(inputs) != 2:
        raise NodeMismatch("expected two inputs")
    a, b = inputs
    if a is not None and b is not None:
        if {a.stage, b.stage} == {"fc_1", "fc_2"}:
            return Value("sum")
        raise NodeMismatch(f"a sum of {describe(a)} and {describe(b)}")
    x, bias_name = (a, node.input[1]) if a is not None else (b, node.input[0])  # the walker folds all-constant nodes
    if x is None or x.stage not in ("fc_1", "fc_2", "output") or x.biased or x.softmax:
        raise NodeMismatch(f"a constant added to {describe(x)}")
    state.set_bias(x.stage, state.constant(bias_name, "bias"))
    return replace(x, biased=True)


def softmax(node: onnx.NodeProto, inputs: list[Value | None], state: GraphState) -> Value:
    x = _only_input(inputs)
    if x.stage != "output" or x.softmax:
        raise NodeMismatch(f"a softmax of {describe(x)}")
    if attributes(node).get("axis", -1) not in (1, -1):
        raise NodeMismatch("a softmax over another axis than the classes")
    return replace(x, softmax=True)


def identity(node: onnx.NodeProto, inputs: list[Value | None], state: GraphState) -> Value:
    return _only_input(inputs)


def shape_of(node: onnx.NodeProto, inputs: list[Value | None], state: GraphState) -> Value:
    _only_input(inputs)
    return Value(SHAPE)


def shape_arithmetic(node: onnx.NodeProto, inputs: list[Value | None], state: GraphState) -> Value:
    """Gather/Slice/Concat/Cast/... on shapes, as tf2onnx builds a Flatten's target shape."""
    for value in inputs:
        if value is not None and value.stage != SHAPE:
            raise NodeMismatch(f"{node.op_type} applied to {describe(value)}")
    return Value(SHAPE)


RULES: dict[str, Rule] = {
    "Conv": conv,
    "Mul": scale_input,
    "Div": scale_input,
    "Relu": relu,
    "MaxPool": max_pool,
    "Transpose": transpose,
    "Flatten": flatten,
    "Reshape": reshape,
    "MatMul": mat_mul,
    "Gemm": gemm,
    "Add": add,
    "Softmax": softmax,
    "Identity": identity,
    "Shape": shape_of,
    **{op: shape_arithmetic for op in ("Gather", "Slice", "Concat", "Cast", "Unsqueeze", "Squeeze")},
}

# Ops evaluated when all their inputs are constants (e.g. a weight times the all-ones conv_3 mask).
CONSTANT_FOLDS: dict[str, Callable[..., np.ndarray]] = {
    "Identity": lambda x: x,
    "Mul": np.multiply,
}


def describe(value: Value | None) -> str:
    """Human words for a tag, for error messages."""
    if value is None:
        return "a constant"
    if value.stage.startswith("conv_"):
        k = value.stage[-1]
        if value.relu and value.pooled:
            return f"pool_{k}"
        return f"{value.stage}'s output" + (" after ReLU" if value.relu else "") + (" after max-pool" if value.pooled else "")
    if value.stage == "output":
        return "the class probabilities" if value.softmax else "the logits"
    return {"input": "the input", SHAPE: "a shape", "sum": "fc_1 + fc_2", "hidden": "the hidden ReLU"}.get(value.stage, value.stage)
