"""sweep.png: clean accuracy and attack success of B' and G against the fraction of channels pruned."""

from __future__ import annotations

from pathlib import Path

from ..data.files import atomic_path
from ..defense.metric_columns import Column
from ..defense.sweep import SweepResult

COLORS = {"clean_acc": "tab:blue", "asr": "tab:red"}  # the plotted metrics; flags and false alarms are left out


def plot_sweep(result: SweepResult, path: Path, title: str = "Pruning defense",
               finetuned: dict[float, dict[Column, float]] | None = None) -> None:
    """Plot the test curves when test files were given, else the validation curves; mark each B'_X.

    With fine-tuning, B'_ft (filled) and G_ft (hollow) appear as markers at their X.
    """
    plt = import_pyplot()
    split = "test" if result.has_split("test") else "valid"
    x = [100.0 * f for f in result.fraction_pruned]
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=100)
    for column, values in result.metrics.items():
        if _plotted(column, split):
            ax.plot(x, values, color=COLORS[column.metric], linestyle=_dash(column), label=_label(column),
                    linewidth=1.6)
    for t in result.thresholds:
        if t.reached:
            at = 100.0 * t.fraction_pruned
            ax.axvline(at, color="0.5", linestyle=":", linewidth=1)
            ax.annotate(f"X={t.x:g}", (at, 2), rotation=90, fontsize=8, color="0.3", ha="right", va="bottom")
    _plot_finetuned(ax, result, finetuned or {}, split)
    layer = result.net.layer if getattr(result, "net", None) is not None else "pool_3"
    ax.set_xlabel(f"channels of {layer} pruned (%)")
    ax.set_ylabel(f"{'test' if split == 'test' else 'validation'} data (%)")
    ax.set_ylim(-2, 102)
    ax.set_xlim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def import_pyplot():
    """matplotlib.pyplot on the Agg backend (the CLI imports it in a thread while the sweep runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plotted(column: Column, split: str) -> bool:
    return column.split == split and column.metric in COLORS


def _dash(column: Column) -> str:
    return "--" if column.net == "goodnet" else "-"


def _label(column: Column, finetuned: bool = False) -> str:
    who = ("G" if column.net == "goodnet" else "B'") + ("_ft" if finetuned else "")
    what = "clean accuracy" if column.metric == "clean_acc" else "attack success"
    return f"{who} {what}" + (f" [{column.trigger}]" if column.trigger else "")


def _plot_finetuned(ax, result: SweepResult, finetuned: dict[float, dict[Column, float]], split: str) -> None:
    """Markers for B'_ft (filled) / G_ft (hollow) clean accuracy (blue) and attack success (red) at each X."""
    labelled = set()
    for t in result.thresholds:
        tuned = finetuned.get(t.x)
        if not t.reached or not tuned:
            continue
        at = 100.0 * t.fraction_pruned
        for column, value in tuned.items():
            if not _plotted(column, split):
                continue
            label = _label(column, finetuned=True)
            color = COLORS[column.metric]
            ax.plot([at], [value], marker="o", markersize=6, linestyle="none", color=color,
                    markerfacecolor="white" if column.net == "goodnet" else color,
                    label=None if label in labelled else label)
            labelled.add(label)
