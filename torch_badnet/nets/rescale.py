"""A model's input scale: the `--rescale` flag, the file's own record, recognition of published files, and
the guard that checks the chosen scale on clean labelled images.

The lab3 BadNet takes raw pixels 0..255 (scale 1); the CSAW-HackML-2020 competition's BadNets take
pixels/255 (scale 1/255). A scale comes, in this order, from: the file's record (a .pt this project wrote,
an .h5 it wrote, an ONNX graph's input Mul/Div), which a contradicting flag may not override; the flag;
the table of published files (by git blob id); else 1.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import BadInputError
from .badnet import BadNet, scale_divisor
from .known_models import KNOWN_MODELS, KNOWN_OTHER_MODELS, REPOSITORY
from .predict import labels_in_batches

FLAG = "--rescale"
MEAN_FLAG, STD_FLAG = "--mean", "--std"
CANDIDATES = (1.0, 1 / 255)  # the lab's raw pixels and the competition's pixels/255
GUARD_IMAGES = 256  # clean images the guard classifies at each candidate scale
GUARD_MARGIN = 10.0  # percentage points by which another scale must win to stop the command
GUARD_MIN_IMAGES = 5  # ... and by at least this many images


@dataclass(frozen=True)
class PrunedRecord:
    """The preprocessing a B' file (pruned.pt, pruned.h5, finetuned.pt) records: what its sweep fed the model.

    `mean` / `std` None: the sweep used none (for a Keras graph model; the lab BadNet takes none)."""

    path: str
    input_scale: float
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def flags(self, given: tuple[object, object, object] = (None, None, None)) -> str:
        """'--rescale 1/255 --mean 1 2 3 --std 4 5 6': the parts that differ from the defaults, except those whose
        flag is `given` ('' if none)."""
        parts = [] if same_scale(self.input_scale, 1.0) or given[0] is not None else [f"{FLAG} {format_scale(self.input_scale)}"]
        parts += [f"{flag} {_values(v)}" for flag, v, g in ((MEAN_FLAG, self.mean, given[1]), (STD_FLAG, self.std, given[2]))
                  if v is not None and g is None]
        return " ".join(parts)


def _values(values: Sequence[float] | None) -> str:
    return " ".join(f"{v:g}" for v in values) if values is not None else "none"


def _records(what: str, values: Sequence[float] | None) -> str:
    """'per-channel mean 1 2 3', or 'no per-channel mean'."""
    return f"{what} {_values(values)}" if values is not None else f"no {what}"


def _same_values(a: Sequence[float] | None, b: Sequence[float] | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-6) for x, y in zip(a, b))


def pruned_record_note(record: PrunedRecord | None, flags: tuple[object, object, object]) -> str | None:
    """The line saying that B' decided the model's preprocessing: when its record differs from the defaults and
    a part of it was taken for a flag not given."""
    taken = record.flags(flags) if record is not None else ""
    return f"{record.path} records the preprocessing of its sweep: using {taken}" if taken else None


def parse_rescale(text: str | None) -> float | None:
    """`1`, `1/255` or a positive float -> the factor; None stays None (no flag). Bad values: BadInputError."""
    if text is None:
        return None
    numerator, sep, denominator = text.partition("/")
    try:
        value = float(numerator) / float(denominator) if sep else float(text)
    except (ValueError, ZeroDivisionError):
        raise BadInputError(FLAG, f"'{text}' is not a number (expected 1, 1/255 or a positive float)") from None
    if not math.isfinite(value) or value <= 0:
        raise BadInputError(FLAG, f"'{text}' is not a positive factor (expected 1, 1/255 or a positive float)")
    return value


def format_scale(scale: float) -> str:
    """1 -> '1', 1/255 -> '1/255', 0.5 -> '1/2', 2.5 -> '2.5'."""
    divisor = scale_divisor(scale)
    return f"1/{divisor}" if divisor else f"{scale:g}"


def same_scale(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6)


def git_blob_id(path: str | os.PathLike[str]) -> str:
    """What `git hash-object FILE` prints: sha1 of b"blob <size>\\0" + the file's bytes."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def known_model(path: str | os.PathLike[str]) -> tuple[str, float] | None:
    """(path in the CSAW-HackML repository, input scale) of a published file (any architecture), or None."""
    blob = git_blob_id(path)
    other = KNOWN_OTHER_MODELS.get(blob)
    return KNOWN_MODELS.get(blob) or (other[:2] if other else None)


def parse_channel_values(values: Sequence[str | float] | None, flag: str) -> tuple[float, ...] | None:
    """--mean / --std values as floats (finite; std positive); None stays None."""
    if values is None:
        return None
    try:
        parsed = tuple(float(v) for v in values)
    except ValueError:
        raise BadInputError(flag, f"{' '.join(map(str, values))!r} are not numbers (give one per input channel, e.g. R G B)") from None
    if not parsed or not all(math.isfinite(v) for v in parsed) or (flag == STD_FLAG and not all(v > 0 for v in parsed)):
        kind = "positive" if flag == STD_FLAG else "finite"
        raise BadInputError(flag, f"{' '.join(map(str, values))} are not {kind} numbers (one per input channel)")
    return parsed


def resolve_normalization(model: nn.Module, path: str | os.PathLike[str],
                          recorded: tuple[tuple[float, ...] | None, tuple[float, ...] | None],
                          flags: tuple[tuple[float, ...] | None, tuple[float, ...] | None],
                          pruned: PrunedRecord | None = None) -> str | None:
    """Set a Keras graph model's per-channel `mean` and `std`: the file's record (a contradicting flag is an
    error), else the flag, else the record of the B' it is used with (`pruned`: a contradicting flag is an
    error), else a published file's (CIFAR-10 B), else none; returns a line for the user or None.

    The lab BadNet has no per-channel preprocessing: a --mean or --std for it is an error.
    """
    if not hasattr(model, "mean"):
        for flag, value in zip((MEAN_FLAG, STD_FLAG), flags):
            if value is not None:
                raise BadInputError(flag, "the lab BadNet takes no per-channel normalisation (its input scale is --rescale)")
        return None
    published = KNOWN_OTHER_MODELS.get(git_blob_id(path)) if all(r is None for r in recorded) and pruned is None else None
    chosen = []
    for i, flag in enumerate((MEAN_FLAG, STD_FLAG)):
        own, given = recorded[i], flags[i]
        if own is not None and given is not None and not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(own, given)):
            raise BadInputError(flag, f"{' '.join(f'{v:g}' for v in given)} contradicts {path}, which records "
                                      f"{' '.join(f'{v:g}' for v in own)} (drop the flag)")
        if pruned is not None:
            theirs = (pruned.mean, pruned.std)[i]
            what = "per-channel mean" if i == 0 else "per-channel std"
            if own is not None and not _same_values(own, theirs):
                raise BadInputError(pruned.path, f"records {_records(what, theirs)} but {path} records {_values(own)} "
                                                 "(B and B' must take the same input)")
            if own is None and given is not None and not _same_values(given, theirs):
                raise BadInputError(flag, f"{_values(given)} contradicts {pruned.path}, which records "
                                          f"{_records(what, theirs)} (the preprocessing of its sweep; drop the flag)")
            given = theirs if own is None else given
        value = own if own is not None else given if given is not None else published[2 + i] if published else None
        if value is not None and len(value) != model.input_shape[0]:
            raise BadInputError(flag, f"gives {len(value)} values but the model takes {model.input_shape[0]} input channels")
        chosen.append(value)
    model.mean, model.std = chosen
    if published is None or published[2] is None:
        return None
    if flags == (None, None):
        return (f"recognized {Path(path).name} is {published[0]} of {REPOSITORY}, published for per-channel "
                f"(x - mean) / std: using --mean {' '.join(f'{v:g}' for v in published[2])} --std "
                f"{' '.join(f'{v:g}' for v in published[3])}")
    return f"recognized {Path(path).name} is {published[0]} of {REPOSITORY}: using --mean/--std as given"


def resolve_input_scale(model: BadNet, path: str | os.PathLike[str], recorded: float | None,
                        flag: float | None, pruned: PrunedRecord | None = None) -> str | None:
    """Set `model.input_scale` for the file at `path`; returns a line to show the user, or None.

    The line appears when a published file is recognized and its scale is not the default 1 (or the flag
    overrides the published scale).

    `recorded` is the file's own record (None: the file records none). `pruned`: the record of the B' the model
    is used with, which comes after the file's record and the flag (a contradiction is an error) and before
    the published files' table.
    """
    if recorded is not None:
        if flag is not None and not same_scale(flag, recorded):
            raise BadInputError(FLAG, f"{format_scale(flag)} contradicts {path}, which records input scale "
                                      f"{format_scale(recorded)} (drop the flag)")
        if pruned is not None and not same_scale(pruned.input_scale, recorded):
            raise BadInputError(pruned.path, f"records input scale {format_scale(pruned.input_scale)} but {path} "
                                             f"records {format_scale(recorded)} (B and B' must take the same input)")
        model.input_scale = recorded
        return None
    if pruned is not None:
        if flag is not None and not same_scale(flag, pruned.input_scale):
            raise BadInputError(FLAG, f"{format_scale(flag)} contradicts {pruned.path}, which records input scale "
                                      f"{format_scale(pruned.input_scale)} (the scale of its sweep; drop the flag)")
        model.input_scale = pruned.input_scale
        known = known_model(path)
        if known is None or same_scale(known[1], pruned.input_scale):
            return None
        how = "as given" if flag is not None else f"as {pruned.path} records"
        return f"recognized {_published(path, known)}: using --rescale {format_scale(pruned.input_scale)} {how}"
    known = known_model(path)
    model.input_scale = flag if flag is not None else known[1] if known else 1.0
    if known is None or same_scale(known[1], 1.0) and (flag is None or same_scale(flag, 1.0)):
        return None  # nothing to say: a published raw-pixel file (lab3) gets the default anyway
    if flag is None or same_scale(flag, known[1]):
        return f"recognized {_published(path, known)}: using --rescale {format_scale(known[1])}"
    return f"recognized {_published(path, known)}: using --rescale {format_scale(flag)} as given"


def _published(path: str | os.PathLike[str], known: tuple[str, float]) -> str:
    """'NAME is models/... of CSAW-HackML-2020, published for input scale S'."""
    return f"{Path(path).name} is {known[0]} of {REPOSITORY}, published for input scale {format_scale(known[1])}"


def check_pruned_record(record: PrunedRecord | None, model: nn.Module, model_name: str = "--model") -> None:
    """B' (`record`: what its file records) must take the input B takes: scale, mean and std."""
    if record is None or not hasattr(model, "input_scale"):
        return
    if not same_scale(record.input_scale, model.input_scale):
        raise BadInputError(record.path, f"records input scale {format_scale(record.input_scale)} but {model_name} uses "
                                         f"{format_scale(model.input_scale)} (B and B' must take the same input)")
    if hasattr(model, "mean"):
        for what, theirs, ours in (("per-channel mean", record.mean, model.mean), ("per-channel std", record.std, model.std)):
            if not _same_values(theirs, ours):
                raise BadInputError(record.path, f"records {_records(what, theirs)} but {model_name} uses "
                                                 f"{_records(what, ours)} (B and B' must take the same input)")


def match_input_scale(pruned: BadNet, path: str | os.PathLike[str], recorded: float | None, model: BadNet) -> None:
    """B' takes B's input scale; a B' file recording another one is an error."""
    if recorded is not None and not same_scale(recorded, model.input_scale):
        raise BadInputError(path, f"records input scale {format_scale(recorded)} but the model uses "
                                  f"{format_scale(model.input_scale)} (B and B' must take the same input)")
    pruned.input_scale = model.input_scale


def check_scale(model: BadNet, pixels: torch.Tensor, labels: torch.Tensor, source: str) -> tuple[int, int] | None:
    """Stop (BadInputError naming --rescale and both accuracies) when another candidate scale classifies the
    first GUARD_IMAGES clean images clearly better than the model's own scale. Returns (images the model labels
    right at its own scale, images compared), or None where nothing was compared.

    Images whose pixels all lie in [0, 1] are not compared: data on the wrong scale would make the guard advise a
    --rescale, while the fix is the data (multiplied by 255); the file's own pixel-range check says so.
    """
    x, y = pixels[:GUARD_IMAGES], labels[:GUARD_IMAGES]
    if float(x.max()) <= 1:
        return None
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    chosen = model.input_scale
    hits = {chosen: _hits(model, x, y, chosen)}
    for other in (c for c in CANDIDATES if not same_scale(c, chosen)):
        hits[other] = _hits(model, x, y, other)
        if hits[other] - hits[chosen] >= max(GUARD_MIN_IMAGES, GUARD_MARGIN / 100 * len(y)):
            ours, theirs = 100 * hits[chosen] / len(y), 100 * hits[other] / len(y)
            raise BadInputError(FLAG, f"the model classifies {ours:.1f}% of the first {len(y)} clean images of "
                                      f"{source} right at input scale {format_scale(chosen)} but {theirs:.1f}% at "
                                      f"{format_scale(other)}: pass --rescale {format_scale(other)}")
    return hits[chosen], len(y)


def _hits(model: BadNet, x: torch.Tensor, y: torch.Tensor, scale: float) -> int:
    saved = model.input_scale
    model.input_scale = scale
    try:
        return int((labels_in_batches(model, x) == y).sum())
    finally:
        model.input_scale = saved
