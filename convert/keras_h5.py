"""Read and write Keras weight files with h5py, json and zipfile only (no Keras, no code from the file).

Reads: Keras 2.x `save_weights` .h5 (root `layer_names`), Keras 2.x / legacy Keras 3 full-model .h5
(`model_weights/` + `model_config`), Keras 3 `save_weights('*.weights.h5')` (`layers/<x>/vars`) and `.keras`
archives (`config.json` + `model.weights.h5`). Writes the Keras 2 weights-only layout that every Keras reads,
and the Keras 2 full-model layout (`model_config` + `model_weights/`) that `keras.models.load_model` reads.
A `model_config` attribute anywhere in an HDF5 file is checked against the lab architecture.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from torch_badnet.data.files import atomic_path, check_is_file
from torch_badnet.errors import BadInputError, first_line
from torch_badnet.nets.badnet import BadNet

from .keras_config import lab_model_config
from .keras_layout import KERAS_LAYER_ORDER, WEIGHTED_LAYERS, expected_keras_shapes, keras_to_state_dict, model_to_keras

KERAS3_CLASS_OF_KIND = {"conv": "Conv2D", "dense": "Dense"}

# Keras layer classes of the lab architecture, and the activation each named layer must use.
SUPPORTED_CLASSES = {"InputLayer", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Add", "Activation"}
EXPECTED_ACTIVATIONS = {
    "conv_1": "relu", "conv_2": "relu", "conv_3": "relu", "conv_4": "relu",
    "fc_1": "linear", "fc_2": "linear", "activation_1": "relu", "output": "softmax",
}
# Settings every layer of a class has in the lab architecture (checked where a config states them); kernel
# sizes and widths are checked through the weights' shapes.
EXPECTED_SETTINGS: dict[str, dict[str, Any]] = {
    "Conv2D": {"strides": [1, 1], "padding": "valid", "dilation_rate": [1, 1], "groups": 1,
               "data_format": "channels_last", "use_bias": True},
    "MaxPooling2D": {"pool_size": [2, 2], "strides": [2, 2], "padding": "valid", "data_format": "channels_last"},
    "Dense": {"use_bias": True},
}
# Root attribute of the .h5 files this project writes: the input scale the model takes (see rescale.py).
# Keras ignores it; the weights in the file are the original model's, which takes pixels * scale.
INPUT_SCALE_ATTR = "torch_badnet_input_scale"
MEAN_ATTR = "torch_badnet_mean"  # per-channel mean and std the model takes (written for Keras graphs only)
STD_ATTR = "torch_badnet_std"
MODEL_CONFIG_ATTR = "model_config"


@dataclass
class KerasWeights:
    """Weighted layers of a Keras file as {name: [arrays]}, its model config if any, and the format found."""

    layers: dict[str, list[np.ndarray]]
    config: dict[str, Any] | None
    source_format: str
    input_scale: float | None = None  # recorded by this project's writers; None when the file has no record
    mean: tuple[float, ...] | None = None  # per-channel preprocessing recorded by this project's writers
    std: tuple[float, ...] | None = None
    other_configs: dict[str, Any] | None = None  # model_config attributes elsewhere in the file: {object name: config}


def read_keras_file(path: str | os.PathLike[str]) -> KerasWeights:
    """Read any supported Keras file into arrays, validating its structure."""
    path = check_is_file(path)
    if zipfile.is_zipfile(path):
        return _read_keras_archive(path)
    try:
        with h5py.File(path, "r") as f:
            return _read_h5_root(f, path)
    except OSError as exc:
        raise BadInputError(path, f"not a readable HDF5 or .keras file ({first_line(exc)})") from None


def _read_keras_archive(path: Path) -> KerasWeights:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "model.weights.h5" not in names:
                raise BadInputError(path, ".keras archive has no model.weights.h5")
            config = json.loads(archive.read("config.json")) if "config.json" in names else None
            blob = archive.read("model.weights.h5")
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(path, f"corrupt .keras archive ({first_line(exc)})") from None
    try:
        with h5py.File(io.BytesIO(blob), "r") as f:
            others = _embedded_configs(f, path)
            layers = _read_keras3_layers(f, path, config)
    except OSError as exc:
        raise BadInputError(path, f"model.weights.h5 inside the archive is unreadable ({first_line(exc)})") from None
    return KerasWeights(layers, config, "keras3-archive", other_configs=others)


def _read_h5_root(f: h5py.File, path: Path) -> KerasWeights:
    configs = _embedded_configs(f, path)
    scale = _recorded_scale(f, path)
    mean, std = (_recorded_values(f, path, attr) for attr in (MEAN_ATTR, STD_ATTR))
    if "layers" in f and isinstance(f["layers"], h5py.Group):
        return KerasWeights(_read_keras3_layers(f, path), None, "keras3-weights", scale, other_configs=configs)
    version = _text(f.attrs.get("keras_version", b"?"))
    if "model_weights" in f:
        layers = _read_legacy_layers(f["model_weights"], path)
        config = configs.pop("/", None)
        return KerasWeights(layers, config, f"keras{version}-model", scale, mean, std, configs)
    if "layer_names" in f.attrs:
        return KerasWeights(_read_legacy_layers(f, path), None, f"keras{version}-weights", scale, other_configs=configs)
    raise BadInputError(path, "HDF5 file is not a Keras model or weights file (no layer_names, model_weights or layers)")


def _embedded_configs(f: h5py.File, path: Path) -> dict[str, Any]:
    """Parse every `model_config` attribute in the file (root, groups, datasets): {object name: config}.

    The root's (of a full-model file) describes the model; the lab path refuses any other that is not the lab
    architecture (a Lambda, say), wherever it sits.
    """
    holders = [f]
    f.visititems(lambda _name, obj: holders.append(obj) if MODEL_CONFIG_ATTR in obj.attrs else None)
    configs = {}
    for obj in holders:
        raw = obj.attrs.get(MODEL_CONFIG_ATTR)
        if raw is None:
            continue
        try:
            config = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadInputError(path, f"model_config is not valid JSON ({first_line(exc)})") from None
        configs[obj.name] = config
    return configs


def _recorded_scale(f: h5py.File, path: Path) -> float | None:
    raw = f.attrs.get(INPUT_SCALE_ATTR)
    if raw is None:
        return None
    try:
        scale = float(np.asarray(raw).reshape(()))
    except (TypeError, ValueError):
        scale = float("nan")
    if not np.isfinite(scale) or scale <= 0:
        raise BadInputError(path, f"{INPUT_SCALE_ATTR} is not a positive number ({raw!r})")
    return scale


def _recorded_values(f: h5py.File, path: Path, attr: str) -> tuple[float, ...] | None:
    raw = f.attrs.get(attr)
    if raw is None:
        return None
    values = np.asarray(raw, dtype=np.float64).reshape(-1)
    if not values.size or not np.all(np.isfinite(values)):
        raise BadInputError(path, f"{attr} is not a list of finite numbers ({raw!r})")
    return tuple(float(v) for v in values)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_legacy_layers(group: h5py.Group, path: Path) -> dict[str, list[np.ndarray]]:
    """Keras 2 layout: attrs layer_names; each layer group lists its arrays in attrs weight_names."""
    layers = {}
    for name in (_text(n) for n in group.attrs.get("layer_names", [])):
        if name not in group:
            raise BadInputError(path, f"layer '{name}' is listed in layer_names but has no group")
        layer = group[name]
        names = [_text(n) for n in layer.attrs.get("weight_names", [])]
        try:
            arrays = [np.asarray(layer[w][()]) for w in names]
        except KeyError as exc:
            raise BadInputError(path, f"layer '{name}' lists a weight that is missing ({first_line(exc)})") from None
        if arrays:
            layers[name] = arrays
    return layers


def _read_keras3_layers(f: h5py.File, path: Path, config: Any = None) -> dict[str, list[np.ndarray]]:
    """Keras 3 layout: layers/<auto name>/vars/{0,1,..}; the user's layer name is in vars.attrs['name'].

    Files from Keras 3 versions before that attribute existed are matched as Keras' own load_weights matches
    them: by class and position (conv2d, conv2d_1, .., dense, ..), against the archive's config or the lab model.
    """
    if "layers" not in f:
        raise BadInputError(path, "Keras 3 weights file has no 'layers' group")
    positional = _keras3_positional_names(config)
    layers = {}
    for key, group in f["layers"].items():
        if not isinstance(group, h5py.Group) or "vars" not in group:
            continue
        variables = group["vars"]
        name = _text(variables.attrs.get("name", positional.get(key, key)))
        arrays = [np.asarray(variables[str(i)][()]) for i in range(len(variables))]
        if arrays:
            layers[name] = arrays
    return layers


def _keras3_positional_names(config: Any) -> dict[str, str]:
    """{Keras 3 auto key (conv2d, conv2d_1, dense, ..): layer name}, in the config's layer order or the lab's."""
    layers = _config_layers(config) if config is not None else None
    if layers is not None:
        entries = [(str(layer.get("class_name")), _config_layer_name(layer)) for layer in layers if isinstance(layer, dict)]
    else:
        entries = [(KERAS3_CLASS_OF_KIND[kind], name) for name, (kind, _) in WEIGHTED_LAYERS.items()]
    names: dict[str, str] = {}
    seen: dict[str, int] = {}
    for cls, name in entries:
        base = snake_case(cls)
        count = seen.get(base, 0)
        seen[base] = count + 1
        names[base if count == 0 else f"{base}_{count}"] = name
    return names


def snake_case(class_name: str) -> str:
    """Keras 3's key for a layer of a class (its utils.to_snake_case): Conv2D -> conv2d, BatchNormalization ->
    batch_normalization."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _config_layer_name(layer: dict[str, Any]) -> str:
    cfg = layer.get("config") if isinstance(layer.get("config"), dict) else {}
    return str(cfg.get("name", layer.get("name", "?")))


def _config_layers(config: Any) -> list[dict[str, Any]] | None:
    """The layer list of a Keras model config (Functional, Model or Sequential; Keras 2 or 3)."""
    if isinstance(config, dict):
        inner = config.get("config", config)
        if isinstance(inner, dict) and isinstance(inner.get("layers"), list):
            return inner["layers"]
        if isinstance(inner, list):
            return inner
    return None


def check_model_config(config: Any, path: str | os.PathLike[str]) -> None:
    """Reject a model_config that is not the lab architecture: unsupported layers, other activations or settings."""
    layers = _config_layers(config)
    if layers is None:
        raise BadInputError(path, "model_config has no layer list")
    for layer in layers:
        if not isinstance(layer, dict):
            raise BadInputError(path, "model_config lists a layer that is not a JSON object")
        cls = layer.get("class_name", "?")
        cfg = layer.get("config", {}) if isinstance(layer.get("config"), dict) else {}
        name = _config_layer_name(layer)
        if cls not in SUPPORTED_CLASSES:
            raise BadInputError(path, f"unsupported layer '{name}' ({cls}) in model_config; only the lab BadNet architecture is supported")
        expected = EXPECTED_ACTIVATIONS.get(name)
        activation = cfg.get("activation")
        if expected and activation is not None and activation != expected:
            raise BadInputError(path, f"layer '{name}' uses activation '{activation}', the lab architecture has '{expected}'")
        for setting, wanted in EXPECTED_SETTINGS.get(cls, {}).items():
            value = cfg.get(setting)
            if value is not None and _as_plain(value) != wanted:
                raise BadInputError(path, f"layer '{name}' ({cls}) has {setting}={value!r}, the lab architecture has {wanted!r}")


def _as_plain(value: Any) -> Any:
    """A config value with tuples as lists, as the lab settings are written."""
    if isinstance(value, (list, tuple)):
        return [_as_plain(v) for v in value]
    return value


def keras_weights_to_state_dict(weights: KerasWeights, path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], int]:
    """Check every expected layer and shape, then map to a BadNet state_dict; returns it and the class count."""
    layers = weights.layers
    unexpected = sorted(set(layers) - set(WEIGHTED_LAYERS))
    # a weights-only file (save_weights) holds no architecture: one of another model can only be built from its full file
    full = "" if weights.config is not None else ("; the file holds weights only (no model config): save the full model "
                                                  "(model.save('model.h5') or 'model.keras') and give that file")
    if unexpected:
        raise BadInputError(path, f"layer '{unexpected[0]}' has weights but is not part of the lab BadNet architecture{full}")
    for name in WEIGHTED_LAYERS:
        if name not in layers:
            raise BadInputError(path, f"missing layer '{name}' (the lab BadNet needs {', '.join(WEIGHTED_LAYERS)}){full}")
        if len(layers[name]) != 2:
            raise BadInputError(path, f"layer '{name}' holds {len(layers[name])} arrays, expected kernel and bias")
    output_kernel = layers["output"][0]
    if output_kernel.ndim != 2:
        raise BadInputError(path, f"layer 'output' kernel has shape {output_kernel.shape}, expected (160, classes)")
    num_classes = int(output_kernel.shape[1])
    for name, (kernel_shape, bias_shape) in expected_keras_shapes(num_classes).items():
        kernel, bias = layers[name]
        if tuple(kernel.shape) != kernel_shape:
            raise BadInputError(path, f"layer '{name}' kernel has shape {tuple(kernel.shape)}, expected {kernel_shape}")
        if tuple(bias.shape) != bias_shape:
            raise BadInputError(path, f"layer '{name}' bias has shape {tuple(bias.shape)}, expected {bias_shape}")
        for array in (kernel, bias):
            if not np.issubdtype(array.dtype, np.floating) or not np.all(np.isfinite(array)):
                raise BadInputError(path, f"layer '{name}' holds non-float or non-finite weights")
    pairs = {name: (layers[name][0], layers[name][1]) for name in WEIGHTED_LAYERS}
    return keras_to_state_dict(pairs, num_classes), num_classes


def is_lab_model(weights: KerasWeights) -> bool:
    """Whether a file is the lab architecture (its proven BadNet path): no config (weights-only files are read
    as the lab's), or a config the lab checks accept whose weighted layers are exactly the lab's."""
    if weights.config is None:
        return True
    try:
        check_model_config(weights.config, "<model_config>")
    except BadInputError:
        return False
    return set(weights.layers) == set(WEIGHTED_LAYERS)


def load_keras(path: str | os.PathLike[str]) -> tuple[torch.nn.Module, str, float | None]:
    """Import a Keras file as an eval-mode net; returns it, the source format and the input scale the file
    records (None: no record; the model's input_scale is then 1).

    The lab architecture becomes a `BadNet`; any other model whose config the layer registry builds becomes a
    `KerasGraphNet` (convert.keras_graph). Every model_config attribute elsewhere in a lab file is checked.
    """
    weights = read_keras_file(path)
    if not is_lab_model(weights):
        from .keras_graph import KerasGraphNet

        net = KerasGraphNet(weights.config, weights.layers, path, weights.input_scale or 1.0, weights.mean, weights.std)
        return net, weights.source_format, weights.input_scale
    for config in ([weights.config] if weights.config is not None else []) + list((weights.other_configs or {}).values()):
        check_model_config(config, path)
    state, num_classes = keras_weights_to_state_dict(weights, path)
    model = BadNet(num_classes, weights.input_scale or 1.0)
    model.load_state_dict(state)
    return model.eval(), weights.source_format, weights.input_scale


def write_keras_weights(model: BadNet, path: str | os.PathLike[str]) -> None:
    """Write the Keras 2 `save_weights` layout (loadable by Keras `load_weights` into the lab architecture).

    Pruned conv_3 channels are written as zeroed kernel and bias, as the lab's own pruning does.
    """
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            _write_layer_groups(f, model)


def write_keras_model(model: BadNet, path: str | os.PathLike[str]) -> None:
    """Write a full Keras model file in the Keras 2 legacy layout (h5py only, no Keras needed).

    `keras.models.load_model(path)` (Keras 2 or 3) rebuilds the lab architecture from `model_config` and loads
    `model_weights`; Keras `load_weights` into the lab architecture reads it too. Pruned conv_3 channels are
    zeroed. The network is the original one: a model with input_scale 1/255 takes pixels/255 in Keras, as
    the competition's eval.py feeds it; the scale is recorded in the root attribute INPUT_SCALE_ATTR.
    """
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = b"2.3.1"
            f.attrs[MODEL_CONFIG_ATTR] = json.dumps(lab_model_config(model.num_classes)).encode()
            f.attrs[INPUT_SCALE_ATTR] = float(model.input_scale)
            _write_layer_groups(f.create_group("model_weights"), model)


def _write_layer_groups(group: h5py.Group, model: BadNet) -> None:
    """The Keras 2 `save_weights` layout into `group`: attrs layer_names, backend, keras_version; a group per layer."""
    arrays = model_to_keras(model, bake_mask=True)
    group.attrs["backend"] = b"tensorflow"
    group.attrs["keras_version"] = b"2.3.1"
    group.attrs["layer_names"] = np.array([n.encode() for n in KERAS_LAYER_ORDER])
    for name in KERAS_LAYER_ORDER:
        layer = group.create_group(name)
        if name in arrays:
            names = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            layer.attrs["weight_names"] = np.array(names)
            inner = layer.create_group(name)
            inner.create_dataset("kernel:0", data=arrays[name][0])
            inner.create_dataset("bias:0", data=arrays[name][1])
        else:
            layer.attrs["weight_names"] = np.array([], dtype=np.float64)
