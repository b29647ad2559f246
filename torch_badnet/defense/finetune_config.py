"""Fine-tuning settings, importable without torch (the CLI reads their defaults for --help).

The defaults were picked from a measured grid on the demo (scripts/finetune_grid.py,
benchmarks/finetune_grid.csv; the README's "Pruning vs fine-pruning" explains the choice).
"""

from __future__ import annotations

from dataclasses import dataclass

OPTIMIZERS = ("adam", "sgd")  # sgd: SGD with momentum SGD_MOMENTUM
SGD_MOMENTUM = 0.9


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings (defaults: Adam, lr 1e-3, L2 weight decay 1e-2, conv_1 fixed, at most 10 epochs,
    batch 64, 20% held out, patience 10, keep the last epoch within 2 points of the best held-out accuracy).

    >>> tb.prune_sweep(bd, ..., finetune=FinetuneConfig(epochs=5))
    """

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    holdout: float = 0.2
    patience: int = 10  # stop after this many epochs without a better held-out accuracy
    optimizer: str = "adam"
    weight_decay: float = 1e-2  # L2 penalty in the gradient: shrinks weights that clean data does not use
    tolerance: float = 2.0  # keep the last epoch whose held-out accuracy is within this many points of the best
    train_conv_1: bool = False  # conv_1 reads raw 0..255 pixels: its tiny weights are kept fixed by default
