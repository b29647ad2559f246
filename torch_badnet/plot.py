"""sweep.png: clean accuracy and attack success of B' and G against the fraction of channels pruned."""

from __future__ import annotations

from pathlib import Path

from .defense import SweepResult
from .files import atomic_path
from .report import format_x


def plot_sweep(result: SweepResult, path: Path, title: str = "Pruning defense",
               finetuned: dict[float, dict[str, float]] | None = None) -> None:
    """Plot the test curves when test files were given, else the validation curves; mark each B'_X.

    With fine-tuning, B'_ft (filled) and G_ft (hollow) appear as markers at their X.
    """
    plt = import_pyplot()
    split = "test" if "test_clean_acc" in result.columns else "valid"
    x = [100.0 * f for f in result.columns["fraction_pruned"]]
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=100)
    for name, values in result.columns.items():
        line = _line_style(name, split)
        if line is not None:
            label, color, dash = line
            ax.plot(x, values, color=color, linestyle=dash, label=label, linewidth=1.6)
    for t in result.thresholds:
        if t.reached:
            at = 100.0 * t.metrics["fraction_pruned"]
            ax.axvline(at, color="0.5", linestyle=":", linewidth=1)
            ax.annotate(f"X={format_x(t.x)}", (at, 2), rotation=90, fontsize=8, color="0.3",
                        ha="right", va="bottom")
    _plot_finetuned(ax, result, finetuned or {}, split)
    ax.set_xlabel("channels of pool_3 pruned (%)")
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


def _line_style(name: str, split: str) -> tuple[str, str, str] | None:
    """Legend label, colour and dash for a metric column of `split`, or None to leave it out."""
    goodnet = name.startswith("goodnet_")
    base = name[len("goodnet_"):] if goodnet else name
    if not base.startswith(f"{split}_"):
        return None
    metric = base[len(split) + 1:]
    who = "G" if goodnet else "B'"
    dash = "--" if goodnet else "-"
    if metric == "clean_acc":
        return f"{who} clean accuracy", "tab:blue", dash
    if metric.startswith("asr"):
        trigger = metric[len("asr_"):]
        return f"{who} attack success{' [' + trigger + ']' if trigger else ''}", "tab:red", dash
    return None


def _plot_finetuned(ax, result: SweepResult, finetuned: dict[float, dict[str, float]], split: str) -> None:
    """Markers for B'_ft / G_ft clean accuracy (blue) and attack success (red) at each X's step."""
    labelled = set()
    for t in result.thresholds:
        tuned = finetuned.get(t.x)
        if not t.reached or not tuned:
            continue
        at = 100.0 * t.metrics["fraction_pruned"]
        for name, value in tuned.items():
            line = _line_style(name, split) if isinstance(value, float) else None
            if line is None:
                continue
            label, color, dash = line
            who = label.replace("B'", "B'_ft").replace("G ", "G_ft ")
            hollow = dash == "--"
            ax.plot([at], [value], marker="o", markersize=6, linestyle="none", color=color,
                    markerfacecolor="white" if hollow else color,
                    label=None if who in labelled else who)
            labelled.add(who)
