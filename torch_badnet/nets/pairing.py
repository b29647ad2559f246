"""Is B' derived from B? A fingerprint of B's weights, recorded in every checkpoint made from B, and the check.

A GoodNet of B and a B' made from another model answers nonsense with confidence, so every place that pairs
them (the `GoodNet` module, the CLI's --pruned) asks `check_pair` first:

- B' records B's fingerprint (pruned.pt, finetuned.pt): it must equal the fingerprint of B's weights, else
  `PairingError`;
- B' records none (a Keras .h5 from elsewhere): it is accepted when its weights equal B's except for conv_3
  channels that B' zeroes (kernel and bias), which is how the lab prunes; otherwise the pair is UNVERIFIED.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Literal

import torch

from ..errors import BadInputError
from .badnet import BadNet

FINGERPRINT_KEY = "base_weights_sha256"  # checkpoint metadata key; the same name is the module attribute
Pairing = Literal["verified", "derived", "unverified"]


class PairingError(ValueError):
    """B' was derived from another model than B (or cannot be paired with it at all)."""


class UnpairedWarning(UserWarning):
    """B' carries no fingerprint and its weights do not show that it was pruned from B."""


def weights_fingerprint(model: BadNet) -> str:
    """sha256 over the model's weight tensors (masks excluded) in name order, as float32: equal weights, equal
    fingerprint, whatever the file format, device or mask."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.endswith("mask"):
            continue
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(values.shape)}\n".encode())
        digest.update(values.numpy().astype("<f4", copy=False).tobytes())
    return digest.hexdigest()


def base_fingerprint(model: BadNet) -> str | None:
    """The fingerprint of the B this model was derived from, if known (set by load_checkpoint or mark_derived)."""
    value = getattr(model, FINGERPRINT_KEY, None)
    return value if isinstance(value, str) else None


def mark_derived(derived: BadNet, base: BadNet) -> BadNet:
    """Record on `derived` that it was made from `base`; save_checkpoint writes it into the metadata."""
    setattr(derived, FINGERPRINT_KEY, weights_fingerprint(base))
    return derived


def check_pair(model: BadNet, pruned: BadNet) -> Pairing:
    """'verified' (fingerprints match), 'derived' (no fingerprint; B' = B with zeroed conv_3 channels) or
    'unverified' (no fingerprint, other weights). Raises PairingError when the fingerprints differ or the
    class counts do."""
    if pruned.num_classes != model.num_classes:
        raise PairingError(f"B' has {pruned.num_classes} classes but B has {model.num_classes}")
    return recorded_pairing(model, pruned) or ("derived" if differs_only_in_zeroed_channels(model, pruned) else "unverified")


def recorded_pairing(model: torch.nn.Module, pruned: torch.nn.Module) -> Pairing | None:
    """'verified' when B' records the fingerprint of B's weights, None when it records none; a PairingError when
    it records another model's (every kind of B', the lab's and `engine.pairing`'s generic one)."""
    recorded = base_fingerprint(pruned)
    if recorded is None:
        return None
    actual = weights_fingerprint(model)
    if recorded != actual:
        raise PairingError(f"B' records the weights fingerprint {recorded[:12]}... of another model; "
                           f"B's is {actual[:12]}...")
    return "verified"


def require_derived(path: str | os.PathLike[str], model_name: str, pairing: Callable[[], Pairing],
                    log: Callable[[str], None] | None, unverified_because: str) -> None:
    """The --pruned file `path` must be derived from `model_name`: `pairing()`'s PairingError becomes a
    BadInputError naming both files; an 'unverified' pair is one warning line through `log`, saying why."""
    try:
        verdict = pairing()
    except PairingError as exc:
        raise BadInputError(path, f"was not derived from {model_name} ({exc}); "
                                  "pass --allow-unpaired to use it anyway") from None
    if verdict == "unverified" and log:
        log(f"warning: {path}: could not verify that it was derived from {model_name} ({unverified_because})")


def differs_only_in_zeroed_channels(model: BadNet, pruned: BadNet) -> bool:
    """True if every weight of `pruned` equals `model`'s, except conv_3 channels whose kernel and bias are all
    zero in `pruned` (masks aside)."""
    a, b = model.state_dict(), pruned.state_dict()
    for name, value in a.items():
        if name.endswith("mask") or name.startswith("conv_3."):
            continue
        if not torch.equal(value.cpu(), b[name].cpu()):
            return False
    kernel, bias = pruned.conv_3.weight.detach().cpu(), pruned.conv_3.bias.detach().cpu()
    zeroed = (kernel.flatten(1) == 0).all(1) & (bias == 0)
    same = (kernel == model.conv_3.weight.detach().cpu()).flatten(1).all(1) & (bias == model.conv_3.bias.detach().cpu())
    return bool((same | zeroed).all())
