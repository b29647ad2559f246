"""The torch modules a Keras layer graph is built from: NCHW inside, each one computing what its Keras layer does.

Weighted modules (KerasConv2d, KerasDense, KerasBatchNorm) read and write their Keras arrays themselves
(`load_keras` / `keras_arrays`), so the converter registry and the writer stay small. A module with a fused
activation outputs what the Keras layer outputs (post-activation); `pruned_fill` = activation(0) is the value a
channel takes when its kernel and bias are zeroed, as the literal Keras pruning does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Keras activation name -> the same function on an NCHW (or (N, features)) tensor; Keras' softmax is over the
# last NHWC axis, the channels, which is dim 1 here in both layouts.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda x: x,
    "relu": torch.relu,
    "relu6": lambda x: F.relu6(x),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softmax": lambda x: torch.softmax(x, 1),
    "elu": lambda x: F.elu(x),
    "selu": lambda x: F.selu(x),
    "softplus": lambda x: F.softplus(x),
    "softsign": lambda x: F.softsign(x),
    "swish": lambda x: F.silu(x),
    "silu": lambda x: F.silu(x),
    "exponential": torch.exp,
}


def activation_fill(name: str) -> float:
    """activation(0.0): what a channel with zeroed kernel and bias outputs."""
    return float(ACTIVATIONS[name](torch.zeros(1, 1))[0, 0])


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's 'same' padding of one dimension: (before, after), the extra one after."""
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class KerasConv2d(nn.Conv2d):
    """Keras Conv2D: optional asymmetric 'same' padding (F.pad before the conv), the conv, the fused activation."""

    keras_weight_names = ("kernel", "bias")
    keras_maskable = True  # zeroed kernel[..., c] and bias[c] give activation(0) = pruned_fill

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int], groups: int, bias: bool, pad: tuple[int, int, int, int],
                 activation: str) -> None:
        left, right, top, bottom = pad
        symmetric = left == right and top == bottom
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation, groups=groups,
                         bias=bias, padding=(top, left) if symmetric else 0)
        self.keras_pad = None if symmetric else pad
        self.activation = activation
        self.pruned_fill = activation_fill(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keras_pad is not None:
            x = F.pad(x, self.keras_pad)
        return ACTIVATIONS[self.activation](self._conv_forward(x, self.weight, self.bias))

    def load_keras(self, arrays: Sequence[np.ndarray]) -> None:
        with torch.no_grad():
            self.weight.copy_(torch.from_numpy(np.ascontiguousarray(arrays[0].transpose(3, 2, 0, 1))))
            if self.bias is not None:
                self.bias.copy_(torch.from_numpy(np.asarray(arrays[1])))

    def keras_shapes(self) -> list[tuple[int, ...]]:
        o, i, h, w = self.weight.shape
        return [(h, w, i, o)] + ([(o,)] if self.bias is not None else [])

    def keras_arrays(self, mask: torch.Tensor | None = None) -> list[np.ndarray]:
        """Kernel HWIO and bias; channels where `mask` is 0 zeroed (kernel[..., c] and bias[c])."""
        weight, bias = self.weight.detach().cpu().float(), None if self.bias is None else self.bias.detach().cpu().float()
        if mask is not None:
            keep = mask.detach().cpu().float()
            weight = weight * keep.view(-1, 1, 1, 1)
            bias = None if bias is None else bias * keep
        arrays = [np.ascontiguousarray(weight.numpy().transpose(2, 3, 1, 0))]
        return arrays + ([bias.numpy()] if bias is not None else [])


class KerasDense(nn.Linear):
    """Keras Dense on (N, features): kernel (in, out) transposed, fused activation."""

    keras_weight_names = ("kernel", "bias")
    keras_maskable = True

    def __init__(self, in_features: int, out_features: int, bias: bool, activation: str) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.activation = activation
        self.pruned_fill = activation_fill(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation](F.linear(x, self.weight, self.bias))

    def load_keras(self, arrays: Sequence[np.ndarray]) -> None:
        with torch.no_grad():
            self.weight.copy_(torch.from_numpy(np.ascontiguousarray(arrays[0].T)))
            if self.bias is not None:
                self.bias.copy_(torch.from_numpy(np.asarray(arrays[1])))

    def keras_shapes(self) -> list[tuple[int, ...]]:
        o, i = self.weight.shape
        return [(i, o)] + ([(o,)] if self.bias is not None else [])

    def keras_arrays(self, mask: torch.Tensor | None = None) -> list[np.ndarray]:
        weight, bias = self.weight.detach().cpu().float(), None if self.bias is None else self.bias.detach().cpu().float()
        if mask is not None:
            keep = mask.detach().cpu().float()
            weight = weight * keep.view(-1, 1)
            bias = None if bias is None else bias * keep
        return [np.ascontiguousarray(weight.numpy().T)] + ([bias.numpy()] if bias is not None else [])


class KerasBatchNorm(nn.Module):
    """Keras BatchNormalization over the channels (dim 1), at inference: (x - mean) / sqrt(var + eps) * gamma + beta.

    In train mode it normalises with batch statistics and updates the moving ones as Keras does (momentum).
    `center` / `scale` off: no beta / gamma in the Keras arrays (fixed 0 / 1 here).
    """

    def __init__(self, channels: int, rank: int, epsilon: float, momentum: float, center: bool, scale: bool) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if rank == 3 else nn.BatchNorm1d
        self.norm = norm(channels, eps=epsilon, momentum=1 - momentum)
        self.center, self.scale = center, scale
        self.keras_weight_names = (("gamma",) if scale else ()) + (("beta",) if center else ()) + ("moving_mean", "moving_variance")
        if not scale:
            self.norm.weight.requires_grad_(False)
        if not center:
            self.norm.bias.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def _tensors(self) -> list[torch.Tensor]:
        n = self.norm
        return ([n.weight] if self.scale else []) + ([n.bias] if self.center else []) + [n.running_mean, n.running_var]

    def load_keras(self, arrays: Sequence[np.ndarray]) -> None:
        with torch.no_grad():
            for tensor, array in zip(self._tensors(), arrays):
                tensor.copy_(torch.from_numpy(np.asarray(array)))

    def keras_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(t.shape) for t in self._tensors()]

    @property
    def keras_maskable(self) -> bool:
        """Whether the Keras arrays can switch an output channel off: gamma (and beta) set to 0 give exactly 0."""
        return self.scale

    def keras_arrays(self, mask: torch.Tensor | None = None) -> list[np.ndarray]:
        """gamma, beta, moving mean and variance; channels where `mask` is 0 get gamma[c] = beta[c] = 0, so the
        layer outputs exactly 0 there (x * 0 + 0), the value the engine's mask hook gives."""
        arrays = [t.detach().cpu().float().numpy().copy() for t in self._tensors()]
        if mask is not None:
            if not self.scale:
                raise ValueError("a BatchNormalization without scale (gamma) cannot switch channels off in Keras")
            off = (mask.detach().cpu() == 0).numpy()
            for i in range(1 + int(self.center)):  # gamma, then beta
                arrays[i][off] = 0.0
        return arrays


class KerasActivation(nn.Module):
    """Keras Activation (and Softmax) layer."""

    def __init__(self, activation: str) -> None:
        super().__init__()
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation](x)


class KerasReLU(nn.Module):
    """Keras ReLU layer: max_value, negative_slope and threshold; the defaults are a plain relu."""

    def __init__(self, max_value: float | None, negative_slope: float, threshold: float) -> None:
        super().__init__()
        self.max_value, self.negative_slope, self.threshold = max_value, negative_slope, threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.negative_slope == 0 and self.threshold == 0:
            y = torch.relu(x)
        else:
            y = torch.where(x >= self.threshold, x, self.negative_slope * (x - self.threshold))
        return y if self.max_value is None else y.clamp(max=self.max_value)


class KerasMaxPool(nn.MaxPool2d):
    """Keras MaxPooling2D; 'same' pads with -inf (the padding never wins), asymmetric as TensorFlow."""

    def __init__(self, pool: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int, int, int]) -> None:
        super().__init__(pool, stride)
        self.keras_pad = pad if any(pad) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keras_pad is not None:
            x = F.pad(x, self.keras_pad, value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


class KerasAvgPool(nn.Module):
    """Keras AveragePooling2D; 'same' averages over the pixels inside the image only (padding not counted)."""

    def __init__(self, pool: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int, int, int],
                 in_hw: tuple[int, int]) -> None:
        super().__init__()
        self.pool, self.stride = pool, stride
        self.keras_pad = pad if any(pad) else None
        if self.keras_pad is not None:
            ones = F.pad(torch.ones(1, 1, *in_hw), pad)
            self.register_buffer("count", F.avg_pool2d(ones, pool, stride, divisor_override=1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keras_pad is None:
            return F.avg_pool2d(x, self.pool, self.stride)
        return F.avg_pool2d(F.pad(x, self.keras_pad), self.pool, self.stride, divisor_override=1) / self.count


class GlobalPool(nn.Module):
    """GlobalAveragePooling2D / GlobalMaxPooling2D over H and W (keepdims: (N, C, 1, 1))."""

    def __init__(self, kind: str, keepdims: bool) -> None:
        super().__init__()
        self.kind, self.keepdims = kind, keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            return x.amax((2, 3), keepdim=self.keepdims)
        return x.mean((2, 3), keepdim=self.keepdims)


class KerasFlatten(nn.Module):
    """Keras Flatten: an (N, C, H, W) map flattens in Keras' (H, W, C) order, so Dense kernels stay as they are."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank == 3:
            x = x.permute(0, 2, 3, 1)
        return x.flatten(1)


class Merge(nn.Module):
    """Keras Add / Subtract / Multiply / Average / Maximum / Minimum of several tensors."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            if self.op in ("add", "average"):
                out = out + x
            elif self.op == "subtract":
                out = out - x
            elif self.op == "multiply":
                out = out * x
            elif self.op == "maximum":
                out = torch.maximum(out, x)
            else:
                out = torch.minimum(out, x)
        return out / len(xs) if self.op == "average" else out


class Concat(nn.Module):
    """Keras Concatenate along `dim` (Keras' channel axis -1 is dim 1 here)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, self.dim)


class ZeroPad(nn.Module):
    """Keras ZeroPadding2D: (left, right, top, bottom) zeros."""

    def __init__(self, pad: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pad)


class Rescale(nn.Module):
    """Keras Rescaling: x * scale + offset."""

    def __init__(self, scale: float, offset: float) -> None:
        super().__init__()
        self.scale, self.offset = scale, offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.offset
