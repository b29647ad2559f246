"""Torch models for the generic engine's tests and benchmark: a torchvision-shaped CIFAR ResNet (BasicBlock,
3x3 stem, no max-pool) with non-trivial BatchNorm statistics, and small nets with other shapes after the cut."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv-bn-relu-conv-bn, += identity (downsampled where the shape changes), relu."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet-18 for 32x32 inputs (widths 64..512 at `width=64`), torchvision's layer names."""

    def __init__(self, num_classes: int = 10, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        layers, inplanes = [], width
        for i, count in enumerate(blocks):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(*[BasicBlock(inplanes if j == 0 else planes, planes, stride if j == 0 else 1)
                                          for j in range(count)]))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones are the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                if m.track_running_stats:  # a BatchNorm of batch statistics has none
                    m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                    m.running_var.copy_(torch.rand(n, generator=g) * 0.8 + 0.4)
                m.weight.copy_(torch.rand(n, generator=g) * 0.8 + 0.6)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def resnet(width: int = 8, num_classes: int = 10, seed: int = 0) -> ResNet:
    """A random ResNet whose classes all occur: fc is centred and scaled on random inputs (random conv weights
    alone give every input nearly the same logits)."""
    torch.manual_seed(seed)
    model = randomize_batchnorm(ResNet(num_classes, width), seed)
    return centre_head(model, model.fc, torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(seed)))


def centre_head(model: nn.Module, head: nn.Linear, x: torch.Tensor) -> nn.Module:
    """Scale and centre the last Linear on `x` so that every class occurs."""
    features = []
    handle = head.register_forward_hook(lambda _m, inputs, _o: features.append(inputs[0]))
    with torch.no_grad():
        model(x)
        f = features[0]
        head.weight.mul_(1.0 / (f.std(0).mean() + 1e-6))
        head.bias.copy_(-(f.mean(0) @ head.weight.t()))
    handle.remove()
    return model.eval()


class SmallCNN(nn.Module):
    """conv-relu-pool twice, then a flatten of a 2-d map and two Linear layers (F-like: the cut is conv2)."""

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 12, 3)
        self.act2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(12 * 5 * 5, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class Untraceable(SmallCNN):
    """SmallCNN whose forward branches on a tensor's value: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > -1e30:  # data-dependent control flow
            return super().forward(x)
        return super().forward(-x)


class TwoOutputs(SmallCNN):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = super().forward(x)
        return out, out


class DictOutput(SmallCNN):
    """Returns its logits in a dict, as Hugging Face models do."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": super().forward(x), "features": x}


class TwoInputs(SmallCNN):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return super().forward(x + y)
