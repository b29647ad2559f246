"""Small CNNs of the architectures users bring (the model sources' tests): VGG with BatchNorm, MobileNetV2 with
depthwise convs and ReLU6, a pre-activation ResNet, and a ResNet whose pruned layer has no BatchNorm after it.
Seeded, with non-trivial BatchNorm statistics and a centred head (every class occurs)."""

from __future__ import annotations

import torch
from torch import nn
from torch_nets import ResNet, centre_head, randomize_batchnorm


def _finish(model: nn.Module, head: nn.Linear, seed: int, size: int = 32) -> nn.Module:
    randomize_batchnorm(model, seed)
    x = torch.randn(64, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return centre_head(model, head, x)


class VGGBN(nn.Module):
    """VGG's `features` (conv-bn-relu, max-pools) and `classifier`, as torchvision names them."""

    def __init__(self, num_classes: int = 10, widths: tuple = (8, "M", 16, "M", 16, "M")) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for w in widths:
            if w == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                channels = w
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Linear(channels * 4, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise, 1x1 project (ReLU6), residual where shapes allow."""

    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == out
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True)),
            InvertedResidual(8, 8, 1, 2), InvertedResidual(8, 16, 2, 3), InvertedResidual(16, 16, 1, 3),
            nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class PreActBlock(nn.Module):
    """bn-relu-conv twice, shortcut from the pre-activation (Kuang Liu's PreActResNet)."""

    def __init__(self, inp: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inp)
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or inp != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(inp, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.layer1 = nn.Sequential(PreActBlock(width, width), PreActBlock(width, width))
        self.layer2 = nn.Sequential(PreActBlock(width, 2 * width, 2), PreActBlock(2 * width, 2 * width))
        self.bn = nn.BatchNorm2d(2 * width)
        self.linear = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer2(self.layer1(self.conv1(x)))
        out = torch.relu(self.bn(out))
        out = nn.functional.avg_pool2d(out, 16)
        return self.linear(out.flatten(1))


class HeadResNet(ResNet):
    """torch_nets' ResNet with a 1x1 `head` conv (bias, no BatchNorm), nn.ReLU and the average pool after layer4:
    the default pruned layer, which an exporter's BatchNorm folding leaves as it is."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__(num_classes, width, (1, 1, 1, 1))
        channels = self.fc.in_features
        self.head = nn.Conv2d(channels, channels, 1)
        self.head_relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(self.head_relu(self.head(x)))
        return self.fc(torch.flatten(x, 1))


def head_resnet(num_classes: int = 10, width: int = 8, seed: int = 0) -> HeadResNet:
    """The seeded ResNet of the model sources' end-to-end tests (a module-level callable for --arch)."""
    torch.manual_seed(seed)
    model = HeadResNet(num_classes, width)
    return _finish(model, model.fc, seed)


def one_logit(seed: int = 0) -> HeadResNet:
    """head_resnet with one output, as a one-logit binary classifier has (for --arch in the refusal tests)."""
    return head_resnet(1, seed=seed)


def vgg_bn(seed: int = 0) -> VGGBN:
    torch.manual_seed(seed)
    model = VGGBN()
    return _finish(model, model.classifier[-1], seed)


def mobilenet_v2(seed: int = 0) -> MobileNetV2:
    torch.manual_seed(seed)
    model = MobileNetV2()
    return _finish(model, model.classifier[-1], seed)


def preact_resnet(seed: int = 0) -> PreActResNet:
    torch.manual_seed(seed)
    model = PreActResNet()
    return _finish(model, model.linear, seed)
