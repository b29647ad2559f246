"""The defense as library calls: `prune_sweep` (rank, prune, pick B'_X, optionally fine-tune) and `finetune`.

The CLI's `sweep`, `finetune` and `demo` are thin wrappers around these; `result.save(out)` writes exactly the
files the commands write. Data flows one way: inputs -> `run_sweep` -> metrics -> B'_X -> (fine-tuning) -> files.

    >>> import torch_badnet as tb
    >>> bd = tb.load_model("bd_net.h5")
    >>> result = tb.prune_sweep(bd, clean_valid="cl/valid.h5", poisoned_valid="bd/bd_valid.h5",
    ...                         clean_test="cl/test.h5", poisoned_test="bd/bd_test.h5")
    >>> result.save("results/")
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.files import prefetch_sha256, write_text
from ..data.formats import data_files, data_sha256
from ..data.lab_sets import arrays_sha256, check_labels, read_all
from ..data.set_names import parse_poisoned
from ..data.shared_file import ReadFile
from ..data.torch_sets import is_torch_data, read_torch_data
from ..data.triggers import Trigger
from ..engine.prunable import MaskedNet
from ..engine.pruning import pruned_channels
from ..engine.run import run_generic_sweep
from ..engine.saving import keras_graph_writer
from ..errors import BadInputError
from ..nets.badnet import INPUT_SHAPE, BadNet
from ..nets.checkpoint import save_checkpoint, source_of
from ..nets.pairing import check_pair, mark_derived
from ..nets.predict import labels_in_batches
from ..nets.rescale import GUARD_IMAGES, check_scale
from ..report.outdir import OutputFolder, written_files
from ..report.phases import PhaseTimer
from ..report.results import csv_table, model_dir, named, table, versions, write_report
from .evaluation import evaluate_pruned, evaluate_with_facts
from .finetune_config import OPTIMIZERS, FinetuneConfig
from .finetuning import TrainingResult, effective_mask, holdout_size, train_masked
from .metric_columns import Column
from .metrics import DropKind, StopRule
from .sanity import SetFacts, data_warnings, finetune_warnings, same_file_warnings
from .sweep import DataSpec, SweepConfig, SweepResult, Threshold, open_sets, run_sweep, stamped_specs

DEFAULT_THRESHOLDS = (2.0, 4.0, 10.0)
PRUNABLE_LAYERS = ("conv_3",)
PRUNED_HEADER = "B'_X"  # the pruned net's column in finetune's table  # the lab architecture prunes conv_3's channels (= pool_3's)

Pixels = torch.Tensor | np.ndarray


# a data file or folder (any layout of data.formats), (pixels, labels) in memory, a file batch shares, or a torch
# Dataset / an iterable of (images, labels) batches such as a DataLoader (read once: data.torch_sets)
DataSource = str | os.PathLike | tuple[Pixels, Pixels] | ReadFile | Any
PoisonedSources = DataSource | Mapping[str, DataSource] | Sequence[str]  # one set, {trigger: set}, NAME=PATH
KerasWriter = Callable[[BadNet, Path], None]
Log = Callable[[str], None]


@dataclass
class TunedNet:
    """B'_ft for one X: the fine-tuned net, its training history, facts and its (and G_ft's) metrics."""

    model: BadNet
    history: list[dict[str, float]]
    facts: dict[str, Any]
    metrics: dict[Column, float]
    config: FinetuneConfig

    def summary(self, model_path: str | None = None) -> dict[str, Any]:
        row = {**self.facts, **named(self.metrics)}
        if model_path:
            row["model"] = model_path
        return row

    def write(self, folder: Path, write_keras: KerasWriter | None) -> None:
        """finetuned.pt, finetuned.h5 (given a Keras writer) and history.csv into `folder`."""
        facts = dict(finetuned=True, epochs_run=self.facts["epochs_run"], best_epoch=self.facts["best_epoch"], **vars(self.config))
        if isinstance(self.model, BadNet):
            save_checkpoint(self.model, folder / "finetuned.pt", **facts)
        else:
            from ..engine.saving import save_masked

            save_masked(self.model, folder / "finetuned.pt", **facts)
        if write_keras is not None:
            write_keras(self.model, folder / "finetuned.h5")
        write_text(folder / "history.csv", history_csv(self.history))


@dataclass
class DefenseResult:
    """A finished `prune_sweep`: the sweep (ranking, curves, thresholds), B, and the fine-tuned nets if asked.

    >>> result.save("results/"); print(result.table())
    >>> result.sweep.order[:5], result.threshold(10).step, result.pruned(10)
    """

    sweep: SweepResult
    model: BadNet
    context: dict[str, Any]  # summary.json's model, inputs (filled in by `input_hashes`), rule, versions
    finetuned: dict[float, TunedNet] = field(default_factory=dict)
    seconds: float = 0.0  # the sweep's wall time (reading, ranking, pruning, metrics)
    device: str = "cpu"
    finetune_seconds: float = 0.0  # fine-tuning and evaluating every B'_X (with `finetune`)
    warnings: list[str] = field(default_factory=list)  # sanity warnings (`sanity`), also given to `log`
    _inputs: dict[str, Any] | None = field(default=None, repr=False)

    def input_hashes(self) -> dict[str, Any]:
        """summary.json's `inputs`: path and sha256 of every set (files hashed once, on first use)."""
        if self._inputs is None:
            self._inputs = {spec.name: input_record(spec) for spec in self.sweep.specs}
        return self._inputs

    def known_inputs(self, inputs: dict[str, Any]) -> None:
        """Set summary.json's `inputs` (for `ReadFile` sets: their files' paths and sha256, hashed by the caller)."""
        self._inputs = inputs

    @property
    def thresholds(self) -> list[Threshold]:
        return self.sweep.thresholds

    def threshold(self, x: float) -> Threshold:
        """The B'_X row for threshold `x` (one of the thresholds swept)."""
        for t in self.sweep.thresholds:
            if t.x == float(x):
                return t
        raise KeyError(f"X={x:g} was not among the thresholds {[t.x for t in self.sweep.thresholds]}")

    def pruned(self, x: float) -> BadNet | MaskedNet:
        """B'_X as an eval-mode BadNet on the CPU (B's weights, conv_3 mask with the pruned channels off); for a
        generic model a `MaskedNet` (a copy of B with the pruned layer's channels masked by a persistent hook).

        >>> b4 = result.pruned(4)
        """
        t = self.threshold(x)
        if not t.reached:
            raise ValueError(f"X={x:g} was not reached: clean validation accuracy never dropped by {x:g} within "
                             f"{self.sweep.steps} steps")
        return self.sweep.pruned_model(self.model, t).eval()

    def _input_paths(self) -> list[str]:
        paths = [str(p) for spec in self.sweep.specs if spec.reads_file for p in data_files(spec.path)]
        return paths + ([source_of(self.model).path] if source_of(self.model).sha256 else [])

    def summary(self) -> dict[str, Any]:
        """summary.json's content."""
        from ..report.results import summary

        finetuned = {x: f.summary(f"{model_dir(self.threshold(x))}/finetuned.pt") for x, f in self.finetuned.items()}
        return summary(self.sweep, {**self.context, "inputs": self.input_hashes()}, finetuned)

    def table(self, title: str = "") -> str:
        """The printed table: B' and G at each X per split (with `X ft` rows for fine-tuned nets)."""
        return table(self.sweep, title, {x: f.metrics for x, f in self.finetuned.items()})

    def save(self, out: str | os.PathLike[str] | OutputFolder, plot: bool = True, keras: bool = True,
             force: bool = False, timer: PhaseTimer | None = None) -> list[str]:
        """Write sweep.csv, summary.json, sweep.png (`plot`) and models/X=<x>/ (pruned.pt, pruned.h5 with `keras`,
        fine-tuned files) into `out`; returns the written files, relative to `out`.

        As the CLI: everything is written into a staging folder that then replaces `out` whole, so `out` holds
        exactly this result. A non-empty `out` that holds no torch-badnet result is refused (BadInputError)
        unless `force`. The input files' sha256 is computed in background threads (`files.prefetch_sha256`)
        while the models and plot are written.
        """
        target = out if isinstance(out, OutputFolder) else OutputFolder(out, force, self._input_paths())
        prefetch_sha256(str(p) for spec in self.sweep.specs if spec.reads_file for p in data_files(spec.path))
        net = self.sweep.net
        write_keras = pruned_writer(self.model, net is not None, net.layer if net is not None else None) if keras else None
        with own_lock(target, out), target.staging() as staging:
            for x, tuned in self.finetuned.items():
                tuned.write(staging / model_dir(self.threshold(x)), write_keras)
            write_report(self.sweep, self.model, staging, self.summary, write_keras, plot=plot,
                         finetuned={x: f.metrics for x, f in self.finetuned.items()}, timer=timer)
            return written_files(staging)


def own_lock(target: OutputFolder, out: object) -> contextlib.AbstractContextManager:
    """`target` as a context manager releasing its lock, when `save` made it from a path; the caller's otherwise."""
    return contextlib.nullcontext() if target is out else target


def keras_writer() -> KerasWriter:
    """The Keras full-model .h5 writer (h5py only; imported on use, the core never imports the converter)."""
    from ..convert.keras_h5 import write_keras_model

    return write_keras_model


def pruned_writer(model: nn.Module, generic: bool, layer: str | None = None) -> Callable[[Any, Path], None] | None:
    """The Keras .h5 writer of B' for B = `model`: the lab's (a BadNet B'), else for a generic B' (a MaskedNet
    pruned at `layer`) the Keras graph writer of a Keras-origin model, or the lab's writer of a BadNet pruned at a
    conv layer other than conv_3 (the pruned channels' kernel and bias zeroed); None for a plain torch module, and
    where Keras cannot express the mask at `layer`'s output (`keras_h5_problem`): then only the .pt is written."""
    if not generic:
        return keras_writer()
    if layer is not None and keras_h5_problem(model, layer) is not None:
        return None
    if isinstance(model, BadNet):
        return write_masked_badnet
    return keras_graph_writer(model)


def keras_h5_problem(model: nn.Module, layer: str) -> str | None:
    """Why a Keras .h5 of B' pruned at `layer` of `model` cannot be written (its mask sits where Keras has no
    weights to zero), or None: it can, or `model` has no Keras form at all (a plain torch module)."""
    from ..engine.prunable import is_conv_like, module_name

    if isinstance(model, BadNet):
        name = module_name(model, layer)
        if is_conv_like(model.get_submodule(name)):
            return None
        return f"'{name}' ({type(model.get_submodule(name)).__name__}) has no weights: Keras cannot switch its output channels off"
    if getattr(model, "keras_config", None) is None:
        return None
    from ..convert.keras_graph import mask_problem  # lazy: the core never imports the converter at import time

    return mask_problem(model, module_name(model, layer))


def write_masked_badnet(pruned: MaskedNet, target: Path) -> None:
    """A BadNet's MaskedNet as the lab's Keras .h5: a copy with the pruned channels' kernel and bias zeroed (the
    Keras procedure; the masked output is 0, what a zeroed channel gives through the ReLU)."""
    net = copy.deepcopy(pruned).net
    layer, off = net.get_submodule(pruned.layer), pruned.channel_mask == 0
    with torch.no_grad():
        layer.weight[off] = 0
        if layer.bias is not None:
            layer.bias[off] = 0
    keras_writer()(net, target)


def preprocessing_record(model: torch.nn.Module) -> dict[str, Any]:
    """summary.json's per-channel `mean` and `std` of a model that has them (a Keras graph model; null: none)."""
    if not hasattr(model, "mean"):
        return {}
    return {"mean": None if model.mean is None else list(model.mean), "std": None if model.std is None else list(model.std)}


def check_input_scale(model: BadNet, spec: DataSpec) -> None:
    """The scale guard (`rescale.check_scale`) on the first clean images of `spec`: stops (BadInputError naming
    --rescale and both accuracies) when another candidate input scale classifies them clearly better."""
    with open_sets([spec], model.num_classes, getattr(model, "input_shape", INPUT_SHAPE)) as sets:
        x, y = next(sets[spec.name].chunks(GUARD_IMAGES))
    check_scale(model, x, y, str(spec.path))


def history_csv(history: list[dict[str, float]]) -> str:
    """history.csv: epoch, loss (empty for epoch 0, before training), held-out accuracy."""
    rows = ([h["epoch"], None if h["loss"] != h["loss"] else h["loss"], h["holdout_acc"]] for h in history)  # NaN -> empty
    return csv_table(["epoch", "loss", "holdout_acc"], rows)


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' (CUDA when available), 'cpu', 'cuda' or a torch.device; 'cuda' without a GPU is a BadInputError."""
    from ..engine.lab_head import resolve_device as resolve

    return device if isinstance(device, torch.device) else resolve(device)


def data_spec(split: str, kind: str, source: DataSource, trigger: str = "", classes: Sequence[str] | None = None) -> DataSpec:
    """A DataSpec for a data file or folder (`classes`: an image folder's label order), an in-memory (pixels,
    labels) pair, or a torch Dataset / iterable of batches (read here, once, in order)."""
    if isinstance(source, (str, os.PathLike)):
        return DataSpec(split, kind, Path(source), trigger, classes=tuple(classes) if classes is not None else None)
    if isinstance(source, ReadFile):
        return DataSpec(split, kind, Path(source.path), trigger, shared=source)
    name = f"<{kind}_{split}{'_' + trigger if trigger else ''}>"
    if isinstance(source, tuple) and len(source) == 2 and not is_torch_data(source):
        return DataSpec(split, kind, Path(name), trigger, arrays=source)
    if is_torch_data(source):
        return DataSpec(split, kind, Path(name), trigger, arrays=read_torch_data(source, name))
    raise TypeError(f"{kind} {split} data must be a data file path, a (pixels, labels) pair, a torch Dataset or an "
                    f"iterable of (images, labels) batches, got {type(source).__name__}")


def poisoned_specs(split: str, sources: PoisonedSources | None, option: str,
                   classes: Sequence[str] | None = None) -> list[DataSpec]:
    """Poisoned sets: one source, a {trigger: source} dict, or a list of [NAME=]PATH strings (as the CLI)."""
    if sources is None:
        return []
    if isinstance(sources, Mapping):
        return [data_spec(split, "poisoned", src, name, classes) for name, src in sources.items()]
    if isinstance(sources, (list, tuple)) and sources and all(isinstance(s, str) for s in sources):
        return [data_spec(split, "poisoned", path, name, classes) for name, path in parse_poisoned(sources, option)]
    return [data_spec(split, "poisoned", sources, classes=classes)]


def sweep_specs(clean_valid: DataSource, poisoned_valid: PoisonedSources | None, clean_test: DataSource | None = None,
                poisoned_test: PoisonedSources | None = None, classes: Sequence[str] | None = None,
                trigger: Trigger | None = None) -> list[DataSpec]:
    """Every input set of a sweep, validation first; with `trigger`, the poisoned sets are made from the clean
    ones (and none may be given)."""
    if trigger is not None and (poisoned_valid is not None or poisoned_test is not None):
        raise BadInputError("--trigger", "makes the poisoned sets from the clean ones: give no --poisoned-valid or "
                                         "--poisoned-test with it")
    if trigger is None and poisoned_valid is None:
        raise BadInputError("--poisoned-valid", "give a poisoned validation set, or --trigger and --target to make "
                                                "the poisoned sets from the clean ones")
    specs = [data_spec("valid", "clean", clean_valid, classes=classes)]
    specs += poisoned_specs("valid", poisoned_valid, "--poisoned-valid", classes)
    if clean_test is not None:
        specs.append(data_spec("test", "clean", clean_test, classes=classes))
    specs += poisoned_specs("test", poisoned_test, "--poisoned-test", classes)
    return stamped_specs(specs, trigger) if trigger is not None else specs


def checked_config(**settings: Any) -> FinetuneConfig:
    """A FinetuneConfig from keyword settings (its field names; None keeps the default), checked as the CLI checks.

    >>> prune_sweep(bd, ..., finetune=checked_config(epochs=5, lr=1e-3))
    """
    config = FinetuneConfig(**{k: v for k, v in settings.items() if v is not None})
    if config.epochs < 0:
        raise BadInputError("--epochs", f"{config.epochs} is not a number of epochs >= 0")
    if config.batch_size < 1:
        raise BadInputError("--batch-size", f"{config.batch_size} is not a batch size >= 1")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise BadInputError("--lr", f"{config.lr:g} is not a learning rate > 0")
    if config.patience < 1:
        raise BadInputError("--patience", f"{config.patience} is not a number of epochs >= 1")
    if not 0 < config.holdout < 1:
        raise BadInputError("--holdout", f"{config.holdout:g} is outside (0, 1)")
    if not (config.weight_decay >= 0 and math.isfinite(config.weight_decay)):
        raise BadInputError("--weight-decay", f"{config.weight_decay:g} is not a number >= 0")
    if not (config.tolerance >= 0 and math.isfinite(config.tolerance)):
        raise BadInputError("--tolerance", f"{config.tolerance:g} is not a number of points >= 0")
    if config.optimizer not in OPTIMIZERS:
        raise BadInputError("--optimizer", f"{config.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    return config


def prune_sweep(model: nn.Module, clean_valid: DataSource, poisoned_valid: PoisonedSources | None = None,
                clean_test: DataSource | None = None, poisoned_test: PoisonedSources | None = None, *,
                thresholds: Sequence[float] = DEFAULT_THRESHOLDS, stop: StopRule = "first-over",
                drop: DropKind = "absolute", max_steps: int | None = None, layer: str | None = None,
                rank_on: str | None = None, device: str | torch.device = "auto", finetune: bool | FinetuneConfig = False,
                show_progress: bool = False, log: Log | None = None, timer: PhaseTimer | None = None,
                trigger: Trigger | None = None, classes: Sequence[str] | None = None) -> DefenseResult:
    """The Fine-Pruning defense: rank `layer`'s channels on the clean validation set, prune them one by one,
    pick B'_X for each X in `thresholds`, and (with `finetune`) fine-tune every B'_X on the clean validation set.

    `model`: a BadNet (the lab's engine, pruning conv_3 ranked on pool_3) or any torch nn.Module taking one
    (N, C, H, W) batch and returning logits: `layer` is a dotted name from `model.named_modules()` (default: the
    feature map that the classifier's global pooling or flatten reads, e.g. a ResNet's `layer4`; a Keras model's
    last Conv2D), `rank_on` the layer whose output ranks the channels (default: the pooling layer right after
    `layer`, else `layer`); see docs/models.md. Classes come from the model's output width.

    Data: a data file or folder (lab .h5, .npz, "IMAGES.npy,LABELS.npy", an image folder whose class folders are in
    torchvision's order or `classes`), a (pixels, labels) pair of tensors/arrays, a torch Dataset yielding (image,
    label) or an iterable of (images, labels) batches such as a DataLoader (read once, in order); a BadNet takes
    (N,3,55,47) pixels 0..255, any other module gets its values as given, in its parameters' dtype. Poisoned sets
    also as {trigger: data} or ["NAME=PATH", ...]; or none, with `trigger` (`data.triggers.Trigger`, `load_trigger`):
    the poisoned sets are the clean ones with the trigger stamped (images of the target class left out).
    Keywords mirror `torch-badnet sweep`'s flags; `finetune` may be True (defaults) or a FinetuneConfig. `timer`
    (a `phases.PhaseTimer`) records the phases' wall times.

    >>> result = prune_sweep(bd, "cl/valid.h5", "bd/bd_valid.h5", "cl/test.h5", "bd/bd_test.h5", thresholds=(4,))
    >>> result.threshold(4).pruned_channels[:3], result.pruned(4)
    >>> prune_sweep(resnet, (x_val, y_val), (x_bd, y_bd), layer="layer4.1.conv2")      # any nn.Module
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"prune_sweep needs a torch nn.Module (a BadNet or your own), got {type(model).__name__} "
                        "(tb.load_model returns one)")
    xs = check_steps(thresholds, max_steps)
    finetune_config = (FinetuneConfig() if finetune is True else finetune) or None
    specs = sweep_specs(clean_valid, poisoned_valid, clean_test, poisoned_test, classes, trigger)
    if trigger is not None:
        specs = bind_classes(specs, trigger, model_classes(model, specs[0]))
    early = warn(same_file_warnings([(s.kind, s.path) for s in specs if s.reads_file]), log)
    config = SweepConfig(tuple(xs), stop, drop, max_steps, layer, rank_on, resolve_device(device), show_progress)
    started = time.perf_counter()
    source = source_of(model)
    if is_lab(model, config):
        check_input_scale(model, specs[0])
        result = run_sweep(model, specs, config, timer)
        described = {"num_classes": model.num_classes, "input_scale": model.input_scale}
    else:
        result, net = run_generic_sweep(model, specs, config, timer, log)
        described = {"num_classes": net.num_classes, "input_scale": getattr(model, "input_scale", None),
                     "layer": net.layer, "rank_on": net.rank_on, "class": type(model).__name__}
    context = {
        "model": {"path": source.path, "sha256": source.sha256, "format": source.format, **described,
                  **preprocessing_record(model)},
        "inputs": None,  # see DefenseResult.input_hashes
        "rule": {"stop": stop, "drop": drop},
        "versions": versions(),
        **({"trigger": trigger.record()} if trigger is not None else {}),
    }
    defense = DefenseResult(result, model, context, seconds=time.perf_counter() - started, device=config.device.type)
    trains_on = str(next(s for s in specs if s.is_clean_valid).path) if finetune_config is not None else None
    defense.warnings = early + warn(data_warnings(result.facts, trains_on), log)
    if finetune_config is not None:
        started = time.perf_counter()
        with timer.phase("finetune") if timer else contextlib.nullcontext():
            defense.finetuned = finetune_thresholds(defense, specs, finetune_config, config.device, log)
        defense.finetune_seconds = time.perf_counter() - started
    return defense


def check_steps(thresholds: Sequence[float], max_steps: int | None) -> list[float]:
    """The sorted, distinct thresholds, each in (0, 100), and a max_steps of at least 1 (else BadInputError)."""
    if isinstance(thresholds, (str, bytes)) or not hasattr(thresholds, "__iter__"):
        raise BadInputError("thresholds", f"{thresholds!r} is not a sequence of X values: give e.g. thresholds=(4,) or (2, 4, 10)")
    try:
        xs = sorted({float(x) for x in thresholds})
    except (TypeError, ValueError):
        raise BadInputError("thresholds", f"{list(thresholds)!r} holds a value that is not a number") from None
    bad = [x for x in xs if not 0 < x < 100]
    if bad:
        raise BadInputError("--thresholds", f"{bad[0]:g} is outside (0, 100)")
    if max_steps is not None and max_steps < 1:
        raise BadInputError("--max-steps", "must be at least 1")
    return xs


def is_lab(model: nn.Module, config: SweepConfig) -> bool:
    """The lab's own engine (incremental head) serves a BadNet pruned at conv_3 and ranked on pool_3."""
    return isinstance(model, BadNet) and config.layer in (None, *PRUNABLE_LAYERS) and config.rank_on in (None, "pool_3")


def warn(lines: list[str], log: Log | None) -> list[str]:
    """Give each warning line to `log` (stderr in the CLI); returns the lines."""
    for line in lines:
        if log:
            log(line)
    return lines


def input_sha256(spec: DataSpec) -> str:
    if spec.stamp is not None:
        trigger, source = spec.stamp
        return trigger.set_sha256(input_sha256(source))
    if spec.arrays is None:
        return data_sha256(spec.path)
    return arrays_sha256(*spec.arrays)


def input_record(spec: DataSpec) -> dict[str, Any]:
    """summary.json's entry of one set: path and sha256 (a set made with a trigger: also what it was made from)."""
    record = {"path": str(spec.path), "sha256": input_sha256(spec)}
    if spec.stamp is not None:
        record["made_from"] = spec.stamp[1].name
    return record


def model_classes(model: nn.Module, clean_valid: DataSpec) -> int:
    """The model's classes: a BadNet's, else its output width on the first clean validation image."""
    if isinstance(model, BadNet):
        return model.num_classes
    shape = getattr(model, "input_shape", None)
    with open_sets([clean_valid], None, tuple(shape) if shape is not None else None, guard=False) as sets:
        x, _ = next(sets[clean_valid.name].chunks(1))
    where = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return int(model(x.to(where)).shape[1])
    finally:
        model.train(was_training)


def bind_classes(specs: list[DataSpec], trigger: Trigger, num_classes: int) -> list[DataSpec]:
    """The specs with `trigger` knowing the model's classes (checked against its target; all+1 needs them where a
    generic model's sets are opened before its classes are known)."""
    trigger.check_classes(num_classes)
    bound = dataclasses.replace(trigger, classes=num_classes)
    return [dataclasses.replace(s, stamp=(bound, s.stamp[1])) if s.stamp is not None else s for s in specs]


def finetune_thresholds(defense: DefenseResult, specs: list[DataSpec], config: FinetuneConfig, device: torch.device,
                        log: Log | None) -> dict[float, TunedNet]:
    """Fine-tune every reached B'_X; evaluate on the test sets (else on the poisoned validation sets)."""
    model = defense.model
    clean_valid = next(s for s in specs if s.is_clean_valid)
    with open_sets([clean_valid], classes_of(defense), **set_checks(defense)) as sets:
        pixels, labels = read_all(sets[clean_valid.name])
    if defense.sweep.thresholds and any(t.reached for t in defense.sweep.thresholds):
        n = int(pixels.shape[0])
        defense.warnings += warn(finetune_warnings(config.epochs, holdout_size(n, config.holdout), n), log)
    eval_specs = [s for s in specs if s.split == "test"] or [s for s in specs if s.split == "valid" and s.kind == "poisoned"]
    tuned = {}
    for t, pruned in defense.sweep.pruned_models(model):
        if log:
            log(f"fine-tuning B'_{t.x:g} ({len(t.pruned_channels)} channels pruned)")
        tuned[t.x] = finetune_and_evaluate(model, pruned, pixels, labels, eval_specs, config, device, log)
    return tuned


def classes_of(defense: DefenseResult) -> int:
    return defense.sweep.net.num_classes if defense.sweep.net is not None else defense.model.num_classes


def set_checks(defense: DefenseResult) -> dict[str, Any]:
    """How a generic model's sets are opened: any shape, no 0..255 guard (as the sweep opened them)."""
    if defense.sweep.net is None:
        return {}
    shape = getattr(defense.model, "input_shape", None)
    return {"input_shape": tuple(shape) if shape is not None else None, "guard": getattr(defense.model, "keras_config", None) is not None}


def finetune_and_evaluate(model: BadNet, pruned: BadNet, pixels: torch.Tensor, labels: torch.Tensor,
                          eval_specs: list[DataSpec], config: FinetuneConfig, device: torch.device,
                          log: Log | None = None) -> TunedNet:
    """Fine-tune B' on (pixels, labels); B'_ft and G_ft metrics on `eval_specs`."""
    result: TrainingResult = train_masked(pruned, pixels, labels, config, log)
    mark_derived(result.model, model)  # finetuned.pt records B's weights fingerprint
    metrics = evaluate_pruned(model, result.model, eval_specs, device, allow_unpaired=True) if eval_specs else {}
    facts = {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history) - 1,
        "holdout": {"share": config.holdout, "images": result.holdout_images, "train_images": result.train_images},
        "holdout_acc_before": result.history[0]["holdout_acc"],
        "holdout_acc": result.history[result.best_epoch]["holdout_acc"],
    }
    return TunedNet(result.model, result.history, facts, metrics, config)


@dataclass
class FinetuneRun:
    """A finished `finetune`: B'_ft with its history, and B'/G metrics before and after on the test sets.

    >>> run.save("ft4/"); print(run.table()); b4_ft = run.model
    """

    tuned: TunedNet
    before: dict[Column, float]
    context: dict[str, Any]
    warnings: list[str] = field(default_factory=list)  # sanity warnings (`sanity`), also given to `log`

    @property
    def model(self) -> BadNet:
        return self.tuned.model

    def summary(self) -> dict[str, Any]:
        """summary.json's content."""
        return {**self.context, "config": vars(self.tuned.config), **self.tuned.summary(),
                "before_finetuning": named(self.before), "versions": versions()}

    def table(self) -> str:
        """B' and G before and after fine-tuning, for every metric both have."""
        after = self.tuned.metrics
        names = [c for c in self.before if c in after]
        if not names:  # no test set: the held-out validation accuracy, the one number measured before and after
            facts = self.tuned.facts
            images = facts["holdout"]["images"]
            held = f"holdout_acc ({images} image{'s' if images != 1 else ''})"
            return "\n".join([f"{'metric (held-out validation, percent)':<36} {PRUNED_HEADER:>10} {'fine-tuned':>11}",
                              f"{held:<36} {facts['holdout_acc_before']:>10.3f} {facts['holdout_acc']:>11.3f}"])
        lines = [f"{'metric (test, percent)':<36} {PRUNED_HEADER + ' / G_X':>10} {'fine-tuned':>11}"]
        lines += [f"{c.name:<36} {self.before[c]:>10.3f} {after[c]:>11.3f}" for c in names]
        return "\n".join(lines)

    def save(self, out: str | os.PathLike[str] | OutputFolder, keras: bool = True, force: bool = False) -> list[str]:
        """finetuned.pt, finetuned.h5 (`keras`), history.csv and summary.json, through a staging folder that then
        replaces `out` whole (a non-empty `out` holding no torch-badnet result needs `force`; one holding an input
        of the run is refused)."""
        inputs = [str(f) for entry in self.context.values() if not entry["path"].startswith("<")
                  for f in data_files(entry["path"])]
        target = out if isinstance(out, OutputFolder) else OutputFolder(out, force, inputs)
        with own_lock(target, out), target.staging() as staging:
            generic = isinstance(self.model, MaskedNet)
            net, layer = (self.model.net, self.model.layer) if generic else (self.model, None)
            writer = pruned_writer(net, generic, layer) if keras else None
            self.tuned.write(staging, writer)
            write_text(staging / "summary.json", json.dumps(self.summary(), indent=2) + "\n")
            return written_files(staging)


def finetune_specs(clean_valid: DataSource, clean_test: DataSource | None, poisoned_test: PoisonedSources | None,
                   classes: Sequence[str] | None = None) -> tuple[DataSpec, list[DataSpec]]:
    """Fine-tuning's sets: the clean validation set it trains on, and the test sets it is evaluated on."""
    specs = ([data_spec("test", "clean", clean_test, classes=classes)] if clean_test is not None else [])
    specs += poisoned_specs("test", poisoned_test, "--poisoned-test", classes)
    return data_spec("valid", "clean", clean_valid, classes=classes), specs


def tune_and_evaluate(model: nn.Module, pruned: nn.Module, train: DataSpec, specs: list[DataSpec], pixels: torch.Tensor,
                      labels: torch.Tensor, b_on_train: tuple[int | None, int | None], config: FinetuneConfig,
                      device: torch.device, pruned_what: str, log: Log | None) -> tuple[TunedNet, dict, list[str]]:
    """What both finetune paths share once the training set is read: B' and G on the test sets (before), the data
    warnings (`b_on_train`: B's hits and images on the training set), then B'_ft and G_ft: (tuned, before, warnings)."""
    before, facts = evaluate_with_facts(model, pruned, specs, device, allow_unpaired=True) if specs else ({}, [])
    n = int(pixels.shape[0])
    facts.insert(0, SetFacts.of(train.path, "clean", "valid", labels.numpy(), *b_on_train))
    warnings = warn(data_warnings(facts, str(train.path)) + finetune_warnings(config.epochs, holdout_size(n, config.holdout), n),
                    log)
    if log:
        log(f"fine-tuning B' ({pruned_what}) on {n} clean validation images")
    return finetune_and_evaluate(model, pruned, pixels, labels, specs, config, device, log), before, warnings


def finetune(model: BadNet | nn.Module, pruned: BadNet | MaskedNet, clean_valid: DataSource, clean_test: DataSource | None = None,
             poisoned_test: PoisonedSources | None = None, *, epochs: int | None = None, lr: float | None = None,
             batch_size: int | None = None, seed: int | None = None, holdout: float | None = None,
             patience: int | None = None, optimizer: str | None = None, weight_decay: float | None = None,
             tolerance: float | None = None, train_conv_1: bool | None = None, device: str | torch.device = "auto",
             allow_unpaired: bool = False, log: Log | None = None, classes: Sequence[str] | None = None) -> FinetuneRun:
    """Fine-Pruning's second half: fine-tune B' (`pruned`) on the clean validation data with its pruned conv_3
    channels held at zero; evaluate B'_ft and the GoodNet of B and B'_ft on the test sets (if given).

    Any model the sweep takes: for a generic B (a Keras-origin net, your own module, a BadNet pruned at another
    layer) `pruned` is its `MaskedNet` (`result.pruned(x)`, or `engine.saving.load_masked(path, module)`), whose
    pruned channels stay at their fill; its first Conv2d stays fixed unless `train_conv_1` (docs/models.md).

    Keywords mirror `torch-badnet finetune`'s flags (None = the default). Test data is for evaluation only. Data:
    any source `prune_sweep` takes (`classes`: an image folder's label order).
    A B' made from another model than B raises `pairing.PairingError`, unless `allow_unpaired`.

    >>> run = finetune(bd, result.pruned(4), "cl/valid.h5", "cl/test.h5", "bd/bd_test.h5")
    >>> run.save("ft4/"); b4_ft = run.model
    """
    settings = dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, holdout=holdout, patience=patience,
                    optimizer=optimizer, weight_decay=weight_decay, tolerance=tolerance, train_conv_1=train_conv_1)
    if not isinstance(model, BadNet) or isinstance(pruned, MaskedNet):
        return finetune_generic(model, pruned, clean_valid, clean_test, poisoned_test, settings, device, allow_unpaired, log,
                                classes)
    if not allow_unpaired:
        check_pair(model, pruned)  # raises PairingError for a B' of another model
    config = checked_config(**settings)
    torch_device = resolve_device(device)
    train, specs = finetune_specs(clean_valid, clean_test, poisoned_test, classes)
    with open_sets([train, *specs], model.num_classes) as sets:  # every file validated before training
        pixels, labels = read_all(sets[train.name])
    b_hits, b_images = check_scale(model, pixels, labels, str(train.path)) or (None, None)
    channels = pruned_channels(effective_mask(pruned))
    tuned, before, warnings = tune_and_evaluate(model, pruned, train, specs, pixels, labels, (b_hits, b_images), config,
                                                torch_device, f"{len(channels)} channels pruned", log)
    src, psrc = source_of(model), source_of(pruned)
    context = {
        "model": {"path": src.path, "sha256": src.sha256, "input_scale": model.input_scale, **preprocessing_record(model)},
        "pruned": {"path": psrc.path, "sha256": psrc.sha256, "pruned_channels": channels},
        "clean_valid": {"path": str(train.path), "images": int(pixels.shape[0])},
    }
    return FinetuneRun(tuned, before, context, warnings)


def finetune_generic(model: nn.Module, pruned: MaskedNet, clean_valid: DataSource, clean_test: DataSource | None,
                     poisoned_test: PoisonedSources | None, settings: dict[str, Any], device: str | torch.device,
                     allow_unpaired: bool, log: Log | None, classes: Sequence[str] | None = None) -> FinetuneRun:
    """`finetune` for a generic B and its MaskedNet B': the sets read as the sweep reads them (the model's input
    shape; the 0..255 guard for a Keras-origin net only), the same training, evaluation and report."""
    from ..engine.pairing import check_generic_pair

    if not isinstance(model, nn.Module):
        raise TypeError(f"finetune needs a torch nn.Module as B, got {type(model).__name__} (tb.load_model returns one)")
    if not isinstance(pruned, MaskedNet):
        raise TypeError(f"B' of a generic model is a MaskedNet (result.pruned(x), engine.saving.load_masked), got {type(pruned).__name__}")
    if not allow_unpaired:
        check_generic_pair(model, pruned)  # raises PairingError for a B' of another model
    config = checked_config(**settings)
    torch_device = resolve_device(device)
    train, specs = finetune_specs(clean_valid, clean_test, poisoned_test, classes)
    shape = getattr(model, "input_shape", None)
    checks = {"input_shape": tuple(shape) if shape is not None else None, "guard": getattr(model, "keras_config", None) is not None}
    model.eval()
    where = next(model.parameters()).device
    with open_sets([train, *specs], None, **checks) as sets:  # every file validated before training
        pixels, labels = read_all(sets[train.name])
        with torch.inference_mode():
            classes = int(model(pixels[:1].to(where)).shape[1])
        for spec in [train, *specs]:
            check_labels(sets[spec.name].labels, classes, sets[spec.name].path)
    b_hits, n = int((labels_in_batches(model, pixels.to(where)).cpu() == labels).sum()), int(pixels.shape[0])
    channels = pruned.pruned_channels
    tuned, before, warnings = tune_and_evaluate(model, pruned, train, specs, pixels, labels, (b_hits, n), config,
                                                torch_device, f"{len(channels)} channels of {pruned.layer} pruned", log)
    src, psrc = source_of(model), source_of(pruned)
    context = {
        "model": {"path": src.path, "sha256": src.sha256, "input_scale": getattr(model, "input_scale", None),
                  **preprocessing_record(model), "num_classes": classes, "class": type(model).__name__},
        "pruned": {"path": psrc.path, "sha256": psrc.sha256, "layer": pruned.layer, "pruned_channels": channels},
        "clean_valid": {"path": str(train.path), "images": n},
    }
    return FinetuneRun(tuned, before, context, warnings)


__all__ = ["DefenseResult", "FinetuneRun", "TunedNet", "ReadFile", "checked_config", "finetune",
           "prune_sweep", "sweep_specs"]

