"""ResNet-50 (ImageNet shape: 224×224 inputs, 1000 classes, bottleneck blocks of widths 64-128-256-512,
expansion 4), as a user's model: the network of He et al. 2016 written from the paper's table, for
the scale benchmark (benchmarks/scale_network.py) and as an example of a model the registry does
not know. No pretrained weights come with it: pass your own state dict with --weights.

    crossdistill compress --model examples/resnet50.py:resnet50 --weights my_resnet50.pt \\
        --mean 0.485 0.456 0.406 --std 0.229 0.224 0.225 --data calib.npz --n-samples 512 \\
        --capture disk --keep 0.5 --out runs/r50
"""
from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000, blocks: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in, stages = 64, []
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            layers = []
            for j in range(n):
                layers.append(Bottleneck(c_in, width, 2 if (j == 0 and i > 0) else 1))
                c_in = width * Bottleneck.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward_units(self) -> list[tuple[str, object]]:
        """(name prefix, callable) pieces whose composition is `forward`: lets the capture run the
        finished front once instead of once per layer (optional for a user's model)."""
        stem = ("conv1", lambda x: self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        blocks = [(f"layer{s}.{i}", b) for s in (1, 2, 3, 4) for i, b in enumerate(getattr(self, f"layer{s}"))]
        head = ("fc", lambda x: self.fc(torch.flatten(self.avgpool(x), 1)))
        return [stem, *blocks, head]


def resnet50(num_classes: int = 1000) -> ResNet50:
    return ResNet50(num_classes)


class PlainResNet50(ResNet50):
    """The same network without `forward_units()`, as a user's own ResNet-50 would be: the
    capture then replays each layer's enclosing modules (crossdistill/capture_replay.py)."""

    forward_units = None  # type: ignore[assignment]


def resnet50_plain(num_classes: int = 1000) -> PlainResNet50:
    return PlainResNet50(num_classes)

