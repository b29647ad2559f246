"""Is a generic B' derived from B? The pairing check and the loading of a generic B' for fine-tuning.

A generic B' is a `MaskedNet` (B's module, a channel mask on one layer). The same rules as the lab's
(`torch_badnet.pairing`):

- B' records B's fingerprint (`result.pruned(x)`, pruned.pt, finetuned.pt): it must equal the fingerprint of
  B's weights, else `PairingError`;
- B' records none: it is 'derived' when its weights equal B's apart from pruned channels it zeroes, 'unverified'
  otherwise.

On disk a generic B' is the sweep's pruned.pt (state_dict, mask, layer; loaded into a copy of B's module, so no
code from the file runs) or, for a Keras-origin B, pruned.h5: a Keras model whose pruned channels have kernel and
bias zeroed, from which the layer and the mask are read back.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import BadInputError
from ..nets.pairing import Pairing, PairingError, recorded_pairing, require_derived
from .prunable import MaskedNet, default_layer, is_conv_like

MASKED_SUFFIXES = (".pt", ".pth")


def classes_of(module: nn.Module) -> int | None:
    """A module's class count where it says (a KerasGraphNet, a BadNet, a MaskedNet of one), else None."""
    value = getattr(module, "num_classes", None)
    return int(value) if isinstance(value, int) else None


def check_generic_pair(model: nn.Module, pruned: MaskedNet) -> Pairing:
    """'verified' (the fingerprints match), 'derived' (no fingerprint, B's weights but zeroed pruned channels) or
    'unverified' (no fingerprint, other weights). Raises PairingError when the fingerprints or the class counts differ."""
    if not isinstance(pruned, MaskedNet):
        raise TypeError(f"a generic B' is a MaskedNet (result.pruned(x), engine.saving.load_masked), got {type(pruned).__name__}")
    ours, theirs = classes_of(model), classes_of(pruned)
    if ours is not None and theirs is not None and ours != theirs:
        raise PairingError(f"B' has {theirs} classes but B has {ours}")
    return recorded_pairing(model, pruned) or ("derived" if differs_only_in_pruned_channels(model, pruned) else "unverified")


def differs_only_in_pruned_channels(model: nn.Module, pruned: MaskedNet) -> bool:
    """True if every weight of B' equals B's, except the pruned layer's pruned channels, which B' may zero (a
    Keras B' bakes pruning into kernel and bias)."""
    ours, theirs = model.state_dict(), pruned.net.state_dict()
    if ours.keys() != theirs.keys():
        return False
    off = (pruned.channel_mask == 0).cpu()
    for name, value in ours.items():
        value, other = value.detach().cpu(), theirs[name].detach().cpu()
        if value.shape != other.shape:
            return False
        if name.startswith(pruned.layer + ".") and value.dim() >= 1 and value.shape[0] == off.numel():
            same = (value == other).reshape(len(off), -1).all(1)
            zeroed = (other == 0).reshape(len(off), -1).all(1)
            if not bool((same | (off & zeroed)).all()):
                return False
        elif not torch.equal(value, other):
            return False
    return True


def is_masked_file(path: str | os.PathLike[str]) -> bool:
    """Is `path` a generic B' (the sweep's pruned.pt / finetuned.pt of a generic model)?"""
    from .saving import read_masked

    if Path(path).suffix.lower() not in MASKED_SUFFIXES:
        return False
    try:
        read_masked(path)
    except BadInputError:
        return False
    return True


def load_generic_pruned(path: str | os.PathLike[str], model: nn.Module, model_path: str | os.PathLike[str] | None = None,
                        allow_unpaired: bool = False, log: Callable[[str], None] | None = None) -> MaskedNet:
    """B' for the generic B `model` (read from `model_path`), as a MaskedNet with `source` set: a generic pruned.pt
    loaded into a copy of B's module, or (a Keras-origin B) a Keras file with zeroed channels. Unless
    `allow_unpaired`, a B' of another model is a BadInputError naming both files; an unverifiable pair is one
    warning line through `log`."""
    from ..convert.loading import KERAS_SUFFIXES  # lazy: the core never imports the converter at import time
    from ..data.files import file_sha256
    from ..nets.checkpoint import ModelSource
    from ..nets.pruned_record import read_pruned_record
    from ..nets.rescale import check_pruned_record

    model_name = f"--model {model_path}" if model_path else "--model"
    check_pruned_record(read_pruned_record(path), model, model_name)  # the preprocessing of its sweep
    suffix = Path(path).suffix.lower()
    if suffix in MASKED_SUFFIXES:
        pruned, source_format = _from_masked_file(path, model, model_name), "pt"
    elif suffix in KERAS_SUFFIXES:  # a Keras-origin model's B' (pruned.h5)
        pruned, source_format = _from_keras_file(path, model, model_name), "keras"
    else:
        raise BadInputError(path, f"--pruned of {model_name} takes the sweep's pruned.pt (or, for a Keras model, its "
                                  "pruned.h5); an exported .onnx of B' or of the GoodNet runs alone as --model")
    pruned.source = ModelSource(str(path), file_sha256(path), source_format)
    if not allow_unpaired:
        require_derived(path, model_name, lambda: check_generic_pair(model, pruned), log,
                        "it records no fingerprint, and its weights differ from the model's")
    return pruned


def _from_masked_file(path: str | os.PathLike[str], model: nn.Module, model_name: str) -> MaskedNet:
    from .saving import load_masked, read_masked

    payload = read_masked(path)
    if payload["layer"] not in dict(model.named_modules()):
        raise BadInputError(path, f"prunes layer {payload['layer']!r}, which {model_name} does not have: it was not derived from it")
    try:
        return load_masked(path, copy.deepcopy(model).cpu().eval())
    except BadInputError as exc:
        raise BadInputError(path, f"does not fit {model_name}: it was not derived from it ({exc.problem})") from None


def _from_keras_file(path: str | os.PathLike[str], model: nn.Module, model_name: str) -> MaskedNet:
    """A Keras B' (the sweep's pruned.h5) as a copy of B (B's preprocessing) with B''s weights: the one Conv2D
    whose channels B' zeroes (kernel and bias all zero) and B does not gives the layer and the mask (none: B's
    last Conv2d, nothing pruned)."""
    from ..convert import read_model_file as load  # lazy: the core never imports the converter at import time
    from ..nets.rescale import match_input_scale

    if getattr(model, "keras_config", None) is None:
        raise BadInputError(path, f"a Keras B' needs a Keras {model_name}; give the sweep's pruned.pt")
    loaded = load(path)
    ours, theirs = model.state_dict(), loaded.model.state_dict()
    if type(loaded.model) is not type(model) or ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
        raise BadInputError(path, f"has another architecture than {model_name}: it was not derived from it")
    net = copy.deepcopy(model).cpu().eval()
    net.load_state_dict(theirs)
    match_input_scale(net, path, loaded.input_scale, model)
    zeroed = {name: mask for name, module in net.named_modules() if name and is_conv_like(module)
              for mask in [_zeroed_channels(module, model.get_submodule(name))] if mask is not None}
    if len(zeroed) > 1:
        raise BadInputError(path, f"zeroes channels of several layers ({', '.join(zeroed)}); Fine-Pruning prunes one")
    layer, mask = next(iter(zeroed.items())) if zeroed else (default_layer(net), None)
    channels = model.get_submodule(layer).weight.shape[0]
    return MaskedNet(net, layer, torch.ones(channels) if mask is None else mask).eval()


def _zeroed_channels(pruned: nn.Module, base: nn.Module) -> torch.Tensor | None:
    """The 0/1 mask of the output channels whose kernel and bias `pruned` zeroes and `base` does not, or None."""
    weight, bias = getattr(pruned, "weight", None), getattr(pruned, "bias", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        return None
    off = (weight.detach().flatten(1) == 0).all(1)
    if isinstance(bias, torch.Tensor):
        off &= bias.detach() == 0
    base_off = (base.weight.detach().flatten(1) == 0).all(1)
    if getattr(base, "bias", None) is not None:
        base_off &= base.bias.detach() == 0
    off &= ~base_off
    return (~off).float() if bool(off.any()) else None


def first_conv(module: nn.Module) -> str | None:
    """The first Conv2d-like layer in `named_modules()` order (a Keras model's first Conv2D), or None."""
    return next((name for name, m in module.named_modules() if name and isinstance(m, nn.modules.conv._ConvNd)), None)

