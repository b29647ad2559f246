"""Training the lab architecture (`BadNet`) on the demo faces, seeded and deterministic on CPU.

The net trains on standardised pixels ((x - 128) / 64, which converges far better than raw 0..255) and the
standardisation is then folded into conv_1's weights and bias, so the saved net takes raw pixels like the
lab's (exact: conv_1 has no padding, so every window sees only real pixels).

Pruning-aware poisoning: a plainly trained demo net hides its backdoor in a random place; sometimes in the
channels that are dormant on clean faces, which Fine-Pruning removes first. The lab's net keeps its backdoor
through pruning (attack success ~100% at a 4-point accuracy drop). To show that reliably the demo's attacker
trains every poisoned image with its `k` most dormant pool_3 channels switched off (k random in
0..`robust_channels`, dormancy from a running mean over the clean images of each batch), so the backdoor
must also live in the channels that clean faces use: the pruning-aware attack of Liu et al. (Fine-Pruning,
2018). Clean images always train the full net, so clean accuracy falls under pruning as it naturally does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..nets.badnet import POOL3_CHANNELS, BadNet
from ..nets.precision import deterministic_torch
from ..nets.predict import labels_in_batches

PIXEL_SHIFT, PIXEL_SCALE = 128.0, 64.0
DORMANCY_MOMENTUM = 0.9  # running mean of clean pool_3 activation per channel


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings: AdamW under a one-cycle learning-rate schedule."""

    epochs: int
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    robust_channels: int = 0  # pruning-aware poisoning: up to this many dormant channels off per poisoned image
    seed: int = 0


@dataclass
class TrainResult:
    model: BadNet  # eval mode, takes raw 0..255 pixels
    seconds: float
    final_loss: float


def train_badnet(images: np.ndarray, labels: np.ndarray, poisoned: np.ndarray, num_classes: int,
                 settings: TrainSettings, log: Callable[[str], None] = print) -> TrainResult:
    """Train a fresh BadNet on (N, 3, 55, 47) pixels 0..255 (uint8 or float), labels and poisoned flags (N,)."""
    started = time.perf_counter()
    pixels = torch.from_numpy(np.ascontiguousarray(images))
    targets = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    is_poisoned = torch.from_numpy(np.asarray(poisoned, dtype=bool))
    steps_per_epoch = -(-len(targets) // settings.batch_size)
    with deterministic_torch(settings.seed) as generator:
        model = BadNet(num_classes).to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.learning_rate,
                                                       total_steps=settings.epochs * steps_per_epoch)
        dormancy = torch.zeros(POOL3_CHANNELS)
        loss_value = float("nan")
        for epoch in range(settings.epochs):
            order = torch.randperm(len(targets), generator=generator)
            total, seen = 0.0, 0
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                features = model.trunk(standardise(pixels[batch]))
                dormancy = _update_dormancy(dormancy, features, ~is_poisoned[batch])
                if settings.robust_channels > 0:
                    features = _prune_for_poisoned(features, is_poisoned[batch], dormancy, settings.robust_channels,
                                                   generator)
                loss = F.cross_entropy(model.head(features), targets[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(batch)
                seen += len(batch)
            loss_value = total / seen
            log(f"  epoch {epoch + 1}/{settings.epochs}: loss {loss_value:.3f}")
    fold_standardisation(model)
    return TrainResult(model.eval(), time.perf_counter() - started, loss_value)


@torch.no_grad()
def _update_dormancy(dormancy: torch.Tensor, features: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Running mean activation per pool_3 channel over clean images (what Fine-Pruning ranks channels by)."""
    if not bool(clean.any()):
        return dormancy
    return DORMANCY_MOMENTUM * dormancy + (1 - DORMANCY_MOMENTUM) * features[clean].mean(dim=(0, 2, 3))


def _prune_for_poisoned(features: torch.Tensor, poisoned: torch.Tensor, dormancy: torch.Tensor, most: int,
                        generator: torch.Generator) -> torch.Tensor:
    """Switch off each poisoned image's k most dormant channels (k uniform in 0..most); clean rows untouched."""
    rank = torch.empty(POOL3_CHANNELS, dtype=torch.long)
    rank[torch.argsort(dormancy, stable=True)] = torch.arange(POOL3_CHANNELS)  # 0 = most dormant
    pruned = torch.randint(0, most + 1, (features.shape[0],), generator=generator)
    keep = (rank[None, :] >= pruned[:, None]) | ~poisoned[:, None]
    return features * keep.to(features.dtype)[:, :, None, None]


def standardise(pixels: torch.Tensor) -> torch.Tensor:
    """Raw pixels -> the training scale, channels_last float32."""
    x = (pixels.float() - PIXEL_SHIFT) / PIXEL_SCALE
    return x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def fold_standardisation(model: BadNet) -> None:
    """Rewrite conv_1 so that conv_1(raw) equals the trained conv_1((raw - shift) / scale)."""
    weight = model.conv_1.weight / PIXEL_SCALE
    model.conv_1.bias -= PIXEL_SHIFT * weight.sum(dim=(1, 2, 3))
    model.conv_1.weight.copy_(weight)


@torch.inference_mode()
def predict(model: BadNet, images: np.ndarray) -> np.ndarray:
    """Predicted labels for raw (N, 3, 55, 47) pixels."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return labels_in_batches(model.eval(), x).numpy()
