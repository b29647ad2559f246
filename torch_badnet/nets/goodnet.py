"""The GoodNet G: run B and B' and answer B's class where they agree, else class N (backdoor detected)."""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

from ..engine.prunable import MaskedNet
from ..errors import BadInputError
from .badnet import BadNet, check_batch


class GoodNet(nn.Module):
    """Wraps one BadNet and a conv_3 channel mask; B and B' share one trunk pass (conv_1..pool_3).

    >>> g = GoodNet(bd, result.pruned(4)).eval()
    >>> g(x)                                   # int64 labels; g.detected_class (1283) = backdoor detected

    B' = B with the mask applied. Because masking a channel of conv_3 zeroes exactly that channel of pool_3,
    B' sees `features * mask`, so the expensive trunk runs once for both. `pruned` may also be a BadNet:
    if it carries B's weights only its mask is used; otherwise (a fine-tuned B') it runs as a second net.

    A BadNet `pruned` must have been derived from `model` (see torch_badnet.nets.pairing): if it records a
    fingerprint of another B's weights (pruned.pt / finetuned.pt of another model), or has another class
    count, construction raises `pairing.PairingError` (a ValueError). If it records none (e.g. a Keras .h5)
    and its weights differ from B's beyond zeroed conv_3 channels, a `pairing.UnpairedWarning` is issued.
    `allow_unpaired=True` skips the check, for a pair you know belongs together.
    """

    answers_labels = True  # its output is labels, not logits (`answers_labels`)

    def __init__(self, model: BadNet, pruned: torch.Tensor | BadNet, *, allow_unpaired: bool = False) -> None:
        """G of B (`model`) and B' (`pruned`): a pruned BadNet (e.g. `result.pruned(4)`, a loaded pruned.pt or a
        fine-tuned B'), or just a conv_3 channel mask (1 = kept, 0 = pruned) to apply to B.

        Both nets should be in eval mode; G's output is int64 labels in [0, N], N = `detected_class`. A B' made
        from another model raises `pairing.PairingError` (see the class docstring); `allow_unpaired=True` skips
        the check.

        >>> g = GoodNet(bd, result.pruned(4)).eval()
        >>> labels = g(tb.load_images(["face.png"]))      # 1283 (for the lab net) = backdoor detected
        """
        super().__init__()
        if (not isinstance(model, BadNet) and isinstance(model, nn.Module)) or isinstance(pruned, MaskedNet):
            self._generic(model, pruned, allow_unpaired)  # a BadNet pruned at another layer than conv_3 too
            return
        self.generic = False
        for name, net in (("model", model), ("pruned", pruned)):
            if not isinstance(net, (BadNet, torch.Tensor)) or (name == "model" and not isinstance(net, BadNet)):
                hint = " (a LoadedModel: pass its .model)" if hasattr(net, "model") else ""
                raise TypeError(f"GoodNet's {name} must be a BadNet{' or a mask tensor' if name == 'pruned' else ''}, "
                                f"got {type(net).__name__}{hint}")
        self.model = model
        self.pruned_model: BadNet | None = None
        if isinstance(pruned, BadNet):
            if pruned.input_scale != model.input_scale:
                raise ValueError(f"B takes input scale {model.input_scale:g} but B' {pruned.input_scale:g}; they must take the same input")
            if not allow_unpaired:
                _check_pair(model, pruned)
            if not same_weights(model, pruned):
                self.pruned_model = pruned
            mask = pruned.conv_3.mask
        else:
            mask = pruned
        if mask.shape != model.conv_3.mask.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {tuple(model.conv_3.mask.shape)}")
        self.register_buffer("pruned_mask", mask.detach().clone().float().to(model.conv_3.mask.device))

    def _generic(self, model: nn.Module, pruned: nn.Module, allow_unpaired: bool) -> None:
        """G of any two modules taking the same input (e.g. B and `result.pruned(x)`, a MaskedNet): both run in
        full. A B' recording the fingerprint of another B's weights raises `pairing.PairingError`."""
        if not isinstance(pruned, nn.Module):
            raise TypeError(f"GoodNet's pruned must be a torch module like the model, got {type(pruned).__name__}")
        self.generic = True
        self.model = model
        self.pruned_model = pruned
        if not allow_unpaired:
            from .pairing import FINGERPRINT_KEY, PairingError, weights_fingerprint

            recorded = getattr(pruned, FINGERPRINT_KEY, None)
            if isinstance(recorded, str) and recorded != weights_fingerprint(model):
                raise PairingError(f"B' records the weights fingerprint {recorded[:12]}... of another model")
        self._classes = getattr(model, "num_classes", None) or getattr(pruned, "num_classes", None)

    @property
    def num_classes(self) -> int:
        """Classes of G's output: B's classes plus the 'backdoor detected' class N."""
        return self.detected_class + 1

    @property
    def detected_class(self) -> int:
        """N, B's class count (for a generic model, known once a batch has run, or from `model.num_classes`)."""
        if self.generic:
            if self._classes is None:
                raise ValueError("the class count is known after the first batch (or set model.num_classes)")
            return int(self._classes)
        return self.model.num_classes

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of B and of B' for one (N, 3, 55, 47) batch, from a single trunk pass (and one head when B' is B).
        For generic modules: both nets run on the batch."""
        if self.generic:
            logits = self.model(x)
            self._classes = logits.shape[1]
            return logits, self.pruned_model(x)
        check_batch(x)
        features = self.model.trunk(x)
        if self.pruned_model is not None:
            return self.model.head(features), self.pruned_model(x)
        if not torch.jit.is_tracing() and bool((self.pruned_mask == 1).all()):  # B' is B: one head serves both
            logits = self.model.head(features)
            return logits, logits
        pruned = features * self.pruned_mask.view(1, -1, 1, 1)
        return self.model.head(features), self.model.head(pruned)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """int64 labels in [0, N]: B's class where B and B' agree, else N."""
        logits, pruned_logits = self.forward_both(x)
        return combine(logits.argmax(1), pruned_logits.argmax(1), self.detected_class)


def _check_pair(model: BadNet, pruned: BadNet) -> None:
    from .pairing import UnpairedWarning, check_pair

    if check_pair(model, pruned) == "unverified":
        warnings.warn("B' records no fingerprint of B and its weights differ from B's beyond zeroed conv_3 "
                      "channels: the pair could not be verified", UnpairedWarning, stacklevel=3)


def answers_labels(net: nn.Module) -> bool:
    """True for a net whose output is already labels (a GoodNet, or a GoodNet graph read from ONNX), not logits."""
    return bool(getattr(net, "answers_labels", False))


def goodnet_graph_refusal(path: str | os.PathLike[str]) -> BadInputError:
    """The line for a GoodNet graph given where a model B is needed (sweep, finetune, export, convert, B')."""
    return BadInputError(path, "is a GoodNet graph (output 'label': the class, or the number of classes for a detected "
                               "backdoor), not a model B: eval and classify take it as --model; to prune, fine-tune or "
                               "export, give its two models (--model B --pruned B', or tb.GoodNet(B, B'))")


def combine(labels: torch.Tensor, pruned_labels: torch.Tensor, detected_class: int) -> torch.Tensor:
    """G's rule on predictions: B's label where B' agrees, else `detected_class`."""
    return torch.where(labels == pruned_labels, labels, torch.full_like(labels, detected_class))


def same_weights(a: BadNet, b: BadNet) -> bool:
    """True if two BadNets hold identical weights (masks aside)."""
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa if not k.endswith("mask"))
