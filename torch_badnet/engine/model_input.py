"""What the data and the model become on their way into a generic sweep, each said in one line: pixels in the
model's parameter dtype, channels first (N, C, H, W), the model in eval mode.

The data otherwise reaches the model as given (no 0..255 rule, no rescaling): in-memory pixels are held as float32
(`lab_sets.ArraySet`, values unchanged) and given to the model in its parameters' dtype (float32 for most; a
float16 or float64 model gets float16 or float64); where that differs from the dtype the caller gave, a note says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import BadInputError


def parameter_dtype(module: nn.Module) -> torch.dtype:
    """The floating dtype of the model's parameters (float32 where it has none); several is a BadInputError."""
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    if len(dtypes) > 1:
        listed = ", ".join(sorted(_name(d) for d in dtypes))
        raise BadInputError("--model", f"the model's parameters have several dtypes ({listed}); give the defense a "
                                       "model of one dtype (model.float())")
    return dtypes.pop() if dtypes else torch.float32


def _name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


class InDtype:
    """A set (LabDataset / ArraySet) whose chunks come in `dtype`: the model's."""

    def __init__(self, dataset: Any, dtype: torch.dtype) -> None:
        self.dataset, self.dtype = dataset, dtype

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)

    def chunks(self, *args: Any, **kwargs: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        inner = self.dataset.chunks(*args, **kwargs)
        try:
            for x, y in inner:
                yield x.to(self.dtype), y
        finally:
            getattr(inner, "close", lambda: None)()  # a read-ahead thread stops with its generator


def for_model(module: nn.Module, datasets: Mapping[str, Any], log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The sets as the model takes them (its parameter dtype), with one note line for each conversion: a set given
    in another dtype (uint8 pixels become float32 values 0..255, not rescaled), a model in training mode (run in
    eval mode). A set in channels-last layout is a one-line BadInputError."""
    dtype = parameter_dtype(module)
    for ds in datasets.values():
        check_channels_first(module, ds)
    notes = []
    if module.training:
        notes.append("note: the model is in training mode; the defense runs it in eval mode (model.eval(): Dropout "
                     "off, BatchNorm with its running statistics)")
    for ds in datasets.values():
        given = getattr(ds, "given_dtype", None)
        if given is not None and _name(given) != _name(dtype):
            notes.append(f"note: {ds.path}: {_name(given)} pixels are given to the model as {_name(dtype)} (its "
                         "parameters' dtype), values unchanged, not rescaled")
    if dtype != torch.float32 and not any(_name(dtype) in n for n in notes):
        notes.append(f"note: the model's parameters are {_name(dtype)}: the data is given to it as {_name(dtype)}")
    for line in notes:
        if log:
            log(line)
    return dict(datasets) if dtype == torch.float32 else {k: InDtype(ds, dtype) for k, ds in datasets.items()}


def check_channels_first(module: nn.Module, dataset: Any) -> None:
    """Refuse, in one line, a set whose channels come last for a model whose first convolution takes them first
    (the defense takes (N, C, H, W), as torch does)."""
    first = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        return
    chunks = dataset.chunks(1)
    try:
        x = next(iter(chunks))[0]
    finally:
        getattr(chunks, "close", lambda: None)()
    c = first.in_channels
    if x.dim() == 4 and x.shape[1] != c and x.shape[3] == c:
        h, w = x.shape[1], x.shape[2]
        raise BadInputError(dataset.path, f"pixels have shape ({len(dataset)}, {h}, {w}, {c}), channels last (NHWC); "
                                          f"the model takes (N, C, H, W): give ({len(dataset)}, {c}, {h}, {w}) "
                                          "(x.permute(0, 3, 1, 2))")
