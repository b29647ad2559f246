"""torch-badnet's own .pt checkpoints: a state_dict plus metadata, always loaded with weights_only=True."""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.files import check_is_file, file_sha256, write_bytes
from ..errors import BadInputError, first_line
from .badnet import BadNet
from .pairing import FINGERPRINT_KEY, base_fingerprint
from .pt_files import check_savable, load_tensors, not_a_checkpoint, refused_pickle

FORMAT = "torch-badnet"
FORMAT_VERSION = 1
KERAS_GRAPH = "keras_graph"  # `architecture` of a checkpoint of a KerasGraphNet (absent: the lab BadNet)
ARCH = "arch"  # `architecture` of a checkpoint of an --arch model (convert.torch_sources.save_arch_checkpoint)


@dataclass
class ModelSource:
    """Where a BadNet came from: the file's path, sha256, format and (for .pt files) recorded metadata.

    `tb.load_model` attaches one to the net as `net.source`; reports (summary.json's `model`) read it.
    """

    path: str = "<in memory>"
    sha256: str = ""
    format: str = "torch"
    metadata: dict[str, Any] = field(default_factory=dict)


def source_of(model: BadNet) -> ModelSource:
    """The provenance attached by `load_model`, or an in-memory placeholder for a net built in code."""
    source = getattr(model, "source", None)
    return source if isinstance(source, ModelSource) else ModelSource()


@dataclass
class LoadedModel:
    """A BadNet together with where it came from (also attached to the net as `model.source`)."""

    model: BadNet
    path: str
    source_format: str
    source_sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)
    input_scale: float | None = None  # the scale the file records (None: it records none; see rescale.py)
    mean: tuple[float, ...] | None = None  # per-channel normalisation the file records (Keras graph models)
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        self.model.source = ModelSource(self.path, self.source_sha256, self.source_format, self.metadata)


def save_checkpoint(model: BadNet, path: str | os.PathLike[str], **metadata: Any) -> None:
    """Write `model` (weights, mask) and JSON-like metadata atomically to a .pt file. A Keras graph model
    (KerasGraphNet) also records its architecture (the Keras config, as JSON text) and its mean and std.

    A model derived from a B (pairing.mark_derived, or loaded from such a checkpoint) records B's weights
    fingerprint under `base_weights_sha256`.

    >>> tb.save_checkpoint(result.pruned(4), "b4.pt", note="B'_4")   # tb.load_model("b4.pt") reads it back
    """
    check_savable(model, path)
    if base_fingerprint(model) is not None:
        metadata = {**metadata, FINGERPRINT_KEY: metadata.get(FINGERPRINT_KEY, base_fingerprint(model))}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "num_classes": model.num_classes,
        "input_scale": float(model.input_scale),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "metadata": metadata,
    }
    if hasattr(model, "keras_config"):  # a Keras graph model: its architecture and per-channel preprocessing
        payload.update(architecture=KERAS_GRAPH, keras_config=json.dumps(model.keras_config, sort_keys=True),
                       mean=None if model.mean is None else list(model.mean), std=None if model.std is None else list(model.std))
    buffer = io.BytesIO()  # saved to a buffer, not to the temporary file: torch.save names the zip's records
    torch.save(payload, buffer)  # after the file, which would make the bytes differ from run to run
    write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> LoadedModel:
    """Load a torch-badnet .pt file; never unpickles arbitrary objects."""
    path = check_is_file(path)
    try:
        payload = load_tensors(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise refused_pickle(path, exc) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise not_a_checkpoint(path, payload)  # says what the file is and what takes it
    if payload.get("format_version") != FORMAT_VERSION:
        raise BadInputError(path, f"unsupported checkpoint format_version {payload.get('format_version')!r}")
    if payload.get("architecture") == ARCH:
        raise BadInputError(path, f"holds the weights of your own module: give --arch {payload.get('arch')} (torch-badnet "
                                  "imports code only by the name you give, never by one a file holds)")
    num_classes = payload.get("num_classes")
    state = payload.get("state_dict")
    if not isinstance(num_classes, int) or num_classes < 1 or not isinstance(state, dict):
        raise BadInputError(path, "checkpoint lacks num_classes or state_dict")
    model = _architecture(payload, path) or BadNet(num_classes)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        what = "its architecture" if payload.get("architecture") else "the lab BadNet"
        raise BadInputError(path, f"checkpoint does not fit {what} (missing {missing}, unexpected {extra})")
    for name, ref in expected.items():
        got = state[name]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(ref.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise BadInputError(path, f"tensor {name} has shape {shape}, expected {tuple(ref.shape)}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.eval()
    scale = payload.get("input_scale")  # absent in checkpoints written before the scale was recorded
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise BadInputError(path, f"checkpoint records an invalid input_scale {scale!r}")
        model.input_scale = float(scale)
    meta = payload.get("metadata") if isinstance(payload.get("metadata"), dict) else {}
    if isinstance(meta.get(FINGERPRINT_KEY), str):
        setattr(model, FINGERPRINT_KEY, meta[FINGERPRINT_KEY])  # GoodNet checks it against B (pairing)
    mean, std = (getattr(model, "mean", None), getattr(model, "std", None))
    return LoadedModel(model, str(path), "pt", file_sha256(path), meta, None if scale is None else float(scale), mean, std)


def _architecture(payload: dict[str, Any], path: str | os.PathLike[str]) -> torch.nn.Module | None:
    """The model a checkpoint's recorded architecture describes (fresh weights), or None for the lab BadNet."""
    kind = payload.get("architecture")
    if kind is None:
        return None
    if kind != KERAS_GRAPH or not isinstance(payload.get("keras_config"), str):
        raise BadInputError(path, f"checkpoint records an unknown architecture {kind!r}")
    try:
        config = json.loads(payload["keras_config"])
    except json.JSONDecodeError as exc:
        raise BadInputError(path, f"checkpoint's keras_config is not valid JSON ({first_line(exc)})") from None
    from ..convert.keras_graph import KerasGraphNet  # lazy: the core never imports the converter at import time

    try:
        return KerasGraphNet(config, None, path, mean=payload.get("mean"), std=payload.get("std"))
    except ValueError as exc:
        raise BadInputError(path, f"checkpoint records an invalid mean or std ({first_line(exc)})") from None

