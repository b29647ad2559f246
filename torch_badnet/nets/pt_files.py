""".pt files that are not torch-badnet model checkpoints: what they are, and what takes them (one line each).

A model checkpoint (`checkpoint.FORMAT`) is what `--model` and `convert` read; the other .pt files people have
are a generic model's B' (the sweep's pruned.pt: `--pruned`), a plain state_dict or a training checkpoint (no
architecture: the Python API or `--arch`), a whole pickled model (never unpickled: it can run code), or a
TorchScript archive (never loaded: it runs code stored in the file, and a scripted module takes no hooks).
Every .pt reader loads through `load_tensors`.
"""

from __future__ import annotations

import os
import re
import zipfile
from typing import Any

from ..errors import BadInputError, first_line

MASKED_FORMAT = "torch-badnet-masked"  # the `format` of engine/saving.py's pruned.pt of a generic model (engine.saving.FORMAT)
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net")
ARCH_ADVICE = ("give --arch module:callable that builds its module (or load it in Python and pass the module to the "
               "API, tb.prune_sweep(module, ...))")


TORCHSCRIPT_ADVICE = ("give its state_dict with --arch module:callable, a torch.export program (.pt2) or an ONNX graph "
                      "(or pass the Python module to the API)")


def load_tensors(path: str | os.PathLike[str]) -> Any:
    """`torch.load(path, weights_only=True)` onto the CPU, after refusing a TorchScript archive in one line (torch
    itself would warn and hand it to torch.jit.load, which refuses weights_only with advice to unpickle)."""
    import torch

    refuse_torchscript(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def refuse_torchscript(path: str | os.PathLike[str]) -> None:
    """A BadInputError (one line) where `path` is a TorchScript archive."""
    if is_torchscript(path):
        raise BadInputError(path, "is a TorchScript archive (torch.jit.save of a scripted or traced module), which "
                                  "torch-badnet does not load: it runs code stored in the file, and a scripted module "
                                  f"takes no forward hooks, which pruning needs; {TORCHSCRIPT_ADVICE}")


def is_torchscript(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a TorchScript archive: a zip with constants.pkl in its top folder (torch.load's own test)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def refused_pickle(path: str | os.PathLike[str], exc: BaseException) -> BadInputError:
    """The one-line error for a .pt file that torch's weights_only load refuses."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        name = found[1]
        whole = name.startswith("torch.nn.") or "Module" in name or "." in name and name.split(".")[-1][:1].isupper()
        what = f"a pickled {name} object" + (" (a whole model saved with torch.save(model))" if whole else "")
        return BadInputError(path, f"holds {what}, which torch-badnet never unpickles (unpickling can run code): save "
                                   f"model.state_dict() instead and {ARCH_ADVICE}")
    return BadInputError(path, f"not a loadable .pt file (refused by torch's weights_only load: {first_line(exc)})")


def not_a_checkpoint(path: str | os.PathLike[str], payload: Any) -> BadInputError:
    """The one-line error for a loadable .pt file that is not a model checkpoint: what it is, what takes it."""
    if isinstance(payload, dict) and payload.get("format") == MASKED_FORMAT:
        arch = payload.get("architecture") if isinstance(payload.get("architecture"), dict) else {}
        of = f" of a {arch['class']}" if isinstance(arch.get("class"), str) else " of a Keras model" if arch.get("kind") == "keras" else ""
        return BadInputError(path, f"is a pruned model B' (the sweep's pruned.pt{of}, pruned at layer "
                                   f"{payload.get('layer')!r}), not a model B: give it to --pruned, with its model as "
                                   "--model (and --arch if it has one), or load it with torch_badnet.engine.saving.load_masked")
    if isinstance(payload, dict) and payload and all(_is_tensor(v) for v in payload.values()):
        return BadInputError(path, f"is a state_dict (weights without their architecture): {len(payload)} tensors; "
                                   f"{ARCH_ADVICE}")
    if isinstance(payload, dict):
        key = next((k for k in STATE_KEYS if isinstance(payload.get(k), dict)), None)
        if key is not None:
            return BadInputError(path, f"is a training checkpoint (a state_dict under {key!r}: weights without their "
                                       f"architecture): {ARCH_ADVICE}")
    kind = type(payload).__name__
    return BadInputError(path, f"holds a {kind} that is not a torch-badnet model checkpoint (those are written by "
                               "`torch-badnet convert` from a .h5/.keras/.onnx model, and by tb.save_checkpoint)")


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def check_savable(model: Any, path: str | os.PathLike[str]) -> None:
    """A one-line error unless `model` is what a model checkpoint records: a BadNet or a Keras-origin net (whose
    architecture the file can hold without code); a generic B' and a user's own module are named with what saves them."""

    if hasattr(model, "keras_config") or (hasattr(model, "num_classes") and hasattr(model, "input_scale")):
        return
    if hasattr(model, "channel_mask") and hasattr(model, "layer"):
        raise BadInputError(path, "is to hold a pruned generic model B' (a MaskedNet), which a model checkpoint cannot: save it "
                                  "with torch_badnet.engine.saving.save_masked(b_prime, path), or result.save(DIR)")
    kind = f"a {type(model).__name__}"
    raise BadInputError(path, f"tb.save_checkpoint writes a BadNet or a Keras-origin model (tb.load_model's), not {kind}, "
                              "whose architecture it cannot record: save torch.save(module.state_dict(), path) and rebuild "
                              "the module in code (or with --arch MODULE:CALLABLE)")
