"""The default pruned layer of a torch model: the feature map that the classifier's global pooling or flatten reads.

Fine-Pruning prunes the last convolutional stage's output (BackdoorBench's `layer4`, TrojanZoo's pooled final
feature map, the lab's conv_3 ranked on pool_3). For a model written in torch that is found from one recorded
forward pass, not from names:

1. the classifier is the first `nn.Linear` called after the last convolution; it reads a batch X of shape (N, F);
2. X is some module's 4-d output T, flattened (`T.flatten(1)`, same values), or T pooled globally by a function
   (`F.adaptive_avg_pool2d(T, 1)`, `T.mean((2, 3))`, `T.amax((2, 3))`); the latest such T is taken;
3. where T is the output of the classifier's pooling module, one that pools globally (output 1x1) or an adaptive
   one (torchvision VGG's `AdaptiveAvgPool2d(7)`), the feature map is that pooling's input instead (and the pooling
   module, right after it, becomes the ranking point; where no module made that input, the pooling module is named);
4. of the modules whose output is that very tensor (a ResNet's `layer4`, `layer4.1` and `layer4.1.relu`), the
   outermost is named: `layer4`.

None where there is no such point (no Linear after the last convolution, a classifier that reads something else, a
module that runs more than once): the caller keeps the last convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class _Call:
    """One module call of the recorded pass: its name, input, output (the object) and the output's value then."""

    name: str
    module: nn.Module
    input_id: int | None
    input_value: torch.Tensor | None
    output: torch.Tensor
    value: torch.Tensor


def record_calls(module: nn.Module, sample: torch.Tensor) -> list[_Call]:
    """Every named submodule call of one forward pass on `sample`, in the order the calls return."""
    calls: list[_Call] = []

    def hook(name: str):
        def record(m: nn.Module, inputs: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor):
                first = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
                calls.append(_Call(name, m, id(first) if first is not None else None,
                                   first.detach().clone() if first is not None else None, output, output.detach().clone()))
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in module.named_modules() if name]
    try:
        with torch.inference_mode():
            module(sample)
    finally:
        for h in handles:
            h.remove()
    return calls


def _reads(x: torch.Tensor, t: torch.Tensor) -> bool:
    """Is the classifier input `x` (N, F) the 4-d `t` flattened, or pooled over all of (H, W)?"""
    if t.dim() != 4 or t.shape[0] != x.shape[0] or x.dim() != 2:
        return False
    if t[0].numel() == x.shape[1] and torch.equal(t.reshape(len(t), -1), x):
        return True
    if t.shape[1] != x.shape[1] or t.shape[2] * t.shape[3] == 1:
        return False
    if torch.equal(t.amax((2, 3)), x):
        return True
    mean = torch.nn.functional.adaptive_avg_pool2d(t, 1).flatten(1)
    return torch.equal(mean, x) or torch.allclose(mean, x, rtol=1e-5, atol=1e-6 * float(mean.abs().max()))


def _passes_through(call: _Call) -> bool:
    """The classifier's pooling module: a global one (output 1x1) or an adaptive one (torchvision's VGG and ResNet
    heads: `AdaptiveAvgPool2d(7)`, `(1, 1)`): its input is the feature map."""
    x, y, kind = call.input_value, call.value, type(call.module).__name__.lower()
    return ("pool" in kind and x is not None and x.dim() == 4 and y.dim() == 4 and x.shape[:2] == y.shape[:2]
            and (y.shape[2:] == (1, 1) or "adaptive" in kind))


def _outermost(calls: list[_Call], at: int) -> str:
    """Of the calls whose output is the object of call `at` with the same value, the least nested name (the latest
    of equals)."""
    same = [c for c in calls[: at + 1] if c.output is calls[at].output and torch.equal(c.value, calls[at].value)]
    return min(reversed(same), key=lambda c: c.name.count(".")).name


def feature_map_layer(module: nn.Module, sample: torch.Tensor) -> str | None:
    """The module whose output the classifier's global pooling or flatten reads (see the module doc), or None."""
    try:
        calls = record_calls(module, sample)
    except Exception:  # noqa: BLE001 - the model's own error: prepare's checked forward pass reports it
        return None
    convs = [i for i, c in enumerate(calls) if isinstance(c.module, nn.modules.conv._ConvNd)]
    heads = [i for i, c in enumerate(calls) if convs and i > convs[-1] and isinstance(c.module, nn.Linear)]
    if not heads or calls[heads[0]].input_value is None:
        return None
    x = calls[heads[0]].input_value
    found = next((i for i in range(heads[0] - 1, -1, -1) if _reads(x, calls[i].value)), None)
    if found is None:
        return None
    if _passes_through(calls[found]):  # the pooling's input, where a module made it (else the pooling itself)
        producer = calls[found].input_id
        found = next((i for i in range(found - 1, -1, -1) if id(calls[i].output) == producer), found)
    name = _outermost(calls, found)
    return name if sum(c.name == name for c in calls) == 1 else None
