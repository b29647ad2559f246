"""Import an ONNX graph of the lab BadNet into PyTorch, reading it with the `onnx` package only.

The graph is walked from its single input, node by node (ONNX graphs are topologically sorted); every node
computed from the input must fit the lab architecture (rules in convert/onnx_ops.py), and the weights found
on the way become a BadNet. Our own torch export and tf2onnx graphs of the Keras model both import.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import torch
from onnx import numpy_helper, shape_inference

from torch_badnet.data.files import check_is_file
from torch_badnet.errors import BadInputError, first_line
from torch_badnet.nets.badnet import BadNet

from .onnx_ops import (
    CONSTANT_FOLDS,
    NCHW,
    NHWC,
    RULES,
    GraphState,
    NodeMismatch,
    Value,
    constant_node_value,
    describe,
    node_title,
)

LAYER_NAMES = ("conv_1", "conv_2", "conv_3", "conv_4", "fc_1", "fc_2", "output")
GOODNET_OUTPUT = "label"  # onnx_export.LABEL_NAME: `torch-badnet export --pruned` writes the GoodNet's int64 labels


def load_onnx(path: str | os.PathLike[str]) -> BadNet:
    """Read an ONNX file of the lab BadNet (either layout) as an eval-mode BadNet."""
    path = check_is_file(path)
    model = read_onnx_model(path)
    state = walk_graph(model, path)
    return build_badnet(state, path)


def read_onnx_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Parse and check an ONNX file (weights must be inside it), or raise a one-line BadInputError."""
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, ValidationError, ... : all mean "not a usable ONNX file"
        raise BadInputError(path, f"not a readable ONNX model ({first_line(exc)})") from None
    if not model.graph.node:
        raise BadInputError(path, "the ONNX graph has no nodes")
    return model


def walk_graph(model: onnx.ModelProto, path: str | os.PathLike[str]) -> GraphState:
    """Tag every tensor computed from the input; raise BadInputError at the first node that does not fit."""
    graph = model.graph
    _refuse_goodnet(graph, path)
    state = GraphState(_constants(graph, path), _inferred_shapes(model))
    inputs = [i for i in graph.input if i.name not in state.constants]
    if len(inputs) != 1:
        raise BadInputError(path, f"the graph has {len(inputs)} inputs, the lab BadNet has one image input")
    state.values[inputs[0].name] = Value("input", layout=_input_layout(inputs[0], path))
    for node in graph.node:
        try:
            _visit(node, state)
        except NodeMismatch as exc:
            raise BadInputError(path, f"{node_title(node)} does not fit the lab BadNet: {exc}") from None
    _check_outputs(graph, state, path)
    return state


def is_goodnet_graph(graph: onnx.GraphProto) -> bool:
    """One int64 output 'label', as `torch-badnet export --pruned` writes the GoodNet."""
    outputs = list(graph.output)
    return (len(outputs) == 1 and outputs[0].name == GOODNET_OUTPUT
            and outputs[0].type.tensor_type.elem_type == onnx.TensorProto.INT64)


def _refuse_goodnet(graph: onnx.GraphProto, path: str | os.PathLike[str]) -> None:
    """A GoodNet graph is not a lab BadNet: say what it is and what takes it."""
    if is_goodnet_graph(graph):
        from torch_badnet.nets.goodnet import goodnet_graph_refusal

        raise goodnet_graph_refusal(path)


def load_goodnet_graph(model: onnx.ModelProto, path: str | os.PathLike[str]) -> torch.nn.Module:
    """The GoodNet graph of `export --pruned` as an OnnxGraphNet answering int64 labels: its `detected_class` N
    is the value of the graph's one ConstantOfShape (the label of a detected backdoor), `num_classes` B's N."""
    from .onnx_graph import load_onnx_graph

    fills = [n for n in model.graph.node if n.op_type == "ConstantOfShape"]
    value = next((a.t for a in fills[0].attribute if a.name == "value"), None) if len(fills) == 1 else None
    if value is None or numpy_helper.to_array(value).size != 1 or value.data_type != onnx.TensorProto.INT64:
        raise BadInputError(path, "has an int64 output 'label' but is not torch-badnet's GoodNet graph (no single "
                                  "'backdoor detected' constant)")
    net = load_onnx_graph(model, path, _constants(model.graph, path), _inferred_shapes(model), labels=True)
    net.detected_class = net.num_classes = int(numpy_helper.to_array(value).reshape(-1)[0])
    net.answers_labels = True
    return net


def _visit(node: onnx.NodeProto, state: GraphState) -> None:
    if node.op_type == "Constant":
        state.constants[node.output[0]] = constant_node_value(node)
        return
    if node.domain not in ("", "ai.onnx"):
        raise NodeMismatch(f"an op of domain '{node.domain}'")
    inputs = [state.values.get(name) if name else None for name in node.input]
    unknown = [n for n, v in zip(node.input, inputs) if n and v is None and n not in state.constants]
    if unknown:
        raise NodeMismatch(f"input '{unknown[0]}' is neither a constant nor computed from the graph input")
    if all(v is None for v in inputs):
        fold = CONSTANT_FOLDS.get(node.op_type)
        if fold is None or len(node.output) != 1:
            raise NodeMismatch("computes on constants only and is not a foldable op")
        state.constants[node.output[0]] = np.asarray(fold(*(state.constants[n] for n in node.input)))
        return
    rule = RULES.get(node.op_type)
    if rule is None:
        raise NodeMismatch(f"op {node.op_type} is not part of the lab architecture "
                           f"(applied to {describe(next(v for v in inputs if v is not None))})")
    if any(node.output[1:]):
        raise NodeMismatch("uses a second output")
    state.values[node.output[0]] = rule(node, inputs, state)


def _constants(graph: onnx.GraphProto, path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    constants = {}
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise BadInputError(path, f"initializer '{tensor.name}' is stored in an external file; "
                                      "only self-contained ONNX files are supported")
        constants[tensor.name] = numpy_helper.to_array(tensor)
    return constants


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Static shapes by ONNX shape inference (with data propagation, so Shape-built Reshape targets resolve)."""
    try:
        inferred = shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # no shapes; a Reshape will then be reported as not understood
        return {}
    shapes = {}
    for info in (*inferred.graph.value_info, *inferred.graph.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
    return shapes


def _input_layout(value: onnx.ValueInfoProto, path: str | os.PathLike[str]) -> str:
    """NCHW for (N, 3, 55, 47) float input, NHWC for (N, 55, 47, 3); anything else is rejected."""
    tensor_type = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise BadInputError(path, f"graph input '{value.name}' is not float32")
    if dims[1:] == (3, 55, 47):
        return NCHW
    if dims[1:] == (55, 47, 3):
        return NHWC
    shown = tuple("?" if d is None else d for d in dims)
    raise BadInputError(path, f"graph input '{value.name}' has shape {shown}, expected (N, 3, 55, 47) or (N, 55, 47, 3)")


def _check_outputs(graph: onnx.GraphProto, state: GraphState, path: str | os.PathLike[str]) -> None:
    if len(graph.output) != 1:
        raise BadInputError(path, f"the graph has {len(graph.output)} outputs, the lab BadNet has one")
    name = graph.output[0].name
    value = state.values.get(name)
    if value is None or value.stage != "output":
        raise BadInputError(path, f"graph output '{name}' is {describe(value)}, not the lab model's output layer")
    missing = [n for n in LAYER_NAMES if n not in state.layers]
    if missing:
        raise BadInputError(path, f"the graph has no '{missing[0]}' layer")


def build_badnet(state: GraphState, path: str | os.PathLike[str]) -> BadNet:
    """A BadNet holding the walked graph's weights (float32, conv_3 mask all ones)."""
    tensors: dict[str, torch.Tensor] = {}
    for name in LAYER_NAMES:
        weight, bias = state.layers[name]
        if bias is None:
            bias = np.zeros(weight.shape[0], np.float32)
        for kind, array in (("weight", weight), ("bias", bias)):
            if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)):
                raise BadInputError(path, f"layer '{name}' {kind} holds non-float or non-finite values")
            tensors[f"{name}.{kind}"] = torch.from_numpy(np.array(array, dtype=np.float32, order="C"))
    tensors["conv_3.mask"] = torch.ones(tensors["conv_3.bias"].shape[0])
    model = BadNet(int(tensors["output.weight"].shape[0]), state.input_scale)
    model.load_state_dict(tensors)
    return model.eval()


def load_onnx_any(path: str | os.PathLike[str]) -> torch.nn.Module:
    """The lab BadNet where the graph is one (its own importer, `load_onnx`), else any CNN graph as an
    OnnxGraphNet (convert/onnx_graph.py); a GoodNet graph answers labels (`load_goodnet_graph`). An unreadable
    file or external weights are refused."""
    from .onnx_graph import load_onnx_graph

    path = check_is_file(path)
    model = read_onnx_model(path)
    if is_goodnet_graph(model.graph):
        return load_goodnet_graph(model, path)
    try:
        return build_badnet(walk_graph(model, path), path)
    except BadInputError as lab_error:
        if "stored in an external file" in lab_error.problem:
            raise
    return load_onnx_graph(model, path, _constants(model.graph, path), _inferred_shapes(model))
