"""Issue 31, "the layer that Fine-Pruning users mean": a torch model's default pruned layer is the feature map that
its classifier's global pooling or flatten reads (a ResNet's `layer4`, a VGG's `features`), ranked on that pooling's
output; where there is none, the last Conv2d. The lab's BadNet and Keras-origin nets keep conv_3 / the last Conv2D.

Checked on small seeded models of each pattern, and on a ResNet swept at its default layer against an independent
reference: a deep copy of the model with our own hook zeroing the first k ranked channels of `layer4`'s output.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_nets import SmallCNN, resnet

import torch_badnet as tb
from torch_badnet.engine.prunable import prepare


class VGG(nn.Module):
    """torchvision's VGG layout: features (ending in a max-pool: 8x8 here), an AdaptiveAvgPool2d (to 4x4), a flatten,
    then a Linear-ReLU-Dropout-Linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.avgpool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(nn.Linear(16 * 16, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class MobileLike(nn.Module):
    """MobileNetV2's tail: features (depthwise conv, BatchNorm, ReLU6), a functional global pooling, Dropout, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6(inplace=True),
                                      nn.Conv2d(8, 8, 3, groups=8), nn.BatchNorm2d(8), nn.ReLU6(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), (1, 1)), 1))


class ConvHead(nn.Module):
    """A 1x1-conv classifier and a mean (no Linear): no pooling feeds a Linear, so the last Conv2d stays."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3)
        self.head = nn.Conv2d(8, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.body(x))).mean((2, 3))


@pytest.mark.parametrize(("model", "layer", "rank_on"), [
    (lambda: resnet(8), "layer4", "avgpool"),           # BasicBlock's in-place ReLU: layer4, layer4.1, .relu: the outermost
    (VGG, "features", "avgpool"),                       # the classifier's adaptive pooling reads `features`
    (MobileLike, "features", "features"),               # a functional global pooling: ranked on the map's own mean
    (lambda: SmallCNN(6), "pool2", "pool2"),            # a flatten of a 5x5 map: the map it reads
    (ConvHead, "head", "head"),                         # no Linear after the last conv: the last Conv2d
])
def test_default_layer_and_ranking_point(model, layer: str, rank_on: str) -> None:
    torch.manual_seed(0)
    net = model().eval()
    x = torch.rand(4, 1, 28, 28) if isinstance(net, SmallCNN) else torch.rand(4, 3, 32, 32)
    prepared = prepare(net, x)
    assert (prepared.layer, prepared.rank_on) == (layer, rank_on)


def test_lab_and_keras_nets_keep_the_last_conv(tmp_path) -> None:
    """The lab's BadNet wrapped as a torch module (`0.conv_3` is named explicitly in the README example) and a
    Keras-origin net keep the last Conv2d rule: a Keras-origin net's default is its last Conv2D."""
    from torch_badnet.nets.badnet import BadNet

    assert prepare(BadNet(5).eval(), torch.rand(2, 3, 55, 47) * 255, "conv_3").rank_on == "pool_3"

    class KerasLike(SmallCNN):  # what marks a Keras-origin net: its config
        keras_config: dict = {"class_name": "Functional"}

    assert prepare(KerasLike(6).eval(), torch.rand(4, 1, 28, 28)).layer == "conv2"


def test_resnet_sweep_at_its_default_layer(tmp_path) -> None:
    """ResNet at its default: `layer4` ranked on `avgpool`, named in the table, the closing line's data and
    summary.json; every step's clean and attack numbers equal a deep copy with our own hook zeroing the first k
    ranked channels of layer4's output; with every channel masked the block output is 0, so all images get the
    class of fc's bias (a conv2 mask before bn2 and the skip left 70% of it non-zero)."""
    torch.manual_seed(0)
    model = resnet(8)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(160, 3, 16, 16, generator=g)  # 16x16: layer4's map is 2x2
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::3] = (y[::3] + 1) % 10
    target = torch.zeros(80, dtype=torch.long)
    result = tb.prune_sweep(model, (x[:80], y[:80]), (x[80:], target), thresholds=(5,))
    sweep = result.sweep
    assert (sweep.net.layer, sweep.net.rank_on, sweep.steps) == ("layer4", "avgpool", 64)
    assert "pruned layer4 (64 channels), ranked on avgpool" in result.table().splitlines()
    summary = result.summary()["model"]
    assert (summary["layer"], summary["rank_on"]) == ("layer4", "avgpool")
    json.dumps(summary)

    reference = copy.deepcopy(model).eval()
    off: list[int] = []
    def zero(_m, _i, out):
        out = out.clone()
        out[:, off] = 0
        return out
    reference.layer4.register_forward_hook(zero)
    with torch.no_grad():
        features = []
        handle = reference.avgpool.register_forward_hook(lambda _m, _i, out: features.append(out))
        reference(x[:80])
        handle.remove()
    scores = features[0].mean((0, 2, 3))
    assert torch.allclose(torch.as_tensor(sweep.scores), scores, rtol=1e-5, atol=1e-7)  # ranked on avgpool's output
    clean = sweep.metrics[tb.Column("pruned", "valid", "clean_acc")]
    attack = sweep.metrics[tb.Column("pruned", "valid", "asr")]
    with torch.no_grad():
        for k in range(sweep.steps + 1):
            off[:] = sweep.order[:k]
            labels = reference(x).argmax(1)
            assert clean[k] == pytest.approx(100.0 * int((labels[:80] == y[:80]).sum()) / 80, abs=1e-9), k
            assert attack[k] == pytest.approx(100.0 * int((labels[80:] == 0).sum()) / 80, abs=1e-9), k
    assert bool((labels == model.fc.bias.argmax()).all())  # all 64 masked: logits = fc's bias
