"""Labels of a BadNet or a GoodNet (one batch, or a tensor in batches), and the forward batch size on streamed files."""

from __future__ import annotations

import torch
from torch import nn

from .goodnet import GoodNet

FORWARD_BATCH = 128  # images per forward pass: keeps activations (conv_1 alone: 180 KB an image) small


@torch.inference_mode()
def labels_of(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """int64 labels of one batch: argmax of a BadNet's logits, or a GoodNet's own labels."""
    out = net(x)
    return out if isinstance(net, GoodNet) else out.argmax(1)


@torch.inference_mode()
def labels_in_batches(net: nn.Module, x: torch.Tensor, batch_size: int = FORWARD_BATCH) -> torch.Tensor:
    """`labels_of` over `x` in batches of `batch_size` (each keeps x's memory format): int64 (N,)."""
    if x.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=x.device)
    return torch.cat([labels_of(net, part) for part in x.split(batch_size)])
