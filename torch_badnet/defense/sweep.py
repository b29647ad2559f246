"""One pruning-defense run: lab files -> pool_3 features -> ranking -> fast sweep -> metrics -> B'_X per X.

This is the data flow of `torch-badnet sweep` (and the demo) without any file output; `report` writes it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data.formats import open_data_file
from ..data.lab_sets import DEFAULT_CHUNK, ArraySet, LabDataset, read_ahead_pays
from ..data.set_names import check_unique
from ..data.shared_file import ReadFile, SharedSet
from ..data.triggers import StampedSet, Trigger
from ..engine.lab_head import extract_features, fast_sweep, prepare_model
from ..engine.pruning import channel_scores, mask_for, pruning_order
from ..errors import BadInputError
from ..nets.badnet import INPUT_SHAPE, BadNet
from ..nets.pairing import mark_derived
from ..nets.precision import exact_float32
from ..report.phases import NoTimer, PhaseTimer, reading_note
from .metric_columns import Column, csv_order, set_columns
from .metrics import DropKind, StepCounts, StopRule, select_step, step_counts
from .sanity import SetFacts

VALID_CLEAN = Column("pruned", "valid", "clean_acc")  # the curve that defines every B'_X


@dataclass(frozen=True)
class SweepConfig:
    """Every option of one sweep (the CLI's flags, named in cli/commands/), passed down as one object: to `run_sweep`
    (the lab's engine) and to `engine.run.run_generic_sweep` (any nn.Module)."""

    thresholds: tuple[float, ...] = (2.0, 4.0, 10.0)
    stop: StopRule = "first-over"
    drop: DropKind = "absolute"
    max_steps: int | None = None  # None: every channel of the layer
    layer: str | None = None  # None: the lab's conv_3 for a BadNet, else prunable.default_for
    rank_on: str | None = None  # None: the pooling layer right after `layer`, else `layer`
    device: torch.device = torch.device("cpu")
    show_progress: bool = False
    chunk_size: int = DEFAULT_CHUNK  # images per chunk read from a set


@dataclass(frozen=True)
class DataSpec:
    """One input set of the sweep: its split, whether it is clean or poisoned, and (poisoned) its trigger name."""

    split: str  # "valid" | "test"
    kind: str  # "clean" | "poisoned"
    path: Path  # the data file or folder, any layout of `data.formats` (in memory, a name such as "<clean_valid>")
    trigger: str = ""  # "" = the plain, unnamed poisoned set
    arrays: tuple[Any, Any] | None = field(default=None, compare=False, repr=False)  # in-memory (pixels, labels)
    shared: ReadFile | None = field(default=None, compare=False, repr=False)  # the file, read once by `batch`
    classes: tuple[str, ...] | None = field(default=None, compare=False, repr=False)  # an image folder's label order
    stamp: tuple[Trigger, DataSpec] | None = field(default=None, compare=False, repr=False)  # made from a clean set

    @property
    def reads_file(self) -> bool:
        """Whether the sweep reads `path` itself (not in-memory arrays, a file `batch` read once and shares, nor
        a set made from another by stamping a trigger)."""
        return self.arrays is None and self.shared is None and self.stamp is None

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
    metrics: dict[Column, float]  # every metric of B'_X and G_X at `step`
    fraction_pruned: float | None = None

    @property
    def reached(self) -> bool:
        return self.step is not None


@dataclass
class SweepResult:
    """Everything a report needs: ranking, per-step metric curves, counts per set and the thresholds."""

    specs: list[DataSpec]
    scores: np.ndarray
    order: list[int]
    steps: int
    metrics: dict[Column, list[float]]  # one value per step (index 0 = unpruned B), in sweep.csv's order
    counts: dict[str, StepCounts]
    thresholds: list[Threshold] = field(default_factory=list)
    net: Any = field(default=None, repr=False)  # engine.prunable.PrunableNet for a generic model; None for the lab's
    facts: list[SetFacts] = field(default_factory=list)  # per set: labels' spread and B's hits (sanity warnings)

    @property
    def fraction_pruned(self) -> list[float]:
        """Share of pool_3 channels pruned at each step."""
        return [k / len(self.order) for k in range(self.steps + 1)]

    @property
    def channels(self) -> list[int | None]:
        """The channel pruned at each step (None at step 0)."""
        return [None, *self.order[: self.steps]]

    def has_split(self, split: str) -> bool:
        return Column("pruned", split, "clean_acc") in self.metrics

    def original(self) -> dict[Column, float]:
        """B's own metrics (step 0): clean accuracy and attack success per split (and trigger)."""
        return {c: values[0] for c, values in self.metrics.items() if c.net == "pruned"}

    @property
    def sizes(self) -> dict[str, int]:
        """Images per set."""
        return {name: counts.n for name, counts in self.counts.items()}

    def pruned_model(self, model: BadNet, threshold: Threshold) -> BadNet:
        """B'_X: a CPU copy of `model` with threshold's channels masked (weights untouched), marked as derived
        from `model` (its checkpoint records B's fingerprint). For a generic model, an `engine.prunable.MaskedNet`."""
        if self.net is not None:
            return mark_derived(self.net.masked(threshold.pruned_channels), model)
        pruned = copy.deepcopy(model).cpu()
        with torch.no_grad():
            pruned.conv_3.mask.copy_(mask_for(threshold.pruned_channels, len(self.scores)))
        return mark_derived(pruned, model)

    def pruned_models(self, model: BadNet) -> Iterator[tuple[Threshold, BadNet]]:
        """(threshold, B'_X) for every threshold the sweep reached, in order."""
        for t in self.thresholds:
            if t.reached:
                yield t, self.pruned_model(model, t)


def metric_curves(spec: DataSpec, counts: StepCounts) -> dict[Column, list[float]]:
    """The three curves of one set: B' hits (clean accuracy or ASR), G hits, G flags (false alarms or detections)."""
    hits, goodnet_hits, flagged = set_columns(spec.split, spec.kind, spec.trigger)
    return {hits: counts.rate(counts.hits), goodnet_hits: counts.rate(counts.goodnet_hits),
            flagged: counts.rate(counts.flagged)}


def check_specs(specs: Sequence[DataSpec]) -> None:
    """Exactly one clean validation set (it ranks channels and defines X); unique names."""
    if sum(s.is_clean_valid for s in specs) != 1:
        raise BadInputError("--clean-valid", "exactly one clean validation file is needed")
    check_unique([s.name for s in specs], None, "the same set name is given twice (name triggers NAME=PATH)")


def open_set(spec: DataSpec, num_classes: int | None, input_shape: tuple[int, int, int] | None = INPUT_SHAPE,
             guard: bool = True) -> LabDataset | ArraySet | SharedSet | StampedSet:
    """A validated set for a model of `input_shape`: the data file (any layout of `data.formats`), the in-memory
    pixels and labels, the file as `batch` shares it, or a clean set with a trigger stamped (`input_shape` None
    and `guard` False for a user's module: its data as given, see LabDataset)."""
    if spec.stamp is not None:
        trigger, source = spec.stamp
        clean = open_set(source, num_classes, input_shape, guard)
        try:
            return StampedSet(clean, trigger, num_classes, str(spec.path))
        except BaseException:
            clean.close()
            raise
    if spec.shared is not None:
        return SharedSet(spec.shared, num_classes, input_shape, guard)
    if spec.arrays is None:
        return open_data_file(spec.path, num_classes, input_shape, guard, spec.classes)
    return ArraySet(*spec.arrays, str(spec.path), num_classes, input_shape, guard)


def stamped_specs(specs: Sequence[DataSpec], trigger: Trigger) -> list[DataSpec]:
    """The poisoned sets made from the clean sets of `specs` with `trigger` (one per split, unnamed: the columns of
    a poisoned file's set), each after its clean set."""
    out: list[DataSpec] = []
    for spec in specs:
        out.append(spec)
        if spec.kind == "clean":
            out.append(DataSpec(spec.split, "poisoned", Path(f"<{spec.name} + {Path(trigger.path).name}>"),
                                stamp=(trigger, spec)))
    return out


@contextlib.contextmanager
def open_sets(specs: Sequence[DataSpec], num_classes: int | None, input_shape: tuple[int, int, int] | None = INPUT_SHAPE,
              guard: bool = True) -> Iterator[dict[str, LabDataset | ArraySet]]:
    """Open and validate every set (for a model of `input_shape`) before any work starts."""
    opened: dict[str, LabDataset | ArraySet] = {}
    try:
        for spec in specs:
            opened[spec.name] = open_set(spec, num_classes, input_shape, guard)
        yield opened
    finally:
        for ds in opened.values():
            ds.close()


@exact_float32()
def run_sweep(model: BadNet, specs: Sequence[DataSpec], config: SweepConfig = SweepConfig(),
              timer: PhaseTimer | None = None) -> SweepResult:
    """Rank pool_3 channels on the clean validation set, sweep every step on every set, pick B'_X per X in
    `config.thresholds` (by `config.stop` and `config.drop`), on `config.device`, for at most `config.max_steps`.

    One set at a time (the clean validation set first: it ranks): its trunk, then all its steps, so only one
    set's features and head state are held (the steps of a set never depend on another set).

    `timer` (optional) gets the phases read+trunk (files read ahead in a background thread where that pays,
    `lab_sets.read_ahead_pays`), rank, prune, metrics.
    """
    timer = timer or NoTimer()
    device = config.device
    check_specs(specs)
    model = prepare_model(copy.deepcopy(model), device)  # the caller's B keeps its device and memory format
    if bool((model.conv_3.mask == 0).any()):
        raise BadInputError("--model", "the model already has pruned channels; sweep an unpruned BadNet")
    read_ahead = read_ahead_pays(device)
    show = config.show_progress
    ranked_first = sorted(specs, key=lambda spec: not spec.is_clean_valid)  # the clean validation set ranks
    labels: dict[str, torch.Tensor] = {}
    truth: dict[str, torch.Tensor] = {}
    with open_sets(specs, model.num_classes) as datasets, \
            tqdm(total=sum(len(ds) for ds in datasets.values()), desc="trunk", unit="img", disable=not show, leave=False) as trunk_bar, \
            tqdm(total=0, desc="prune", unit="ch", disable=not show, leave=False) as prune_bar:
        for spec in ranked_first:  # one set at a time: only its features and head state are held
            with timer.phase("read+trunk"):
                chunks = _counted(datasets[spec.name].chunks(config.chunk_size, read_ahead=read_ahead), trunk_bar)
                features = extract_features(model, spec.name, chunks, len(datasets[spec.name]), device)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # the trunk's queued kernels belong to this phase
            if spec.is_clean_valid:
                with timer.phase("rank"):
                    scores = channel_scores(features.features)
                    order = pruning_order(scores)
                steps = len(order) if config.max_steps is None else min(config.max_steps, len(order))
                prune_bar.total = steps * len(specs)
            with timer.phase("prune"):
                labels[spec.name] = fast_sweep(model, [features], order, steps, progress=lambda _: prune_bar.update())[spec.name]
            truth[spec.name] = features.labels.cpu()
            del features
        timer.note("read+trunk", reading_note(sum(getattr(ds, "read_seconds", 0.0) for ds in datasets.values()), read_ahead))
    with timer.phase("metrics"):
        counts = {spec.name: step_counts(labels[spec.name], truth[spec.name]) for spec in specs}
        result = _assemble(list(specs), scores, order, steps, counts)
        result.thresholds = [threshold(result, x, config.stop, config.drop) for x in config.thresholds]
        result.facts = [SetFacts.of(spec.path, spec.kind, spec.split, truth[spec.name].numpy(), counts[spec.name].hits[0])
                        for spec in specs]
    return result


def _counted(chunks: Iterator[tuple[torch.Tensor, torch.Tensor]], bar: tqdm) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y in chunks:
        yield x, y
        bar.update(x.shape[0])


def _assemble(specs: list[DataSpec], scores: np.ndarray, order: list[int], steps: int,
              counts: dict[str, StepCounts]) -> SweepResult:
    curves = {c: v for spec in specs for c, v in metric_curves(spec, counts[spec.name]).items()}
    metrics = {c: curves[c] for c in csv_order(list(curves))}
    return SweepResult(specs, scores, order, steps, metrics, counts)


def threshold(result: SweepResult, x: float, stop: StopRule = "first-over", drop: DropKind = "absolute") -> Threshold:
    """B'_X for one X under a stopping rule, from the clean validation accuracy curve."""
    step = select_step(result.metrics[VALID_CLEAN], x, stop, drop)
    if step is None:
        return Threshold(x, stop, drop, None, [], {})
    metrics = {c: values[step] for c, values in result.metrics.items()}
    return Threshold(x, stop, drop, step, result.order[:step], metrics, result.fraction_pruned[step])

