"""One defense run on any nn.Module: sets -> record pass (cut cached, ranking point recorded) -> ranking ->
generic sweep -> the same SweepResult (curves, counts, thresholds) the lab engine gives."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from ..data.lab_sets import DEFAULT_CHUNK, check_labels, read_all
from ..defense.metrics import step_counts
from ..defense.sweep import DataSpec, SweepConfig, SweepResult, _assemble, check_specs, open_sets, threshold
from ..errors import BadInputError
from ..nets.precision import exact_float32
from ..report.phases import NoTimer, PhaseTimer
from .generic import RECORD_BATCH, FullForwardSweep, GenericSweep, Untraceable, batches, ranking_hook
from .model_input import for_model
from .prunable import PrunableNet, check_hookable, prepare
from .pruning import channel_scores, pruning_order

SAMPLE_ROWS = 64  # rows of the clean validation set that check the model and probe the channel-wise region
CHECK_ROWS = 16  # of them, the rows run twice, and in two halves, by check_forward


def _features(blocks: list[torch.Tensor]) -> torch.Tensor:
    """Ranking-point outputs as (N, C, H, W) (a global pooling's (N, C) is (N, C, 1, 1))."""
    x = torch.cat(blocks)
    while x.dim() < 4:
        x = x.unsqueeze(-1)
    return x


@exact_float32()
def run_generic_sweep(module: nn.Module, specs: Sequence[DataSpec], config: SweepConfig, timer: PhaseTimer | None = None,
                      log: Callable[[str], None] | None = None) -> tuple[SweepResult, PrunableNet]:
    """Rank the channels of `config.layer` on the clean validation set, sweep every step on every set, pick B'_X.

    The data reaches the module exactly as given (no 0..255 guard: a user's module preprocesses its own input; a
    Keras-origin net, whose preprocessing is inside it, keeps the lab files' guard).
    """
    timer = timer or NoTimer()
    check_specs(specs)
    check_hookable(module)  # before any copy: a TorchScript module warns on .to()
    device = config.device
    model = copy.deepcopy(module).eval().to(device)  # the caller's module keeps its device and hooks
    shape = getattr(module, "input_shape", None)
    shape = tuple(shape) if shape is not None else None
    clean_spec = next(s for s in specs if s.is_clean_valid)
    guard = getattr(module, "keras_config", None) is not None  # a Keras-origin net takes 0..255 files, as the lab's
    with timer.phase("read+trunk"), open_sets(specs, None, input_shape=shape, guard=guard) as opened:
        datasets = for_model(module, opened, log)  # the model's dtype, channels first; notes on what was converted
        sample = next(datasets[clean_spec.name].chunks(SAMPLE_ROWS))[0].to(device)
        net = prepare(model, sample[:4], config.layer, config.rank_on)
        if log and net.rank_note:
            log(net.rank_note)
        for spec in specs:
            check_labels(datasets[spec.name].labels, net.num_classes, datasets[spec.name].path)
        check_forward(net, sample)
        steps = net.channels if config.max_steps is None else min(config.max_steps, net.channels)
        try:
            engine: GenericSweep | FullForwardSweep = GenericSweep(net, sample, log)
            ranked, caches, pixels = _record(engine, net, specs, datasets, steps, config)
        except Untraceable as exc:
            if log:
                log(f"note: {exc}; running a full forward per step (slow)")
            engine = FullForwardSweep(net)
            ranked, caches, pixels = _record(engine, net, specs, datasets, steps, config)
    with timer.phase("rank"):
        scores = channel_scores(_features(ranked))
        order = pruning_order(scores)
    with timer.phase("prune"), tqdm(total=steps, desc="prune", unit="ch", disable=not config.show_progress, leave=False) as bar:
        if isinstance(engine, GenericSweep):
            for step, channel in enumerate(order[:steps], start=1):
                for cache in caches:
                    engine.step(cache, channel, step)
                bar.update()
            labels = {c.name: c.labels for c in caches}
            truth = {c.name: c.truth for c in caches}
        else:
            labels, truth = {}, {}
            for name, (x, y) in pixels.items():
                labels[name] = torch.stack([engine.labels(x, order[:k], device) for k in range(steps + 1)])
                truth[name] = y
    with timer.phase("metrics"):
        counts = {spec.name: step_counts(labels[spec.name], truth[spec.name]) for spec in specs}
        result = _assemble(list(specs), scores, order, steps, counts)
        result.thresholds = [threshold(result, x, config.stop, config.drop) for x in config.thresholds]
        result.net = net
    return result, net


def _record(engine: GenericSweep | FullForwardSweep, net: PrunableNet, specs: Sequence[DataSpec], datasets: dict,
            steps: int, config: SweepConfig) -> tuple[list[torch.Tensor], list, dict]:
    """(ranking point outputs on the clean validation set, the generic engine's set caches, or every set's pixels
    for full forwards). Untraceable where the record pass finds a tensor changed in place between two reads."""
    ranked: list[torch.Tensor] = []
    caches, pixels = [], {}
    for spec in specs:
        ds = datasets[spec.name]
        in_record = isinstance(engine, GenericSweep) and engine.ranks_in_record
        if isinstance(engine, GenericSweep):
            caches.append(engine.record(spec.name, ds.chunks(config.chunk_size), len(ds), steps, config.device,
                                        ranked.append if spec.is_clean_valid and in_record else None))
        else:
            pixels[spec.name] = read_all(ds)
        if spec.is_clean_valid and not in_record:
            _forward_with_hook(net, ds, config.device, ranked.append, config.chunk_size)
    return ranked, caches, pixels


@torch.inference_mode()
def _forward_with_hook(net: PrunableNet, dataset, device: torch.device, hook: Callable[[torch.Tensor], None],
                       chunk_size: int = DEFAULT_CHUNK) -> None:
    """A plain forward over a set with `hook` on the ranking point's call (where the record pass cannot see it)."""
    with ranking_hook(net, hook):
        for x, _y in batches(dataset.chunks(chunk_size), RECORD_BATCH if device.type == "cpu" else None):
            net.module(x.to(device))


@torch.inference_mode()
def check_forward(net: PrunableNet, sample: torch.Tensor) -> None:
    """One-line BadInputErrors for a model whose labels no sweep can reproduce: BatchNorm with batch statistics,
    a forward that gives other outputs for the same images (random ops), outputs that depend on the other
    images of the batch (the sample's rows at once and in two halves)."""
    name = type(net.module).__name__
    sample = sample[:CHECK_ROWS]
    for layer, m in net.module.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (not m.track_running_stats or m.running_mean is None):
            raise BadInputError("--model", f"{name}: BatchNorm {layer!r} normalises with batch statistics "
                                           "(track_running_stats=False): an image's output depends on the other "
                                           "images of its batch, so pruning it has no fixed result")
    once, again = net.module(sample), net.module(sample)
    if not _same(once, again):
        raise BadInputError("--model", f"{name}: the forward is not deterministic: two passes over the same "
                                       f"{sample.shape[0]} images differ (a random op, e.g. F.dropout(x, p), whose "
                                       "training= defaults to True); the sweep needs the same output for the same input")
    half = sample.shape[0] // 2
    if half >= 2:
        parts = torch.cat([net.module(sample[:half]), net.module(sample[half:])])
        if parts.shape != once.shape or not _close(parts, once):
            raise BadInputError("--model", f"{name}: an image's output depends on the other images of its batch "
                                           f"({sample.shape[0]} images at once and in two halves differ), so pruning "
                                           "it has no fixed result")


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal within 1e-3 of the largest finite magnitude (batch sizes may change a kernel's summation order);
    NaN matches NaN and an infinity itself, so a model's NaN or inf output is not taken for batch dependence."""
    finite = b[b.isfinite()]
    bound = 1e-3 * (1.0 + (float(finite.abs().max()) if finite.numel() else 0.0))
    return bool(((a - b).abs() <= bound).logical_or_(a == b).logical_or_(a.isnan() & b.isnan()).all())
