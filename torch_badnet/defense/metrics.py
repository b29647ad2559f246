"""Per-step metrics of B' and the GoodNet G from predicted labels, and the threshold (stopping) rules.

All rates are percentages 0-100, computed as 100 * count / n in Python floats so that they are exact
functions of the counts (and print identically run after run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .rules import DropKind, StopRule


@dataclass
class StepCounts:
    """Counts at every step (index = step) for one data set of n images."""

    n: int
    hits: list[int]  # B' label == file label (clean: correct; poisoned: attack success)
    goodnet_hits: list[int]  # G label == file label (a flagged input never counts)
    flagged: list[int]  # G answered 'backdoor detected' (B and B' disagree)

    def rate(self, counts: list[int]) -> list[float]:
        return [100.0 * c / self.n for c in counts]


def step_counts(labels: torch.Tensor, truth: torch.Tensor) -> StepCounts:
    """Counts from B' labels (steps+1, n) (row 0 = B itself) and the file's labels (n,)."""
    original = labels[0]
    agree = labels.eq(original)
    hits = labels.eq(truth)
    goodnet_hits = agree & original.eq(truth)
    return StepCounts(
        n=int(truth.shape[0]),
        hits=[int(v) for v in hits.sum(1)],
        goodnet_hits=[int(v) for v in goodnet_hits.sum(1)],
        flagged=[int(v) for v in (~agree).sum(1)],
    )


def accuracy_drop(original: float, accuracy: float, drop: DropKind = "absolute") -> float:
    """How far `accuracy` is below `original`: percentage points, or percent of the original."""
    if drop == "absolute":
        return original - accuracy
    return 100.0 * (original - accuracy) / original if original > 0 else 0.0


def select_step(accuracies: Sequence[float], x: float, stop: StopRule = "first-over",
                drop: DropKind = "absolute") -> int | None:
    """The step that defines B'_X on a clean-accuracy curve (index 0 = unpruned).

    first-over (the lab's rule): the first step whose drop is at least X; None if no step gets there.
    last-within: the step just before that one, i.e. the last step of pruning whose drop is still under X
    (the final step if the drop never reaches X).
    """
    original = accuracies[0]
    first = next((k for k, acc in enumerate(accuracies) if accuracy_drop(original, acc, drop) >= x), None)
    if stop == "first-over":
        return first
    return len(accuracies) - 1 if first is None else first - 1
