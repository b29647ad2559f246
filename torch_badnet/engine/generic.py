"""The prune sweep for any nn.Module: split at the pruned layer with torch.fx, cache what crosses the cut, and per
step run only what the pruned channel changes.

Set-up, once per set (one forward pass, `record`): the tensors that cross the cut are cached: the *frontier*
(see below) and every tensor computed before the cut that a later op reads (a residual skip that bypasses the
pruned layer). The labels of step 0 are those of that pass.

Per step: the ops right after the cut are often channel-wise (BatchNorm in eval, activations, the add of a
cached skip, pooling, the flatten of a 1x1 map). The pruned channel's new value (`pruned_fill`) is pushed
through that channel-wise *region* as an (N, 1, ...) slice, and written into the cached frontier, the region's
outputs that the rest of the model reads. Then only the rest (e.g. a ResNet's final Linear) runs, and only on
the inputs whose frontier changed; the others keep their labels. At set-up a probe checks that the slice ops
give the bits of the full ops on real activations; where they do not, the region is not used (the whole part
after the cut runs per step). Where fx cannot trace the model (or the layer runs in a loop), every step is a
full forward with the mask hook (`FullForwardSweep`), and one log line says so.

What keeps it exact on a researcher's own code (issue 31):
- a cached tensor is copied where its first reader after the cut reads it (after any in-place op before that,
  e.g. `skip = h; h.relu_()`), and checked unchanged where its last reader reads it: a tensor changed in place
  between two reads falls back to full forwards;
- forward hooks that fx would skip (on the model itself, global module hooks) fall back to full forwards; a
  module with hooks of its own is never run on a one-channel slice;
- the ranking point is taken at the call that reads the pruned layer (`PrunableNet.rank_call`), as a node of
  the record pass where the traced graph has it, else by a hook that counts the calls;
- sizes read before the cut (`bs = x.size(0)`) are recomputed for the rows that the rest runs on;
- no forward runs on one image alone where the set has more (a `squeeze()` would drop the batch dimension);
- at set-up, the fast path's logits on the probe rows must equal a full forward with the mask hook (for no,
  one, half and all channels pruned), else the slices are dropped, else every step is a full forward.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..data.batching import batches, spans
from ..errors import BadInputError
from ..nets.predict import top_class
from .prunable import PrunableNet

RECORD_BATCH = 256  # images per forward pass of the record pass on CPU (the activations stay in cache)
ROW_BLOCK = 4096  # rows per suffix evaluation: bounds the memory of the rest of the network per call
PROBE_ROWS = 64  # rows of the first set on which the channel-wise region is checked against the full ops

ELEMENTWISE_FUNCTIONS = {F.relu, torch.relu, torch.sigmoid, torch.tanh, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu,
                         F.hardtanh, F.hardswish, F.mish, torch.sigmoid, F.dropout, F.max_pool2d, F.avg_pool2d,
                         F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.flatten}
ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "flatten", "contiguous"}
ADDS = {operator.add, operator.iadd, torch.add}
MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardtanh,
           nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
           nn.AdaptiveMaxPool2d, nn.Flatten)
INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}
SHAPE_METHODS = {"size", "dim", "numel", "ndimension"}  # what may be read of a tensor computed before the cut
SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device"}  # (recomputed per call from a tensor of the same shape)
PROBE_TOLERANCE = 1e-4  # relative difference of logits allowed between the fast path and a full forward


def has_hooks(module: nn.Module) -> bool:
    """Forward hooks or forward pre-hooks registered on this module itself."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def global_hooks() -> bool:
    """Module forward hooks registered for every module (`nn.modules.module.register_module_forward_hook`)."""
    from torch.nn.modules import module as base

    return any(getattr(base, name, None) for name in ("_global_forward_hooks", "_global_forward_pre_hooks"))


class Untraceable(Exception):
    """The model cannot be split at the pruned layer (fx fails, or the layer is not one node)."""


class _Tracer(fx.Tracer):
    """torch's tracer with the pruned layer and the ranking point kept as single nodes."""

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


@dataclass
class Split:
    """The model cut at the pruned layer: the region, its frontier, the cached skips and the rest."""

    graph_module: fx.GraphModule
    cut: fx.Node  # the pruned layer's node
    region: list[fx.Node]  # channel-wise nodes after the cut (the cut first), in graph order
    frontier: list[fx.Node]  # region nodes read outside the region (the cached tensors the rest starts from)
    skips: list[fx.Node]  # nodes before the cut that the region or the rest reads (cached per set)
    after: set[fx.Node]  # every node that depends on the cut
    rank: fx.Node | None = None  # the ranking point's call, where it is one node of the graph
    record: fx.GraphModule = field(init=False)  # full forward returning ((frontier, skips, cut[, rank]), checks, output)
    rest: fx.GraphModule = field(init=False)  # frontier + skips -> logits
    rest_inputs: list[fx.Node] = field(init=False)
    rest_mutates: bool = field(init=False)

    def __post_init__(self) -> None:
        inside = set(self.region)
        readers = {f: [u for u in self.graph_module.graph.nodes if u in f.users and u not in inside] for f in self.frontier}
        readers.update({s: [u for u in self.graph_module.graph.nodes if u in s.users and u in self.after] for s in self.skips})
        early = [self.cut] if self.rank is None or self.rank is self.cut else [self.cut, self.rank]
        self.record = _record_module(self.graph_module, [*self.frontier, *self.skips], readers, early)
        self.rest_inputs, self.rest, self.rest_mutates = _rest_module(self.graph_module, inside, self.frontier, self.after)

    def kept(self, values: tuple[torch.Tensor, ...]) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """(frontier, skips, cut, ranking point output) from the record pass's first output."""
        nf, ns = len(self.frontier), len(self.skips)
        cut = values[nf + ns]
        rank = cut if self.rank is None or self.rank is self.cut else values[nf + ns + 1]
        return list(values[:nf]), list(values[nf : nf + ns]), cut, rank


def split_model(net: PrunableNet, sample: torch.Tensor, slicing: bool = True) -> Split:
    """Trace `net.module` and cut it at `net.layer` (Untraceable where that cannot be done)."""
    leaves = {net.layer}
    if not (net.rank_on.startswith(net.layer + ".") or net.layer.startswith(net.rank_on + ".")):
        leaves.add(net.rank_on)
    try:
        graph = _Tracer(leaves).trace(net.module)
        gm = fx.GraphModule(net.module, graph)
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.inference_mode():
            ShapeProp(gm).propagate(sample)
    except Exception as exc:  # noqa: BLE001 - fx raises anything from the model's own code
        raise Untraceable(f"torch.fx cannot trace it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    skipped = _skipped_hooks(net.module)
    if skipped:
        raise Untraceable(f"torch.fx would skip the forward hooks on {skipped}")
    cuts = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == net.layer]
    if len(cuts) != 1:
        raise Untraceable(f"layer {net.layer!r} is {len(cuts)} nodes in the traced graph, not one")
    if sum(n.op == "placeholder" for n in gm.graph.nodes) != 1:
        raise Untraceable("the traced graph has several inputs")
    cut = cuts[0]
    after = _descendants(cut)
    region = _region(gm, cut, after, net.channels) if slicing else [cut]
    inside = set(region)
    frontier = [n for n in region if any(u not in inside for u in n.users)]
    batched = _descendants(next(n for n in gm.graph.nodes if n.op == "placeholder")) | {
        next(n for n in gm.graph.nodes if n.op == "placeholder")}
    prefix_reads = {a for n in after for a in n.all_input_nodes if a not in after and a is not cut and a in batched}
    skips = [n for n in gm.graph.nodes if n in prefix_reads and _is_tensor(n)]  # sizes are recomputed (`_rest_module`)
    todo, seen = [n for n in prefix_reads if not _is_tensor(n)], set()
    while todo:  # the sizes read after the cut, and what they are computed from
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            for a in n.all_input_nodes:
                if a in batched and _is_tensor(a) and (_shape(a) or (None,))[0] != sample.shape[0]:
                    raise Untraceable(f"the model reads the size of {a.name}, whose first dimension is not the batch")
                if a in batched and not _is_tensor(a):
                    todo.append(a)
    return Split(gm, cut, region, frontier, skips, after, _rank_node(gm, net, cut))


def _rank_node(gm: fx.GraphModule, net: PrunableNet, cut: fx.Node) -> fx.Node | None:
    """The ranking point's call as a node (call number `net.rank_call` of its module), or None."""
    if net.rank_on == net.layer:
        return cut
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == net.rank_on]
    return calls[net.rank_call] if net.rank_call < len(calls) else None


def _skipped_hooks(module: nn.Module) -> str:
    """Where the model has forward hooks that the traced graph would not run ('' if none): fx traces the model's
    `forward`, not its `__call__`, so hooks on the model itself, and global module hooks (which fire on it too),
    are not in the graph. Hooks on submodules are: fx traces a submodule's `__call__`, hooks included, and a
    call_module node calls its module."""
    if global_hooks():
        return "every module (a global module hook)"
    return "the model itself" if has_hooks(module) else ""


def _is_tensor(node: fx.Node) -> bool:
    kind = node.meta.get("type")
    return isinstance(kind, type) and issubclass(kind, torch.Tensor)


def _reads_attribute(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is getattr and len(node.args) > 1 and node.args[1] in SHAPE_ATTRIBUTES


def _descendants(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    todo = list(node.users)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.users)
    return seen


def _region(gm: fx.GraphModule, cut: fx.Node, after: set[fx.Node], channels: int) -> list[fx.Node]:
    """The channel-wise nodes after the cut whose inputs are the cut, other region nodes or cached tensors."""
    region, inside = [cut], {cut}
    for n in gm.graph.nodes:
        if n not in after or n.op == "output":
            continue
        inputs = n.all_input_nodes
        if any(a in after and a not in inside for a in inputs) or not any(a in inside for a in inputs):
            continue
        if _channelwise(gm, n, inside, channels):
            region.append(n)
            inside.add(n)
    return region


def _channelwise(gm: fx.GraphModule, n: fx.Node, inside: set[fx.Node], channels: int) -> bool:
    """Does channel c of n's output depend only on channel c of its inputs (same layout, channel at dim 1)?"""
    shape = _shape(n)
    if shape is None or len(shape) < 2 or shape[1] != channels:
        return False
    first = n.args[0] if n.args else None
    if not isinstance(first, fx.Node):
        return False
    in_shape = _shape(first)
    if in_shape is None or in_shape[1] != channels:
        return False
    flattening = len(in_shape) != len(shape)
    if flattening and (len(shape) != 2 or any(d != 1 for d in in_shape[2:])):
        return False  # only the flatten of a 1x1 map keeps channel c in column c
    others = [a for a in (*n.args[1:], *n.kwargs.values()) if isinstance(a, fx.Node)]
    if n.op == "call_module":
        module = gm.get_submodule(n.target)
        if has_hooks(module):
            return False  # its hooks would see a one-channel slice
        if isinstance(module, nn.BatchNorm2d):
            return not module.training and module.track_running_stats and module.running_mean is not None and not others
        if isinstance(module, nn.Flatten):
            return module.start_dim == 1 and not others
        channelwise = isinstance(module, MODULES) or getattr(module, "channelwise", False) is True  # e.g. ReluMaxPool
        return channelwise and not others
    if n.op == "call_function" and n.target in ADDS:
        operands = [a for a in n.args if isinstance(a, fx.Node)]
        return len(n.args) == 2 and all(_shape(a) == shape and (a in inside or _batch_dependent(a)) for a in operands) \
            and not any(isinstance(v, fx.Node) for v in n.kwargs.values())
    if n.op == "call_function" and n.target in ELEMENTWISE_FUNCTIONS:
        if n.target is torch.flatten and (len(n.args) < 2 or n.args[1] != 1):
            return False
        return not others and not n.kwargs.get("return_indices", False)
    if n.op == "call_method" and n.target in ELEMENTWISE_METHODS:
        if n.target == "flatten" and (len(n.args) < 2 or n.args[1] != 1):
            return False
        return not others and not n.kwargs
    return False


def _batch_dependent(node: fx.Node) -> bool:
    """Does the node depend on the model's input (not only on weights and constants)?"""
    todo, seen = [node], set()
    while todo:
        n = todo.pop()
        if n.op == "placeholder":
            return True
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return False


def _record_module(gm: fx.GraphModule, late: list[fx.Node], readers: dict[fx.Node, list[fx.Node]],
                   early: list[fx.Node]) -> fx.GraphModule:
    """The whole forward, returning ((copies of `late`, then of `early`), checks, the model's output).

    A node of `late` is copied right before its first reader (so after any in-place op that ran before that
    reader), and compared with that copy right before its last reader (a check: False where an in-place op
    changed it between two reads). A node of `early` is copied right after it is computed (what a forward hook
    on it sees)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    copies: dict[fx.Node, fx.Node] = {}
    first: dict[fx.Node, list[fx.Node]] = {}
    last: dict[fx.Node, list[fx.Node]] = {}
    for k in late:
        first.setdefault(readers[k][0], []).append(k)
        if len(readers[k]) > 1:
            last.setdefault(readers[k][-1], []).append(k)
    early_copies: dict[fx.Node, fx.Node] = {}
    checks: list[fx.Node] = []
    output = None
    for n in gm.graph.nodes:
        for k in first.get(n, []):
            copies[k] = graph.call_method("clone", (env[k],), {"memory_format": torch.contiguous_format})
        for k in last.get(n, []):
            checks.append(graph.call_function(_bits_equal, (env[k], copies[k])))
        if n.op == "output":
            output = env[n.args[0]] if isinstance(n.args[0], fx.Node) else graph.node_copy(n.args[0], lambda a: env[a])
            continue
        env[n] = graph.node_copy(n, lambda a: env[a])
        if n in early:
            early_copies[n] = graph.call_method("clone", (env[n],), {"memory_format": torch.contiguous_format})
    graph.output((tuple([*(copies[k] for k in late), *(early_copies[k] for k in early)]), tuple(checks), output))
    return fx.GraphModule(gm, graph)


def _rest_module(gm: fx.GraphModule, region: set[fx.Node], frontier: list[fx.Node],
                 after: set[fx.Node]) -> tuple[list[fx.Node], fx.GraphModule, bool]:
    """(inputs, module, mutates): the part after the region, from the frontier and the cached skips to logits.
    `mutates`: it writes into one of its inputs (an in-place op), so it must be given copies."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    inputs: list[fx.Node] = []
    mutates = False
    for n in gm.graph.nodes:
        if n in frontier:
            env[n] = graph.placeholder(f"in_{len(inputs)}")
            inputs.append(n)
        if n.op == "output":
            graph.output(_map(n.args[0], env, graph, inputs, env[frontier[0]]))
        elif n in after and n not in region:
            for a in n.all_input_nodes:
                _map(a, env, graph, inputs, env[frontier[0]])  # a cached skip becomes an input
            env[n] = graph.node_copy(n, lambda a: env[a])
            first = n.args[0] if n.args else None
            if isinstance(first, fx.Node) and env[first].op == "placeholder":
                mutates |= _in_place(gm, n)
    return inputs, fx.GraphModule(gm, graph), mutates


def _map(value: object, env: dict, graph: fx.Graph, inputs: list[fx.Node], rows: fx.Node) -> object:
    """A node of the original graph in the rest's graph: a computed node, or a new input (a cached skip). A size
    read before the cut (`bs = x.size(0)`) is read from a stand-in of x with as many rows as `rows` (a tensor
    of the rest, whose first dimension is the batch), never cached."""
    if isinstance(value, fx.Node):
        if value not in env:
            if value.op == "get_attr":
                env[value] = graph.get_attr(value.target)
            elif not _batch_dependent(value):  # computed from weights alone (e.g. weight * mask): recomputed
                for a in value.all_input_nodes:
                    _map(a, env, graph, inputs, rows)
                env[value] = graph.node_copy(value, lambda a: env[a])
            elif not _is_tensor(value):  # a size, or arithmetic on sizes
                args = {}
                for a in value.all_input_nodes:
                    if _is_tensor(a):
                        if not (value.op == "call_method" and value.target in SHAPE_METHODS or _reads_attribute(value)):
                            raise Untraceable(f"a value computed before the cut from a tensor ({value.name}) is read after it")
                        key = ("stand-in", a)
                        if key not in env:
                            meta = a.meta["tensor_meta"]
                            env[key] = graph.call_function(_stand_in, (rows, tuple(meta.shape[1:]), meta.dtype))
                        args[a] = env[key]
                    else:
                        args[a] = _map(a, env, graph, inputs, rows)
                env[value] = graph.node_copy(value, lambda a: args[a])
            else:
                env[value] = graph.placeholder(f"in_{len(inputs)}")
                inputs.append(value)
        return env[value]
    if isinstance(value, (tuple, list)):
        return type(value)(_map(v, env, graph, inputs, rows) for v in value)
    return value


def _stand_in(rows: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A tensor of shape (rows.shape[0], *shape) that holds no memory: only its size is read."""
    return torch.empty((), dtype=dtype, device=rows.device).expand(rows.shape[0], *shape)


def _in_place(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_function":
        return n.target in INPLACE_FUNCTIONS or bool(n.kwargs.get("inplace"))
    if n.op == "call_method":
        return str(n.target).endswith("_")
    if n.op == "call_module":
        return bool(getattr(gm.get_submodule(n.target), "inplace", False))
    return False


@dataclass
class SetCache:
    """One set after the record pass: the cached frontier and skips, the labels so far, the truth."""

    name: str
    frontier: list[torch.Tensor]
    skips: list[torch.Tensor]
    labels: torch.Tensor  # (steps + 1, N) int64, filled step by step
    truth: torch.Tensor


class GenericSweep:
    """The fx fast path for one PrunableNet (see the module docstring)."""

    def __init__(self, net: PrunableNet, sample: torch.Tensor, log: Callable[[str], None] | None = None) -> None:
        self.net = net
        self.fill = net.fill
        split = split_model(net, sample)
        if len(split.region) > 1 and not self._probe(split, sample):
            if log:
                log(f"note: the ops after {net.layer} do not give the same bits on one channel as on all; "
                    "running everything after the cut per step")
            split = split_model(net, sample, slicing=False)
        if not self._reproduces(split, sample):
            if len(split.region) > 1:
                split = split_model(net, sample, slicing=False)
            if len(split.region) > 1 or not self._reproduces(split, sample):
                raise Untraceable(f"the traced graph does not give the model's own outputs with channels of {net.layer} "
                                  "pruned (an in-place op on a tensor read twice, or an op traced differently)")
        self.split = split
        self.ranks_in_record = split.rank is not None and self._rank_matches(split, sample)

    def record(self, name: str, blocks: Iterable[tuple[torch.Tensor, torch.Tensor]], total: int, steps: int,
               device: torch.device, rank: Callable[[torch.Tensor], None] | None = None) -> SetCache:
        """One forward pass over a set: the cached tensors and the labels of step 0. `rank`, if given, gets the
        ranking point's output block by block (only where `ranks_in_record`)."""
        split = self.split
        frontier: list[torch.Tensor] = []
        skips: list[torch.Tensor] = []
        truth, first = [], []
        filled = 0
        with torch.inference_mode():
            for x, y in batches(blocks, RECORD_BATCH if device.type == "cpu" else None):
                kept, checks, output = split.record(x.to(device))
                n = x.shape[0]
                if not all(checks):
                    raise Untraceable(f"an in-place op changes a tensor that the layers after {self.net.layer} read "
                                      "twice")
                check_logits(output, n)
                f, s, _cut, ranked = split.kept(kept)
                if not frontier:
                    frontier = [torch.empty((total, *t.shape[1:]), dtype=t.dtype, device=device) for t in f]
                    skips = [torch.empty((total, *t.shape[1:]), dtype=t.dtype, device=device) for t in s]
                for store, t in zip([*frontier, *skips], [*f, *s]):
                    store[filled : filled + n] = t
                if rank is not None:
                    rank(ranked)
                first.append(top_class(output).cpu())
                truth.append(y)
                filled += n
        labels = torch.empty((steps + 1, filled), dtype=torch.int64)
        labels[0] = torch.cat(first)
        return SetCache(name, frontier, skips, labels, torch.cat(truth))

    @torch.inference_mode()
    def step(self, cache: SetCache, channel: int, step: int) -> None:
        """Prune `channel` (the channels of the earlier steps stay pruned in the cache): labels of row `step`."""
        labels = cache.labels
        labels[step] = labels[step - 1]
        n = labels.shape[1]
        for start, stop in spans(n, ROW_BLOCK):
            rows = slice(start, stop)
            new = self._region_slice(self.split, channel, [s[rows] for s in cache.skips], stop - start,
                                     cache.frontier[0].device)
            changed = None
            for store, value in zip(cache.frontier, new):
                old = store[rows, channel : channel + 1]
                diff = (old != value).flatten(1).any(1)
                changed = diff if changed is None else changed | diff
                old.copy_(value)
            index = changed.nonzero().flatten()
            if index.numel() == 0:
                continue
            dense = index.numel() == stop - start
            alone = index.numel() == 1 and not dense  # never run one image alone: a second row keeps the batch
            if alone:
                index = torch.cat([index, index.new_tensor([1 if int(index[0]) == 0 else 0])])
            inputs = self._rest_inputs(self.split, cache.frontier, cache.skips, rows, None if dense else index)
            output = self.split.rest(*inputs)
            check_logits(output, inputs[0].shape[0])
            out = top_class(output).cpu()
            if dense:
                labels[step, rows] = out
            else:
                keep = 1 if alone else index.numel()
                labels[step, start + index[:keep].cpu()] = out[:keep]

    @staticmethod
    def _rest_inputs(split: Split, frontier: list[torch.Tensor], skips: list[torch.Tensor], rows: slice,
                     index: torch.Tensor | None) -> list[torch.Tensor]:
        stores = dict(zip(split.frontier, frontier))
        stores.update(zip(split.skips, skips))
        values = [stores[n][rows] for n in split.rest_inputs]
        if index is not None:
            values = [v.index_select(0, index) for v in values]
        elif split.rest_mutates:
            values = [v.clone() for v in values]
        return values

    def _region_slice(self, split: Split, channel: int, skips: list[torch.Tensor], n: int,
                      device: torch.device) -> list[torch.Tensor]:
        """The frontier's channel `channel` for `n` rows, with the cut's channel set to the fill."""
        shape = _shape(split.cut)
        values: dict[fx.Node, torch.Tensor] = {split.cut: torch.full((n, 1, *shape[2:]), self.fill, device=device)}
        skip_of = dict(zip(split.skips, skips))
        gm = split.graph_module
        for node in split.region[1:]:
            values[node] = _slice_op(gm, node, values, skip_of, channel)
        return [values[f] for f in split.frontier]

    def _probe(self, split: Split, sample: torch.Tensor) -> bool:
        """Do the slice ops give the full ops' bits? Checked on the sample rows for the first, middle and last
        channel: each channel pruned alone, the full region recomputed from the masked cut."""
        with torch.inference_mode():
            kept, _checks, _ = split.record(sample[:PROBE_ROWS])
            frontier, skips, cut, _rank = split.kept(kept)
            region_full = _region_module(split)
            for channel in sorted({0, self.net.channels // 2, self.net.channels - 1}):
                masked = cut.clone()
                masked[:, channel] = self.fill
                full = region_full(masked, *skips)
                sliced = self._region_slice(split, channel, skips, cut.shape[0], cut.device)
                for f, whole, part in zip(frontier, full, sliced):
                    others = torch.ones(f.shape[1], dtype=torch.bool)
                    others[channel] = False
                    if not (_bits_equal(whole[:, channel : channel + 1], part) and _bits_equal(whole[:, others], f[:, others])):
                        return False
        return True

    def _reproduces(self, split: Split, sample: torch.Tensor) -> bool:
        """Do the cached tensors, the slices and the rest give the logits of a full forward of the model (its
        hooks included) with the mask hook, on the probe rows, for no, one, half and all channels pruned?"""
        x = sample[:PROBE_ROWS]
        channels = self.net.channels
        masks = [[0], [channels - 1], list(range(0, channels, 2)), list(range(channels))]  # none: `output` below
        with torch.inference_mode():
            kept, checks, output = split.record(x)
            if not all(checks):
                raise Untraceable(f"an in-place op changes a tensor that the layers after {self.net.layer} read twice")
            try:
                frontier, skips, _cut, _rank = split.kept(kept)
                if not _close(output, self.net.module(x)):
                    return False
                for off in masks:
                    with self.net.mask_off(off):
                        expected = self.net.module(x)
                    stores = [f.clone() for f in frontier]
                    for channel in off:
                        for store, value in zip(stores, self._region_slice(split, channel, skips, x.shape[0], x.device)):
                            store[:, channel : channel + 1] = value
                    got = split.rest(*self._rest_inputs(split, stores, skips, slice(None), None))
                    if not _close(got, expected):
                        return False
            except Exception:  # noqa: BLE001 - the rest of the model's own code, run on cached tensors
                return False
        return True

    def _rank_matches(self, split: Split, sample: torch.Tensor) -> bool:
        """Is the graph's ranking node the call that a hook counting the ranking point's calls sees? (The pruned
        layer runs once, so its own node is.)"""
        if split.rank is split.cut:
            return True
        seen: list[torch.Tensor] = []
        x = sample[:PROBE_ROWS]
        with torch.inference_mode():
            with ranking_hook(self.net, seen.append):
                self.net.module(x)
            kept, _checks, _ = split.record(x)
        return len(seen) == 1 and _bits_equal(split.kept(kept)[3], seen[0])


def check_logits(output: object, rows: int) -> None:
    """The model's output on a batch of `rows` images must be logits (rows, classes)."""
    if not isinstance(output, torch.Tensor) or output.dim() != 2 or output.shape[0] != rows:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise BadInputError("--model", f"on a batch of {rows} images the model returns {shape}, not logits ({rows}, "
                                       "classes) (a squeeze() that drops the batch dimension of one image?)")


@contextlib.contextmanager
def ranking_hook(net: PrunableNet, sink: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """A forward hook giving `sink` the output of call number `net.rank_call` of the ranking point, in each
    forward of `net.module` (a pre-hook on the model counts the calls from 0)."""
    calls = [0]

    def reset(_m: nn.Module, _i: tuple) -> None:
        calls[0] = 0

    def take(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        if calls[0] == net.rank_call:
            sink(out.detach().clone())
        calls[0] += 1

    handles = [net.module.register_forward_pre_hook(reset), net.module.get_submodule(net.rank_on).register_forward_hook(take)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _close(got: object, expected: torch.Tensor) -> bool:
    """Logits equal up to the rounding of another batch composition (PROBE_TOLERANCE of the largest logit)."""
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return False
    got, expected = got.double(), expected.double()
    both_nan = got.isnan() & expected.isnan()
    bound = PROBE_TOLERANCE * (1.0 + float(expected.nan_to_num(0.0, 0.0, 0.0).abs().max()))
    return bool((((got - expected).abs() <= bound) | both_nan).all())


def _region_module(split: Split) -> fx.GraphModule:
    """The region as full ops: (cut output, skips) -> frontier."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {split.cut: graph.placeholder("cut")}
    for i, s in enumerate(split.skips):
        env[s] = graph.placeholder(f"skip_{i}")
    for n in split.region[1:]:
        env[n] = graph.node_copy(n, lambda a: env[a] if a in env else graph.get_attr(a.target))
    graph.output(tuple(env[f] for f in split.frontier))
    return fx.GraphModule(split.graph_module, graph)


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _slice_op(gm: fx.GraphModule, node: fx.Node, values: dict[fx.Node, torch.Tensor],
              skip_of: dict[fx.Node, torch.Tensor], channel: int) -> torch.Tensor:
    """One region op on channel `channel` alone ((N, 1, ...) slices in and out)."""
    def arg(a: object) -> object:
        if isinstance(a, fx.Node):
            if a in values:
                return values[a]
            if a in skip_of:
                return skip_of[a][:, channel : channel + 1]
            raise KeyError(a.name)
        return a

    args = [arg(a) for a in node.args]
    kwargs = {k: arg(v) for k, v in node.kwargs.items()}
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, nn.BatchNorm2d):
            c = slice(channel, channel + 1)
            return F.batch_norm(args[0], module.running_mean[c], module.running_var[c],
                                None if module.weight is None else module.weight[c],
                                None if module.bias is None else module.bias[c], False, 0.0, module.eps)
        return module(*args, **kwargs)
    if node.op == "call_function":
        if node.target in ADDS:
            return torch.add(*args, **kwargs)  # never in place: an operand may be a view of the cache
        return node.target(*args, **kwargs)
    return getattr(args[0], node.target)(*args[1:], **kwargs)


class FullForwardSweep:
    """The plain procedure for a model fx cannot split: each step is a full forward with the mask hook."""

    def __init__(self, net: PrunableNet) -> None:
        self.net = net

    @torch.inference_mode()
    def labels(self, pixels: torch.Tensor, channels: Sequence[int], device: torch.device) -> torch.Tensor:
        out = []
        with self.net.mask_off(channels):
            for start, stop in spans(pixels.shape[0], 512):
                logits = self.net.module(pixels[start:stop].to(device))
                check_logits(logits, stop - start)
                out.append(top_class(logits).cpu())
        return torch.cat(out)
