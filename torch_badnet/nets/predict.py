"""The one inference path of every command: labels of a BadNet or a GoodNet, in the sweep trunk's batches.

On CPU each batch goes through the network channels_last (the layout oneDNN's convolutions are fastest in)
in batches of `FORWARD_BATCH` images (the activations stay in cache); under inference mode the pools skip
their indices (see `badnet.ReluMaxPool`). The sweep's trunk (`lab_head.extract_features`), eval, classify,
fine-tuning's evaluations, the demo and the GoodNet all batch through `inference_batches`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ..data.batching import spans
from ..engine.prunable import ONE_SCORE
from ..errors import BadInputError
from .goodnet import answers_labels

FORWARD_BATCH = 128  # images per forward pass on CPU: small batches keep the conv activations in cache
GPU_FORWARD_BATCH = 4096  # images per forward pass on a GPU: few, large kernels (~1 GB of activations; GoodNet on
# an H100: 534k images/s at 1024, 629k at 4096, same labels: benchmarks/gpu-h100-options.json)


def default_batch(device: torch.device) -> int:
    return FORWARD_BATCH if device.type == "cpu" else GPU_FORWARD_BATCH


def inference_batches(x: torch.Tensor, batch_size: int | None = None) -> Iterator[torch.Tensor]:
    """`x` (N, 3, 55, 47) in batches ready for the network: channels_last on CPU, as they are on a GPU; a last
    batch of one image joins the one before."""
    batch_size = batch_size or default_batch(x.device)
    for start, stop in spans(x.shape[0], batch_size):  # never a last batch of one image (`data.batching`)
        part = x[start:stop]
        yield part.contiguous(memory_format=torch.channels_last) if part.device.type == "cpu" and part.dim() == 4 else part


def top_class(logits: torch.Tensor) -> torch.Tensor:
    """The first maximum of each row, as `argmax(1)` (the same rule). On CPU numpy's vectorised argmax: on the
    lab's 1283 classes ~6x faster than torch's `max(1)`, whose row reduction is scalar (0.3 of 6 s in a sweep).
    One score per row is a BadInputError (`ONE_SCORE`): its argmax is 0 whatever the model says."""
    if logits.dim() == 2 and logits.shape[1] == 1:
        raise BadInputError("--model", ONE_SCORE)
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 2:
        return torch.from_numpy(np.argmax(logits.detach().numpy(), axis=1).astype(np.int64, copy=False))
    return logits.max(1).indices


@torch.inference_mode()
def labels_of(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """int64 labels of one batch: the first maximum of a BadNet's logits, or a GoodNet's own labels (a GoodNet
    module or graph)."""
    out = net(x)
    return out if answers_labels(net) else top_class(out)


@torch.inference_mode()
def labels_in_batches(net: nn.Module, x: torch.Tensor, batch_size: int | None = None,
                      map_batches: Callable[..., Iterable[torch.Tensor]] = map) -> torch.Tensor:
    """`labels_of` over `x` through `inference_batches`, the batches through `map_batches` (a thread pool's `map`
    runs them side by side, in order): int64 (N,) on x's device."""
    if x.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=x.device)
    return torch.cat(list(map_batches(lambda part: labels_of(net, part), inference_batches(x, batch_size))))
