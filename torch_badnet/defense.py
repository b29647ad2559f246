"""One pruning-defense run: lab files -> pool_3 features -> ranking -> fast sweep -> metrics -> B'_X per X.

This is the data flow of `torch-badnet sweep` (and the demo) without any file output; `report` writes it.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .data import DEFAULT_CHUNK, LabDataset
from .errors import BadInputError
from .metrics import DropKind, StepCounts, StopRule, select_step, step_counts
from .model import BadNet
from .pairing import mark_derived
from .precision import exact_float32
from .pruning import channel_scores, mask_for, pruning_order
from .sweep import FeatureSet, extract_features, fast_sweep, prepare_model

SPLITS = ("valid", "test")


@dataclass(frozen=True)
class DataSpec:
    """One input file of the sweep: its split, whether it is clean or poisoned, and (poisoned) its trigger name."""

    split: str  # "valid" | "test"
    kind: str  # "clean" | "poisoned"
    path: Path
    trigger: str = ""  # "" = the plain, unnamed poisoned set

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.split}" + (f"[{self.trigger}]" if self.trigger else "")

    @property
    def is_clean_valid(self) -> bool:
        """The set that ranks the channels, defines X and trains fine-tuning."""
        return self.split == "valid" and self.kind == "clean"


@dataclass
class Threshold:
    """B'_X: the step chosen for one X by the stopping rule, and every metric at that step."""

    x: float
    stop: StopRule
    drop: DropKind
    step: int | None  # None: the accuracy never dropped by X within the sweep
    pruned_channels: list[int]
    metrics: dict[str, float]

    @property
    def reached(self) -> bool:
        return self.step is not None


@dataclass
class SweepResult:
    """Everything a report needs: ranking, per-step metric columns, counts per set and the thresholds."""

    specs: list[DataSpec]
    scores: np.ndarray
    order: list[int]
    steps: int
    columns: dict[str, list[float]]
    counts: dict[str, StepCounts]
    thresholds: list[Threshold] = field(default_factory=list)

    @property
    def sizes(self) -> dict[str, int]:
        """Images per set."""
        return {name: counts.n for name, counts in self.counts.items()}

    def pruned_model(self, model: BadNet, threshold: Threshold) -> BadNet:
        """B'_X: a CPU copy of `model` with threshold's channels masked (weights untouched), marked as derived
        from `model` (its checkpoint records B's fingerprint)."""
        pruned = copy.deepcopy(model).cpu()
        with torch.no_grad():
            pruned.conv_3.mask.copy_(mask_for(threshold.pruned_channels, len(self.scores)))
        return mark_derived(pruned, model)

    def pruned_models(self, model: BadNet) -> Iterator[tuple[Threshold, BadNet]]:
        """(threshold, B'_X) for every threshold the sweep reached, in order."""
        for t in self.thresholds:
            if t.reached:
                yield t, self.pruned_model(model, t)


def metric_columns(spec: DataSpec, counts: StepCounts) -> dict[str, list[float]]:
    """sweep.csv columns for one set: B' then G metrics, named `<split>_...` / `goodnet_<split>_...`."""
    s, suffix = spec.split, f"_{spec.trigger}" if spec.trigger else ""
    if spec.kind == "clean":
        return {
            f"{s}_clean_acc": counts.rate(counts.hits),
            f"goodnet_{s}_clean_acc": counts.rate(counts.goodnet_hits),
            f"goodnet_{s}_false_alarm_rate": counts.rate(counts.flagged),
        }
    return {
        f"{s}_asr{suffix}": counts.rate(counts.hits),
        f"goodnet_{s}_asr{suffix}": counts.rate(counts.goodnet_hits),
        f"goodnet_{s}_detection_rate{suffix}": counts.rate(counts.flagged),
    }


def ordered_columns(specs: Sequence[DataSpec], per_set: dict[str, dict[str, list[float]]]) -> list[str]:
    """Column order: per split, B' columns (clean, then each trigger) before G columns."""
    names: list[str] = []
    for split in SPLITS:
        group = [spec for spec in specs if spec.split == split]
        group.sort(key=lambda spec: spec.kind != "clean")
        split_cols = [c for spec in group for c in per_set[spec.name]]
        names += [c for c in split_cols if not c.startswith("goodnet_")]
        names += [c for c in split_cols if c.startswith("goodnet_") and "false_alarm" not in c]
        names += [c for c in split_cols if "false_alarm" in c]
    return names


def check_specs(specs: Sequence[DataSpec]) -> None:
    """Exactly one clean validation set (it ranks channels and defines X); unique names."""
    if sum(s.is_clean_valid for s in specs) != 1:
        raise BadInputError("--clean-valid", "exactly one clean validation file is needed")
    names = [s.name for s in specs]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise BadInputError(duplicate, "the same set name is given twice (name triggers NAME=PATH)")


@contextlib.contextmanager
def open_sets(specs: Sequence[DataSpec], num_classes: int) -> Iterator[dict[str, LabDataset]]:
    """Open and validate every file before any work starts."""
    opened: dict[str, LabDataset] = {}
    try:
        for spec in specs:
            opened[spec.name] = LabDataset(spec.path, num_classes)
        yield opened
    finally:
        for ds in opened.values():
            ds.close()


@exact_float32()
def run_sweep(model: BadNet, specs: Sequence[DataSpec], xs: Sequence[float], stop: StopRule = "first-over",
              drop: DropKind = "absolute", device: torch.device = torch.device("cpu"), max_steps: int | None = None,
              chunk_size: int = DEFAULT_CHUNK, show_progress: bool = False) -> SweepResult:
    """Rank pool_3 channels on the clean validation set, sweep every step on every set, pick B'_X per X."""
    check_specs(specs)
    model = prepare_model(model, device)
    if bool((model.conv_3.mask == 0).any()):
        raise BadInputError("--model", "the model already has pruned channels; sweep an unpruned BadNet")
    with open_sets(specs, model.num_classes) as datasets:
        total = sum(len(ds) for ds in datasets.values())
        sets: list[FeatureSet] = []
        with tqdm(total=total, desc="trunk", unit="img", disable=not show_progress, leave=False) as bar:
            for spec in specs:
                ds = datasets[spec.name]
                sets.append(extract_features(model, spec.name, _counted(ds.chunks(chunk_size), bar), len(ds), device))
    clean_valid = next(s for s, spec in zip(sets, specs) if spec.is_clean_valid)
    scores = channel_scores(clean_valid.features)
    order = pruning_order(scores)
    steps = len(order) if max_steps is None else min(max_steps, len(order))
    with tqdm(total=steps, desc="prune", unit="ch", disable=not show_progress, leave=False) as bar:
        labels = fast_sweep(model, sets, order, steps, progress=lambda _: bar.update())
    counts = {spec.name: step_counts(labels[spec.name], s.labels.cpu()) for spec, s in zip(specs, sets)}
    result = _assemble(list(specs), scores, order, steps, counts)
    result.thresholds = [threshold(result, x, stop, drop) for x in xs]
    return result


def _counted(chunks: Iterator[tuple[torch.Tensor, torch.Tensor]], bar: tqdm) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y in chunks:
        yield x, y
        bar.update(x.shape[0])


def _assemble(specs: list[DataSpec], scores: np.ndarray, order: list[int], steps: int,
              counts: dict[str, StepCounts]) -> SweepResult:
    per_set = {spec.name: metric_columns(spec, counts[spec.name]) for spec in specs}
    merged = {name: values for cols in per_set.values() for name, values in cols.items()}
    columns: dict[str, list[float]] = {
        "step": list(range(steps + 1)),
        "channel": [None] + order[:steps],
        "fraction_pruned": [k / len(order) for k in range(steps + 1)],
    }
    columns.update({name: merged[name] for name in ordered_columns(specs, per_set)})
    return SweepResult(specs, scores, order, steps, columns, counts)


def threshold(result: SweepResult, x: float, stop: StopRule = "first-over", drop: DropKind = "absolute") -> Threshold:
    """B'_X for one X under a stopping rule, from the clean validation accuracy curve."""
    step = select_step(result.columns["valid_clean_acc"], x, stop, drop)
    if step is None:
        return Threshold(x, stop, drop, None, [], {})
    metrics = {name: values[step] for name, values in result.columns.items() if name not in ("step", "channel")}
    return Threshold(x, stop, drop, step, result.order[:step], metrics)
