"""Write a KerasGraphNet as a full Keras 2 model .h5 (h5py only): the model's config and its current weights,
with the masked channels of pruned layers zeroed (kernel[..., c] and bias[c]: the literal Keras procedure).

`tf_keras.models.load_model` (Keras 2) and Keras 3's legacy .h5 loader read it. A Keras 2 config is written as it
was read; a Keras 3 one (a .keras archive's) is rewritten in Keras 2's terms: the layers' settings, wiring and
input shape, without the Keras-3-only serialisation (initialisers and other training-only settings are left to
their defaults, which inference does not use).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import h5py
import numpy as np
import torch

from torch_badnet.data.files import atomic_path

from .net import KerasGraphNet

INPUT_SCALE_ATTR = "torch_badnet_input_scale"
MEAN_ATTR = "torch_badnet_mean"
STD_ATTR = "torch_badnet_std"
# settings Keras 3 writes that Keras 2's layer constructors refuse, or that only matter while training
_KERAS3_ONLY = {"optional", "synchronized", "lora_rank", "lora_alpha", "quantization_config", "build_config",
                "module", "registered_name", "shared_object_id", "gradient_checkpointing"}
_TRAINING_ONLY = ("_initializer", "_regularizer", "_constraint")


def write_keras_graph(net: KerasGraphNet, path: str | os.PathLike[str],
                      channel_masks: Mapping[str, torch.Tensor] | None = None) -> None:
    """Write `net` as a Keras 2 full-model .h5 at `path` (atomically).

    `channel_masks`: {module name (or Keras layer name) of a Conv2D, Dense or BatchNormalization: 0/1 tensor of its
    output channels}; a 0 channel is written with zeroed kernel[..., c] and bias[c] (gamma[c] and beta[c]); any
    other layer is refused (`mask_problem`: Keras has no weights there to zero). The preprocessing is recorded in root
    attributes (Keras ignores them; Keras is fed what the model's own eval feeds it).
    """
    masks = _masks_by_layer(net, channel_masks or {})
    config = net.keras_config if is_keras2_config(net.keras_config) else keras2_config(net.keras_config)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = b"2.3.1"
            f.attrs["model_config"] = json.dumps(config).encode()
            f.attrs[INPUT_SCALE_ATTR] = float(net.input_scale)
            for attr, values in ((MEAN_ATTR, net.mean), (STD_ATTR, net.std)):
                if values is not None:
                    f.attrs[attr] = np.asarray(values, np.float64)
            group = f.create_group("model_weights")
            group.attrs["backend"] = b"tensorflow"
            group.attrs["keras_version"] = b"2.3.1"
            names = [net.input_key] + [name for name, _ in net.keras_layers()]
            group.attrs["layer_names"] = np.array([n.encode() for n in names])
            modules = dict(net.keras_layers())
            for name in names:
                layer = group.create_group(name)
                module = modules.get(name)
                if module is None or not hasattr(module, "keras_arrays"):
                    layer.attrs["weight_names"] = np.array([], dtype=np.float64)
                    continue
                arrays = module.keras_arrays(masks.get(name))
                weight_names = [f"{name}/{w}:0" for w in module.keras_weight_names]
                layer.attrs["weight_names"] = np.array([w.encode() for w in weight_names])
                for weight_name, array in zip(weight_names, arrays):
                    layer.create_dataset(weight_name, data=np.asarray(array, np.float32))


def mask_problem(net: KerasGraphNet, layer: str) -> str | None:
    """Why a Keras file cannot hold a mask at the output of `layer` (a module or Keras layer name), or None when
    it can: a Conv2D or Dense (kernel and bias zeroed) or a BatchNormalization with gamma (gamma and beta zeroed).
    A layer without weights (an Activation, a pooling, an Add, ...) has nothing Keras could zero."""
    by_module = {module_name: keras_name for keras_name, module_name in net.layer_names.items()}
    keras_name = by_module.get(layer, layer)
    module = dict(net.keras_layers()).get(keras_name)
    if module is None:
        return f"'{layer}' is not a layer of the model"
    if getattr(module, "keras_maskable", False):
        return None
    if hasattr(module, "keras_maskable"):
        return f"'{keras_name}' is a BatchNormalization without scale (gamma): Keras cannot switch its channels off"
    from .config import layer_classes

    cls = dict(layer_classes(net.keras_config)).get(keras_name, type(module).__name__)
    return (f"'{keras_name}' ({cls}) has no weights: Keras cannot switch its output channels off "
            "(Conv2D, Dense and BatchNormalization layers can be written)")


def _masks_by_layer(net: KerasGraphNet, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{Keras layer name: mask}, checked: a layer whose Keras arrays can switch channels off (`mask_problem`),
    one value per output channel."""
    by_module = {module_name: keras_name for keras_name, module_name in net.layer_names.items()}
    modules = dict(net.keras_layers())
    out = {}
    for name, mask in masks.items():
        problem = mask_problem(net, name)
        if problem is not None:
            raise ValueError(f"channel mask for '{name}': {problem}")
        keras_name = by_module.get(name, name)
        module = modules[keras_name]
        channels = module.weight.shape[0] if hasattr(module, "weight") else module.norm.num_features
        mask = torch.as_tensor(mask).detach().flatten()
        if mask.numel() != channels:
            raise ValueError(f"channel mask for '{name}' has {mask.numel()} values, the layer has {channels} channels")
        out[keras_name] = mask
    return out


def is_keras2_config(config: dict[str, Any]) -> bool:
    """Whether a model config is in Keras 2's JSON (inbound nodes as lists, no Keras 3 `module` records)."""
    layers = config.get("config", {}).get("layers", []) if isinstance(config.get("config"), dict) else config.get("config", [])
    if "module" in config:
        return False
    for layer in layers:
        if "module" in layer or any(isinstance(node, dict) for node in layer.get("inbound_nodes", [])):
            return False
        if "batch_shape" in layer.get("config", {}):
            return False
    return True


def keras2_config(config: dict[str, Any]) -> dict[str, Any]:
    """A Keras 3 model config in Keras 2's JSON (functional: 'Functional' with list inbound nodes)."""
    from .config import parse_graph

    graph = parse_graph(config, "<model_config>")
    h, w, c = graph.input_hwc
    layers = [{"class_name": "InputLayer", "name": graph.input_name, "inbound_nodes": [],
               "config": {"batch_input_shape": [None, h, w, c], "dtype": "float32", "sparse": False,
                          "ragged": False, "name": graph.input_name}}]
    for node in graph.nodes:
        layers.append({"class_name": node.class_name, "name": node.name,
                       "config": {**_keras2_settings(node.config), "name": node.name},
                       "inbound_nodes": [[[name, 0, 0, {}] for name in node.inputs]]})
    return {"class_name": "Functional", "config": {"name": str(config.get("config", {}).get("name", "model")),
                                                   "layers": layers, "input_layers": [[graph.input_name, 0, 0]],
                                                   "output_layers": [[graph.output_name, 0, 0]]}}


def _keras2_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in cfg.items():
        if key in _KERAS3_ONLY or key.endswith(_TRAINING_ONLY):
            continue
        if key == "dtype":
            value = value.get("config", {}).get("name", "float32") if isinstance(value, dict) else value
        elif isinstance(value, dict) and "class_name" in value:  # a serialised built-in (activation function)
            value = value.get("config") if isinstance(value.get("config"), str) else value["class_name"]
        out[key] = value
    return out
