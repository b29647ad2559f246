"""Issue 31: a researcher's own model is never silently wrong.

A zoo of small seeded models (torchvision-style ResNet, PreAct-ResNet, VGG-BN, a MobileNetV2-style net with
depthwise convs, functional forwards, a ModuleList loop, a two-consumer conv, a data-dependent `if`) and one
model per pattern of issue 31 (a module run twice, an in-place op on a skip, hooks on the model, a random
forward, batch statistics, `x.size(0)` read after the cut, a `squeeze()` that a batch of one breaks), and the
families around them (DenseNet concatenation, channel shuffle, GroupNorm, Inception branches, squeeze-and-excitation,
in-place ops and an in-place ReLU as the layer, upsampling, weight norm, DataParallel, channels_last). For each,
`tb.prune_sweep` either gives every step's labels and all six metric columns of an independent reference (a
deep copy of the model, this file's own forward hook zeroing the first k ranked channels, a full forward per
step, in batches that never leave one image alone), or one line naming the model, layer and problem.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_zoo import InvertedResidual, PreActBlock
from torch import nn
from torch_nets import BasicBlock, centre_head, randomize_batchnorm

import torch_badnet as tb
from torch_badnet.engine import generic
from torch_badnet.engine import run as engine_run
from torch_badnet.engine.pruning import channel_scores

CLASSES = 10
TARGET = 0
N_CLEAN, N_BAD = 160, 80


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is faster than two, and the shared test machine's cores stay free."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seeded(cls, *args, seed: int = 0, **kwargs) -> nn.Module:
    """A model with seeded weights, non-trivial BatchNorm statistics and a head scaled so that classes vary."""
    torch.manual_seed(seed)
    model = randomize_batchnorm(cls(*args, **kwargs), seed + 100)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return centre_head(model, head, torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(seed + 200)))


def data(model: nn.Module, seed: int = 1, n_clean: int = N_CLEAN) -> tuple[tuple, tuple]:
    """Clean validation images labelled by the model (every 4th label wrong) and poisoned ones (a 4x4 patch,
    target class 0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_clean, 3, 16, 16, generator=g)
    with torch.no_grad():
        y = reference_forward(model, x).argmax(1)
    y[::4] = (y[::4] + 1) % CLASSES
    bad = torch.randn(N_BAD, 3, 16, 16, generator=g)
    bad[:, :, -5:-1, -5:-1] = 2.5
    return (x, y), (bad, torch.full((N_BAD,), TARGET))


def reference_forward(model: nn.Module, x: torch.Tensor, batch: int = 100) -> torch.Tensor:
    """Logits of a full forward in batches of `batch` rows, never a batch of one row."""
    n = x.shape[0]
    starts = list(range(0, n, batch))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    bounds = [*starts, n]
    return torch.cat([model(x[a:b]) for a, b in zip(bounds, bounds[1:])])


def reference_labels(model: nn.Module, layer: str, order: list[int], x: torch.Tensor, steps: int,
                     batch: int = 100) -> torch.Tensor:
    """(steps + 1, N) labels: a deep copy, a forward hook zeroing the first k ranked channels, a full forward."""
    ref = copy.deepcopy(model).eval()
    off: list[int] = []

    def zero(_m, _i, out):
        out = out.clone()
        out[:, off] = 0.0
        return out

    handle = ref.get_submodule(layer).register_forward_hook(zero)
    rows = []
    with torch.inference_mode():
        for k in range(steps + 1):
            off[:] = order[:k]
            rows.append(reference_forward(ref, x, batch).argmax(1))
    handle.remove()
    return torch.stack(rows)


def reference_columns(clean: torch.Tensor, y: torch.Tensor, bad: torch.Tensor, y_bad: torch.Tensor) -> dict:
    """The six columns from labels: B' clean / attack, G clean / attack / detects / false alarm."""
    def rate(mask: torch.Tensor) -> list[float]:
        return [100.0 * int(v) / mask.shape[1] for v in mask.sum(1)]

    return {
        tb.Column("pruned", "valid", "clean_acc"): rate(clean == y),
        tb.Column("pruned", "valid", "asr"): rate(bad == y_bad),
        tb.Column("goodnet", "valid", "clean_acc"): rate((clean == clean[0]) & (clean[0] == y)),
        tb.Column("goodnet", "valid", "asr"): rate((bad == bad[0]) & (bad[0] == y_bad)),
        tb.Column("goodnet", "valid", "detection_rate"): rate(bad != bad[0]),
        tb.Column("goodnet", "valid", "false_alarm_rate"): rate(clean != clean[0]),
    }


def sweep(model: nn.Module, clean: tuple, bad: tuple, monkeypatch, **kwargs):
    """tb.prune_sweep, with every step's labels of each set captured where the engine counts them."""
    captured: list[torch.Tensor] = []
    real = engine_run.step_counts

    def capture(labels, truth):
        captured.append(labels.clone())
        return real(labels, truth)

    monkeypatch.setattr(engine_run, "step_counts", capture)
    lines: list[str] = []
    result = tb.prune_sweep(model, clean, bad, log=lines.append, **kwargs)
    monkeypatch.setattr(engine_run, "step_counts", real)
    return result, captured, lines


def assert_equals_reference(model: nn.Module, layer: str | None, monkeypatch, batch: int = 100, n_clean: int = N_CLEAN,
                            min_changes: int = 2, **kwargs):
    """Every step's labels and all six columns of the sweep equal the reference's."""
    clean, bad = data(model, n_clean=n_clean)
    result, captured, lines = sweep(model, clean, bad, monkeypatch, layer=layer, **kwargs)
    net = result.sweep.net
    order, steps = result.sweep.order, result.sweep.steps
    ref_clean = reference_labels(model, net.layer, order, clean[0], steps, batch)
    ref_bad = reference_labels(model, net.layer, order, bad[0], steps, batch)
    assert torch.equal(captured[0], ref_clean), (layer, (captured[0] != ref_clean).any(1).nonzero().flatten().tolist())
    assert torch.equal(captured[1], ref_bad), (layer, (captured[1] != ref_bad).any(1).nonzero().flatten().tolist())
    expected = reference_columns(ref_clean, clean[1], ref_bad, bad[1])
    for column, values in expected.items():
        assert result.sweep.metrics[column] == values, (layer, column.name)
    changes = sum(int(not torch.equal(ref_clean[k], ref_clean[k - 1])) for k in range(1, steps + 1))
    assert changes >= min_changes, f"pruning {net.layer} hardly changes a label: the test would prove little"
    return result, lines


def rank_point_output(model: nn.Module, name: str, call: int, x: torch.Tensor) -> torch.Tensor:
    """The output of call number `call` (0 = first) of module `name` in one forward over x."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    outs = []
    with torch.inference_mode():
        for part in x.split(100):
            seen.clear()
            model(part)
            outs.append(seen[call])
    handle.remove()
    return torch.cat(outs)


def assert_ranked_on(result, model: nn.Module, name: str, call: int, x: torch.Tensor) -> None:
    features = rank_point_output(model, name, call, x)
    while features.dim() < 4:
        features = features.unsqueeze(-1)
    expected = channel_scores(features)
    assert np.array_equal(result.sweep.scores, expected)


# --- the zoo ---------------------------------------------------------------------------------------------------


def conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]


class ResNet(nn.Module):
    def __init__(self, w: int = 4) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(3, w)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(w, w), BasicBlock(w, w))
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, 2))
        self.layer3 = nn.Sequential(BasicBlock(2 * w, 4 * w, 2), BasicBlock(4 * w, 4 * w))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(4 * w, CLASSES)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class PreActResNet(nn.Module):
    def __init__(self, w: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        self.layer1 = PreActBlock(w, w)
        self.layer2 = PreActBlock(w, 2 * w, 2)
        self.layer3 = PreActBlock(2 * w, 4 * w, 2)
        self.bn = nn.BatchNorm2d(4 * w)
        self.linear = nn.Linear(4 * w, CLASSES)

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1)
        return self.linear(out.view(out.size(0), -1))


class VGG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in (8, "M", 12, "M", 16, 16, "M"):
            if cout == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [*conv_bn(cin, cout), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(16 * 2 * 2, 24), nn.ReLU(True), nn.Dropout(), nn.Linear(24, CLASSES))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class MobileNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 8), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(InvertedResidual(8, 8, 1, 2), InvertedResidual(8, 12, 2, 2), InvertedResidual(12, 12, 1, 2))
        self.last = nn.Sequential(nn.Conv2d(12, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, CLASSES))

    def forward(self, x):
        x = self.last(self.blocks(self.stem(x)))
        return self.classifier(nn.functional.adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1))


class Functional(nn.Module):
    """Modules only for the convs and the head; everything else is torch.nn.functional or tensor methods."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.conv3 = nn.Conv2d(12, 12, 3, padding=1)
        self.fc = nn.Linear(12, CLASSES)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.relu(self.conv3(x))
        return self.fc(F.adaptive_max_pool2d(x, 1).flatten(1))


class Looped(nn.Module):
    """A ModuleList walked in a loop."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 12, 3, padding=1)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(8), nn.BatchNorm2d(8), nn.BatchNorm2d(12)])
        self.fc = nn.Linear(12 * 2 * 2, CLASSES)

    def forward(self, x):
        for conv, bn in zip(self.convs, self.bns):
            x = F.max_pool2d(F.relu(bn(conv(x))), 2)
        return self.fc(x.flatten(1))


class TwoConsumers(nn.Module):
    """conv_b's output feeds a pool module and a mean; the two are concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 10, 3, padding=1, stride=2)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(10 * 2 * 2 + 10, CLASSES)

    def forward(self, x):
        b = self.conv_b(F.relu(self.conv_a(x)))
        return self.fc(torch.cat([self.pool(b).flatten(1), b.mean((2, 3))], 1))


class DataDependent(nn.Module):
    """A data-dependent `if`: torch.fx cannot trace it (a full forward per step)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 10, 3, padding=1)
        self.fc = nn.Linear(10 * 4 * 4, CLASSES)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = self.conv2(x)
        x = F.max_pool2d(x, 2) if x.mean() > -1e9 else F.avg_pool2d(x, 2)
        return self.fc(F.relu(x).flatten(1))


class DenseConcat(nn.Module):
    """DenseNet-style: a layer's output concatenated with its input, then a transition conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 6, 3, padding=1)
        self.trans = nn.Conv2d(14, 10, 1)
        self.fc = nn.Linear(10, CLASSES)

    def forward(self, x):
        x = F.relu(self.conv0(x))
        x = torch.cat([x, F.relu(self.conv1(x))], 1)
        x = F.avg_pool2d(F.relu(self.trans(x)), 2)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Shuffle(nn.Module):
    """ShuffleNet-style channel shuffle after the pruned conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.conv3 = nn.Conv2d(8, 12, 3, padding=1, groups=2)
        self.fc = nn.Linear(12, CLASSES)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = F.relu(self.conv3(x))
        return self.fc(x.mean((2, 3)))


class SharedConv(nn.Module):
    """One conv applied at two scales (a shared pruned layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x):
        x = F.relu(self.stem(x))
        a = F.relu(self.conv(x))
        b = F.relu(self.conv(F.max_pool2d(x, 2)))
        return self.fc(torch.cat([a.mean((2, 3)), b.amax((2, 3))], 1))


class GroupNormNet(nn.Module):
    """GroupNorm after the pruned conv: a pruned channel changes the statistics of its group."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.gn = nn.GroupNorm(3, 12)
        self.fc = nn.Linear(12 * 4 * 4, CLASSES)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.gn(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


class Inception(nn.Module):
    """Inception-style branches concatenated; the global pool reads the concatenation, which is no module."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.Conv2d(8, 6, 1)
        self.b3 = nn.Conv2d(8, 6, 3, padding=1)
        self.bp = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = torch.cat([F.relu(self.b1(x)), F.relu(self.b3(x)), F.relu(self.bp(F.max_pool2d(x, 3, 1, 1)))], 1)
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


class SEBlock(nn.Module):
    """Squeeze-and-excitation: the pruned conv's output is reweighted by a gate computed from itself."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.se1 = nn.Linear(12, 4)
        self.se2 = nn.Linear(4, 12)
        self.fc = nn.Linear(12, CLASSES)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        y = self.conv2(x)
        g = torch.sigmoid(self.se2(F.relu(self.se1(y.mean((2, 3))))))
        y = F.relu(y * g[:, :, None, None])
        return self.fc(y.mean((2, 3)))


class InPlaceAfter(nn.Module):
    """The pruned conv's output changed in place by mul_ and add_ before the next layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 10, 3, padding=1)
        self.fc = nn.Linear(10, CLASSES)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        y = self.conv2(x)
        y.mul_(2.0).add_(0.1)
        return self.fc(F.relu(y).mean((2, 3)))


class Plain(nn.Module):
    """conv, in-place ReLU module, pool, twice: an in-place ReLU can be the pruned layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.fc = nn.Linear(12 * 4 * 4, CLASSES)

    def forward(self, x):
        x = F.max_pool2d(self.relu1(self.conv1(x)), 2)
        x = F.max_pool2d(self.relu2(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


class Upsampled(nn.Module):
    """The pruned conv's output upsampled and concatenated with the input (a U-Net-like skip)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, stride=2)
        self.conv2 = nn.Conv2d(8, 10, 3, padding=1)
        self.conv3 = nn.Conv2d(13, 10, 3, padding=1)
        self.fc = nn.Linear(10, CLASSES)

    def forward(self, x):
        y = F.relu(self.conv2(F.relu(self.conv1(x))))
        y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        y = F.relu(self.conv3(torch.cat([y, x], 1)))
        return self.fc(y.amax((2, 3)))


ZOO = [
    (ResNet, "layer3.1.conv2"), (ResNet, "layer3.0.conv1"), (ResNet, "layer2.0.downsample.0"), (ResNet, "layer1.1.bn2"),
    (PreActResNet, "layer3.conv2"), (PreActResNet, "layer2.conv1"), (PreActResNet, "layer2.shortcut.0"),
    (VGG, "features.11"), (VGG, "features.4"), (VGG, None),
    (MobileNet, "blocks.2.conv.3"), (MobileNet, "blocks.2.conv.6"), (MobileNet, "last.0"), (MobileNet, "blocks.0.conv.0"),
    (Functional, "conv3"), (Functional, "conv2"), (Looped, "convs.2"), (Looped, "convs.1"),
    (TwoConsumers, "conv_b"), (TwoConsumers, "conv_a"), (DataDependent, "conv2"),
    (DenseConcat, "conv1"), (DenseConcat, None), (Shuffle, "conv2"), (Shuffle, "conv1"), (GroupNormNet, "conv2"),
    (GroupNormNet, "gn"), (Inception, "b3"), (Inception, None), (SEBlock, "conv2"), (InPlaceAfter, "conv2"),
    (Plain, "relu2"), (Plain, "relu1"), (Upsampled, "conv2"),
]


@pytest.mark.parametrize(("cls", "layer"), ZOO, ids=[f"{c.__name__}-{layer}" for c, layer in ZOO])
def test_zoo_every_step_and_every_column_equals_the_reference(cls, layer, monkeypatch):
    model = seeded(cls)
    result, _lines = assert_equals_reference(model, layer, monkeypatch)
    net = result.sweep.net
    assert_ranked_on(result, model, net.rank_on, 0, data(model)[0][0])  # each zoo ranking point runs once


WRAPPED = {
    "weight_norm": lambda m: (torch.nn.utils.parametrizations.weight_norm(m.conv2), m)[1],  # a parametrized layer
    "DataParallel": lambda m: nn.DataParallel(m),  # names under module.; fx cannot trace it: a full forward per step
    "channels_last": lambda m: m.to(memory_format=torch.channels_last),
}


@pytest.mark.parametrize("wrap", list(WRAPPED))
def test_wrapped_and_reparametrized_models_equal_the_reference(wrap, monkeypatch):
    model = WRAPPED[wrap](seeded(Plain))
    layer = "module.conv2" if wrap == "DataParallel" else "conv2"
    result, _lines = assert_equals_reference(model, layer, monkeypatch)
    assert result.sweep.net.layer == layer


def test_a_pruned_layer_that_runs_twice_is_one_line(monkeypatch):
    """One conv applied at two scales: its channels mean two things, so it is refused (the layers around it are not)."""
    model = seeded(SharedConv)
    with pytest.raises(tb.BadInputError, match="layer 'conv' runs 2 times in one forward pass; prune a layer that runs once"):
        sweep(model, *data(model), monkeypatch, layer="conv")
    assert_equals_reference(model, "stem", monkeypatch)


# --- item 1: a module object that runs more than once ----------------------------------------------------------


class SharedRelu(nn.Module):
    """One nn.ReLU after two convs of the same width; each conv has its own pool."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.pool2 = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, CLASSES)

    def forward(self, x):
        x = self.pool1(self.relu(self.conv1(x)))
        x = self.pool2(self.relu(self.conv2(x)))
        return self.fc(x.flatten(1))


class TutorialCNN(nn.Module):
    """The PyTorch tutorial's CNN: one MaxPool2d (and here one ReLU) used after both convs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 12, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2, 2)
        self.fc = nn.Linear(12 * 4 * 4, CLASSES)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class SharedGap(nn.Module):
    """One AdaptiveAvgPool2d called on two convs' outputs (a multi-scale head)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x):
        a = self.conv1(x)
        b = self.conv2(F.relu(a))
        return self.fc(torch.cat([self.gap(a).flatten(1), self.gap(b).flatten(1)], 1))


@pytest.mark.parametrize(("cls", "rank_on", "call"), [(SharedRelu, "pool2", 0), (TutorialCNN, "pool", 1), (SharedGap, "gap", 1)])
def test_a_module_run_twice_ranks_on_the_call_that_reads_the_layer(cls, rank_on, call, monkeypatch):
    model = seeded(cls)
    result, _ = assert_equals_reference(model, "conv2", monkeypatch)
    assert result.sweep.net.rank_on == rank_on
    assert_ranked_on(result, model, rank_on, call, data(model)[0][0])


def test_an_explicit_rank_on_run_twice_follows_the_call_that_reads_the_layer(monkeypatch):
    model = seeded(SharedGap)
    result, _ = assert_equals_reference(model, "conv2", monkeypatch, rank_on="gap")
    assert_ranked_on(result, model, "gap", 1, data(model)[0][0])


class SharedReluBeforeLayer(SharedRelu):
    """relu runs twice, but neither call reads conv1's output through modules alone."""

    def forward(self, x):
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.relu(x)
        x = self.pool2(self.relu(self.conv2(x)))
        return self.fc(x.flatten(1))


def test_an_explicit_rank_on_run_twice_that_does_not_read_the_layer_is_one_line(monkeypatch):
    model = seeded(SharedReluBeforeLayer)
    clean, bad = data(model)
    with pytest.raises(tb.BadInputError, match=r"^--rank-on: .*'relu' runs 2 times.*'conv1'") as info:
        tb.prune_sweep(model, clean, bad, layer="conv1", rank_on="relu")
    assert "\n" not in str(info.value)


class TwoPooledConsumers(nn.Module):
    """conv2's output goes to a pool and to a 1x1 conv: no single ranking point."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(4)
        self.side = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(8 * 4 * 4 + 4 * 4 * 4, CLASSES)

    def forward(self, x):
        h = self.conv2(F.relu(self.conv1(x)))
        side = F.max_pool2d(self.side(h), 4)
        return self.fc(torch.cat([self.pool(h).flatten(1), side.flatten(1)], 1))


def test_an_undecidable_default_ranking_point_is_the_layer_and_says_so(monkeypatch):
    model = seeded(TwoPooledConsumers)
    result, lines = assert_equals_reference(model, "conv2", monkeypatch)
    assert result.sweep.net.rank_on == "conv2"
    assert any("conv2" in line and "own output" in line for line in lines), lines


# --- item 2: an in-place op on a tensor a later op reads --------------------------------------------------------


class InPlaceSkip(nn.Module):
    """`skip = h; h = relu_(h)`: the skip added after the pruned conv is the rectified tensor."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, CLASSES)

    def forward(self, x):
        h = self.conv1(x)
        skip = h
        if self.how == "module":
            h = self.relu(h)
        elif self.how == "method":
            h = h.relu_()
        else:
            h = torch.relu_(h)
        h = self.bn(self.conv2(h)) + skip
        return self.fc(F.max_pool2d(F.relu(h), 4).flatten(1))


@pytest.mark.parametrize("how", ["module", "method", "function"])
def test_an_in_place_op_on_a_skip_gives_the_reference(how, monkeypatch):
    _result, lines = assert_equals_reference(seeded(InPlaceSkip, how), "conv2", monkeypatch)
    assert lines == []  # the fast path, with the skip cached as the add reads it


def test_the_set_up_probe_catches_a_fast_path_that_is_not_the_full_forward(monkeypatch):
    """The safety net: with every cached tensor copied where it is computed (the record pass before issue 31),
    the fast path is wrong on InPlaceSkip; the probe at set-up compares it with full forwards with the mask hook,
    and every step is then a full forward, exact, with one line saying so."""
    real = generic._record_module
    monkeypatch.setattr(generic, "_record_module", lambda gm, late, _readers, early: real(gm, [], {}, [*late, *early]))
    _result, lines = assert_equals_reference(seeded(InPlaceSkip, "module"), "conv2", monkeypatch)
    assert "does not give the model's own outputs" in lines[-1] and "full forward per step" in lines[-1], lines


class MutatedAfterRead(nn.Module):
    """The skip is read after the cut, then changed in place and read again."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, CLASSES)

    def forward(self, x):
        skip = self.conv1(x)
        h = self.conv2(skip)
        a = h + skip
        skip.mul_(-1.5)
        b = torch.cat([a, skip], 1)
        return self.fc(F.max_pool2d(F.relu(b), 4).flatten(1))


def test_a_skip_changed_between_two_reads_gives_the_reference(monkeypatch):
    _result, lines = assert_equals_reference(seeded(MutatedAfterRead), "conv2", monkeypatch)
    assert len(lines) == 1 and "an in-place op changes a tensor" in lines[0] and "full forward per step" in lines[0]


# --- item 3: hooks on the model ------------------------------------------------------------------------------


def normalise(_module, inputs):
    return ((inputs[0] - 0.3) * 2.0,)


def flip_logits(_module, _inputs, output):
    return -output


def test_forward_hooks_on_the_model_are_honoured(monkeypatch):
    model = seeded(ResNet)
    model.register_forward_pre_hook(normalise)
    model.register_forward_hook(flip_logits)
    _result, lines = assert_equals_reference(model, "layer3.1.conv2", monkeypatch)
    assert len(lines) == 1 and "hooks on the model itself" in lines[0] and "full forward per step" in lines[0]


def test_a_hook_on_a_traced_through_block_is_honoured(monkeypatch):
    """fx traces a submodule's __call__, hooks included, and a call_module node calls its module: the fast path
    keeps them (a module with hooks is not run on one-channel slices)."""
    model = seeded(ResNet)
    model.layer3.register_forward_hook(lambda _m, _i, out: out.flip(1))  # the channels in reverse order
    model.layer3[1].bn2.register_forward_hook(lambda _m, _i, out: out * 1.7 - 0.2)  # a leaf in the region
    assert_equals_reference(model, "layer3.1.conv2", monkeypatch)


def test_a_net_that_a_b_prime_wraps_copies_with_its_mask_and_sweeps_as_it_computes(monkeypatch):
    """A MaskedNet (B') hooks the net it wraps. A copy of that net (the sweep's own, or the user's) masks as the net
    did when copied, and no longer follows the B' (copying it crashed before); a copy of the B' keeps its net's
    eval mode (it was put in training mode)."""
    from torch_badnet.engine.prunable import MaskedNet

    model = seeded(ResNet)
    mask = torch.ones(16)
    mask[:5] = 0
    b_prime = MaskedNet(model, "layer3.1.conv2", mask)
    x = data(model)[0][0]
    with torch.inference_mode():
        masked = model(x)
        copied = copy.deepcopy(model)
        assert torch.equal(copied(x), masked) and torch.equal(copy.deepcopy(b_prime)(x), masked)
        b_prime.channel_mask.fill_(1)
        assert torch.equal(copied(x), masked) and not torch.equal(model(x), masked)
        b_prime.channel_mask.copy_(mask)
    assert not copy.deepcopy(b_prime).training and not b_prime.training
    assert_equals_reference(model, "layer3.0.conv1", monkeypatch)


def test_a_global_module_hook_is_honoured(monkeypatch):
    model = seeded(VGG)

    def reverse(module, _inputs, out):  # on `features`, a Sequential that fx traces through
        return out.flip(1) if isinstance(module, nn.Sequential) and out.dim() == 4 else None

    handle = nn.modules.module.register_module_forward_hook(reverse)
    try:
        assert_equals_reference(model, "features.11", monkeypatch)
    finally:
        handle.remove()


# --- item 5: a forward that is not deterministic ---------------------------------------------------------------


class RandomForward(Functional):
    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.dropout(F.relu(self.conv2(x)), 0.5)  # `training` defaults to True, even in eval mode
        x = torch.relu(self.conv3(F.avg_pool2d(x, 2)))
        return self.fc(F.adaptive_max_pool2d(x, 1).flatten(1))


def test_a_random_forward_is_one_line_naming_the_cause():
    model = seeded(RandomForward)
    clean, bad = data(model)
    with pytest.raises(tb.BadInputError, match=r"^--model: .*not deterministic.*dropout") as info:
        tb.prune_sweep(model, clean, bad, layer="conv3")
    assert "\n" not in str(info.value)


# --- item 6: BatchNorm with batch statistics -------------------------------------------------------------------


class BatchStats(Functional):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(12, track_running_stats=False)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.bn(self.conv2(x))), 2)
        x = torch.relu(self.conv3(x))
        return self.fc(F.adaptive_max_pool2d(x, 1).flatten(1))


class BatchCentred(Functional):
    def forward(self, x):
        return super().forward(x - x.mean(0, keepdim=True))


@pytest.mark.parametrize(("cls", "fragment"), [(BatchStats, "'bn'.*batch statistics"), (BatchCentred, "other images")])
def test_batch_statistics_are_one_line(cls, fragment):
    model = seeded(cls)
    clean, bad = data(model)
    with pytest.raises(tb.BadInputError, match=f"^--model: .*{fragment}") as info:
        tb.prune_sweep(model, clean, bad, layer="conv3")
    assert "\n" not in str(info.value)


class DyingFeatures(Functional):
    """Logits divided by whether conv3's pooled features are alive: inf and NaN once pruning kills them all."""

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2)
        h = F.adaptive_max_pool2d(torch.relu(self.conv3(x)), 1).flatten(1)
        return self.fc(h) / h.sum(1, keepdim=True).gt(0).float()


class NaNRows(Functional):
    """NaN logits from the start for the images whose first pixel is above 1."""

    def forward(self, x):
        out = super().forward(x)
        return out.masked_fill(x[:, :1, 0, 0] > 1, float("nan"))


@pytest.mark.parametrize("cls", [DyingFeatures, NaNRows])
def test_non_finite_logits_follow_argmax_as_the_reference_does(cls, monkeypatch):
    """NaN or inf logits are the model's own (not batch dependence, which the set-up probe once blamed): every
    step's labels follow argmax's rule for them, as the reference's full forward does."""
    model = seeded(cls)
    clean, bad = data(model)
    with torch.inference_mode():
        logits = reference_forward(model, clean[0])
    assert (logits.isnan().any(1).any()) == (cls is NaNRows)
    assert_equals_reference(model, "conv3", monkeypatch, min_changes=1)


class OneLogit(Functional):
    """A binary classifier with one logit (sigmoid outside): argmax over one score is always class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 1)


def test_one_score_per_image_is_one_line():
    model = OneLogit().eval()
    x = torch.randn(40, 3, 16, 16)
    y = torch.zeros(40, dtype=torch.long)
    with pytest.raises(tb.BadInputError, match=r"^--model: the model outputs one score per image .*torch.cat") as info:
        tb.prune_sweep(model, (x, y), (x, y), layer="conv3")
    assert "\n" not in str(info.value)


# --- item 9: the batch size read before the cut ----------------------------------------------------------------


class BatchSizeFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.fc = nn.Linear(12 * 4 * 4, CLASSES)

    def forward(self, x):
        bs = x.size(0)
        h, w = x.shape[2:]
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        return self.fc(x.reshape(bs, -1) * (h * w / 256.0))


@pytest.mark.parametrize("layer", ["conv2", "conv1"])
def test_the_batch_size_read_before_the_cut(layer, monkeypatch):
    assert_equals_reference(seeded(BatchSizeFirst), layer, monkeypatch)


# --- item 10: a batch of one image ------------------------------------------------------------------------------


class Squeezed(Functional):
    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.relu(self.conv3(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).squeeze())


@pytest.mark.parametrize("layer", ["conv3", "conv2"])
def test_no_batch_of_one_image(layer, monkeypatch):
    """257 images: record batches of 256 would leave one image alone, and so would a step that changes one."""
    assert_equals_reference(seeded(Squeezed), layer, monkeypatch, batch=257, n_clean=257)


@pytest.mark.parametrize("n", [129, 1025])
def test_eval_and_classify_never_run_a_batch_of_one(n):
    """eval's pass over a set (chunks of 1,024 images, batches of 128) and classify's labels: 129 images would
    leave one alone in the last batch, 1,025 in the last chunk; a squeeze() model gives the reference's labels."""
    from torch_badnet.data.lab_sets import ArraySet
    from torch_badnet.defense.evaluation import b_and_pruned_labels
    from torch_badnet.nets.predict import labels_in_batches

    model = seeded(Squeezed)
    x = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(n))
    expected = reference_forward(model, x).argmax(1)
    assert torch.equal(labels_in_batches(model, x), expected)
    labels, _truth = b_and_pruned_labels(model, ArraySet(x, torch.zeros(n, dtype=torch.int64), "<clean>", input_shape=None,
                                                         guard=False), torch.device("cpu"))
    assert torch.equal(labels[0], expected) and torch.equal(labels[1], expected)
