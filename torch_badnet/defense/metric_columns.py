"""The sweep's metric columns as a small typed structure shared by the sweep, the report, the plot and evaluation.

A `Column` says which net (B' or the GoodNet G), which split, which metric and which trigger a number belongs
to. Its CSV/JSON name (`valid_clean_acc`, `goodnet_test_asr_eyebrows`, ...) is derived from those fields and
never parsed back.

    >>> Column("goodnet", "test", "asr", "lipstick").name
    'goodnet_test_asr_lipstick'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Net = Literal["pruned", "goodnet"]  # B' (B itself at step 0) or the GoodNet G of B and B'
Metric = Literal["clean_acc", "asr", "detection_rate", "false_alarm_rate"]
SPLITS = ("valid", "test")


@dataclass(frozen=True)
class Column:
    """One metric of one net on one split (and, for poisoned sets, one trigger); values are percentages.

    >>> result.threshold(4).metrics[Column("goodnet", "test", "asr")]   # G_4's attack success on bd_test
    """

    net: Net
    split: str
    metric: Metric
    trigger: str = ""

    @property
    def name(self) -> str:
        """The column's name in sweep.csv and summary.json."""
        prefix = "goodnet_" if self.net == "goodnet" else ""
        return f"{prefix}{self.split}_{self.metric}" + (f"_{self.trigger}" if self.trigger else "")

    @property
    def on_poisoned(self) -> bool:
        """Measured on a poisoned set (attack success, detections) rather than a clean one."""
        return self.metric in ("asr", "detection_rate")


def set_columns(split: str, kind: str, trigger: str = "") -> tuple[Column, Column, Column]:
    """The three columns one data set yields: (B' hits, G hits, G flags) for its kind ("clean" | "poisoned")."""
    if kind == "clean":
        return (Column("pruned", split, "clean_acc"), Column("goodnet", split, "clean_acc"),
                Column("goodnet", split, "false_alarm_rate"))
    return (Column("pruned", split, "asr", trigger), Column("goodnet", split, "asr", trigger),
            Column("goodnet", split, "detection_rate", trigger))


def csv_order(columns: list[Column]) -> list[Column]:
    """sweep.csv's order, per split: B' clean, B' attack per trigger, G clean, then per trigger G attack and
    detections, then G false alarms. Triggers keep the order in which they were given."""
    group = {("pruned", "clean_acc"): 0, ("pruned", "asr"): 1, ("goodnet", "clean_acc"): 2, ("goodnet", "asr"): 3,
             ("goodnet", "detection_rate"): 3, ("goodnet", "false_alarm_rate"): 4}
    triggers = list(dict.fromkeys(c.trigger for c in columns))
    split_rank = {s: i for i, s in enumerate(SPLITS)}
    return sorted(columns, key=lambda c: (split_rank.get(c.split, len(SPLITS)), group[(c.net, c.metric)],
                                          triggers.index(c.trigger), c.metric == "detection_rate"))
