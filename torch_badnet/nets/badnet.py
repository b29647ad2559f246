"""The lab's BadNet (a DeepID-style YouTube-Face classifier) as a compact PyTorch module.

Layer names follow the Keras model exactly (conv_1..conv_4, pool_1..pool_3, fc_1, fc_2, output).
Input is (N, 3, 55, 47) float pixels in 0..255, the lab files' own layout; `forward` returns logits.
`input_scale` (default 1, the lab's) multiplies the pixels first: the CSAW-HackML-2020 competition's
BadNets take pixels/255 (`input_scale = 1/255`), so every path through `trunk` sees what Keras saw.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputShapeError

INPUT_SHAPE = (3, 55, 47)
POOL3_CHANNELS = 60
POOL3_SHAPE = (POOL3_CHANNELS, 5, 4)
LAB_CLASSES = 1283


def scale_divisor(scale: float) -> int | None:
    """k when `scale` is 1/k for an integer k > 1 (up to float rounding), else None."""
    if not 0 < scale < 1:
        return None
    inverse = 1.0 / scale
    return round(inverse) if abs(inverse - round(inverse)) <= 1e-6 * inverse else None  # float32 constants too


class ReluMaxPool(nn.Module):
    """2x2 max-pool followed by ReLU: equal to Keras' relu-conv then MaxPooling2D, with 4x fewer ReLUs.

    At inference (no gradients) the pool is two `torch.maximum` over strided views, rows then columns: the
    same values as `F.max_pool2d` (a maximum is exact) at about twice the speed, because no indices are
    computed. Training (gradients), tracing and ONNX export keep `F.max_pool2d`: its gradient goes to one
    element of a tie where `torch.maximum` would split it, and export wants one MaxPool node.
    """

    channelwise = True  # channel c of the output reads channel c of the input alone (the generic engine's region)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting():
            return F.max_pool2d(x, 2).relu_()
        return max_pool_2x2(x).relu_()


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """`F.max_pool2d(x, 2)` without indices (odd trailing rows/columns dropped, as the pool floors)."""
    height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    rows = torch.maximum(x[..., 0:height:2, :width], x[..., 1:height:2, :width])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class MaskedConv2d(nn.Conv2d):
    """A Conv2d whose output channels can be switched off by a 0/1 `mask` buffer.

    A masked channel computes exactly what the reference gets by zeroing the channel's kernel and bias,
    while the stored weights stay untouched.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", torch.ones(self.out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mask
        return F.conv2d(x, self.weight * m.view(-1, 1, 1, 1), self.bias * m)


class BadNet(nn.Module):
    """conv_1..conv_3 with pools, then fc_1(pool_3) + fc_2(conv_4(pool_3)), add, relu, output.

    Input (N, 3, 55, 47) float pixels 0..255 (the lab files' layout); output logits (N, num_classes).
    Layer names are the Keras model's; `mask` is conv_3's channel mask (1 = kept, 0 = pruned).

    >>> bd = tb.load_model("bd_net.h5")             # or BadNet(1283) for fresh weights
    >>> bd(tb.load_images(["face.png"])).argmax(1)  # tensor([43])
    """

    def __init__(self, num_classes: int = LAB_CLASSES, input_scale: float = 1.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_scale = input_scale  # a plain float, not a buffer: checkpoints record it beside the state_dict
        self.conv_1 = nn.Conv2d(3, 20, 4)
        self.pool_1 = ReluMaxPool()
        self.conv_2 = nn.Conv2d(20, 40, 3)
        self.pool_2 = ReluMaxPool()
        self.conv_3 = MaskedConv2d(40, POOL3_CHANNELS, 3)
        self.pool_3 = ReluMaxPool()
        self.fc_1 = nn.Linear(POOL3_CHANNELS * 5 * 4, 160)
        self.conv_4 = nn.Conv2d(POOL3_CHANNELS, 80, 2)
        self.fc_2 = nn.Linear(80 * 4 * 3, 160)
        self.output = nn.Linear(160, num_classes)

    @property
    def mask(self) -> torch.Tensor:
        """The conv_3 channel mask (1 = kept, 0 = pruned)."""
        return self.conv_3.mask

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels as the network takes them: x * input_scale; a scale 1/k divides by k (float32 x/255, as
        the competition's eval.py feeds Keras, not x * float32(1/255), which is one rounding further off)."""
        scale = self.input_scale
        if scale == 1.0:
            return x
        divisor = scale_divisor(scale)
        return x / float(divisor) if divisor else x * scale

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """conv_1 .. pool_3: (N, 3, 55, 47) pixels -> (N, 60, 5, 4) pool_3 activations (input scaled first)."""
        x = self.pool_1(self.conv_1(self.scale_input(x)))
        x = self.pool_2(self.conv_2(x))
        return self.pool_3(self.conv_3(x))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """pool_3 activations -> logits (both branches, add, relu, output)."""
        a = self.fc_1(features.flatten(1))
        b = self.fc_2(self.conv_4(features).relu().flatten(1))
        return self.output((a + b).relu())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 55, 47) float pixels -> (N, classes) logits. A single (3, 55, 47) image is an InputShapeError:
        batch it with `x.unsqueeze(0)` (or `tb.load_images`, which always returns a batch)."""
        check_batch(x)
        return self.head(self.trunk(x))


def check_batch(x: torch.Tensor) -> None:
    """A clear InputShapeError (a ValueError) unless `x` is an (N, 3, 55, 47) batch (the usual mistakes: one image, NHWC layout)."""
    if torch.jit.is_tracing() or isinstance(x, torch.fx.Proxy):  # an export (or the generic engine's fx split)
        return  # traces a batch that passed this check in its caller
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor batch of shape (N, 3, 55, 47), got {type(x).__name__}")
    if x.dim() == 3 and tuple(x.shape) == INPUT_SHAPE:
        raise InputShapeError("x", "got one image of shape (3, 55, 47); the nets take batches (N, 3, 55, 47): use x.unsqueeze(0)")
    if x.dim() != 4 or tuple(x.shape[1:]) != INPUT_SHAPE:
        hint = " (channels last? the nets take channels first)" if x.shape[-1:] == (3,) else ""
        raise InputShapeError("x", f"expected a batch of shape (N, 3, 55, 47), got {tuple(x.shape)}{hint}")
