"""KerasGraphNet: any supported Keras layer graph as one torch module, built from the model's JSON config.

forward takes (N, C, H, W) float32 pixels as the data files hold them (0..255 for lab files) and returns logits:
the model's preprocessing (`input_scale`, then per-channel `mean` / `std`) runs first, inside the module, and a
trailing softmax is dropped (recorded in `dropped_softmax`; the argmax is unchanged). Every Keras layer (but
the InputLayer) is one submodule named by its Keras layer name, registered in Keras order, so the last
nn.Conv2d in `named_modules()` is the last Conv2D. The forward loops over a static plan, so torch.fx traces it.
"""

from __future__ import annotations

import keyword
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn

from torch_badnet.errors import BadInputError, InputShapeError, first_line
from torch_badnet.nets.badnet import scale_divisor

from .config import Node, layer_classes, parse_graph
from .layers import LayerError, Shape, _keras_shape, converter_of


def checked_input(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """`x` itself, after a clear InputShapeError (a ValueError) unless it is an (N, C, H, W) batch of the model's input shape."""
    if torch.jit.is_tracing() or not isinstance(x, torch.Tensor):
        return x
    if x.dim() == 3 and tuple(x.shape) == shape:
        raise InputShapeError("x", f"got one image of shape {shape}; the model takes batches (N, {', '.join(map(str, shape))}): "
                                   "use x.unsqueeze(0)")
    if x.dim() != 4 or tuple(x.shape[1:]) != shape:
        raise InputShapeError("x", f"expected a batch of shape (N, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
    return x


torch.fx.wrap("checked_input")  # a call in the traced graph: the check also runs in a GraphModule


class KerasGraphNet(nn.Module):
    """A Keras model (Sequential or functional) as a torch module; see the module docstring.

    Attributes: `input_shape` (C, H, W), `num_classes`, `keras_config` (the JSON it was built from),
    `input_scale`, `mean` and `std` (per-channel tuples or None), `layer_names` ({Keras name: module name}),
    `dropped_softmax` (the layer whose softmax was dropped, or None).
    """

    def __init__(self, keras_config: dict[str, Any], weights: Mapping[str, Sequence[np.ndarray]] | None = None,
                 where: str | os.PathLike[str] = "<model_config>", input_scale: float = 1.0,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        where = str(where)
        for name, cls in layer_classes(keras_config):
            converter_of(Node(name, cls, {}, ()), where)
        graph = parse_graph(keras_config, where)
        h, w, c = graph.input_hwc
        self.input_shape: tuple[int, int, int] = (c, h, w)
        self.keras_config = keras_config
        self.input_scale = float(input_scale)
        self.register_buffer("pixel_mean", torch.zeros(1, c, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.ones(1, c, 1, 1), persistent=False)
        self._mean: tuple[float, ...] | None = None
        self._std: tuple[float, ...] | None = None
        self.mean, self.std = mean, std
        self.layer_names: dict[str, str] = {}
        self.input_key = graph.input_name
        self._plan: list[tuple[str, str, tuple[str, ...]]] = []
        shapes: dict[str, Shape] = {graph.input_name: self.input_shape}
        for node in graph.nodes:
            missing = [name for name in node.inputs if name not in shapes]
            if missing:
                raise BadInputError(where, f"layer '{node.name}' takes the output of '{missing[0]}', which is not an earlier layer")
            in_shapes = [shapes[name] for name in node.inputs]
            convert = converter_of(node, where)
            try:
                module = convert(node, in_shapes).eval()
            except (LayerError, TypeError, ValueError) as exc:
                raise BadInputError(where, f"layer '{node.name}' ({node.class_name}) {first_line(exc)}") from None
            shapes[node.name] = _output_shape(module, in_shapes, node.name, node.class_name, where)
            attr = self._module_name(node.name)
            self.add_module(attr, module)
            self.layer_names[node.name] = attr
            self._plan.append((attr, node.name, node.inputs))
        if graph.output_name not in shapes or graph.output_name == graph.input_name:
            raise BadInputError(where, f"the model's output '{graph.output_name}' is not one of its layers")
        out = shapes[graph.output_name]
        if len(out) != 1:
            raise BadInputError(where, f"the model's output '{graph.output_name}' has shape {_keras_shape(out)}; "
                                       "torch-badnet takes classifiers with an output of shape (classes,)")
        self.output_key = graph.output_name
        self.num_classes = int(out[0])
        self.dropped_softmax = self._drop_softmax(self.get_submodule(self.layer_names[graph.output_name]), graph.output_name)
        if weights is not None:
            self._load_weights(weights, where)
        self.eval()

    # preprocessing -------------------------------------------------------------------------------------------
    @property
    def mean(self) -> tuple[float, ...] | None:
        """Per-channel mean subtracted after the input scale (None: none)."""
        return self._mean

    @mean.setter
    def mean(self, value: Sequence[float] | None) -> None:
        self._mean = self._channel_values(value, "mean")
        self.pixel_mean.copy_(self._as_buffer(self._mean, 0.0))

    @property
    def std(self) -> tuple[float, ...] | None:
        """Per-channel divisor applied after the mean (None: none)."""
        return self._std

    @std.setter
    def std(self, value: Sequence[float] | None) -> None:
        values = self._channel_values(value, "std")
        if values is not None and not all(v > 0 for v in values):
            raise ValueError(f"std must be positive, got {values}")
        self._std = values
        self.pixel_std.copy_(self._as_buffer(self._std, 1.0))

    def _channel_values(self, value: Sequence[float] | None, what: str) -> tuple[float, ...] | None:
        if value is None:
            return None
        values = tuple(float(v) for v in value)
        if len(values) != self.input_shape[0] or not all(np.isfinite(values)):
            raise ValueError(f"{what} needs {self.input_shape[0]} finite values (one per input channel), got {list(value)}")
        return values

    def _as_buffer(self, values: tuple[float, ...] | None, default: float) -> torch.Tensor:
        data = [default] * self.input_shape[0] if values is None else list(values)
        return torch.tensor(data, dtype=self.pixel_mean.dtype).view(1, -1, 1, 1)

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels as the network takes them: x * input_scale (x / k for 1/k, as BadNet), then (x - mean) / std."""
        scale = self.input_scale
        if scale != 1.0:
            divisor = scale_divisor(scale)
            x = x / float(divisor) if divisor else x * scale
        if self._mean is not None:
            x = x - self.pixel_mean
        if self._std is not None:
            x = x / self.pixel_std
        return x

    # the graph -----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) float pixels -> (N, num_classes) logits."""
        values = {self.input_key: self.scale_input(checked_input(x, self.input_shape))}
        for attr, key, inputs in self._plan:
            values[key] = getattr(self, attr)(*[values[name] for name in inputs])
        return values[self.output_key]

    def keras_layers(self) -> list[tuple[str, nn.Module]]:
        """(Keras layer name, module) in Keras order."""
        return [(key, getattr(self, attr)) for attr, key, _ in self._plan]

    def _module_name(self, keras_name: str) -> str:
        """The Keras name as a submodule name: non-identifier characters become '_'; a name that is taken (an
        attribute of the module, or another layer's) gets '_' appended."""
        name = re.sub(r"\W", "_", keras_name) or "_"
        if name[0].isdigit() or keyword.iskeyword(name):
            name = "_" + name
        while hasattr(self, name) or name in self.layer_names.values():
            name += "_"
        return name

    @staticmethod
    def _drop_softmax(module: nn.Module, name: str) -> str | None:
        if getattr(module, "activation", None) != "softmax":
            return None
        module.activation = "linear"
        if hasattr(module, "pruned_fill"):
            module.pruned_fill = 0.0
        return name

    def _load_weights(self, weights: Mapping[str, Sequence[np.ndarray]], where: str) -> None:
        modules = dict(self.keras_layers())
        for name in weights:
            if name not in modules:
                raise BadInputError(where, f"the file holds weights for layer '{name}', which the model config does not have")
            if not hasattr(modules[name], "load_keras"):
                raise BadInputError(where, f"the file holds weights for layer '{name}', whose Keras class has none")
        for name, module in modules.items():
            if not hasattr(module, "load_keras"):
                continue
            if name not in weights:
                raise BadInputError(where, f"layer '{name}' has no weights in the file")
            arrays = [np.asarray(a) for a in weights[name]]
            expected = module.keras_shapes()
            got = [tuple(a.shape) for a in arrays]
            if got != expected:
                raise BadInputError(where, f"layer '{name}' holds arrays of shapes {got}, its config needs {expected}")
            for array in arrays:
                if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)):
                    raise BadInputError(where, f"layer '{name}' holds non-float or non-finite weights")
            module.load_keras([a.astype(np.float32) for a in arrays])


def _output_shape(module: nn.Module, shapes: list[Shape], name: str, cls: str, where: str) -> Shape:
    """The output shape (no batch axis) of `module` on zero inputs of `shapes`: what Keras infers."""
    try:
        with torch.no_grad():
            out = module(*[torch.zeros(2, *s) for s in shapes])
    except RuntimeError as exc:
        inputs = ", ".join(_keras_shape(s) for s in shapes)
        raise BadInputError(where, f"layer '{name}' ({cls}) cannot take an input of shape {inputs} ({first_line(exc)})") from None
    shape = tuple(int(d) for d in out.shape[1:])
    if 0 in shape:
        raise BadInputError(where, f"layer '{name}' ({cls}) gives an empty output {_keras_shape(shape)}")
    return shape
