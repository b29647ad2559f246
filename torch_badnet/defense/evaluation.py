"""B' and its GoodNet on whole lab files, with the sweep's metric names (for B'_ft and other single nets)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.batching import batches
from ..data.lab_sets import ArraySet, LabDataset, read_ahead_pays
from ..nets.badnet import BadNet
from ..nets.goodnet import GoodNet, answers_labels
from ..nets.precision import exact_float32
from ..nets.predict import inference_batches, top_class
from .metric_columns import Column
from .metrics import step_counts
from .sanity import SetFacts
from .sweep import DataSpec, metric_curves, open_set


@torch.inference_mode()
def b_and_pruned_labels(goodnet: GoodNet | torch.nn.Module, dataset: LabDataset | ArraySet,
                        device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels (2, n): row 0 = B, row 1 = B'), file labels (n,), from one pass over a set (`goodnet` a plain net
    returning logits: both rows are its labels). A GoodNet graph (`answers_labels`) holds only G's labels: where
    it answers a class both rows hold it, where it answers N (flagged) the rows differ (N, N + 1), so that
    `step_counts` gives G's own rates.

    A file is read ahead in a background thread while the network runs, where that pays (`lab_sets.read_ahead_pays`).
    """
    rows, truth = [], []
    for x, y in batches(dataset.chunks(read_ahead=read_ahead_pays(device)), None):  # a chunk of one joins the one before
        for part in inference_batches(x.to(device)):
            if isinstance(goodnet, GoodNet):
                logits, pruned_logits = goodnet.forward_both(part)
                rows.append(torch.stack([top_class(logits), top_class(pruned_logits)]).cpu())
            elif answers_labels(goodnet):  # a GoodNet graph: G's labels, flagged ones as a disagreeing pair
                labels = goodnet(part)
                flagged = labels.eq(goodnet.detected_class)
                rows.append(torch.stack([labels, labels.masked_fill(flagged, goodnet.detected_class + 1)]).cpu())
            else:  # a single net (no B'): both rows are its labels
                rows.append(top_class(goodnet(part)).expand(2, -1).cpu())
        truth.append(y)
    return torch.cat(rows, 1), torch.cat(truth)


def evaluate_pruned(model: BadNet, pruned: BadNet, specs: Sequence[DataSpec], device: torch.device,
                    allow_unpaired: bool = False) -> dict[Column, float]:
    """Every sweep metric (B' and G: clean accuracy, attack success, ...) of one B' and its GoodNet on `specs`
    (`allow_unpaired` as in GoodNet)."""
    return evaluate_with_facts(model, pruned, specs, device, allow_unpaired)[0]


@exact_float32()
def evaluate_with_facts(model: BadNet, pruned: BadNet, specs: Sequence[DataSpec], device: torch.device,
                        allow_unpaired: bool = False) -> tuple[dict[Column, float], list[SetFacts]]:
    """`evaluate_pruned`, and what the sanity rules read of each set (its labels, B's hits) from the same pass."""
    goodnet = GoodNet(model, pruned, allow_unpaired=allow_unpaired).eval().to(device)
    metrics: dict[Column, float] = {}
    checks = {}
    if not isinstance(model, BadNet):  # a generic model: its data as given (see engine/run.py)
        shape = getattr(model, "input_shape", None)
        checks = {"input_shape": tuple(shape) if shape is not None else None, "guard": getattr(model, "keras_config", None) is not None}
    facts = []
    for spec in specs:
        with open_set(spec, getattr(model, "num_classes", None), **checks) as ds:
            labels, truth = b_and_pruned_labels(goodnet, ds, device)
        counts = step_counts(labels, truth)
        metrics.update({c: values[1] for c, values in metric_curves(spec, counts).items()})
        facts.append(SetFacts.of(spec.path, spec.kind, spec.split, truth.numpy(), counts.hits[0]))
    return metrics, facts
