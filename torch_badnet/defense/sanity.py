"""Sanity warnings: data that look wrong but could be meant. Each is one line `warning: <file>: <problem>` and
the run goes on. The rules and their reasons are in docs/sanity-checks.md.

The rules read what a run measures anyway: a set's labels (held in memory) and how many of its images B gives
the file's label (the sweep's step 0, eval's pass, the scale guard's first images), never an extra pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_IMAGES = 20  # fewer images say too little about how a set's labels are spread
ONE_CLASS = 0.9  # a clean set whose commonest label holds this share looks like a single-target poisoned set
SPREAD = 0.5  # no label holds this share: spread labels, as in a clean set (or an all-to-all poisoned set)
B_DISAGREES = 20.0  # B gives under this percent of a set the file's label: B and the file disagree
B_GAP = 30.0  # ... and at least this many points more of the poisoned set its file label: the files look swapped
THIS_FILE = "this file's"
MIN_HOLDOUT = 50  # under this many held-out images, one image is more than 2 points (the default --tolerance)


@dataclass(frozen=True)
class SetFacts:
    """What the rules read of one set: its labels' spread and, if measured, how many of its images B labels as
    the file does (`b_hits` of the first `b_images`)."""

    path: str
    kind: str  # "clean" | "poisoned"
    split: str  # sets are paired (clean with poisoned) within a split; "" for eval's two files
    n: int
    top_label: int
    top_count: int
    classes: int
    b_hits: int | None = None
    b_images: int | None = None

    @classmethod
    def of(cls, path: str | os.PathLike[str], kind: str, split: str, labels: np.ndarray, b_hits: int | None = None,
           b_images: int | None = None) -> SetFacts:
        counts = np.bincount(np.asarray(labels, dtype=np.int64))
        top = int(counts.argmax())
        return cls(str(path), kind, split, int(counts.sum()), top, int(counts[top]), int((counts > 0).sum()), b_hits,
                   b_images if b_images is not None or b_hits is None else int(counts.sum()))

    @property
    def top_share(self) -> float:
        return self.top_count / self.n

    @property
    def one_class(self) -> bool:
        """Nearly every label is one class, as in a single-target poisoned set."""
        return self.n >= MIN_IMAGES and self.top_share >= ONE_CLASS

    @property
    def spread(self) -> bool:
        """No class holds half the labels, as in a clean set (or an all-to-all poisoned set)."""
        return self.n >= MIN_IMAGES and self.top_share < SPREAD

    @property
    def b_rate(self) -> float | None:
        """Percent of the measured images that B labels as the file does (None: not measured)."""
        if self.b_hits is None or not self.b_images or self.b_images < MIN_IMAGES:
            return None
        return 100.0 * self.b_hits / self.b_images

    def labels_note(self, owner: str = "its") -> str:
        return f"{self.top_count} of {owner} {self.n} labels ({100 * self.top_share:.0f}%) are class {self.top_label}"

    def b_note(self, owner: str = "its") -> str:
        first = f"the first {self.b_images} of " if self.b_images != self.n else ""
        return f"B gives only {self.b_rate:.0f}% of {first}{owner} images their label"


def looks_swapped(clean: SetFacts, poisoned: SetFacts) -> bool:
    """The poisoned file has spread labels, as clean data, and the clean file looks poisoned: nearly one class (a
    single-target set's target labels), or labels B rarely gives while it gives the poisoned file's far more often
    (poisoned images stored with their true labels). An all-to-all attack's poisoned set has spread labels too, but
    its clean set is neither."""
    if not poisoned.spread:
        return False
    if clean.one_class:
        return True
    b_clean, b_poisoned = clean.b_rate, poisoned.b_rate
    return b_clean is not None and b_poisoned is not None and b_clean < B_DISAGREES and b_poisoned >= b_clean + B_GAP


def data_warnings(sets: Sequence[SetFacts], trains_on: str | None = None) -> list[str]:
    """Warning lines about a run's clean sets, at most one per file: swapped with a poisoned set of the same
    split; else, for the set fine-tuning trains on (`trains_on`, a path), looks poisoned; else one class."""
    lines = []
    for clean in (s for s in sets if s.kind == "clean"):
        partner = next((p for p in sets if p.kind == "poisoned" and p.split == clean.split and looks_swapped(clean, p)),
                       None)
        if partner is not None:
            theirs = f"the poisoned file's labels are spread over {partner.classes} classes, as a clean set's"
            if clean.one_class:
                ours = clean.labels_note(THIS_FILE) + ", as in a single-target poisoned set"
            else:
                theirs += f", and B gives {partner.b_rate:.0f}% of its images their label"
                ours = clean.b_note(THIS_FILE) + ", as on poisoned images kept with their true labels"
            lines.append(f"warning: {clean.path}: looks swapped with the poisoned file {partner.path}: {theirs}, while {ours}")
        elif clean.path == trains_on and (clean.one_class or (clean.b_rate is not None and clean.b_rate < B_DISAGREES)):
            why = clean.labels_note() if clean.one_class else clean.b_note()
            lines.append(f"warning: {clean.path}: fine-tuning trains on it, but it looks poisoned: {why}; fine-tuning "
                         "on poisoned images teaches the attacker's labels")
        elif clean.one_class:
            lines.append(f"warning: {clean.path}: {clean.labels_note()}; a clean set spans many classes, a single-target "
                         "poisoned set looks like this (is it a poisoned file?)")
    return lines


def finetune_warnings(epochs: int, holdout_images: int, images: int) -> list[str]:
    """Warning lines about fine-tuning settings that make it do nothing, or stop on noise."""
    lines = []
    if epochs == 0:
        lines.append("warning: --epochs: 0 trains nothing: the fine-tuned net is B' unchanged, and so are its numbers")
    if holdout_images < MIN_HOLDOUT:
        lines.append(f"warning: --holdout: {holdout_images} of the {images} clean validation images are held out for "
                     f"early stopping, so one image moves the held-out accuracy by {100 / holdout_images:.1f} points (the "
                     f"default --tolerance is 2) and the stopping follows noise: hold out {MIN_HOLDOUT} or more")
    return lines


def unpruned_warning(path: str | os.PathLike[str], pruned_channels: int) -> str | None:
    """The warning line for a B' with no pruned channel (None when it has some)."""
    if pruned_channels:
        return None
    return (f"warning: {path}: no conv_3 channel is pruned in it (is it B itself? B' is a pruned B, such as "
            "models/X=<x>/pruned.pt of a sweep); with B itself the GoodNet never flags an input")


def same_file_warnings(files: Sequence[tuple[str, str | os.PathLike[str]]]) -> list[str]:
    """A warning line for each file given both as clean and as poisoned data (`files`: (kind, path) of each set
    read from a file): its clean accuracy and attack success rate then measure the same images."""
    clean = [path for kind, path in files if kind == "clean"]
    lines, seen = [], set()
    for kind, path in files:
        if kind != "poisoned":
            continue
        for other in clean:
            try:
                same = os.path.samefile(path, other)
            except OSError:
                same = False
            if same and (str(other), str(path)) not in seen:
                seen.add((str(other), str(path)))
                also = "" if str(other) == str(path) else f" (as {path})"
                lines.append(f"warning: {other}: given as clean and as poisoned data{also}: the clean accuracy and the attack "
                             "success rate then measure the same images; give the poisoned set its own file")
    return lines
