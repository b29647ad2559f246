"""A batch's combined outputs: one row per model (batch.csv, batch.json), batch.png and the progress lines.

A row comes from the model's summary.json (whether it ran now or earlier), so a reused model's row is the
row it got when it ran. Columns: name, status (done | reused | failed), seconds, steps, B's clean accuracy
and ASR (`b_<metric>`), then per X: the step and B'_X's and G_X's (`x<X>_<metric>`), and error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..data.files import write_text
from ..report.results import csv_table, format_x

STATUSES = ("done", "reused", "failed")


def wanted(metric: str) -> bool:
    """Clean accuracy and attack success (B', G; valid and test; every trigger)."""
    return "clean_acc" in metric or "_asr" in metric


def model_row(name: str, status: str, seconds: float, summary: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
    """One model's row: the flat CSV cells (batch.csv) and the thresholds in full (batch.json)."""
    row: dict[str, Any] = {"name": name, "status": status, "seconds": round(seconds, 3)}
    if summary is not None:
        row["steps"] = summary["steps"]
        row.update({f"b_{k}": v for k, v in summary["original"].items() if wanted(k)})
        for t in summary["thresholds"]:
            prefix = f"x{format_x(t['x'])}_"
            row[prefix + "step"] = t.get("step")
            row.update({prefix + k: v for k, v in t.items() if wanted(k)})
            row.update({f"{prefix}ft_{k}": v for k, v in (t.get("finetuned") or {}).items() if wanted(k)})
    row["error"] = error
    return row


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every row's cells, in first-seen order, `error` last."""
    names = list(dict.fromkeys(k for row in rows for k in row if k != "error"))
    return [*names, "error"]


def write_tables(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """batch.csv and batch.json (atomically; rewritten as models finish, so an interrupted batch keeps its rows)."""
    names = columns(rows)
    write_text(out / "batch.csv", csv_table(names, ([row.get(n) for n in names] for row in rows)))
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    write_text(out / "batch.json", json.dumps({**meta, "counts": counts, "models": rows}, indent=2) + "\n")


def progress_line(row: dict[str, Any]) -> str:
    """'done    name  B 93.1/100.0  B'_4 88.9/0.3 (12.3 s)': clean accuracy / ASR, on test data where given."""
    head = f"{row['status']:<6} {row['name']}"
    if row["error"]:
        return f"{head}  {row['error']}"
    split = "test" if "b_test_clean_acc" in row else "valid"
    cells = [f"B {_pair(row, 'b_', split)}"]
    xs = [k[: -len("_step")] for k in row if k.startswith("x") and k.endswith("_step")]
    cells += [f"B'_{x[1:]} {_pair(row, x + '_', split)}" for x in xs]
    return f"{head}  " + "  ".join(cells) + f"  (clean/ASR % on {split}; {row['seconds']:.1f} s)"


def _pair(row: dict[str, Any], prefix: str, split: str) -> str:
    clean, asr = row.get(f"{prefix}{split}_clean_acc"), row.get(f"{prefix}{split}_asr")
    if clean is None:
        return "not reached"
    return f"{clean:.1f}/{asr:.1f}" if asr is not None else f"{clean:.1f}/-"


def plot_batch(rows: list[dict[str, Any]], path: Path) -> None:
    """batch.png: per split, every model's B and B'_X as points (clean accuracy against ASR), one marker per X.

    Readable for 10 or 150 models: up to 20 models are labelled by name, and up to 30 have their B and B'_X
    joined by a faint line (each model's path from B to its B'_X); beyond that the markers alone show the spread."""
    from ..report.plot import import_pyplot

    plt = import_pyplot()
    done = [r for r in rows if r["status"] != "failed"]
    splits = [s for s in ("valid", "test") if any(f"b_{s}_clean_acc" in r for r in done)] or ["valid"]
    fig, axes = plt.subplots(1, len(splits), figsize=(6.2 * len(splits), 5.2), squeeze=False)
    xs = sorted({k[1:-5] for r in done for k in r if k.startswith("x") and k.endswith("_step")}, key=float)
    markers = ["s", "^", "D", "v", "P", "X", "*", "h"]
    for ax, split in zip(axes[0], splits):
        for r in done:
            points = [(r.get(f"b_{split}_asr"), r.get(f"b_{split}_clean_acc"))]
            points += [(r.get(f"x{x}_{split}_asr"), r.get(f"x{x}_{split}_clean_acc")) for x in xs]
            points = [p for p in points if None not in p]
            if len(done) <= 30:
                ax.plot([p[0] for p in points], [p[1] for p in points], color="0.8", lw=0.6, zorder=1)
            if len(done) <= 20 and points:
                ax.annotate(r["name"], points[0], fontsize=7, xytext=(3, 3), textcoords="offset points")
        alpha = 0.9 if len(done) <= 30 else 0.5
        _scatter(ax, done, f"b_{split}", "o", "B (unpruned)", "black", alpha)
        for i, x in enumerate(xs):
            _scatter(ax, done, f"x{x}_{split}", markers[i % len(markers)], f"B'_{x}", f"C{i}", alpha)
        ax.set_xlabel(f"attack success rate, {split} (%)")
        ax.set_ylabel(f"clean accuracy, {split} (%)")
        ax.set_xlim(-3, 103)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no finished model: no points, no legend (nor matplotlib's warning)
            ax.legend(fontsize=8, loc="best")
    failed = len(rows) - len(done)
    fig.suptitle(f"{len(rows)} models" + (f" ({failed} failed, not shown)" if failed else "")
                 + ": clean accuracy against attack success, B and each B'_X")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _scatter(ax, rows, prefix: str, marker: str, label: str, color: str, alpha: float) -> None:
    points = [(r[f"{prefix}_asr"], r[f"{prefix}_clean_acc"]) for r in rows
              if r.get(f"{prefix}_asr") is not None and r.get(f"{prefix}_clean_acc") is not None]
    if points:
        ax.scatter([p[0] for p in points], [p[1] for p in points], marker=marker, s=28, c=color, alpha=alpha,
                   label=label, zorder=2, edgecolors="none")
