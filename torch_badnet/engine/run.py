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
from ..nets.precision import exact_float32
from ..report.phases import NoTimer, PhaseTimer
from .generic import FullForwardSweep, GenericSweep, Untraceable
from .model_input import for_model
from .prunable import PrunableNet, prepare
from .pruning import channel_scores, pruning_order

SAMPLE_ROWS = 64  # rows of the clean validation set that check the model and probe the channel-wise region


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
        for spec in specs:
            check_labels(datasets[spec.name].labels, net.num_classes, datasets[spec.name].path)
        steps = net.channels if config.max_steps is None else min(config.max_steps, net.channels)
        try:
            engine: GenericSweep | FullForwardSweep = GenericSweep(net, sample, log)
        except Untraceable as exc:
            if log:
                log(f"note: {exc}; running a full forward per step (slow)")
            engine = FullForwardSweep(net)
        ranked: list[torch.Tensor] = []
        keep = lambda out: ranked.append(out.detach().clone())  # noqa: E731 - the ranking point's hook
        caches, pixels = [], {}
        for spec in specs:
            ds = datasets[spec.name]
            rank_here = spec.is_clean_valid and not (isinstance(engine, GenericSweep) and engine.split.runs(net.rank_on))
            if isinstance(engine, GenericSweep):
                caches.append(engine.record(spec.name, ds.chunks(config.chunk_size), len(ds), steps, device,
                                            None if rank_here or not spec.is_clean_valid else keep))
            else:
                pixels[spec.name] = read_all(ds)
            if rank_here:
                _forward_with_hook(net, ds, device, keep, config.chunk_size)
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


@torch.inference_mode()
def _forward_with_hook(net: PrunableNet, dataset, device: torch.device, hook: Callable[[torch.Tensor], None],
                       chunk_size: int = DEFAULT_CHUNK) -> None:
    """A plain forward over a set with `hook` on the ranking point (where the record pass cannot see it)."""
    handle = net.module.get_submodule(net.rank_on).register_forward_hook(lambda _m, _i, out: hook(out))
    try:
        for x, _y in dataset.chunks(chunk_size):
            net.module(x.to(device))
    finally:
        handle.remove()
