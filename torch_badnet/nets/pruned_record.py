"""The preprocessing a B' file records (pruned.pt, finetuned.pt, pruned.h5: what its sweep fed the model), read
without building the B' it belongs to (`loading.load_model_file` gives it to B)."""

from __future__ import annotations

import os

from .pt_files import MASKED_FORMAT, load_tensors
from .rescale import PrunedRecord


def read_pruned_record(path: str | os.PathLike[str]) -> PrunedRecord | None:
    """The preprocessing a B' file records (its sweep's: pruned.pt, finetuned.pt, pruned.h5), or None where it
    records none or cannot be read (loading it as --pruned then says why)."""
    from ..errors import BadInputError

    masked = _masked_payload(path)
    if masked is not None:  # a generic model's B' (engine.saving.save_masked): the architecture records it
        arch = masked.get("architecture") if isinstance(masked.get("architecture"), dict) else {}
        if arch.get("kind") != "keras" or arch.get("input_scale") is None:
            return None  # a plain torch module: its preprocessing is its own code
        try:
            values = [None if arch.get(k) is None else tuple(float(v) for v in arch[k]) for k in ("mean", "std")]
            return PrunedRecord(str(path), float(arch["input_scale"]), *values)
        except (TypeError, ValueError):
            return None
    try:
        from ..convert import read_model_file  # lazy: the core never imports the converter at import time

        loaded = read_model_file(path)
    except BadInputError:
        return None
    if loaded.input_scale is None:
        return None
    return PrunedRecord(str(path), float(loaded.input_scale), loaded.mean, loaded.std)


def _masked_payload(path: str | os.PathLike[str]) -> dict | None:
    """A generic B' file's payload (weights_only load), or None for any other file."""
    import pickle
    import zipfile

    if not str(path).lower().endswith((".pt", ".pth")):
        return None
    try:
        payload = load_tensors(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError):
        return None  # not a checkpoint at all: loading it as --pruned says why
    return payload if isinstance(payload, dict) and payload.get("format") == MASKED_FORMAT else None
