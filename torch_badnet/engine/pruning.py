"""Fine-Pruning's ranking and masks: a forward hook on pool_3 records activations; conv_3 masks prune.

Ranking follows the lab's reference exactly: scores = np.mean(pool_3 NHWC, axis=(0, 1, 2)) in float32,
order = np.argsort(scores) (numpy's default kind, ties included): dormant channels first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ..nets.badnet import POOL3_CHANNELS, POOL3_SHAPE, BadNet


class Pool3Recorder:
    """Context manager: a forward hook on `model.pool_3` copying every output into one (N, 60, 5, 4) tensor."""

    def __init__(self, model: BadNet, total: int, device: torch.device | str = "cpu") -> None:
        self.model = model
        self.features = torch.empty((total, *POOL3_SHAPE), dtype=torch.float32, device=device)
        self.filled = 0
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def _hook(self, _module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        n = output.shape[0]
        self.features[self.filled : self.filled + n].copy_(output.detach())
        self.filled += n

    def __enter__(self) -> Pool3Recorder:
        self._handle = self.model.pool_3.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


@torch.inference_mode()
def record_pool3(model: BadNet, batches: Iterable[torch.Tensor], total: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """pool_3 outputs for every image, gathered by the hook while the trunk runs."""
    with Pool3Recorder(model, total, device) as recorder:
        for x in batches:
            x = x.to(device, non_blocking=True)
            model.trunk(x)
    if recorder.filled != total:
        raise ValueError(f"recorded {recorder.filled} pool_3 outputs, expected {total}")
    return recorder.features


def channel_scores(features: torch.Tensor) -> np.ndarray:
    """Mean activation per channel over (N, H, W), computed as the reference does: numpy float32 on NHWC."""
    nhwc = features.detach().float().permute(0, 2, 3, 1)
    if nhwc.device.type == "cpu":
        nhwc = np.ascontiguousarray(nhwc.numpy())
    else:  # permuted on the GPU, where it is fast, then copied
        nhwc = nhwc.contiguous().cpu().numpy()
    return np.mean(nhwc, axis=(0, 1, 2))


def pruning_order(scores: np.ndarray) -> list[int]:
    """Channels in pruning order: numpy's default argsort of the scores (dormant first)."""
    return [int(c) for c in np.argsort(scores)]


def mask_for(channels: Sequence[int], num_channels: int = POOL3_CHANNELS) -> torch.Tensor:
    """A 0/1 float mask with the given channels switched off."""
    mask = torch.ones(num_channels)
    if len(channels):
        mask[torch.as_tensor(list(channels), dtype=torch.long)] = 0.0
    return mask


def prune(model: BadNet, channels: Sequence[int]) -> BadNet:
    """Switch off `channels` of conv_3 (in place; weights untouched) and return the model."""
    with torch.no_grad():
        model.conv_3.mask.copy_(mask_for(channels, model.conv_3.out_channels).to(model.conv_3.mask.device) * model.conv_3.mask)
    return model


def pruned_channels(mask: torch.Tensor) -> list[int]:
    """The channels a 0/1 mask switches off."""
    return [int(c) for c in (mask == 0).nonzero().flatten()]
