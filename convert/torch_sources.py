"""PyTorch models from files that are not torch-badnet checkpoints: a state_dict with the user's own class
(`--arch module:callable`), and whole pickled models (only with `--allow-pickle`).

The `--arch` callable is the user's own code, imported from their PYTHONPATH by the name they give on the
command line; the weights file is only read as tensors (`torch.load(weights_only=True)`, or the `safetensors`
package). A pickled model is refused unless the user opts in, as torch (`weights_only=False`) and Keras
(`safe_mode=False`) let them.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torch_badnet.data.files import check_is_file, file_sha256
from torch_badnet.errors import BadInputError, first_line
from torch_badnet.nets.checkpoint import LoadedModel
from torch_badnet.nets.pt_files import load_tensors, refuse_torchscript

ARCH_FLAG, KWARGS_FLAG, PICKLE_FLAG = "--arch", "--arch-kwargs", "--allow-pickle"
STATE_DICT_SUFFIXES = (".pt", ".pth", ".safetensors")
SAFE_ALTERNATIVES = ("safe alternatives: its state_dict with --arch module:callable (.pt, .pth or .safetensors), "
                     "a torch.export program (.pt2) or an ONNX graph")
PICKLE_WARNING = "warning: {path}: --allow-pickle: unpickling a whole model runs code stored in the file; use it only for a file you trust"


def parse_arch_kwargs(text: str | dict[str, Any] | None) -> dict[str, Any]:
    """--arch-kwargs: a JSON object (or already a dict), {} when absent."""
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        return dict(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(KWARGS_FLAG, f"not a JSON object ({first_line(exc)})") from None
    if not isinstance(value, dict):
        raise BadInputError(KWARGS_FLAG, f"not a JSON object (got {type(value).__name__}), e.g. '{{\"num_classes\": 10}}'")
    return value


def build_arch(arch: str, kwargs: dict[str, Any] | str | None = None) -> nn.Module:
    """`module:callable` imported by name and called with `kwargs`: the user's module (fresh weights)."""
    module_name, sep, attr = arch.partition(":")
    if not sep or not module_name or not attr:
        raise BadInputError(ARCH_FLAG, f"{arch!r} is not module:callable (e.g. mypkg.models:resnet18)")
    kwargs = parse_arch_kwargs(kwargs)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise BadInputError(ARCH_FLAG, f"no module named {exc.name!r} (is it on PYTHONPATH?)") from None
        raise BadInputError(ARCH_FLAG, f"importing {module_name!r} failed: {first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module raised while being imported
        raise BadInputError(ARCH_FLAG, f"importing {module_name!r} failed: {type(exc).__name__}: {first_line(exc)}") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise BadInputError(ARCH_FLAG, f"module {module_name!r} has no {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise BadInputError(ARCH_FLAG, f"{arch} is not callable")
    try:
        net = target(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's callable raised
        raise BadInputError(KWARGS_FLAG if kwargs else ARCH_FLAG,
                            f"{arch}(**{json.dumps(kwargs, sort_keys=True)}) raised {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(net, nn.Module):
        raise BadInputError(ARCH_FLAG, f"{arch} returned a {type(net).__name__}, not a torch nn.Module")
    return net


def import_roots(arch: str | None) -> list[str]:
    """The sys.path folders from which this process would import `arch`'s module (its top-level package's), for
    workers that must import the same code (a batch's, on Ray: its workers see neither this PYTHONPATH nor the
    tests' or scripts' folders). Nothing is imported; [] where it is not found here (the worker's import says why)."""
    import importlib.util

    top = (arch or "").partition(":")[0].split(".")[0]
    if not top:
        return []
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    places = list(spec.submodule_search_locations or []) or [spec.origin or ""]
    return list(dict.fromkeys(os.path.dirname(p) for p in places if os.path.isabs(p)))


def add_import_roots(roots: list[str]) -> None:
    """Put the driver's `import_roots` first on this worker's sys.path (those it lacks and that exist here)."""
    missing = [r for r in roots if r not in sys.path and os.path.isdir(r)]
    if missing:
        sys.path[:0] = missing
        importlib.invalidate_caches()


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state_dict file as tensors: .safetensors with the safetensors package, .pt/.pth with a weights_only load
    (a dict of tensors, or one under 'state_dict' / 'model_state_dict' as training checkpoints keep it)."""
    return _read_weights(path)[0]


def _read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(the state_dict, the --arch record of a checkpoint `save_arch_checkpoint` wrote, else None)."""
    path = check_is_file(path)
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise BadInputError(path, "reading .safetensors needs the safetensors package: "
                                      "pip install 'torch-badnet[safetensors]'") from None
        try:
            return load_file(str(path), device="cpu"), None
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError
            raise BadInputError(path, f"not a readable safetensors file ({first_line(exc)})") from None
    if path.suffix.lower() not in STATE_DICT_SUFFIXES:
        raise BadInputError(path, f"{ARCH_FLAG} takes a state_dict file ({', '.join(STATE_DICT_SUFFIXES)}), not '{path.suffix}'")
    try:
        payload = load_tensors(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, AttributeError) as exc:
        if isinstance(exc, pickle.UnpicklingError):
            raise BadInputError(path, f"holds pickled Python objects, not only tensors: refused ({SAFE_ALTERNATIVES})") from None
        raise BadInputError(path, f"not a readable torch file ({first_line(exc)})") from None
    state = _state_dict_of(payload)
    if state is None:
        raise BadInputError(path, "holds no state_dict (expected a dict of tensor names to tensors)")
    return state, arch_record(payload)


def _state_dict_of(payload: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(payload, dict) and payload and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()):
        return payload
    if isinstance(payload, dict):
        for key in ("state_dict", "model_state_dict"):
            inner = _state_dict_of(payload.get(key))
            if inner is not None:
                return inner
    return None


def load_state_into(net: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike[str], arch: str) -> None:
    """Load `state` into `net` exactly: the first missing key, unexpected key or shape mismatch is one line."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise BadInputError(path, f"does not fit {arch}: missing key {missing[0]!r}" + _more(missing))
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise BadInputError(path, f"does not fit {arch}: unexpected key {unexpected[0]!r}" + _more(unexpected))
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise BadInputError(path, f"does not fit {arch}: {key!r} has shape {tuple(state[key].shape)}, "
                                      f"the module's is {tuple(ref.shape)}")
    net.load_state_dict(state, strict=True)


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def load_arch(path: str | os.PathLike[str], arch: str, kwargs: dict[str, Any] | str | None = None) -> LoadedModel:
    """`--arch module:callable [--arch-kwargs JSON] --model weights`: the user's module with the file's weights. A
    checkpoint `convert` wrote for an --arch model gives its kwargs (unless given) and its input shape; it must
    name the same callable."""
    state, record = _read_weights(path)
    if record is not None and record["arch"] != arch:
        raise BadInputError(path, f"holds the weights of --arch {record['arch']}, not of {arch}")
    if record is not None and (kwargs is None or kwargs == ""):
        kwargs = record["arch_kwargs"]
    kwargs = parse_arch_kwargs(kwargs)
    net = build_arch(arch, kwargs)
    load_state_into(net, state, path, arch)
    net.eval()
    if record is not None and record.get("input_shape"):
        net.input_shape = tuple(record["input_shape"])
    return LoadedModel(net, str(path), "arch", file_sha256(path), metadata={"arch": arch, "arch_kwargs": kwargs})


def save_arch_checkpoint(loaded: LoadedModel, path: str | os.PathLike[str]) -> None:
    """An --arch model as a torch-badnet .pt: its state_dict, the callable and kwargs that build it, its input
    shape where known, and its source file (path, sha256). Reading it back needs --arch naming the same callable:
    torch-badnet imports code only by the name the user gives, never by one a file holds."""
    import io

    from torch_badnet.data.files import write_bytes
    from torch_badnet.nets.checkpoint import ARCH, FORMAT, FORMAT_VERSION

    shape = getattr(loaded.model, "input_shape", None)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "architecture": ARCH,
               "arch": loaded.metadata["arch"], "arch_kwargs": json.dumps(loaded.metadata["arch_kwargs"], sort_keys=True),
               "input_shape": None if shape is None else [int(v) for v in shape],
               "state_dict": {k: v.detach().cpu().clone() for k, v in loaded.model.state_dict().items()},
               "metadata": {"source": loaded.path, "source_format": loaded.source_format, "source_sha256": loaded.source_sha256}}
    buffer = io.BytesIO()  # as checkpoint.save_checkpoint: reproducible bytes
    torch.save(payload, buffer)
    write_bytes(path, buffer.getvalue())


def arch_record(payload: Any) -> dict[str, Any] | None:
    """{arch, arch_kwargs (a dict), input_shape} of a checkpoint `save_arch_checkpoint` wrote, else None."""
    from torch_badnet.nets.checkpoint import ARCH, FORMAT

    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("architecture") != ARCH:
        return None
    shape = payload.get("input_shape")
    shape = shape if isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape) else None
    return {"arch": str(payload.get("arch")), "arch_kwargs": parse_arch_kwargs(payload.get("arch_kwargs")), "input_shape": shape}


def explain_torch_file(path: str | os.PathLike[str], allow_pickle: bool = False) -> LoadedModel | None:
    """A .pt/.pth file that is not a torch-badnet checkpoint: a whole pickled model (loaded only with
    `allow_pickle`, after a warning), else a BadInputError saying what the file is and what takes it.
    Returns None when the file is none of these (the caller's own error stands)."""
    path = Path(path)
    try:
        payload = load_tensors(path)
    except pickle.UnpicklingError:
        if allow_pickle:
            return load_pickled(path)
        raise BadInputError(path, f"is a pickled Python object (a whole model, torch.save(model)?), which could run code "
                                  f"when loaded: refused; {SAFE_ALTERNATIVES}; or {PICKLE_FLAG} if you trust the file") from None
    except BadInputError:
        raise  # a TorchScript archive: load_tensors's line
    except Exception:  # noqa: BLE001 - not a torch file at all: the checkpoint reader's error stands
        return None
    from torch_badnet.nets.checkpoint import FORMAT
    from torch_badnet.nets.pt_files import MASKED_FORMAT as MASKED
    from torch_badnet.nets.pt_files import not_a_checkpoint

    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return None  # a checkpoint of ours with a bad field: the checkpoint reader's line says which
    if isinstance(payload, dict) and payload.get("format") == MASKED or _state_dict_of(payload) is not None:
        raise not_a_checkpoint(path, payload)  # what it is and what takes it (the same line as the checkpoint reader's)
    return None


def load_pickled(path: str | os.PathLike[str]) -> LoadedModel:
    """torch.load(weights_only=False) of a whole model, after the one-line warning (--allow-pickle only)."""
    refuse_torchscript(path)  # torch.load would hand it to torch.jit.load, which runs its code
    print(PICKLE_WARNING.format(path=path), file=sys.stderr, flush=True)
    try:
        net = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - unpickling runs the file's code, which may raise anything
        raise BadInputError(path, f"unpickling failed: {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(net, nn.Module):
        raise BadInputError(path, f"unpickled a {type(net).__name__}, not a torch nn.Module")
    return LoadedModel(net.float().eval(), str(path), "pickle", file_sha256(path))
