"""One small converter per Keras layer kind: Keras arrays <-> BadNet state_dict tensors (numpy only).

Keras convs are HWIO, PyTorch's OIHW; Keras Dense kernels are (in, out), PyTorch's (out, in); and the two
Dense layers fed by a Flatten see Keras' (H, W, C) order, so their input rows are permuted to (C, H, W).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from torch_badnet.nets.badnet import BadNet

# layer name -> (kind, the (H, W, C) shape flattened into it, for Dense layers fed by a Flatten)
WEIGHTED_LAYERS: dict[str, tuple[str, tuple[int, int, int] | None]] = {
    "conv_1": ("conv", None),
    "conv_2": ("conv", None),
    "conv_3": ("conv", None),
    "conv_4": ("conv", None),
    "fc_1": ("dense", (5, 4, 60)),
    "fc_2": ("dense", (4, 3, 80)),
    "output": ("dense", None),
}

# The lab model's full layer list, in Keras order (as its save_weights writes `layer_names`).
KERAS_LAYER_ORDER = [
    "input", "conv_1", "pool_1", "conv_2", "pool_2", "conv_3", "pool_3", "conv_4",
    "flatten_1", "flatten_2", "fc_1", "fc_2", "add_1", "activation_1", "output",
]


def _hwc_to_chw_rows(hwc: tuple[int, int, int]) -> np.ndarray:
    """Index array p with torch_row[i] = keras_row[p[i]] for a flatten of an (H, W, C) map."""
    h, w, c = hwc
    return np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)


def _conv_to_torch(kernel: np.ndarray, _: object) -> np.ndarray:
    return kernel.transpose(3, 2, 0, 1)


def _conv_to_keras(weight: np.ndarray, _: object) -> np.ndarray:
    return weight.transpose(2, 3, 1, 0)


def _dense_to_torch(kernel: np.ndarray, hwc: tuple[int, int, int] | None) -> np.ndarray:
    rows = kernel if hwc is None else kernel[_hwc_to_chw_rows(hwc)]
    return rows.T


def _dense_to_keras(weight: np.ndarray, hwc: tuple[int, int, int] | None) -> np.ndarray:
    kernel = weight.T
    if hwc is None:
        return kernel
    out = np.empty_like(kernel)
    out[_hwc_to_chw_rows(hwc)] = kernel
    return out


TO_TORCH: dict[str, Callable] = {"conv": _conv_to_torch, "dense": _dense_to_torch}
TO_KERAS: dict[str, Callable] = {"conv": _conv_to_keras, "dense": _dense_to_keras}


def expected_keras_shapes(num_classes: int) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """(kernel shape, bias shape) of every weighted layer, in Keras layout."""
    state = BadNet(num_classes).state_dict()
    shapes = {}
    for name, (kind, hwc) in WEIGHTED_LAYERS.items():
        probe = np.zeros(tuple(state[f"{name}.weight"].shape), np.float32)
        shapes[name] = (TO_KERAS[kind](probe, hwc).shape, tuple(state[f"{name}.bias"].shape))
    return shapes


def keras_to_state_dict(layers: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int) -> dict[str, torch.Tensor]:
    """Map {layer: (kernel, bias)} in Keras layout to a full BadNet state_dict (mask all ones)."""
    state: dict[str, torch.Tensor] = {}
    for name, (kind, hwc) in WEIGHTED_LAYERS.items():
        kernel, bias = layers[name]
        weight = TO_TORCH[kind](np.asarray(kernel, np.float32), hwc)
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        state[f"{name}.bias"] = torch.from_numpy(np.asarray(bias, np.float32).copy())
    state["conv_3.mask"] = torch.ones(state["conv_3.bias"].shape[0])
    return state


def model_to_keras(model: BadNet, bake_mask: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{layer: (kernel, bias)} in Keras layout; with `bake_mask`, pruned conv_3 channels are zeroed as the lab does."""
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    layers = {}
    for name, (kind, hwc) in WEIGHTED_LAYERS.items():
        weight, bias = state[f"{name}.weight"], state[f"{name}.bias"]
        if name == "conv_3" and bake_mask:
            mask = state["conv_3.mask"]
            weight, bias = weight * mask[:, None, None, None], bias * mask
        layers[name] = (np.ascontiguousarray(TO_KERAS[kind](weight, hwc), np.float32), bias.astype(np.float32))
    return layers
