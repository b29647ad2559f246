"""Batches that never leave one image alone: a model may compute otherwise on a batch of one (a `squeeze()`, a
batch statistic), so a last batch of one image joins the batch before it, wherever a set has more images."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

Block = tuple[torch.Tensor, torch.Tensor]  # (images, labels)


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """(start, stop) of blocks of `size` rows over n rows; a last block of one row joins the block before."""
    bounds = list(range(0, n, size))
    if len(bounds) > 1 and n - bounds[-1] == 1:
        bounds.pop()
    return list(zip(bounds, [*bounds[1:], n]))


def batches(blocks: Iterable[Block], size: int | None) -> Iterator[Block]:
    """The rows of `blocks` in batches of `size` (None: as the blocks come), never a batch of one image after
    another batch (it joins the batch before: a model may compute otherwise on one image, e.g. a squeeze())."""
    held: Block | None = None
    for batch in _sized(blocks, size):
        if held is None:
            held = batch
        elif batch[0].shape[0] == 1:
            held = (torch.cat([held[0], batch[0]]), torch.cat([held[1], batch[1]]))
        else:
            yield held
            held = batch
    if held is not None:
        yield held


def _sized(blocks: Iterable[Block], size: int | None) -> Iterator[Block]:
    carry: Block | None = None
    for x, y in blocks:
        if carry is not None:
            x, y, carry = torch.cat([carry[0], x]), torch.cat([carry[1], y]), None
        if size is None:
            yield x, y
            continue
        full = x.shape[0] // size * size
        for start in range(0, full, size):
            yield x[start : start + size], y[start : start + size]
        if full < x.shape[0]:
            carry = (x[full:], y[full:])
    if carry is not None:
        yield carry
