"""B' and its GoodNet on whole lab files, with the sweep's metric names (for B'_ft and other single nets)."""

from __future__ import annotations

from typing import Sequence

import torch

from .data import LabDataset
from .defense import DataSpec, metric_columns
from .goodnet import GoodNet
from .metrics import step_counts
from .model import BadNet
from .precision import exact_float32
from .predict import FORWARD_BATCH


@torch.inference_mode()
def b_and_pruned_labels(goodnet: GoodNet, dataset: LabDataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels (2, n): row 0 = B, row 1 = B'), file labels (n,), from one pass over a file."""
    rows, truth = [], []
    for x, y in dataset.chunks():
        for part in x.split(FORWARD_BATCH):
            logits, pruned_logits = goodnet.forward_both(part.to(device))
            rows.append(torch.stack([logits.argmax(1), pruned_logits.argmax(1)]).cpu())
        truth.append(y)
    return torch.cat(rows, 1), torch.cat(truth)


@exact_float32()
def evaluate_pruned(model: BadNet, pruned: BadNet, specs: Sequence[DataSpec], device: torch.device,
                    allow_unpaired: bool = False) -> dict[str, float]:
    """Every sweep metric (`test_clean_acc`, `goodnet_test_asr`, ...) of one B' and its GoodNet G on `specs`
    (`allow_unpaired` as in GoodNet)."""
    goodnet = GoodNet(model, pruned, allow_unpaired=allow_unpaired).eval().to(device)
    metrics: dict[str, float] = {}
    for spec in specs:
        with LabDataset(spec.path, model.num_classes) as ds:
            labels, truth = b_and_pruned_labels(goodnet, ds, device)
        metrics.update({name: values[1] for name, values in metric_columns(spec, step_counts(labels, truth)).items()})
    return metrics
