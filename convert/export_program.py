"""torch.export programs (.pt2, `torch.export.save`) as nn.Modules with the exporter's module names.

`torch.export.load` reads the program (a JSON graph and raw tensor bytes); it would unpickle some payloads
(sample inputs it cannot read as tensors, pickled constants), so it runs here with every unpickling path
refused: no code stored in the file runs. `torch.export.unflatten` gives back the module hierarchy
(`layer4.1.conv2`); each submodule whose program is one conv, linear, batch norm, activation or pooling
becomes that torch layer again (nn.Conv2d ...: `--layer`'s default and candidates), and every other level an
fx.GraphModule of its own program, so the whole net is plain torch modules that torch.fx can trace.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch
from torch import fx, nn

from torch_badnet.data.files import check_is_file, file_sha256
from torch_badnet.errors import BadInputError, first_line
from torch_badnet.nets.checkpoint import LoadedModel

aten = torch.ops.aten


class _Unpickling(BaseException):
    """Raised inside torch.export.load where it would unpickle (a BaseException: torch's `except Exception`
    fallbacks must not swallow it)."""


def _refuse(*_args: Any, **_kwargs: Any) -> Any:
    raise _Unpickling


@contextlib.contextmanager
def no_unpickling() -> Iterator[None]:
    """While torch.export.load runs: torch.load only with weights_only=True, pickle.loads refused; torch's
    warnings and its logged tracebacks silenced."""
    from torch.export.pt2_archive import _package

    real_load = torch.load

    def tensors_only(f: Any, *args: Any, weights_only: bool | None = None, **kwargs: Any) -> Any:
        if weights_only is False:
            raise _Unpickling
        return real_load(f, *args, weights_only=True, **kwargs)

    saved = (torch.load, _package.pickle, torch._C._pickle_load_obj)
    torch.load, _package.pickle = tensors_only, SimpleNamespace(loads=_refuse, load=_refuse)
    torch._C._pickle_load_obj = _refuse
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
        torch.load, _package.pickle, torch._C._pickle_load_obj = saved


def load_pt2(path: str | os.PathLike[str]) -> LoadedModel:
    """A .pt2 file -> LoadedModel (format 'pt2') of its unflattened, rebuilt module in eval mode."""
    path = check_is_file(path)
    try:
        with no_unpickling():
            program = torch.export.load(str(path))
    except _Unpickling:
        raise BadInputError(path, "the program stores pickled Python objects, which could run code: refused "
                                  "(export it again with tensors only, or give ONNX / --arch with its state_dict)") from None
    except Exception as exc:  # noqa: BLE001 - zip, JSON and schema errors of a damaged or foreign file
        raise BadInputError(path, f"not a loadable torch.export program ({first_line(exc)})") from None
    shape = _check_inputs(program, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            unflat = torch.export.unflatten(program)
        except Exception as exc:  # noqa: BLE001
            raise BadInputError(path, f"torch.export.unflatten failed ({first_line(exc)})") from None
    net = rebuild(unflat, path)
    if all(isinstance(d, int) for d in shape):
        net.input_shape = shape
    return LoadedModel(net.eval(), str(path), "pt2", file_sha256(path))


def _check_inputs(program: torch.export.ExportedProgram, path: os.PathLike[str]) -> tuple:
    """One image input whose batch size is free (exported with a dynamic batch dimension): its (C, H, W)."""
    spec = program.graph_signature
    users = [s for s in spec.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    if len(users) != 1:
        raise BadInputError(path, f"the program takes {len(users)} inputs; the defense needs a model with one image input")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == users[0].arg.name)
    value = node.meta.get("val")
    if value is None or value.dim() < 2:
        raise BadInputError(path, "the program's input is not a batch of images")
    if isinstance(value.shape[0], int):
        raise BadInputError(path, f"the program was exported for batches of exactly {value.shape[0]}; export it with a "
                                  "dynamic batch: dynamic_shapes=({0: torch.export.Dim('batch')},)")
    return tuple(value.shape[1:])


class ProgramNet(fx.GraphModule):
    """A model read from a graph file (a .pt2 program, an ONNX graph): an fx.GraphModule whose copies keep where
    it came from (`source`) and its input shape (fx's own deepcopy keeps neither)."""

    KEPT = ("source", "input_shape")

    def __deepcopy__(self, memo: dict) -> ProgramNet:
        copied = super().__deepcopy__(memo)
        for name in self.KEPT:
            if name in self.__dict__:
                copied.__dict__[name] = copy.deepcopy(self.__dict__[name], memo)
        return copied


def rebuild(module: nn.Module, path: os.PathLike[str]) -> nn.Module:
    """The unflattened module as torch layers (where a submodule is one) and fx.GraphModules (elsewhere)."""
    for name, child in list(module.named_children()):
        setattr(module, name, _rebuild(child))
    graph = copy.deepcopy(module.graph)
    output = next(n for n in graph.nodes if n.op == "output")
    result = output.args[0]
    if isinstance(result, (tuple, list)):
        if len(result) != 1:
            raise BadInputError(path, f"the program returns {len(result)} outputs; the defense needs one (the logits)")
        output.args = (result[0],)
    return ProgramNet(module, graph, class_name="ExportedProgramNet")


def _rebuild(module: nn.Module) -> nn.Module:
    for name, child in list(module.named_children()):
        setattr(module, name, _rebuild(child))
    graph = getattr(module, "graph", None)
    if not isinstance(graph, fx.Graph):
        return module
    leaf = torch_layer(module, graph)
    if leaf is not None:
        return leaf
    return fx.GraphModule(module, copy.deepcopy(graph), class_name=type(module).__name__.replace("Module", "Program"))


def _single_call(graph: fx.Graph) -> fx.Node | None:
    """The one call_function of a graph of one op on one input (and attributes), else None."""
    calls = [n for n in graph.nodes if n.op not in ("placeholder", "get_attr", "output")]
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(calls) != 1 or len(inputs) != 1 or calls[0].op != "call_function":
        return None
    output = next(n for n in graph.nodes if n.op == "output")
    return calls[0] if output.args[0] is calls[0] and calls[0].args and calls[0].args[0] is inputs[0] else None


def _arg(node: fx.Node, index: int, default: Any) -> Any:
    return node.args[index] if len(node.args) > index else default


def _attr(module: nn.Module, value: Any) -> Any:
    """The tensor a get_attr node names (None stays None)."""
    if not isinstance(value, fx.Node):
        return value
    if value.op != "get_attr":
        raise LookupError(value.name)
    found: Any = module
    for part in str(value.target).split("."):
        found = getattr(found, part)
    return found


def _pair(value: Any) -> tuple[int, int]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return (int(values[0]), int(values[-1]))


class ExportedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """An exported batch norm (any input rank, as aten.batch_norm takes it)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        return None


def torch_layer(module: nn.Module, graph: fx.Graph) -> nn.Module | None:
    """The torch layer a one-op program is (sharing its tensors), or None."""
    node = _single_call(graph)
    if node is None:
        return None
    try:
        return _LAYERS[node.target](module, node) if node.target in _LAYERS else None
    except (LookupError, TypeError, ValueError, AttributeError):
        return None


def _conv(module: nn.Module, node: fx.Node) -> nn.Module | None:
    weight, bias = _attr(module, node.args[1]), _attr(module, _arg(node, 2, None))
    if weight.dim() != 4 or not isinstance(_arg(node, 4, [0, 0]), (list, tuple)):
        return None
    groups = int(_arg(node, 6, 1))
    conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=_pair(_arg(node, 3, [1, 1])),
                     padding=_pair(_arg(node, 4, [0, 0])), dilation=_pair(_arg(node, 5, [1, 1])), groups=groups, bias=bias is not None)
    conv.weight = weight
    if bias is not None:
        conv.bias = bias
    return conv


def _linear(module: nn.Module, node: fx.Node) -> nn.Module:
    weight, bias = _attr(module, node.args[1]), _attr(module, _arg(node, 2, None))
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    linear.weight = weight
    if bias is not None:
        linear.bias = bias
    return linear


def _batch_norm(module: nn.Module, node: fx.Node) -> nn.Module | None:
    weight, bias, mean, var = (_attr(module, a) for a in node.args[1:5])
    if node.args[5] or mean is None or var is None:  # training-mode batch statistics
        return None
    norm = ExportedBatchNorm(mean.shape[0], eps=float(node.args[7]), momentum=float(node.args[6]), affine=weight is not None)
    if weight is not None:
        norm.weight, norm.bias = weight, bias
    norm.running_mean, norm.running_var = mean, var
    if "num_batches_tracked" in dict(module.named_buffers()):
        norm.num_batches_tracked = module.get_buffer("num_batches_tracked")
    return norm.eval()


def _max_pool(module: nn.Module, node: fx.Node) -> nn.Module:
    kernel = _pair(node.args[1])
    stride = _arg(node, 2, [])
    return nn.MaxPool2d(kernel, _pair(stride) if stride else kernel, _pair(_arg(node, 3, [0, 0])), _pair(_arg(node, 4, [1, 1])),
                        ceil_mode=bool(_arg(node, 5, False)))


def _avg_pool(module: nn.Module, node: fx.Node) -> nn.Module:
    kernel = _pair(node.args[1])
    stride = _arg(node, 2, [])
    return nn.AvgPool2d(kernel, _pair(stride) if stride else kernel, _pair(_arg(node, 3, [0, 0])), bool(_arg(node, 4, False)),
                        bool(_arg(node, 5, True)), _arg(node, 6, None))


_LAYERS = {
    aten.conv2d.default: _conv,
    aten.linear.default: _linear,
    aten.batch_norm.default: _batch_norm,
    aten.relu.default: lambda m, n: nn.ReLU(),
    aten.relu_.default: lambda m, n: nn.ReLU(),
    aten.hardtanh.default: lambda m, n: nn.Hardtanh(float(_arg(n, 1, -1.0)), float(_arg(n, 2, 1.0))),
    aten.hardtanh_.default: lambda m, n: nn.Hardtanh(float(_arg(n, 1, -1.0)), float(_arg(n, 2, 1.0))),
    aten.max_pool2d.default: _max_pool,
    aten.avg_pool2d.default: _avg_pool,
    aten.adaptive_avg_pool2d.default: lambda m, n: nn.AdaptiveAvgPool2d(tuple(n.args[1])),
}
