"""Fine-tuning settings, importable without torch (the CLI reads their defaults for --help)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings (defaults: Adam, lr 1e-4, 10 epochs, batch 64, 20% held out, patience 3).

    >>> tb.prune_sweep(bd, ..., finetune=FinetuneConfig(epochs=5))
    """

    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 64
    seed: int = 0
    holdout: float = 0.2
    patience: int = 3
