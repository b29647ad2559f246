"""Writing a sweep's results: sweep.csv, summary.json, the printed table and the B'_X checkpoints."""

from __future__ import annotations

import csv
import io
import json
import platform
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from .checkpoint import save_checkpoint
from .defense import SPLITS, SweepResult, Threshold
from .metrics import accuracy_drop
from .model import BadNet

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
    """sweep.csv: one row per step; step 0's channel is empty."""
    names = list(result.columns)
    return csv_table(names, ([result.columns[name][k] for name in names] for k in range(result.steps + 1)))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def original_metrics(result: SweepResult) -> dict[str, float]:
    """B's own metrics (step 0): clean accuracy and ASR per split (and per trigger)."""
    return {name: values[0] for name, values in result.columns.items()
            if name not in ("step", "channel", "fraction_pruned") and not name.startswith("goodnet_")}


def threshold_entry(result: SweepResult, t: Threshold) -> dict[str, Any]:
    """One summary.json row: where B'_X stops and every metric of B'_X and G_X there."""
    entry: dict[str, Any] = {"x": t.x, "stop": t.stop, "drop": t.drop, "reached": t.reached}
    if not t.reached:
        entry["note"] = f"clean validation accuracy never dropped by {format_x(t.x)} within {result.steps} steps"
        return entry
    original = result.columns["valid_clean_acc"][0]
    entry.update({
        "step": t.step,
        "channels_pruned": len(t.pruned_channels),
        "fraction_pruned": t.metrics["fraction_pruned"],
        "pruned_channels": t.pruned_channels,
        "valid_clean_drop": accuracy_drop(original, t.metrics["valid_clean_acc"], t.drop),
    })
    entry.update({k: v for k, v in t.metrics.items() if k != "fraction_pruned"})
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
        "original": original_metrics(result),
        "thresholds": rows,
    }


def versions() -> dict[str, str]:
    import h5py
    import numpy

    from . import __version__

    return {"torch_badnet": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "h5py": h5py.__version__, "python": platform.python_version()}


def table(result: SweepResult, title: str = "", finetuned: dict[float, dict[str, Any]] | None = None) -> str:
    """The reference report's table (X, clean accuracy, attack success rate) for B' and G, per split.

    With fine-tuning, a row `<X> ft` after each X gives B'_ft and G_ft in the same columns.
    """
    lines = [title] if title else []
    for split in SPLITS:
        if f"{split}_clean_acc" not in result.columns:
            continue
        cols = _table_columns(result, split)
        lines.append("")
        lines.append(f"{'validation' if split == 'valid' else 'test'} data (percent)")
        lines.append(_row(["X", "step", "pruned"] + [label for label, _ in cols]))
        lines.append(_row(["orig", "0", f"0/{len(result.order)}"] + [_pct(result.columns[name][0]) for _, name in cols]))
        for t in result.thresholds:
            if not t.reached:
                lines.append(_row([format_x(t.x), "-", "-"] + ["not reached"] + [""] * (len(cols) - 1)))
                continue
            cells = [_pct(t.metrics.get(name)) for _, name in cols]
            lines.append(_row([format_x(t.x), str(t.step), f"{len(t.pruned_channels)}/{len(result.order)}"] + cells))
            tuned = (finetuned or {}).get(t.x)
            if tuned and any(name in tuned for _, name in cols):
                lines.append(_row([f"{format_x(t.x)} ft", "", ""] + [_pct(tuned.get(name)) for _, name in cols]))
    return "\n".join(lines)


def _table_columns(result: SweepResult, split: str) -> list[tuple[str, str]]:
    """(header, column name) pairs for one split: B' clean, B' attack, G clean, G attack, G flags."""
    attack = [n for n in result.columns if n.startswith(f"{split}_asr")]
    tags = [n[len(f"{split}_asr"):] for n in attack]

    def named(label: str, tag: str) -> str:
        return f"{label}{'[' + tag[1:] + ']' if tag else ''}"

    cols = [("B' clean", f"{split}_clean_acc")]
    cols += [(named("B' attack", tag), f"{split}_asr{tag}") for tag in tags]
    cols += [("G clean", f"goodnet_{split}_clean_acc")]
    cols += [(named("G attack", tag), f"goodnet_{split}_asr{tag}") for tag in tags]
    cols += [(named("G detects", tag), f"goodnet_{split}_detection_rate{tag}") for tag in tags]
    cols += [("G false alarm", f"goodnet_{split}_false_alarm_rate")]
    return cols


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
        save_checkpoint(pruned, folder / "pruned.pt", x=t.x, step=t.step, stop=t.stop, drop=t.drop,
                        pruned_channels=t.pruned_channels, **metadata)
        if write_keras is not None:
            write_keras(pruned, folder / "pruned.h5")


def write_report(result: SweepResult, model: BadNet, staging: Path, context: dict[str, Any],
                 write_keras: KerasWriter | None = None, plot: bool = True,
                 finetuned: dict[float, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write every output of a sweep into `staging` (see outdir.OutputFolder); returns the summary."""
    from .files import write_text

    content = summary(result, context, finetuned)
    write_text(staging / "sweep.csv", csv_text(result))
    write_text(staging / "summary.json", json.dumps(content, indent=2) + "\n")
    source = {"source_sha256": context.get("model", {}).get("sha256", "")}
    write_models(result, model, staging, source, write_keras)
    if plot:
        from .plot import plot_sweep

        plot_sweep(result, staging / "sweep.png", finetuned=finetuned)
    return content
