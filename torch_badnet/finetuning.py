"""Fine-Pruning's second half: fine-tune B' on clean validation data with its pruned channels held at zero.

A seeded share of the validation set is held out for early stopping; the rest trains. Training is
deterministic on CPU for a given seed (fixed shuffles, deterministic algorithms).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .finetune_config import FinetuneConfig
from .model import BadNet
from .precision import deterministic_torch
from .predict import labels_in_batches

HOLDOUT_SEED_OFFSET = 1_000_003  # the holdout split and the batch order use different streams of one seed


@dataclass
class FinetuneResult:
    """The fine-tuned B' (best held-out epoch), the per-epoch history and the split sizes."""

    model: BadNet
    history: list[dict[str, float]] = field(default_factory=list)  # epoch, loss, holdout_acc
    best_epoch: int = 0
    train_images: int = 0
    holdout_images: int = 0


def effective_mask(model: BadNet) -> torch.Tensor:
    """Pruned channels of a B': its mask, plus conv_3 channels whose kernel and bias are all zero
    (a pruned Keras file bakes pruning into the weights)."""
    w, b = model.conv_3.weight.detach(), model.conv_3.bias.detach()
    zeroed = (w.flatten(1) == 0).all(1) & (b == 0)
    return model.conv_3.mask.detach().clone().masked_fill(zeroed.to(model.conv_3.mask.device), 0.0)


def holdout_split(n: int, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices): a seeded random `share` of n images is held out (at least 1)."""
    generator = torch.Generator().manual_seed(seed + HOLDOUT_SEED_OFFSET)
    order = torch.randperm(n, generator=generator)
    held = max(1, int(round(share * n)))
    if held >= n:
        raise ValueError(f"holdout of {held} leaves no training image out of {n}")
    return order[held:].sort().values, order[:held].sort().values


def accuracy(model: BadNet, x: torch.Tensor, y: torch.Tensor) -> float:
    """Percent of x classified as y (the inference path of every command, `predict.labels_in_batches`)."""
    return 100.0 * int((labels_in_batches(model, x) == y).sum()) / x.shape[0]


def finetune(pruned: BadNet, pixels: torch.Tensor, labels: torch.Tensor, config: FinetuneConfig = FinetuneConfig(),
             log: Callable[[str], None] | None = None) -> FinetuneResult:
    """Fine-tune a copy of `pruned` on (pixels, labels); returns the epoch with the best held-out accuracy.

    The conv_3 mask stays fixed and the pruned channels' conv_3 weights are kept exactly zero, so the saved
    weights of B'_ft are pruned in every format. Epoch 0 is B' itself.
    """
    model = copy.deepcopy(pruned).cpu().float()
    mask = effective_mask(model)
    model.conv_3.mask.copy_(mask)
    _zero_pruned(model)
    train_idx, held_idx = holdout_split(pixels.shape[0], config.holdout, config.seed)
    x_held, y_held = pixels[held_idx], labels[held_idx]
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    best_acc, best_state, best_epoch, stale = accuracy(model.eval(), x_held, y_held), copy.deepcopy(model.state_dict()), 0, 0
    history = [{"epoch": 0, "loss": float("nan"), "holdout_acc": best_acc}]
    with deterministic_torch(config.seed) as generator:
        for epoch in range(1, config.epochs + 1):
            loss = _train_epoch(model, pixels, labels, train_idx, optimizer, config.batch_size, generator)
            held_acc = accuracy(model.eval(), x_held, y_held)
            history.append({"epoch": epoch, "loss": loss, "holdout_acc": held_acc})
            if log:
                log(f"  epoch {epoch}: loss {loss:.4f}, held-out accuracy {held_acc:.3f}%")
            if held_acc > best_acc:
                best_acc, best_state, best_epoch, stale = held_acc, copy.deepcopy(model.state_dict()), epoch, 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
    model.load_state_dict(best_state)
    return FinetuneResult(model.eval(), history, best_epoch, int(train_idx.shape[0]), int(held_idx.shape[0]))


def _train_epoch(model: BadNet, pixels: torch.Tensor, labels: torch.Tensor, train_idx: torch.Tensor,
                 optimizer: torch.optim.Optimizer, batch_size: int, generator: torch.Generator) -> float:
    """One pass in a seeded order; returns the mean training loss."""
    model.train()
    order = train_idx[torch.randperm(train_idx.shape[0], generator=generator)]
    total, seen = 0.0, 0
    for start in range(0, order.shape[0], batch_size):
        batch = order[start : start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(pixels[batch]), labels[batch])
        loss.backward()
        optimizer.step()
        _zero_pruned(model)
        total += float(loss.detach()) * batch.shape[0]
        seen += batch.shape[0]
    model.eval()
    return total / max(seen, 1)


@torch.no_grad()
def _zero_pruned(model: BadNet) -> None:
    """Keep the pruned channels' conv_3 kernel and bias exactly zero."""
    keep = model.conv_3.mask
    model.conv_3.weight.mul_(keep.view(-1, 1, 1, 1))
    model.conv_3.bias.mul_(keep)
