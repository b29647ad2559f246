"""Fine-Pruning's second half: fine-tune B' on clean validation data with its pruned channels held at zero.

A seeded share of the validation set is held out for early stopping; the rest trains. Training is
deterministic on CPU for a given seed (fixed shuffles, deterministic algorithms), and gives the same bits
whatever the number of threads: oneDNN and MKL split a convolution or a matrix product differently for 1 and
2 threads, which changes the last bits of every gradient, and training amplifies them (a batch worker with one
thread fine-tuned other weights than `sweep` with two). So every operation runs on one thread, on fixed slices
of each batch (SLICE images) or of the held-out images, and the threads work on slices side by side; the
slices' gradients are summed in slice order.

Why the defaults (see FinetuneConfig) remove a backdoor that plain fine-tuning keeps: the backdoor's own
weights (e.g. those reading a trigger colour that clean faces never show) get no gradient from clean data,
so fine-tuning alone leaves them as they are; the L2 penalty shrinks exactly those weights while the clean
task keeps the rest. Training longer removes more, so the epoch kept is the last one whose held-out clean
accuracy is within `tolerance` points of the best, not the best one itself. conv_1 stays fixed: it reads
raw 0..255 pixels, so its weights are ~100x smaller than the others' and Adam's per-weight steps would wreck it.
Any other model keeps its first Conv2d fixed likewise (it reads the pixels at the model's own scale, which the
defense cannot see inside a module); `train_conv_1` trains it too.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..nets.badnet import BadNet
from ..nets.precision import deterministic_torch
from ..nets.predict import labels_in_batches
from .finetune_config import SGD_MOMENTUM, FinetuneConfig

HOLDOUT_SEED_OFFSET = 1_000_003  # the holdout split and the batch order use different streams of one seed
SLICE = 16  # images per slice of a training batch: one thread computes a slice's gradients


@dataclass
class TrainingResult:
    """The fine-tuned B' (best held-out epoch), the per-epoch history and the split sizes."""

    model: BadNet
    history: list[dict[str, float]] = field(default_factory=list)  # epoch, loss, holdout_acc
    best_epoch: int = 0
    train_images: int = 0
    holdout_images: int = 0


def effective_mask(model: BadNet) -> torch.Tensor:
    """Pruned channels of a B': its mask, plus conv_3 channels whose kernel and bias are all zero
    (a pruned Keras file bakes pruning into the weights)."""
    w, b = model.conv_3.weight.detach(), model.conv_3.bias.detach()
    zeroed = (w.flatten(1) == 0).all(1) & (b == 0)
    return model.conv_3.mask.detach().clone().masked_fill(zeroed.to(model.conv_3.mask.device), 0.0)


def holdout_split(n: int, share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices): a seeded random `share` of n images is held out (at least 1)."""
    generator = torch.Generator().manual_seed(seed + HOLDOUT_SEED_OFFSET)
    order = torch.randperm(n, generator=generator)
    held = holdout_size(n, share)
    if held >= n:
        raise ValueError(f"holdout of {held} leaves no training image out of {n}")
    return order[held:].sort().values, order[:held].sort().values


def holdout_size(n: int, share: float) -> int:
    """How many of n images `holdout_split` holds out: the share, rounded, at least 1."""
    return max(1, int(round(share * n)))


def accuracy(model: BadNet, x: torch.Tensor, y: torch.Tensor, pool: Executor | None = None) -> float:
    """Percent of x classified as y, through the inference path of every command (`predict.inference_batches`),
    a batch per thread of `pool` (fine-tuning's `slice_threads`) if given."""
    labels = labels_in_batches(model, x, map_batches=map if pool is None else pool.map)
    return 100.0 * int((labels == y).sum()) / x.shape[0]


@contextlib.contextmanager
def slice_threads(model: torch.nn.Module) -> Iterator[Executor]:
    """Threads for the slices, each running torch on one thread, as many as torch's threads were (one for a
    generic model: its forward may keep state or draw random numbers, which threads would interleave)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # for the threads started below too
    try:
        with ThreadPoolExecutor(previous if isinstance(model, BadNet) else 1, thread_name_prefix="finetune") as pool:
            yield pool
    finally:
        torch.set_num_threads(previous)


def make_optimizer(model: BadNet, config: FinetuneConfig) -> torch.optim.Optimizer:
    """Adam or SGD with momentum over every layer but conv_1 (unless `train_conv_1`), with L2 weight decay.
    A generic model (MaskedNet) keeps the same principle: every parameter trains but those of its first Conv2d (in
    `named_modules()` order; it reads the pixels, at whatever scale the model takes them), unless `train_conv_1`;
    its BatchNorm statistics stay frozen (see `_train_mode`)."""
    fixed = "conv_1." if isinstance(model, BadNet) else _first_conv_prefix(model)
    params = [p for name, p in model.named_parameters() if config.train_conv_1 or not fixed or not name.startswith(fixed)]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=SGD_MOMENTUM, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def _first_conv_prefix(model: torch.nn.Module) -> str | None:
    """'<name>.' of a generic model's first Conv2d (`engine.pairing.first_conv`), or None (no Conv2d)."""
    from ..engine.pairing import first_conv

    name = first_conv(model)
    return None if name is None else name + "."


def train_masked(pruned: BadNet, pixels: torch.Tensor, labels: torch.Tensor, config: FinetuneConfig = FinetuneConfig(),
                 log: Callable[[str], None] | None = None) -> TrainingResult:
    """Fine-tune a copy of `pruned` on (pixels, labels); returns the epoch kept by the held-out rule.

    Training stops after `patience` epochs without a better held-out accuracy; the epoch kept is the last
    one whose held-out accuracy is within `tolerance` points of the best (epoch 0 = B' itself counts).
    The conv_3 mask stays fixed and the pruned channels' conv_3 weights are kept exactly zero, so the saved
    weights of B'_ft are pruned in every format.
    """
    # A plain (contiguous) copy: weights in another memory format (e.g. channels_last) round differently in
    # training, so the same B' would fine-tune differently depending on where it came from.
    model = copy.deepcopy(pruned).cpu().float().to(memory_format=torch.contiguous_format)
    if isinstance(model, BadNet):
        model.conv_3.mask.copy_(effective_mask(model))
        _zero_pruned(model)  # a generic B' (MaskedNet) keeps its pruned channels at their fill by its own hook
    train_idx, held_idx = holdout_split(pixels.shape[0], config.holdout, config.seed)
    x_held, y_held = pixels[held_idx], labels[held_idx]
    optimizer = make_optimizer(model, config)
    with deterministic_torch(config.seed) as generator, slice_threads(model) as pool:
        best_acc = accuracy(model.eval(), x_held, y_held, pool)
        history = [{"epoch": 0, "loss": float("nan"), "holdout_acc": best_acc}]
        candidates = {0: copy.deepcopy(model.state_dict())}  # epochs within tolerance of the best so far
        stale = 0
        for epoch in range(1, config.epochs + 1):
            loss = _train_epoch(model, pixels, labels, train_idx, optimizer, config.batch_size, generator, pool)
            held_acc = accuracy(model.eval(), x_held, y_held, pool)
            history.append({"epoch": epoch, "loss": loss, "holdout_acc": held_acc})
            if log:
                log(f"  epoch {epoch}: loss {loss:.4f}, held-out accuracy {held_acc:.3f}%")
            stale = 0 if held_acc > best_acc else stale + 1
            best_acc = max(best_acc, held_acc)
            if held_acc >= best_acc - config.tolerance:
                candidates[epoch] = copy.deepcopy(model.state_dict())
            candidates = {e: state for e, state in candidates.items() if history[e]["holdout_acc"] >= best_acc - config.tolerance}
            if stale >= config.patience:
                break
    kept = max(candidates)
    model.load_state_dict(candidates[kept])
    return TrainingResult(model.eval(), history, kept, int(train_idx.shape[0]), int(held_idx.shape[0]))


def _train_epoch(model: BadNet, pixels: torch.Tensor, labels: torch.Tensor, train_idx: torch.Tensor,
                 optimizer: torch.optim.Optimizer, batch_size: int, generator: torch.Generator, pool: Executor) -> float:
    """One pass in a seeded order; returns the mean training loss."""
    _train_mode(model)
    order = train_idx[torch.randperm(train_idx.shape[0], generator=generator)]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    total = 0.0
    for start in range(0, order.shape[0], batch_size):
        batch = order[start : start + batch_size]
        optimizer.zero_grad(set_to_none=True)
        total += _set_gradients(model, params, pixels, labels, batch, pool)
        optimizer.step()
        if isinstance(model, BadNet):
            _zero_pruned(model)
    model.eval()
    return total / max(order.shape[0], 1)


def _set_gradients(model: torch.nn.Module, params: list[torch.Tensor], pixels: torch.Tensor, labels: torch.Tensor,
                   batch: torch.Tensor, pool: Executor) -> float:
    """Each of `params`' .grad := the gradient of the batch's mean cross-entropy, summed over its slices in
    order (the same bits on any number of threads); returns the batch's summed loss."""
    def one_slice(part: torch.Tensor) -> tuple[float, tuple[torch.Tensor | None, ...]]:
        loss = F.cross_entropy(model(pixels[part]), labels[part], reduction="sum")
        return float(loss.detach()), torch.autograd.grad(loss, params, allow_unused=True)

    slices = list(pool.map(one_slice, batch.split(SLICE)))
    for k, param in enumerate(params):
        grads = [g[k] for _, g in slices if g[k] is not None]
        if grads:  # (a parameter the forward never used keeps no gradient, as with backward())
            total = grads[0].clone()
            for grad in grads[1:]:
                total += grad
            param.grad = total.div_(batch.shape[0])
    return sum(loss for loss, _ in slices)


def _train_mode(model: torch.nn.Module) -> None:
    """Training mode; a generic model's BatchNorm layers stay in eval mode: their running statistics (of B's
    training data) are kept, not re-estimated from the small clean set, and dropout-free layers behave as at
    inference, so the pruned channels' fill passes the same normalisation as in the sweep."""
    model.train()
    if not isinstance(model, BadNet):
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


@torch.no_grad()
def _zero_pruned(model: BadNet) -> None:
    """Keep the pruned channels' conv_3 kernel and bias exactly zero."""
    keep = model.conv_3.mask
    model.conv_3.weight.mul_(keep.view(-1, 1, 1, 1))
    model.conv_3.bias.mul_(keep)
