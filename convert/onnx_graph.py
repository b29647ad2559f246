"""Any ONNX CNN graph as a torch module: one small converter per op type, building a torch.fx graph.

Read with the `onnx` package only (no code in the file runs; there is none to run). Weighted ops (Conv, Gemm,
MatMul by a constant, BatchNormalization), pooling and activations become torch modules named after the
exporter's scopes: torch.onnx.export's node '/layer4/layer4.1/conv2/Conv' is the module `layer4.1.conv2`, as in
the model that was exported, so `--layer` takes the same names. Other ops become torch functions. Integer
shape arithmetic (Shape -> Gather -> Concat -> Reshape, as exporters write a flatten) is resolved by ONNX shape
inference; all-constant subgraphs are folded. An op without a converter is one line naming it.

An exporter may fold BatchNorm into the conv before it (torch.onnx.export does): pruning such a conv then
masks its channels after the BatchNorm.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import fx, nn

from torch_badnet.errors import BadInputError

from .export_program import ExportedBatchNorm, ProgramNet
from .onnx_ops import NodeMismatch, attributes, constant_node_value, node_title

SHAPE = object()  # marks an integer tensor computed from a tensor's shape (only Reshape's target may use it)


class OnnxGraphNet(ProgramNet):
    """An imported ONNX graph: an fx.GraphModule whose submodules carry the exporter's names."""


class Unsupported(Exception):
    """A node the importer cannot express; the message says why."""


@dataclass
class Builder:
    """What the walk knows: constants (numpy), fx values of computed tensors, the module tree, inferred shapes."""

    graph: fx.Graph
    root: nn.Module
    shapes: dict[str, list[int | None]]
    constants: dict[str, np.ndarray]
    values: dict[str, Any] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    buffers: int = 0
    scopes: Counter[str] = field(default_factory=Counter)  # scope -> nodes in it
    layer_scopes: Counter[str] = field(default_factory=Counter)  # scope -> weighted or pooling nodes in it
    prefixes: set[str] = field(default_factory=set)  # scopes that hold other scopes (containers)
    shape_of: dict[str, Any] = field(default_factory=dict)  # a Shape node's output -> the fx value it measured

    def survey(self, nodes: Any) -> None:
        """Count the scopes of all nodes first, so a name goes to a layer only where it is that layer's alone."""
        for node in nodes:
            scope = module_name(node)
            if not scope:
                continue
            self.scopes[scope] += 1
            self.layer_scopes[scope] += node.op_type in LAYER_OPS
            parts = scope.split(".")
            self.prefixes.update(".".join(parts[:i]) for i in range(1, len(parts)))

    def module(self, node: onnx.NodeProto, module: nn.Module, x: Any, *extra: Any, required: bool = True) -> fx.Node | None:
        """Register `module` under the node's scope name and call it on `x`. A scope shared with other layers
        gets the op's name below it; without `required` (an activation), such a node gets None instead (the
        caller then uses an unnamed module)."""
        scope = module_name(node)
        counts = self.layer_scopes if required else self.scopes
        if scope and counts[scope] == 1 and scope not in self.prefixes and scope not in self.names:
            name = scope
        elif not required:
            return None
        else:
            name = self.unique(f"{scope}.{node.op_type.lower()}" if scope else node.op_type.lower())
        self.names.add(name)
        parent = self.root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, module)
        return self.graph.call_module(name, (x, *extra))

    def unique(self, name: str) -> str:
        taken = lambda n: n in self.names or n in self.prefixes or any(m.startswith(n + ".") for m in self.names)  # noqa: E731
        found, k = name, 0
        while taken(found):
            k += 1
            found = f"{name}_{k}"
        return found

    def tensor(self, array: np.ndarray) -> Any:
        """A constant as an fx value: a Python number for a scalar, else a buffer of the root."""
        if array.ndim == 0 or (array.size == 1 and array.ndim == 0):
            return array.item()
        name = f"onnx_constant_{self.buffers}"
        self.buffers += 1
        self.root.register_buffer(name, torch.from_numpy(np.array(array)))
        return self.graph.get_attr(name)

    def value(self, name: str) -> Any:
        """An input of a node: a computed tensor's fx value, or a constant as a tensor / number."""
        if name in self.values:
            return self.values[name]
        return self.tensor(self.constants[name])


def module_name(node: onnx.NodeProto) -> str:
    """The module path a node's name gives: torch.onnx.export's '/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1';
    another exporter's 'model/conv_1/Conv2D' -> 'conv_1'; '' for none."""
    parts = [p for p in node.name.split("/") if p]
    if len(parts) < 2:
        return ""
    scope = parts[:-1]
    if node.name.startswith("/"):  # each scope is its module's name in its parent ('layer4.0', 'downsample.0')
        stack: list[str] = []
        for part in scope:
            if stack and part.startswith(stack[-1] + "."):
                stack[-1] = part
            else:
                stack.append(part)
        return ".".join(_identifier(p) for p in ".".join(stack).split("."))
    return _identifier(scope[-1])


def _identifier(text: str) -> str:
    return re.sub(r"\W", "_", text) or "layer"


SCORES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def load_onnx_graph(model: onnx.ModelProto, path: str | os.PathLike[str], constants: dict[str, np.ndarray],
                    shapes: dict[str, list[int | None]], labels: bool = False) -> OnnxGraphNet:
    """The whole graph as an OnnxGraphNet taking (N, C, H, W) float32 (an NHWC graph gets a permute first). Its
    output must be scores (logits or probabilities), or with `labels` (a GoodNet graph) integer labels."""
    graph = model.graph
    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1:
        raise BadInputError(path, f"the graph has {len(inputs)} inputs; the defense needs a model with one image input")
    if len(graph.output) != 1:
        raise BadInputError(path, f"the graph has {len(graph.output)} outputs; the defense needs one (the logits)")
    output_type = graph.output[0].type.tensor_type.elem_type
    if not labels and output_type not in SCORES:
        kind = onnx.TensorProto.DataType.Name(output_type).lower()
        raise BadInputError(path, f"graph output '{graph.output[0].name}' is {kind}, not scores: the defense needs the "
                                  "model's logits (export it without its ArgMax)")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4:
        raise BadInputError(path, f"graph input '{inputs[0].name}' is not a float32 batch of images (N, C, H, W)")
    builder = Builder(fx.Graph(), nn.Module(), shapes, dict(constants))
    builder.survey(graph.node)
    x = builder.graph.placeholder("x")
    channels_last = dims[3] in (1, 3, 4) and dims[1] not in (1, 3, 4)
    builder.values[inputs[0].name] = builder.graph.call_method("permute", (x, 0, 2, 3, 1)) if channels_last else x
    for node in graph.node:
        try:
            _visit(node, builder)
        except Unsupported as exc:
            raise BadInputError(path, f"{node_title(node)}: {exc}") from None
    out = builder.values.get(graph.output[0].name)
    if out is None or out is SHAPE:
        raise BadInputError(path, f"graph output '{graph.output[0].name}' is not computed from the graph input")
    builder.graph.output(out)
    net = OnnxGraphNet(builder.root, builder.graph, class_name="OnnxGraphNet")
    shape = (dims[3], dims[1], dims[2]) if channels_last else tuple(dims[1:])
    if all(isinstance(d, int) and d > 0 for d in shape):
        net.input_shape = shape
    return net.eval()


def _visit(node: onnx.NodeProto, b: Builder) -> None:
    if node.op_type == "Constant":
        try:
            b.constants[node.output[0]] = constant_node_value(node)
        except NodeMismatch as exc:
            raise Unsupported(str(exc)) from None
        return
    if node.domain not in ("", "ai.onnx"):
        raise Unsupported(f"an op of domain '{node.domain}' has no converter")
    names = [n for n in node.input if n]
    unknown = [n for n in names if n not in b.values and n not in b.constants]
    if unknown:
        raise Unsupported(f"input '{unknown[0]}' is neither a constant nor computed from the graph input")
    if not any(n in b.values for n in names):
        fold = FOLDS.get(node.op_type)
        if fold is None or len(node.output) != 1:
            raise Unsupported(f"op {node.op_type} on constants only has no converter")
        b.constants[node.output[0]] = np.asarray(fold(node, *(b.constants[n] if n else None for n in node.input)))
        return
    if node.op_type == "ConstantOfShape" and names[0] in b.shape_of:  # a filled tensor shaped like a value
        b.values[node.output[0]] = constant_like(node, b.shape_of[names[0]], b)
        return
    if node.op_type == "Shape" and not attributes(node) and b.values.get(names[0]) is not SHAPE:
        b.shape_of[node.output[0]] = b.values[names[0]]
    if any(b.values.get(n) is SHAPE for n in names) or node.op_type == "Shape":
        if node.op_type == "Reshape":
            b.values[node.output[0]] = _reshape(node, b)
            return
        if node.op_type not in SHAPE_OPS:
            raise Unsupported(f"op {node.op_type} on a tensor's shape has no converter")
        b.values[node.output[0]] = SHAPE
        return
    converter = CONVERTERS.get(node.op_type)
    if converter is None:
        raise Unsupported(f"op {node.op_type} has no converter in torch-badnet's ONNX importer")
    if any(node.output[1:]):
        raise Unsupported("uses a second output")
    b.values[node.output[0]] = converter(node, b)


def _const(node: onnx.NodeProto, b: Builder, index: int, what: str) -> np.ndarray | None:
    if len(node.input) <= index or not node.input[index]:
        return None
    name = node.input[index]
    if name not in b.constants:
        raise Unsupported(f"its {what} '{name}' is not a constant")
    return b.constants[name]


def _param(array: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.array(array, dtype=np.float32)), requires_grad=False)


def _pads2d(attrs: dict[str, Any]) -> tuple[tuple[int, int], list[int] | None]:
    """Symmetric (ph, pw) for the module, or also the explicit F.pad for asymmetric pads."""
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise Unsupported(f"auto_pad {attrs['auto_pad']} (export with explicit pads)")
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4:
        raise Unsupported("not a 2-D window")
    top, left, bottom, right = pads
    if top == bottom and left == right:
        return (top, left), None
    return (0, 0), [left, right, top, bottom]


def _padded(b: Builder, x: Any, explicit: list[int] | None, value: float = 0.0) -> Any:
    return x if explicit is None else b.graph.call_function(F.pad, (x, explicit), {"value": value})


def conv(node: onnx.NodeProto, b: Builder) -> Any:
    attrs = attributes(node)
    weight = _const(node, b, 1, "weight")
    bias = _const(node, b, 2, "bias")
    if weight is None or weight.ndim != 4:
        raise Unsupported("only 2-D convolutions with a constant weight")
    padding, explicit = _pads2d(attrs)
    groups = int(attrs.get("group", 1))
    layer = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), tuple(attrs.get("strides", [1, 1])),
                      padding, tuple(attrs.get("dilations", [1, 1])), groups, bias=bias is not None)
    layer.weight = _param(weight)
    if bias is not None:
        layer.bias = _param(bias.reshape(-1))
    return b.module(node, layer, _padded(b, b.values[node.input[0]], explicit))


def gemm(node: onnx.NodeProto, b: Builder) -> Any:
    attrs = attributes(node)
    weight = _const(node, b, 1, "weight")
    bias = _const(node, b, 2, "bias")
    if attrs.get("transA", 0) or weight is None or weight.ndim != 2:
        raise Unsupported("only x @ W (+ c) with a constant 2-D W")
    weight = weight if attrs.get("transB", 0) else weight.T
    weight = weight * attrs.get("alpha", 1.0)
    if bias is not None and bias.size not in (1, weight.shape[0]):
        raise Unsupported(f"bias of shape {bias.shape}")
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight = _param(weight)
    if bias is not None:
        layer.bias = _param(np.broadcast_to(bias.reshape(-1) * attrs.get("beta", 1.0), (weight.shape[0],)))
    return b.module(node, layer, b.values[node.input[0]])


def mat_mul(node: onnx.NodeProto, b: Builder) -> Any:
    if node.input[1] in b.values:
        return b.graph.call_function(torch.matmul, (b.value(node.input[0]), b.value(node.input[1])))
    weight = b.constants[node.input[1]]
    if weight.ndim != 2 or node.input[0] not in b.values:
        raise Unsupported("only x @ W with a constant 2-D W")
    layer = nn.Linear(weight.shape[0], weight.shape[1], bias=False)
    layer.weight = _param(weight.T)
    return b.module(node, layer, b.values[node.input[0]])


def batch_norm(node: onnx.NodeProto, b: Builder) -> Any:
    attrs = attributes(node)
    scale, bias, mean, var = (_const(node, b, i, w) for i, w in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
    if attrs.get("training_mode", 0) or any(v is None for v in (scale, bias, mean, var)):
        raise Unsupported("only inference-mode batch normalization with constant statistics")
    layer = ExportedBatchNorm(mean.shape[0], eps=float(attrs.get("epsilon", 1e-5)), momentum=float(1 - attrs.get("momentum", 0.9)))
    layer.weight, layer.bias = _param(scale), _param(bias)
    layer.running_mean.copy_(torch.from_numpy(np.array(mean, np.float32)))
    layer.running_var.copy_(torch.from_numpy(np.array(var, np.float32)))
    return b.module(node, layer.eval(), b.values[node.input[0]])


def _pool_window(attrs: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, int], list[int] | None]:
    kernel = tuple(attrs.get("kernel_shape", []))
    if len(kernel) != 2:
        raise Unsupported(f"kernel_shape {list(kernel)} (only 2-D pooling)")
    padding, explicit = _pads2d(attrs)
    return kernel, tuple(attrs.get("strides", [1, 1])), padding, explicit


def max_pool(node: onnx.NodeProto, b: Builder) -> Any:
    attrs = attributes(node)
    kernel, strides, padding, explicit = _pool_window(attrs)
    layer = nn.MaxPool2d(kernel, strides, padding, tuple(attrs.get("dilations", [1, 1])), ceil_mode=bool(attrs.get("ceil_mode", 0)))
    return b.module(node, layer, _padded(b, b.values[node.input[0]], explicit, float("-inf")))


def average_pool(node: onnx.NodeProto, b: Builder) -> Any:
    attrs = attributes(node)
    kernel, strides, padding, explicit = _pool_window(attrs)
    if explicit is not None:
        raise Unsupported("asymmetric pads on an average pool")
    layer = nn.AvgPool2d(kernel, strides, padding, bool(attrs.get("ceil_mode", 0)), bool(attrs.get("count_include_pad", 0)))
    return b.module(node, layer, b.values[node.input[0]])


def global_average_pool(node: onnx.NodeProto, b: Builder) -> Any:
    return b.module(node, nn.AdaptiveAvgPool2d(1), b.values[node.input[0]])


def global_max_pool(node: onnx.NodeProto, b: Builder) -> Any:
    return b.module(node, nn.AdaptiveMaxPool2d(1), b.values[node.input[0]])


def activation(factory: Callable[[dict[str, Any]], nn.Module]) -> Callable[[onnx.NodeProto, Builder], Any]:
    """An activation: a module where the node has a scope of its own (an nn.ReLU submodule), else a function."""
    def convert(node: onnx.NodeProto, b: Builder) -> Any:
        module = factory(attributes(node))
        x = b.values[node.input[0]]
        called = b.module(node, module, x, required=False)
        return called if called is not None else b.graph.call_module(_shared(b, module), (x,))
    return convert


def _shared(b: Builder, module: nn.Module) -> str:
    """A scope-less activation: a module under `activations` (not a layer a user names)."""
    holder = getattr(b.root, "activations", None)
    if holder is None:
        holder = nn.Module()
        b.root.add_module("activations", holder)
    name = f"a{len(holder._modules)}"
    holder.add_module(name, module)
    return f"activations.{name}"


def clip(node: onnx.NodeProto, b: Builder) -> Any:
    attrs = attributes(node)
    low, high = _const(node, b, 1, "min"), _const(node, b, 2, "max")
    low = float(low) if low is not None else attrs.get("min", float("-inf"))
    high = float(high) if high is not None else attrs.get("max", float("inf"))
    x = b.values[node.input[0]]
    if low == 0.0 and high == 6.0:
        return activation(lambda a: nn.ReLU6())(node, b)
    return b.graph.call_function(torch.clamp, (x, low, high))


def binary(function: Callable[[Any, Any], Any]) -> Callable[[onnx.NodeProto, Builder], Any]:
    def convert(node: onnx.NodeProto, b: Builder) -> Any:
        return b.graph.call_function(function, (b.value(node.input[0]), b.value(node.input[1])))
    return convert


def flatten(node: onnx.NodeProto, b: Builder) -> Any:
    axis = attributes(node).get("axis", 1)
    if axis != 1:
        raise Unsupported(f"axis {axis} (only 1: keep the batch)")
    return b.graph.call_function(torch.flatten, (b.values[node.input[0]], 1))


def _reshape(node: onnx.NodeProto, b: Builder) -> Any:
    """A reshape that keeps the batch: (N, rest...) from a constant target or from shape inference."""
    x = b.values[node.input[0]]
    target = b.constants.get(node.input[1])
    if target is not None:
        rest = [int(v) for v in np.asarray(target).reshape(-1)[1:]]
        in_shape = b.shapes.get(node.input[0])
        if 0 in rest:
            if in_shape is None or any(in_shape[i + 1] is None for i, v in enumerate(rest) if v == 0):
                raise Unsupported("a reshape copying a dimension of unknown size")
            rest = [in_shape[i + 1] if v == 0 else v for i, v in enumerate(rest)]
    else:
        inferred = b.shapes.get(node.output[0])
        if inferred is None or any(d is None for d in inferred[1:]):
            raise Unsupported("a reshape whose target shape is computed and could not be inferred")
        rest = list(inferred[1:])
    size = b.graph.call_method("size", (x, 0))
    return b.graph.call_method("reshape", (x, size, *rest))


def reshape(node: onnx.NodeProto, b: Builder) -> Any:
    return _reshape(node, b)


def transpose(node: onnx.NodeProto, b: Builder) -> Any:
    perm = attributes(node).get("perm")
    if perm is None:
        raise Unsupported("a transpose without perm")
    return b.graph.call_method("permute", (b.values[node.input[0]], *perm))


def concat(node: onnx.NodeProto, b: Builder) -> Any:
    return b.graph.call_function(torch.cat, ([b.value(n) if n in b.values else b.tensor(b.constants[n]) for n in node.input],),
                                 {"dim": attributes(node)["axis"]})


def softmax(node: onnx.NodeProto, b: Builder) -> Any:
    return b.graph.call_function(torch.softmax, (b.values[node.input[0]],), {"dim": attributes(node).get("axis", -1)})


def _axes(node: onnx.NodeProto, b: Builder) -> list[int] | None:
    axes = attributes(node).get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = [int(v) for v in np.asarray(_const(node, b, 1, "axes")).reshape(-1)]
    return None if axes is None else list(axes)


def reduce_mean(node: onnx.NodeProto, b: Builder) -> Any:
    axes = _axes(node, b)
    x = b.values[node.input[0]]
    keep = bool(attributes(node).get("keepdims", 1))
    if axes is None:
        return b.graph.call_function(torch.mean, (x,))
    return b.graph.call_function(torch.mean, (x, axes), {"keepdim": keep})


def squeeze(node: onnx.NodeProto, b: Builder) -> Any:
    axes = _axes(node, b)
    x = b.values[node.input[0]]
    return b.graph.call_method("squeeze", (x, *axes)) if axes else b.graph.call_method("squeeze", (x,))


def unsqueeze(node: onnx.NodeProto, b: Builder) -> Any:
    x = b.values[node.input[0]]
    for axis in sorted(_axes(node, b) or []):
        x = b.graph.call_method("unsqueeze", (x, axis))
    return x


def pad(node: onnx.NodeProto, b: Builder) -> Any:
    attrs = attributes(node)
    if attrs.get("mode", "constant") != "constant":
        raise Unsupported(f"pad mode {attrs['mode']}")
    pads = attrs.get("pads")
    if pads is None:
        pads = [int(v) for v in np.asarray(_const(node, b, 1, "pads")).reshape(-1)]
    value = _const(node, b, 2, "value")
    value = float(value) if value is not None else float(attrs.get("value", 0.0))
    half = len(pads) // 2
    torch_pads: list[int] = []
    for axis in reversed(range(half)):
        torch_pads += [pads[axis], pads[axis + half]]
    return b.graph.call_function(F.pad, (b.values[node.input[0]], torch_pads), {"value": value})


def identity(node: onnx.NodeProto, b: Builder) -> Any:
    return b.values[node.input[0]]


def arg_max(node: onnx.NodeProto, b: Builder) -> Any:
    """ArgMax: the first maximum's index (torch.argmax's rule, ONNX's select_last_index=0)."""
    attrs = attributes(node)
    if attrs.get("select_last_index", 0):
        raise Unsupported("select_last_index=1 (the last maximum) has no converter")
    return b.graph.call_function(torch.argmax, (b.values[node.input[0]],),
                                 {"dim": int(attrs.get("axis", 0)), "keepdim": bool(attrs.get("keepdims", 1))})


def where(node: onnx.NodeProto, b: Builder) -> Any:
    """Where(condition, x, y), as a GoodNet graph picks B's label or N, and a B' graph fills pruned channels."""
    return b.graph.call_function(torch.where, tuple(b.value(name) for name in node.input))


def constant_like(node: onnx.NodeProto, like: Any, b: Builder) -> Any:
    """ConstantOfShape(Shape(t)): a tensor shaped as t, filled with the node's value (default float 0)."""
    value = attributes(node).get("value")
    fill = numpy_helper.to_array(value).reshape(-1) if value is not None else np.zeros(1, np.float32)
    if fill.size != 1:
        raise Unsupported("a value of more than one element")
    dtype = torch.from_numpy(fill.copy()).dtype
    return b.graph.call_function(torch.full_like, (like, fill.item()), {"dtype": dtype})


CONVERTERS: dict[str, Callable[[onnx.NodeProto, Builder], Any]] = {
    "Conv": conv,
    "Gemm": gemm,
    "MatMul": mat_mul,
    "BatchNormalization": batch_norm,
    "MaxPool": max_pool,
    "AveragePool": average_pool,
    "GlobalAveragePool": global_average_pool,
    "GlobalMaxPool": global_max_pool,
    "Relu": activation(lambda a: nn.ReLU()),
    "Sigmoid": activation(lambda a: nn.Sigmoid()),
    "Tanh": activation(lambda a: nn.Tanh()),
    "LeakyRelu": activation(lambda a: nn.LeakyReLU(a.get("alpha", 0.01))),
    "HardSwish": activation(lambda a: nn.Hardswish()),
    "Clip": clip,
    "Add": binary(torch.add),
    "Sub": binary(torch.sub),
    "Mul": binary(torch.mul),
    "Div": binary(torch.div),
    "Flatten": flatten,
    "Reshape": reshape,
    "Transpose": transpose,
    "Concat": concat,
    "Softmax": softmax,
    "ReduceMean": reduce_mean,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Pad": pad,
    "Identity": identity,
    "Dropout": identity,
    "ArgMax": arg_max,
    "Equal": binary(torch.eq),
    "Where": where,
}

LAYER_OPS = {"Conv", "Gemm", "MatMul", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
SHAPE_OPS = {"Shape", "Gather", "Slice", "Concat", "Cast", "Unsqueeze", "Squeeze", "Mul", "Add", "Sub", "Div", "Identity"}


def _fold_reshape(node: onnx.NodeProto, x: np.ndarray, shape: np.ndarray) -> np.ndarray:
    target = [x.shape[i] if v == 0 else int(v) for i, v in enumerate(shape.reshape(-1))]
    return x.reshape(target)


def _fold_gather(node: onnx.NodeProto, x: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.take(x, index, axis=attributes(node).get("axis", 0))


def _fold_unsqueeze(node: onnx.NodeProto, x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    for axis in sorted(attributes(node).get("axes", [] if axes is None else axes.reshape(-1).tolist())):
        x = np.expand_dims(x, int(axis))
    return x


def _fold_axes(node: onnx.NodeProto, axes: np.ndarray | None) -> tuple[int, ...] | None:
    found = attributes(node).get("axes", [] if axes is None else axes.reshape(-1).tolist())
    return tuple(int(a) for a in found) or None


# Ops evaluated when all their inputs are constants (weights times a mask, reshaped constants ...).
FOLDS: dict[str, Callable[..., np.ndarray]] = {
    "Identity": lambda n, x: x,
    "Mul": lambda n, x, y: x * y,
    "Add": lambda n, x, y: x + y,
    "Sub": lambda n, x, y: x - y,
    "Div": lambda n, x, y: x / y if np.issubdtype(np.result_type(x, y), np.floating) else x // y,
    "Sqrt": lambda n, x: np.sqrt(x),
    "Reciprocal": lambda n, x: 1 / x,
    "Cast": lambda n, x: x.astype(onnx.helper.tensor_dtype_to_np_dtype(attributes(n)["to"])),
    "Reshape": _fold_reshape,
    "Transpose": lambda n, x: np.transpose(x, attributes(n).get("perm")),
    "Unsqueeze": _fold_unsqueeze,
    "Squeeze": lambda n, x, axes=None: np.squeeze(x, _fold_axes(n, axes)),
    "Concat": lambda n, *xs: np.concatenate(xs, axis=attributes(n)["axis"]),
    "Gather": _fold_gather,
    "Shape": lambda n, x: np.asarray(x.shape, np.int64),
}


def constants_of(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}
