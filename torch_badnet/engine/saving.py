"""B' of a generic model on disk: pruned.pt = state_dict + channel mask + layer name + architecture, loaded with
weights_only=True (no code from the file ever runs).

The architecture: a Keras-origin net (h3's KerasGraphNet, which has `keras_config`) records its Keras config as
JSON, so it can be rebuilt without code; any other module records its class name only, and the user rebuilds the
module in code and passes it to `load_masked(path, module)`.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.files import check_is_file, write_bytes
from ..errors import BadInputError, first_line
from ..nets.pairing import FINGERPRINT_KEY, base_fingerprint
from ..nets.pt_files import MASKED_FORMAT, load_tensors
from .prunable import MaskedNet

FORMAT = MASKED_FORMAT
FORMAT_VERSION = 1


def architecture(net: nn.Module) -> dict[str, Any]:
    """What rebuilds `net`: its Keras config (Keras-origin nets), else its class (the user rebuilds it)."""
    config = getattr(net, "keras_config", None)
    if config is not None:
        mean, std = getattr(net, "mean", None), getattr(net, "std", None)
        return {"kind": "keras", "keras_config": json.dumps(config, sort_keys=True),
                "input_shape": list(getattr(net, "input_shape", []) or []),
                "input_scale": float(getattr(net, "input_scale", 1.0)),
                "mean": None if mean is None else [float(v) for v in mean],
                "std": None if std is None else [float(v) for v in std]}
    rebuild = _source_record(net)
    if rebuild is not None:
        return rebuild
    cls = type(net)
    return {"kind": "torch", "class": f"{cls.__module__}.{cls.__qualname__}",
            "note": "rebuild this module in code and load the file with torch_badnet.engine.saving.load_masked(path, module)"}


def _source_record(net: nn.Module) -> dict[str, Any] | None:
    """What rebuilds a module read from a file without code of its own (convert/): the ONNX graph or .pt2 program
    (path and sha256), or the --arch callable and its kwargs (with the weights file's sha256)."""
    source = getattr(net, "source", None)
    kind = getattr(source, "format", None)
    if kind in ("onnx-graph", "pt2"):
        return {"kind": kind, "path": source.path, "sha256": source.sha256}
    if kind == "arch":
        meta = source.metadata
        return {"kind": "arch", "arch": meta["arch"], "arch_kwargs": json.dumps(meta["arch_kwargs"], sort_keys=True),
                "path": source.path, "sha256": source.sha256}
    return None


def save_masked(pruned: MaskedNet, path: str | os.PathLike[str], **metadata: Any) -> None:
    """Write B' (a MaskedNet) atomically: the inner net's state_dict, the mask, the layer, the architecture."""
    if base_fingerprint(pruned) is not None:
        metadata = {**metadata, FINGERPRINT_KEY: base_fingerprint(pruned)}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "layer": pruned.layer,
        "channel_mask": pruned.channel_mask.detach().cpu().clone(),
        "num_classes": pruned.num_classes,
        "architecture": architecture(pruned.net),
        "state_dict": {k: v.detach().cpu().clone() for k, v in pruned.net.state_dict().items()},
        "metadata": metadata,
    }
    if getattr(pruned, "input_shape", None) is not None:  # the image shape its sweep's data had (C, H, W)
        payload["input_shape"] = [int(v) for v in pruned.input_shape]
    buffer = io.BytesIO()  # as checkpoint.save_checkpoint: reproducible bytes
    torch.save(payload, buffer)
    write_bytes(path, buffer.getvalue())


def read_masked(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The payload of a pruned.pt of a generic model (weights_only load), checked."""
    path = check_is_file(path)
    try:
        payload = load_tensors(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise BadInputError(path, f"not a loadable checkpoint (refused by weights_only load: {first_line(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("format_version") != FORMAT_VERSION:
        raise BadInputError(path, f"not a torch-badnet pruned generic model ({FORMAT} v{FORMAT_VERSION})")
    return payload


def load_masked(path: str | os.PathLike[str], module: nn.Module | None = None, arch: str | None = None) -> MaskedNet:
    """B' from `path`: `module` (a freshly built net of the recorded architecture) gets the weights and the mask.
    Without `module`, a Keras-origin file is rebuilt from its Keras config (with the Keras graph converter), an
    ONNX graph's or .pt2 program's from the recorded file, and an --arch model's by the callable the caller names
    in `arch` ("module:callable", which must be the recorded one): a file never chooses the code that runs."""
    payload = read_masked(path)
    record = payload["architecture"]
    if module is None:
        module = _rebuild(record, Path(path), arch)
    try:
        module.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise BadInputError(path, f"the weights do not fit the module given ({first_line(exc)})") from None
    pruned = MaskedNet(module.eval(), payload["layer"], payload["channel_mask"]).eval()
    shape = payload.get("input_shape")
    if isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape):
        pruned.input_shape = tuple(shape)
    meta = payload.get("metadata") or {}
    if isinstance(meta.get(FINGERPRINT_KEY), str):
        setattr(pruned, FINGERPRINT_KEY, meta[FINGERPRINT_KEY])
    return pruned


def _rebuild(arch: dict[str, Any], path: Path, callable_name: str | None = None) -> nn.Module:
    """A Keras-origin net from its recorded Keras config and preprocessing (h3's KerasGraphNet; no code runs)."""
    if arch.get("kind") == "arch":
        return _rebuild_arch(arch, path, callable_name)
    if arch.get("kind") in ("onnx-graph", "pt2"):
        return _rebuild_source(arch, path)
    if arch.get("kind") != "keras":
        raise BadInputError(path, f"holds the weights of a {arch.get('class')}; build that module in code and pass it "
                                  "to load_masked(path, module)")
    try:
        from ..convert.keras_graph import KerasGraphNet  # lazy: the core never imports the converter at import time
    except ImportError:
        raise BadInputError(path, "rebuilding a Keras graph needs the Keras graph converter, which this install lacks") from None
    return KerasGraphNet(json.loads(arch["keras_config"]), where=str(path), input_scale=arch.get("input_scale", 1.0),
                         mean=arch.get("mean"), std=arch.get("std"))


def _rebuild_arch(arch: dict[str, Any], path: Path, callable_name: str | None) -> nn.Module:
    """The module of an --arch record: built by the callable the caller names, which must be the recorded one
    (the record's kwargs are data for it); the file alone never picks code to import."""
    if callable_name is None:
        raise BadInputError(path, f"holds a B' of --arch {arch.get('arch')}; a file never chooses the code that runs: "
                                  f"name it, load_masked(path, arch={arch.get('arch')!r}), or pass the module built")
    if callable_name != arch.get("arch"):
        raise BadInputError(path, f"holds a B' of --arch {arch.get('arch')}, not of {callable_name}")
    from ..convert.torch_sources import build_arch  # lazy: the core never imports the converter at import time

    return build_arch(callable_name, arch.get("arch_kwargs"))


def _rebuild_source(arch: dict[str, Any], path: Path) -> nn.Module:
    """The module of a recorded ONNX graph / .pt2 program (the same file: its sha256 is checked)."""
    from ..convert.loading import read_model_file  # lazy: the core never imports the converter at import time
    from ..data.files import file_sha256

    source = Path(arch["path"])
    if not source.is_file() or file_sha256(source) != arch["sha256"]:
        raise BadInputError(path, f"was pruned from {source}, which is missing or has changed (sha256); give the model as "
                                  "--model with it (or load_masked(path, module))")
    return read_model_file(source).model


def keras_graph_writer(model: nn.Module):
    """The full-model Keras 2 .h5 writer for Keras-origin nets (`convert.keras_graph.write_keras_graph`, with the
    pruned layer's mask), or None (a plain torch module, or a converter without it)."""
    if getattr(model, "keras_config", None) is None:
        return None
    try:
        from ..convert.keras_graph import write_keras_graph as write  # lazy, as above
    except ImportError:
        return None

    def write_pruned(pruned: MaskedNet, target: Path) -> None:
        write(pruned.net, target, {pruned.layer: pruned.channel_mask.detach().cpu()})

    return write_pruned
