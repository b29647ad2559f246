"""The prune sweep: B' predictions after pruning 0, 1, .., k channels, on any number of data sets.

`fast_sweep` runs the trunk once per set (pool_3 features cached, see `extract_features`) and then, per
step, only re-evaluates the head for inputs whose pruned channel is non-zero. fc_1 and conv_4 are linear in
pool_3 before their ReLUs, so their pre-activations are updated by subtracting the pruned channel's
contribution (one small GEMM) instead of being recomputed. On CPU the head's fc_2 and output GEMMs skip the
input columns that are zero on a whole block (`live_gemm`: the same bits as the dense GEMMs, about half the
work). `reference_sweep` is the plain procedure (mask + full forward per step) kept to prove the fast one right.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from ..errors import BadInputError
from ..nets.badnet import POOL3_CHANNELS, POOL3_SHAPE, BadNet
from ..nets.predict import FORWARD_BATCH, inference_batches, top_class
from .live_gemm import addmm_live, verified_group
from .pruning import mask_for, record_pool3

ROW_BLOCK = 512  # rows per head evaluation on CPU: keeps the logits (rows x classes) in the L2 cache
GPU_ROW_BLOCK = 16384  # rows per head evaluation on a GPU: few, large kernels
DENSE_SHARE = 0.5  # above this share of active inputs, update every row instead of gathering the active ones
INITIAL_BLOCK = 4096  # rows per block of the unpruned head pre-activations
CPU_TRUNK_BATCH = FORWARD_BATCH  # images per trunk pass on CPU (predict.FORWARD_BATCH, shared by every command)


@dataclass
class FeatureSet:
    """One data set reduced to its cached pool_3 features and labels (on the sweep's device)."""

    name: str
    features: torch.Tensor  # (N, 60, 5, 4) float32
    labels: torch.Tensor  # (N,) int64


def resolve_device(name: str | torch.device) -> torch.device:
    """'auto' picks CUDA when available; 'cpu', 'cuda' and 'cuda:N' are taken as they are. Any other name, or CUDA
    without a GPU (or without GPU N), is a BadInputError naming --device (the CLI's one-line error)."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda" and not re.fullmatch(r"cuda:\d+", name):
        raise BadInputError("--device", f"'{name}' is not a device; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise BadInputError("--device", f"--device {name} was asked for but no CUDA GPU is available")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise BadInputError("--device", f"{name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    return device


def prepare_model(model: BadNet, device: torch.device) -> BadNet:
    """Eval mode on `device`; channels_last on CPU, where it makes the trunk's convolutions faster.

    On a GPU, run inside `torch_badnet.nets.precision.exact_float32()` for the CPU's labels (no TF32).
    """
    model = model.eval().to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


def extract_features(model: BadNet, name: str, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], total: int,
                     device: torch.device) -> FeatureSet:
    """Run the trunk once over a chunked set; the pool_3 hook gathers the features.

    On CPU each chunk goes through the trunk in channels_last batches of `CPU_TRUNK_BATCH` images
    (`predict.inference_batches`, the batches of every other command); on a GPU a chunk is one batch.
    """
    labels: list[torch.Tensor] = []

    def pixels() -> Iterable[torch.Tensor]:
        for x, y in chunks:
            labels.append(y)
            if device.type != "cpu":
                yield x
                continue
            yield from inference_batches(x, CPU_TRUNK_BATCH)

    features = record_pool3(model, pixels(), total, device)
    return FeatureSet(name, features, torch.cat(labels).to(device))


class HeadUpdater:
    """The head of one BadNet rewritten for incremental pruning.

    pre = [fc_1 pre-activation (160) | conv_4 pre-activation (80*4*3)] is linear in the 60 pool_3 channels:
    pre = sum_c features[:, c] @ M[c] + bias, with M[c] a (20, 1120) matrix per channel.
    """

    def __init__(self, model: BadNet, pool: ThreadPoolExecutor | None = None) -> None:
        self.pool = pool  # CPU: threads for the row blocks of `predict` (`head_pool`), else None (one after another)
        fc_1, conv_4 = model.fc_1, model.conv_4
        eye = torch.eye(POOL3_CHANNELS * 20, device=fc_1.weight.device).view(-1, *POOL3_SHAPE)
        with torch.no_grad():
            conv_part = F.conv2d(eye, conv_4.weight).flatten(1)  # (1200, 960): response to each input unit
            fc_part = fc_1.weight.t()  # (1200, 160)
        self.per_channel = torch.cat([fc_part, conv_part], 1).view(POOL3_CHANNELS, 20, -1).contiguous()
        self.fc_2_bias, self.fc_2_weight_t = model.fc_2.bias, model.fc_2.weight.t().contiguous()
        self.output_bias, self.output_weight_t = model.output.bias, model.output.weight.t().contiguous()
        self.fc_1, self.conv_4 = fc_1, conv_4
        self.split = fc_1.out_features
        self.group = None  # the live-column GEMMs' group (CPU, where the BLAS is proven to sum that way), else dense
        if fc_1.weight.device.type == "cpu":
            shapes = ((model.fc_2.in_features, model.fc_2.out_features), (model.output.in_features, model.output.out_features))
            self.group = verified_group(ROW_BLOCK, shapes, torch.get_num_threads(), fc_1.weight.dtype)

    def initial(self, features: torch.Tensor) -> torch.Tensor:
        """pre for unpruned features, (N, 1120), from fc_1 and conv_4 themselves (5x fewer FLOPs than `M`)."""
        pre = torch.empty((features.shape[0], self.per_channel.shape[2]), dtype=features.dtype, device=features.device)
        for start in range(0, features.shape[0], INITIAL_BLOCK):
            block = features[start : start + INITIAL_BLOCK]
            pre[start : start + INITIAL_BLOCK, : self.split] = self.fc_1(block.flatten(1))
            pre[start : start + INITIAL_BLOCK, self.split :] = self.conv_4(block).flatten(1)
        return pre

    def predict(self, pre: torch.Tensor) -> torch.Tensor:
        """Labels from pre-activations, in row blocks (on `pool`'s threads side by side where it is set)."""
        if self.pool is not None and pre.device.type == "cpu":
            blocks = [pre[start : start + ROW_BLOCK] for start in range(0, pre.shape[0], ROW_BLOCK)]
            return torch.cat(list(self.pool.map(self.block_labels, blocks)))
        out = torch.empty(pre.shape[0], dtype=torch.int64, device=pre.device)
        rows = ROW_BLOCK if pre.device.type == "cpu" else GPU_ROW_BLOCK
        for start in range(0, pre.shape[0], rows):
            out[start : start + rows] = top_class(self.block_logits(pre[start : start + rows]))
        return out

    @torch.inference_mode()  # inference mode is per thread: a pool's thread enters it here
    def block_labels(self, block: torch.Tensor) -> torch.Tensor:
        """Labels of one row block of pre-activations."""
        return top_class(self.block_logits(block))

    def block_logits(self, block: torch.Tensor) -> torch.Tensor:
        """Logits of one row block of pre-activations. A full CPU block skips the zero columns of relu(conv_4)
        and of the hidden layer (`addmm_live`, proven for exactly `ROW_BLOCK` rows); other blocks run the dense
        GEMMs. Either way the dense GEMMs' bits."""
        full = self.group is not None and block.shape[0] == ROW_BLOCK
        linear = partial(addmm_live, group=self.group) if full else torch.addmm
        hidden = linear(self.fc_2_bias, block[:, self.split :].relu(), self.fc_2_weight_t)
        hidden.add_(block[:, : self.split]).relu_()
        return linear(self.output_bias, hidden, self.output_weight_t)


@torch.inference_mode()
def fast_sweep(model: BadNet, sets: Sequence[FeatureSet], order: Sequence[int], steps: int | None = None,
               progress: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """B' labels at every step 0..steps (step k = first k channels of `order` pruned), per set.

    Runs on the features' device; the labels come back on the CPU. On a busy CPU with several torch threads the
    head runs each row block on one torch thread, blocks side by side on as many Python threads (`head_pool`).

    Returns {set name: int64 tensor (steps + 1, N)}.
    """
    steps = len(order) if steps is None else steps
    device = sets[0].features.device if sets else torch.device("cpu")
    with head_pool(device) as pool:
        head = HeadUpdater(model, pool)  # inside head_pool: the live-column verdict is for the threads the head runs on
        states = []
        for s in sets:
            pre = head.initial(s.features)
            labels = torch.empty((steps + 1, s.labels.shape[0]), dtype=torch.int64, device=s.features.device)
            labels[0] = head.predict(pre)
            states.append((s, pre, labels, touched_rows(s.features)))
        for step, channel in enumerate(order[:steps], start=1):
            weights = head.per_channel[channel]
            for s, pre, labels, rows in states:
                _prune_step(head, s.features, channel, rows[channel], weights, pre, labels, step)
            if progress is not None:
                progress(step)
    return {s.name: labels.cpu() for s, _, labels, _ in states}


@contextlib.contextmanager
def head_pool(device: torch.device) -> Iterator[ThreadPoolExecutor | None]:
    """On a busy CPU (`machine_busy`) with n > 1 torch threads: torch on one thread (for the threads started here
    too) and n Python threads for the head's row blocks; torch's thread count is restored on exit. Else None: the
    blocks in turn, each op on torch's threads.

    Why (issue 34, benchmarks/README.md): the head's GEMMs and elementwise ops are small (512 rows or fewer), and
    split over torch's OpenMP threads each one ends at a barrier. Where other processes keep the cores busy, the
    other thread is often descheduled there, and a 0.4 ms GEMM took 16-24 ms: the prune phase of 2,080 images
    took 15-45 s instead of 0.6 s. A whole block per thread has no barrier inside. On an idle machine the
    OpenMP split is 10-30% faster, so it stays there. Bits: MKL's strict mode (set on import) makes every GEMM's
    sums independent of the thread count, the blocks are the same, and the live-column verdict is taken for the
    threads the head runs on (tests/test_live_gemm.py checks the labels both ways).
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or not machine_busy():
        yield None
        return
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="sweep-head") as pool:
            yield pool
    finally:
        torch.set_num_threads(threads)


def machine_busy() -> bool:
    """Whether other work keeps this machine's cores busy: a 1-minute load average of at least the number of
    cores + 1 (this process's own threads count at most the cores). False where the load is unknown."""
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1) + 1
    except (AttributeError, OSError):
        return False


def touched_rows(features: torch.Tensor) -> list[torch.Tensor]:
    """Per pool_3 channel, the indices (ascending) of the inputs on which it is non-zero.

    Found for all channels at once, so a sweep on a GPU waits for the device once per set, not once per step.
    """
    touched = features.flatten(2).ne(0).any(2)  # (N, 60)
    channel_and_row = touched.t().nonzero()  # sorted by channel, then row
    return list(channel_and_row[:, 1].split(touched.sum(0).tolist()))


def _prune_step(head: HeadUpdater, features: torch.Tensor, channel: int, rows: torch.Tensor,
                weights: torch.Tensor, pre: torch.Tensor, labels: torch.Tensor, step: int) -> None:
    """Remove one channel's contribution from `pre` and re-label the inputs it touched (`rows`; the others
    keep their labels)."""
    labels[step] = labels[step - 1]
    count = rows.shape[0]
    if count == 0:
        return
    if count > DENSE_SHARE * features.shape[0]:
        pre.addmm_(features[:, channel].flatten(1), weights, alpha=-1)
        labels[step] = head.predict(pre)
        return
    updated = torch.addmm(pre.index_select(0, rows), features[rows, channel].flatten(1), weights, alpha=-1)
    pre.index_copy_(0, rows, updated)
    labels[step, rows] = head.predict(updated)


@torch.inference_mode()
def reference_sweep(model: BadNet, pixel_sets: dict[str, torch.Tensor], order: Sequence[int],
                    steps: int | None = None, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """The plain procedure: for each step, mask the first k channels and run the full network on all pixels."""
    steps = len(order) if steps is None else steps
    original = model.conv_3.mask.detach().clone()
    result = {name: torch.empty((steps + 1, x.shape[0]), dtype=torch.int64) for name, x in pixel_sets.items()}
    try:
        for step in range(steps + 1):
            model.conv_3.mask.copy_(mask_for(order[:step], model.conv_3.out_channels))
            for name, x in pixel_sets.items():
                for start in range(0, x.shape[0], batch_size):
                    batch = x[start : start + batch_size].to(model.conv_3.mask.device)
                    result[name][step, start : start + batch_size] = model(batch).argmax(1).cpu()
    finally:
        model.conv_3.mask.copy_(original)
    return result
