"""The seam between an architecture and the defense: which layer is pruned, where channels are ranked, the mask.

A `PrunableNet` is all the generic sweep, the GoodNet, fine-tuning and the report see of a model:

- `layer`: a dotted name from `module.named_modules()` (default: `default_for`: the feature map that the classifier's
  global pooling or flatten reads, such as a ResNet's `layer4`; the last nn.Conv2d for the lab's and Keras nets); pruning switches off
  output channels (dim 1) of that module with a forward hook, weights untouched, nothing rebuilt around BatchNorm.
  A pruned channel takes `getattr(layer_module, "pruned_fill", 0.0)`: what the layer outputs with that channel's
  kernel and bias zeroed (0 for a plain conv; activation(0) for a Keras Conv2D with a fused activation).
- `rank_on`: the module whose output ranks the channels (per-channel mean over (N, H, W) on the clean validation
  set, `pruning.channel_scores`/`pruning_order`). Default: the pooling layer directly after the pruned layer (through
  at most one activation), else the pruned layer itself. `rank_call`: which of its calls in one forward pass (a
  module that runs more than once is ranked at the call that reads the pruned layer's output).
- `masked(channels)`: B' as a `MaskedNet`, a wrapper whose mask is a buffer (it survives state_dict save/load).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import BadInputError, first_line

POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
               nn.Hardtanh, nn.Mish, nn.PReLU, nn.Identity)


def is_pooling(module: nn.Module) -> bool:
    """A pooling module: torch's, or one whose class says so (the lab's ReluMaxPool, a Keras MaxPooling2D)."""
    return isinstance(module, POOLING) or "pool" in type(module).__name__.lower()


def is_activation(module: nn.Module) -> bool:
    """A torch activation, or one whose class says so (a Keras Activation / ReLU layer as a module)."""
    return isinstance(module, ACTIVATIONS) or type(module).__name__.endswith(("Activation", "ReLU"))


def module_name(module: nn.Module, name: str | None) -> str | None:
    """A layer name as the user gives it: a Keras-origin net maps Keras layer names to its submodules'."""
    names = getattr(module, "layer_names", None)
    return names.get(name, name) if isinstance(names, dict) and name is not None else name


def is_conv_like(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) or "conv" in type(module).__name__.lower()


def conv_layers(module: nn.Module) -> list[str]:
    """Names of the Conv2d-like layers, in registration order (the candidates an error message lists)."""
    return [name for name, m in module.named_modules() if name and is_conv_like(m)]


def default_for(module: nn.Module, sample: torch.Tensor) -> str:
    """The default pruned layer: for a model written in torch, the feature map that the classifier's global pooling
    or flatten reads (`feature_map.feature_map_layer`: a ResNet's `layer4`, a VGG's `features`); for the lab's
    BadNet and a Keras-origin net, and where no such point is found, the last Conv2d (`default_layer`)."""
    from ..nets.badnet import BadNet
    from .feature_map import feature_map_layer

    if isinstance(module, BadNet) or getattr(module, "keras_config", None) is not None:
        return default_layer(module)
    return feature_map_layer(module, sample) or default_layer(module)


def default_layer(module: nn.Module) -> str:
    """The last nn.Conv2d (a Keras model's last Conv2D), in registration order."""
    convs = [name for name, m in module.named_modules() if name and isinstance(m, nn.Conv2d)]
    if not convs:
        raise BadInputError("--layer", "the model has no Conv2d layer; name the layer to prune with --layer")
    return convs[-1]


def find_layer(module: nn.Module, name: str, flag: str = "--layer") -> nn.Module:
    """The submodule `name`, or a BadInputError listing the Conv2d-like candidates."""
    modules = dict(module.named_modules())
    if not name or name not in modules:
        candidates = conv_layers(module)
        listed = ", ".join(candidates[:20]) + (", ..." if len(candidates) > 20 else "")
        raise BadInputError(flag, f"the model has no layer {name!r}; its Conv2d-like layers are: {listed or 'none'}")
    return modules[name]


def fill_of(layer: nn.Module) -> float:
    """A pruned channel's value: the layer's `pruned_fill` (activation(0) of a fused activation), else 0."""
    return float(getattr(layer, "pruned_fill", 0.0))


def mask_output(output: torch.Tensor, off: torch.Tensor, fill: float) -> torch.Tensor:
    """`output` with the channels (dim 1) where `off` is True set to `fill`, exactly."""
    return output.masked_fill(off.to(output.device).view(1, -1, *([1] * (output.dim() - 2))), fill)


class FixedMask:
    """A forward hook switching the channels `off` (bool) to `fill`."""

    def __init__(self, off: torch.Tensor, fill: float) -> None:
        self.off, self.fill = off, fill

    def __call__(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return mask_output(output, self.off, self.fill)


@contextlib.contextmanager
def channels_off(layer: nn.Module, channels: Sequence[int], num_channels: int) -> Iterator[None]:
    """A forward hook on `layer` switching `channels` off while the block runs."""
    off = torch.zeros(num_channels, dtype=torch.bool)
    if len(channels):
        off[torch.as_tensor(list(channels), dtype=torch.long)] = True
    handle = layer.register_forward_hook(FixedMask(off, fill_of(layer)))
    try:
        yield
    finally:
        handle.remove()


class LiveMask:
    """A MaskedNet's forward hook on its layer: the owner's mask as it is at each call. Copied along with the net
    alone (`copy.deepcopy(net)`, not through the MaskedNet), it becomes a `FixedMask` of that mask, so the copy
    computes what the net computed."""

    def __init__(self, owner: MaskedNet) -> None:
        self.owner = owner

    def __call__(self, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return mask_output(output, self.owner.channel_mask == 0, self.owner.fill)

    def __deepcopy__(self, memo: dict) -> FixedMask:
        return FixedMask(self.owner.channel_mask.detach().eq(0), self.owner.fill)


class MaskedNet(nn.Module):
    """B': a module `net` with output channels of its layer `layer` switched off by the buffer `channel_mask`
    (1 = kept, 0 = pruned). The weights are `net`'s, untouched; the mask is part of the state_dict.

    >>> b4 = result.pruned(4)          # a MaskedNet for a generic model
    >>> b4(x).argmax(1), b4.pruned_channels
    """

    def __init__(self, net: nn.Module, layer: str, mask: torch.Tensor) -> None:
        super().__init__()
        check_hookable(net)
        self.net = net
        self.training = net.training  # the net's mode (not nn.Module's default, training)
        self.layer = layer
        self.register_buffer("channel_mask", mask.detach().clone().float())
        target = net.get_submodule(layer)
        self.fill = fill_of(target)
        self._handle = target.register_forward_hook(LiveMask(self))

    @property
    def pruned_channels(self) -> list[int]:
        return [int(c) for c in (self.channel_mask == 0).nonzero().flatten()]

    @property
    def num_classes(self) -> int | None:
        return getattr(self.net, "num_classes", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def __deepcopy__(self, memo: dict) -> MaskedNet:
        """A copy with its own hook (the net is copied without this one's, which points back at `self`)."""
        import copy

        self._handle.remove()
        try:
            net = copy.deepcopy(self.net, memo)
        finally:
            self._handle = self.net.get_submodule(self.layer).register_forward_hook(LiveMask(self))
        copied = MaskedNet(net, self.layer, self.channel_mask)
        copied.training = self.training  # the wrapper's flag only: the copied net keeps each module's own
        copied.__dict__.update({k: v for k, v in self.__dict__.items() if k not in copied.__dict__})  # e.g. a fingerprint
        return copied


@dataclass
class PrunableNet:
    """A model prepared for the defense: its pruned layer, ranking point, channel count, class count, fill."""

    module: nn.Module = field(repr=False)
    layer: str
    rank_on: str
    channels: int
    num_classes: int
    input_shape: tuple[int, ...]
    rank_call: int = field(default=0, repr=False)  # which call of `rank_on` in one forward (a module run twice)
    rank_note: str | None = field(default=None, repr=False)  # why the default ranking point is the layer itself

    @property
    def layer_module(self) -> nn.Module:
        return self.module.get_submodule(self.layer)

    @property
    def fill(self) -> float:
        return fill_of(self.layer_module)

    def mask_off(self, channels: Sequence[int]) -> contextlib.AbstractContextManager[None]:
        """The mask hook for `channels` on the pruned layer, while the block runs."""
        return channels_off(self.layer_module, channels, self.channels)

    def masked(self, channels: Sequence[int]) -> MaskedNet:
        """B': a CPU copy of the module wrapped with `channels` switched off."""
        import copy

        mask = torch.ones(self.channels)
        if len(channels):
            mask[torch.as_tensor(list(channels), dtype=torch.long)] = 0.0
        masked = MaskedNet(copy.deepcopy(self.module).cpu().eval(), self.layer, mask).eval()
        masked.input_shape = self.input_shape  # the data's image shape (C, H, W): pruned.pt records it
        return masked


# a model's output of one score per image (N, 1): its argmax would be class 0 whatever it says
ONE_SCORE = ("the model outputs one score per image (N, 1): labels are the argmax of class scores (N, classes >= 2), "
             "which one score cannot give; for a one-logit binary classifier return torch.cat([torch.zeros_like(z), z], 1) "
             "(class 1 where z > 0)")


def check_hookable(module: nn.Module) -> None:
    """A TorchScript module takes no forward hooks, which masking and ranking need (one line)."""
    if isinstance(module, torch.jit.ScriptModule):
        raise BadInputError("--model", "the model is a TorchScript module (torch.jit.script or trace), which takes no "
                                       "forward hooks, and pruning needs them: pass the Python nn.Module it was made from")


def check_single_input(module: nn.Module) -> None:
    """A model whose forward needs more than one argument cannot be swept (one line)."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return
    required = [p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) > 1:
        raise BadInputError("--model", f"the model takes {len(required)} inputs ({', '.join(p.name for p in required)}); "
                                       "the defense needs a model with one image input")


def returned(output: object) -> str:
    """What a forward returned that is not one tensor, for a one-line error: 'a dict (logits, features)'."""
    if isinstance(output, dict):
        keys = [str(k) for k in output]
        return f"a dict ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})" if keys else "an empty dict"
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)} outputs"
    return f"a {type(output).__name__}"


@torch.inference_mode()
def prepare(module: nn.Module, sample: torch.Tensor, layer: str | None = None, rank_on: str | None = None) -> PrunableNet:
    """Check `module` on a small `sample` batch and resolve its pruned layer and ranking point.

    One-line BadInputErrors: an unknown layer (candidates listed), a layer output without a channel dimension,
    a model with several inputs or outputs, a ranking point with another channel count.
    """
    module.eval()
    check_single_input(module)
    layer, rank_on = module_name(module, layer), module_name(module, rank_on)
    layer = layer or default_for(module, sample)
    target = find_layer(module, layer)
    if rank_on is not None:
        find_layer(module, rank_on, "--rank-on")
    seen: dict[str, list] = {}
    handles = [m.register_forward_hook(_recorder(name, seen)) for name, m in module.named_modules() if name]
    try:
        output = module(sample)
    except BadInputError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        one = " (one image? the data are batches (N, C, H, W): add the batch axis, x.unsqueeze(0))" if sample.dim() < 4 else ""
        raise BadInputError("--model", f"the model fails on the data's first images, of shape {tuple(sample.shape)}{one}: "
                                       f"{type(exc).__name__}: {first_line(exc)}") from None
    finally:
        for h in handles:
            h.remove()
    if not isinstance(output, torch.Tensor):
        raise BadInputError("--model", f"the model returns {returned(output)}; the defense needs one logits tensor "
                                       "(N, classes): wrap it in a module whose forward returns the logits alone")
    if output.dim() != 2:
        raise BadInputError("--model", f"the model's output has shape {tuple(output.shape)}; expected logits (N, classes)")
    if output.shape[1] == 1:
        raise BadInputError("--model", ONE_SCORE)
    out = seen.get(layer)
    if not out:
        raise BadInputError("--layer", f"layer {layer!r} did not run in the model's forward pass")
    if len(out) > 1:
        raise BadInputError("--layer", f"layer {layer!r} runs {len(out)} times in one forward pass; prune a layer "
                                       "that runs once")
    shape = out[0][1]
    if shape is None or len(shape) < 3:
        kind = "no tensor" if shape is None else f"shape {tuple(shape)}"
        can = prunable_layers(module, seen)
        listed = ", ".join(can[:20]) + (", ..." if len(can) > 20 else "")
        raise BadInputError("--layer", f"layer {layer!r} ({type(target).__name__}) outputs {kind}, which has no channel "
                                       f"dimension (N, C, H, W); layers that can be pruned: {listed or 'none'}")
    if len(shape) != 4:  # (N, tokens, dim), (N, C, L), (N, C, D, H, W): dim 1 is not known to be channels
        can = prunable_layers(module, seen)
        listed = ", ".join(can[:20]) + (", ..." if len(can) > 20 else "")
        raise BadInputError("--layer", f"layer {layer!r} ({type(target).__name__}) outputs shape {tuple(shape)}; the "
                                       "defense prunes channels (dim 1) of an (N, C, H, W) output; layers that can be "
                                       f"pruned: {listed or 'none'}")
    channels = int(shape[1])
    if rank_on is None:
        rank_on, rank_call, note = ranking_point(module, layer, seen)
    else:
        rank_call, note = rank_call_of(rank_on, layer, seen), None
    rank_shape = seen.get(rank_on, [(None, None)] * (rank_call + 1))[rank_call][1]
    if rank_shape is None or len(rank_shape) not in (2, 4) or int(rank_shape[1]) != channels:
        got = "no tensor" if rank_shape is None else f"shape {tuple(rank_shape)}"
        raise BadInputError("--rank-on", f"layer {rank_on!r} outputs {got}; ranking needs (N, {channels}, H, W) or (N, {channels}), the "
                                         f"channels of {layer!r}")
    num_classes = int(output.shape[1])
    return PrunableNet(module, layer, rank_on, channels, num_classes, tuple(sample.shape[1:]), rank_call, note)


def prunable_layers(module: nn.Module, seen: dict[str, list]) -> list[str]:
    """The layers (in `named_modules()` order) that ran once in the forward pass recorded in `seen` and output an
    (N, C, H, W) map: those whose output channels a mask can switch off. A Keras-origin net's are its own layers."""
    names = list(getattr(module, "layer_names", {}).values())
    candidates = names or [name for name, _ in module.named_modules() if name]
    return [n for n in candidates if len(seen.get(n, ())) == 1 and seen[n][0][1] is not None and len(seen[n][0][1]) == 4]


def _recorder(name: str, seen: dict[str, list]):
    def hook(_module: nn.Module, inputs: tuple, output: object) -> None:
        ins = tuple(id(t) for t in inputs if isinstance(t, torch.Tensor))
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
        # the tensors themselves are kept, so that no id is reused by a later tensor during this forward pass
        seen.setdefault(name, []).append((ins, shape, id(output) if isinstance(output, torch.Tensor) else None, (inputs, output)))
    return hook


def _consumers(seen: dict[str, list]) -> dict[int, list[tuple[str, int]]]:
    """{id of a tensor: the (module, call number) pairs that took it as an input}, from one recorded forward."""
    consumers: dict[int, list[tuple[str, int]]] = {}
    for name, calls in seen.items():
        for call, (ins, _shape, _out, _value) in enumerate(calls):
            for tensor in dict.fromkeys(ins):
                consumers.setdefault(tensor, []).append((name, call))
    return consumers


def ranking_point(module: nn.Module, layer: str, seen: dict[str, list]) -> tuple[str, int, str | None]:
    """(name, call, note): the pooling module call that takes the pruned layer's output (directly, or through one
    activation module call), else the pruned layer itself (`note` says why where a pool takes the output among
    other consumers). Found from the forward pass just run: which call of which module took which tensor, so a
    module that runs twice (one ReLU or pool after two convs) is followed at the call that reads this layer. An
    in-place activation hands on the same tensor, so the pool then takes the layer's output object itself; a
    container whose first child takes the tensor counts as that child."""
    modules = dict(module.named_modules())
    consumers = _consumers(seen)

    def takers(produced: int) -> list[tuple[str, int]]:
        found = [(n, c) for n, c in consumers.get(produced, []) if n != layer and not n.startswith(layer + ".")]
        names = {n for n, _ in found}
        return [(n, c) for n, c in found if not any(o.startswith(n + ".") for o in names)]

    produced = seen[layer][0][2]
    for hop in range(2):
        taken = takers(produced)
        pools = [t for t in taken if is_pooling(modules[t[0]])]
        acts = [t for t in taken if is_activation(modules[t[0]])]
        if len(pools) == 1 and all(t in pools or (t in acts and seen[t[0]][t[1]][2] == produced) for t in taken):
            return pools[0][0], pools[0][1], None
        if hop == 0 and len(taken) == 1 and acts:
            produced = seen[acts[0][0]][acts[0][1]][2]
            continue
        if pools:
            names = ", ".join(dict.fromkeys(n for n, _ in taken))
            return layer, 0, (f"note: ranking the channels of {layer} on its own output: it goes to {names}, not to "
                              "one pooling layer (--rank-on names another point)")
        break
    return layer, 0, None


def rank_call_of(rank_on: str, layer: str, seen: dict[str, list]) -> int:
    """The call of an explicit ranking point to record: its only call, else the one call that reads the pruned
    layer's output through module calls (else a one-line BadInputError)."""
    calls = seen.get(rank_on, [])
    if rank_on == layer or len(calls) <= 1:
        return 0
    derived = {seen[layer][0][2]}
    grew = True
    while grew:  # every tensor computed from the layer's output by module calls
        size = len(derived)
        for made in seen.values():
            derived |= {out for ins, _s, out, _v in made if out is not None and any(t in derived for t in ins)}
        grew = len(derived) > size
    reading = [c for c, (ins, _s, _o, _v) in enumerate(calls) if any(t in derived for t in ins)]
    if len(reading) != 1:
        raise BadInputError("--rank-on", f"layer {rank_on!r} runs {len(calls)} times in one forward pass and "
                                         f"{len(reading) or 'none'} of its calls read the output of {layer!r}; "
                                         "name a module that runs once")
    return reading[0]
