"""A Keras model config (Sequential or functional; Keras 2 or 3 JSON) as a plain list of layer nodes.

Only the JSON is read: class names, settings and the wiring. Nothing in it is imported or executed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from torch_badnet.errors import BadInputError

MODEL_CLASSES = {"Sequential", "Functional", "Model"}


@dataclass(frozen=True)
class Node:
    """One Keras layer: its name, class, settings and the names of the layers whose outputs it takes."""

    name: str
    class_name: str
    config: dict[str, Any]
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class Graph:
    """The layers in Keras order, the input layer's name and (H, W, C) shape, and the output layer's name."""

    nodes: tuple[Node, ...]
    input_name: str
    input_hwc: tuple[int, ...]
    output_name: str


def parse_graph(config: Any, where: str | os.PathLike[str]) -> Graph:
    """The graph of a model config; one-line BadInputError for what the converter cannot build."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), (dict, list)):
        raise BadInputError(where, "model_config is not a Keras model config (no 'config')")
    cls = config.get("class_name")
    inner = config["config"]
    layers = inner if isinstance(inner, list) else inner.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(x, dict) for x in layers):
        raise BadInputError(where, "model_config has no layer list")
    if cls == "Sequential":
        return _sequential(layers, inner if isinstance(inner, dict) else {}, where)
    if cls in ("Functional", "Model"):
        return _functional(layers, inner, where)
    raise BadInputError(where, f"model_config describes a '{cls}', not a Sequential or functional Keras model")


def layer_classes(config: Any) -> list[tuple[str, str]]:
    """(name, class) of every layer a config lists but its InputLayers, in order (checked before the wiring, so
    an unsupported layer is named first)."""
    inner = config.get("config") if isinstance(config, dict) else None
    layers = inner if isinstance(inner, list) else inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list):
        return []
    return [(_name(x), str(x.get("class_name", "?"))) for x in layers if isinstance(x, dict) and x.get("class_name") != "InputLayer"]


def _name(layer: dict[str, Any]) -> str:
    cfg = layer.get("config") if isinstance(layer.get("config"), dict) else {}
    return str(cfg.get("name", layer.get("name", "?")))


def _settings(layer: dict[str, Any]) -> dict[str, Any]:
    return layer["config"] if isinstance(layer.get("config"), dict) else {}


def _image_shape(shape: Any, name: str, where: str | os.PathLike[str]) -> tuple[int, ...]:
    """(H, W, C) of a batch shape [None, H, W, C]; a one-line error for anything else."""
    if not isinstance(shape, (list, tuple)) or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise BadInputError(where, f"input '{name}' has shape {_shape_text(shape)}; torch-badnet takes models of one "
                                   "image input of fixed size (None, H, W, C)")
    return tuple(int(d) for d in shape[1:])


def _shape_text(shape: Any) -> str:
    if isinstance(shape, (list, tuple)):
        return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"
    return repr(shape)


def _batch_shape(cfg: dict[str, Any]) -> Any:
    return cfg.get("batch_input_shape", cfg.get("batch_shape"))


def _sequential(layers: list[dict[str, Any]], inner: dict[str, Any], where: str | os.PathLike[str]) -> Graph:
    first = layers[0]
    if first.get("class_name") == "InputLayer":
        input_name = _name(first)
        shape = _batch_shape(_settings(first))
        layers = layers[1:]
    else:
        input_name = "input"
        shape = _batch_shape(_settings(first))
        if shape is None:
            shape = inner.get("build_input_shape")
    if not layers:
        raise BadInputError(where, "model_config holds no layer after its input")
    hwc = _image_shape(shape, input_name, where)
    nodes, previous = [], input_name
    for layer in layers:
        name = _name(layer)
        nodes.append(Node(name, str(layer.get("class_name", "?")), _settings(layer), (previous,)))
        previous = name
    return Graph(tuple(nodes), input_name, hwc, previous)


def _endpoints(value: Any, what: str, where: str | os.PathLike[str]) -> str:
    """The one layer named by input_layers / output_layers ([[name, 0, 0]] or Keras 3's flat [name, 0, 0])."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, list) and v and isinstance(v[0], str) for v in value):
        raise BadInputError(where, f"model_config has no valid {what}")
    if len(value) != 1:
        names = ", ".join(v[0] for v in value)
        raise BadInputError(where, f"the model has {len(value)} {what.split('_')[0]}s ({names}); torch-badnet takes models "
                                   "of one input and one output")
    if value[0][1:] not in ([], [0, 0], [0]):
        raise BadInputError(where, f"the model's {what} refer to a layer's node {value[0][1:]}; only node 0 is supported")
    return value[0][0]


def _functional(layers: list[dict[str, Any]], inner: dict[str, Any], where: str | os.PathLike[str]) -> Graph:
    input_name = _endpoints(inner.get("input_layers"), "input_layers", where)
    output_name = _endpoints(inner.get("output_layers"), "output_layers", where)
    nodes, hwc = [], None
    for layer in layers:
        name, cls = _name(layer), str(layer.get("class_name", "?"))
        if cls == "InputLayer":
            if name != input_name:
                raise BadInputError(where, f"input layer '{name}' is not the model's input ({input_name})")
            hwc = _image_shape(_batch_shape(_settings(layer)), name, where)
            continue
        nodes.append(Node(name, cls, _settings(layer), _inbound(layer, name, where)))
    if hwc is None:
        raise BadInputError(where, f"model_config has no InputLayer '{input_name}'")
    return Graph(tuple(nodes), input_name, hwc, output_name)


def _inbound(layer: dict[str, Any], name: str, where: str | os.PathLike[str]) -> tuple[str, ...]:
    """Names of the layers feeding `layer` (its one call); Keras 2 [[[name, 0, 0, {}], ..]] or Keras 3 args."""
    calls = layer.get("inbound_nodes") or []
    if not isinstance(calls, list) or len(calls) != 1:
        what = "is called more than once (a shared layer)" if isinstance(calls, list) and calls else "has no inputs"
        raise BadInputError(where, f"layer '{name}' {what}; torch-badnet builds layers called exactly once")
    call = calls[0]
    refs = ([r[:3] for r in call if isinstance(r, list)] if isinstance(call, list)
            else [t["config"]["keras_history"] for t in _keras_tensors(call.get("args", []))] if isinstance(call, dict) else [])
    if not refs:
        raise BadInputError(where, f"layer '{name}' has inputs that cannot be read from model_config")
    for ref in refs:
        if not isinstance(ref[0], str) or list(ref[1:3]) != [0, 0]:
            raise BadInputError(where, f"layer '{name}' takes output {list(ref[1:3])} of '{ref[0]}'; only single-output "
                                       "layers called once are supported")
    return tuple(ref[0] for ref in refs)


def _keras_tensors(value: Any) -> list[dict[str, Any]]:
    """Keras 3's serialised input tensors in order, from an inbound node's args."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return [value]
        return []
    if isinstance(value, list):
        return [t for v in value for t in _keras_tensors(v)]
    return []
