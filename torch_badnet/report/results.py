"""Writing a sweep's results: sweep.csv, summary.json, the printed table and the B'_X checkpoints."""

from __future__ import annotations

import csv
import io
import json
import platform
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..defense.metric_columns import SPLITS, Column
from ..defense.metrics import accuracy_drop
from ..defense.sweep import VALID_CLEAN, SweepResult, Threshold
from ..nets.badnet import BadNet
from ..nets.checkpoint import save_checkpoint, source_of
from .phases import NoTimer, PhaseTimer

KerasWriter = Callable[[BadNet, Path], None]


def format_x(x: float) -> str:
    """2.0 -> '2', 2.5 -> '2.5' (used in folder names `X=<x>` and tables)."""
    return f"{x:g}"


def model_dir(threshold: Threshold) -> str:
    return f"models/X={format_x(threshold.x)}"


def csv_table(names: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text with floats at full (round-trip) precision and None as an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    writer.writerows([_cell(v) for v in row] for row in rows)
    return buffer.getvalue()


def csv_text(result: SweepResult) -> str:
    """sweep.csv: one row per step (step, channel, fraction_pruned, every metric); step 0's channel is empty."""
    names = ["step", "channel", "fraction_pruned"] + [c.name for c in result.metrics]
    curves = [list(range(result.steps + 1)), result.channels, result.fraction_pruned, *result.metrics.values()]
    return csv_table(names, (list(row) for row in zip(*curves)))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def named(metrics: dict[Column, float]) -> dict[str, float]:
    """Metrics keyed by their sweep.csv / summary.json names."""
    return {c.name: v for c, v in metrics.items()}


def threshold_entry(result: SweepResult, t: Threshold) -> dict[str, Any]:
    """One summary.json row: where B'_X stops and every metric of B'_X and G_X there."""
    entry: dict[str, Any] = {"x": t.x, "stop": t.stop, "drop": t.drop, "reached": t.reached}
    if not t.reached:
        entry["note"] = f"clean validation accuracy never dropped by {format_x(t.x)} within {result.steps} steps"
        return entry
    entry.update({
        "step": t.step,
        "channels_pruned": len(t.pruned_channels),
        "fraction_pruned": t.fraction_pruned,
        "pruned_channels": t.pruned_channels,
        "valid_clean_drop": accuracy_drop(result.metrics[VALID_CLEAN][0], t.metrics[VALID_CLEAN], t.drop),
    })
    entry.update(named(t.metrics))
    entry["model"] = f"{model_dir(t)}/pruned.pt"
    return entry


def summary(result: SweepResult, context: dict[str, Any], finetuned: dict[float, dict[str, Any]] | None = None) -> dict[str, Any]:
    """summary.json content: inputs (paths, sha256), versions, ranking, original metrics and thresholds.

    With fine-tuning, each threshold row gets a `finetuned` object: B'_ft and G_ft metrics (same names).
    """
    rows = [threshold_entry(result, t) for t in result.thresholds]
    for row in rows:
        if finetuned and row["x"] in finetuned:
            row["finetuned"] = finetuned[row["x"]]
    return {
        **context,
        "steps": result.steps,
        "images": result.sizes,
        "ranking": {"order": result.order, "scores": [float(s) for s in result.scores]},
        "original": named(result.original()),
        "thresholds": rows,
    }


def versions() -> dict[str, str]:
    import h5py
    import numpy

    from .. import __version__

    return {"torch_badnet": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "h5py": h5py.__version__, "python": platform.python_version()}


def table(result: SweepResult, title: str = "", finetuned: dict[float, dict[Column, float]] | None = None) -> str:
    """The reference report's table (X, clean accuracy, attack success rate) for B' and G, per split.

    With fine-tuning, a row `<X> ft` after each X gives B'_ft and G_ft (their metrics by column) in the same columns.
    """
    lines = [title] if title else []
    if result.net is not None:  # a generic model: which layer, ranked where
        lines.append(layer_line(result.net))
    for split in SPLITS:
        if not result.has_split(split):
            continue
        cols = _table_columns(result, split)
        lines.append("")
        lines.append(f"{'validation' if split == 'valid' else 'test'} data (percent)")
        lines.append(_row(["X", "step", "pruned"] + [label for label, _ in cols]))
        lines.append(_row(["orig", "0", f"0/{len(result.order)}"] + [_pct(result.metrics[c][0]) for _, c in cols]))
        for t in result.thresholds:
            if not t.reached:
                lines.append(_row([format_x(t.x), "-", "-"] + ["not reached"] + [""] * (len(cols) - 1)))
                continue
            cells = [_pct(t.metrics.get(c)) for _, c in cols]
            lines.append(_row([format_x(t.x), str(t.step), f"{len(t.pruned_channels)}/{len(result.order)}"] + cells))
            tuned = (finetuned or {}).get(t.x)
            if tuned and any(c in tuned for _, c in cols):
                lines.append(_row([f"{format_x(t.x)} ft", "", ""] + [_pct(tuned.get(c)) for _, c in cols]))
    return "\n".join(lines)


def layer_line(net: Any) -> str:
    """'pruned layer4 (512 channels), ranked on avgpool': a generic sweep's pruned layer and ranking point."""
    ranked = "its own output" if net.rank_on == net.layer else net.rank_on
    return f"pruned {net.layer} ({net.channels} channels), ranked on {ranked}"


def _table_columns(result: SweepResult, split: str) -> list[tuple[str, Column]]:
    """(header, column) pairs for one split: B' clean, B' attack, G clean, G attack, G flags, G false alarms."""
    def header(label: str, c: Column) -> str:
        return f"{label}[{c.trigger}]" if c.trigger else label

    labels = {("pruned", "clean_acc"): "B' clean", ("pruned", "asr"): "B' attack", ("goodnet", "clean_acc"): "G clean",
              ("goodnet", "asr"): "G attack", ("goodnet", "detection_rate"): "G detects",
              ("goodnet", "false_alarm_rate"): "G false alarm"}
    ours = [c for c in result.metrics if c.split == split]
    return [(header(label, c), c) for (net, metric), label in labels.items() for c in ours
            if (c.net, c.metric) == (net, metric)]


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _row(cells: Sequence[str]) -> str:
    first, rest = cells[:3], cells[3:]
    return f"{first[0]:>5} {first[1]:>5} {first[2]:>7}" + "".join(f"  {c:>{max(len(c), 13)}}" for c in rest)


def write_models(result: SweepResult, model: BadNet, staging: Path, metadata: dict[str, Any],
                 write_keras: KerasWriter | None = None) -> None:
    """models/X=<x>/pruned.pt (weights + mask) and, given a writer, pruned.h5 (Keras weights, channels zeroed)."""
    for t, pruned in result.pruned_models(model):
        folder = staging / model_dir(t)
        facts = dict(x=t.x, step=t.step, stop=t.stop, drop=t.drop, pruned_channels=t.pruned_channels, **metadata)
        if isinstance(pruned, BadNet):
            save_checkpoint(pruned, folder / "pruned.pt", **facts)
        else:  # a generic model's B' (engine.prunable.MaskedNet)
            from ..engine.saving import save_masked

            save_masked(pruned, folder / "pruned.pt", **facts, rank_on=result.net.rank_on)
        if write_keras is not None:
            write_keras(pruned, folder / "pruned.h5")


def write_report(result: SweepResult, model: BadNet, staging: Path, summary_of: Callable[[], dict[str, Any]],
                 write_keras: KerasWriter | None = None, plot: bool = True,
                 finetuned: dict[float, dict[Column, float]] | None = None, timer: PhaseTimer | None = None) -> None:
    """Write a sweep's outputs into `staging` (see outdir.OutputFolder): the B'_X models (from their masks) and
    sweep.png first, then sweep.csv and summary.json, whose content `summary_of()` gives only then (so the
    inputs' sha256 can be computed meanwhile, in a thread). `timer` gets the phases models, plot and summary."""
    from ..data.files import write_text

    timer = timer or NoTimer()
    with timer.phase("models"):
        write_models(result, model, staging, {"source_sha256": source_of(model).sha256}, write_keras)
    if plot:
        with timer.phase("plot"):
            from .plot import plot_sweep  # matplotlib is imported only here

            plot_sweep(result, staging / "sweep.png", finetuned=finetuned)
    with timer.phase("summary"):
        write_text(staging / "sweep.csv", csv_text(result))
        write_text(staging / "summary.json", json.dumps(summary_of(), indent=2) + "\n")
