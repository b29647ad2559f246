"""Labels of a BadNet or a GoodNet over chunked inputs (used by eval and classify)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from .goodnet import GoodNet

FORWARD_BATCH = 128  # images per forward pass: keeps activations (conv_1 alone: 180 KB an image) small


@torch.inference_mode()
def labels_of(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """int64 labels of one batch: argmax of a BadNet's logits, or a GoodNet's own labels."""
    out = net(x)
    return out if isinstance(net, GoodNet) else out.argmax(1)


@dataclass
class Tally:
    """How a net's labels compare with a file's labels."""

    images: int = 0
    hits: int = 0
    flagged: int = 0  # GoodNet answered 'backdoor detected'

    def rate(self, count: int) -> float:
        return 100.0 * count / self.images if self.images else 0.0


def tally(net: nn.Module, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> Tally:
    """Stream (pixels, labels) chunks through `net` and count matches (and GoodNet flags)."""
    detected = net.detected_class if isinstance(net, GoodNet) else None
    result = Tally()
    for x, y in chunks:
        predicted = torch.cat([labels_of(net, part.to(device)).cpu() for part in x.split(FORWARD_BATCH)])
        result.images += int(y.shape[0])
        result.hits += int((predicted == y).sum())
        if detected is not None:
            result.flagged += int((predicted == detected).sum())
    return result
