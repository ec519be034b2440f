"""DenseNet-40 (growth 12, no bottleneck, no compression) for CIFAR-10, as a user's model.

The architecture of `../shared/data/weights/densenet40_k12-5d543813.pth` (95.3 % on the first
1000 CIFAR-10 test images with its own normalisation), written from the data folder's README:

    crossdistill compress --model examples/densenet40.py:densenet40 \\
        --weights $CROSSDISTILL_DATA/weights/densenet40_k12-5d543813.pth \\
        --mean 0.53129727 0.5259391 0.52069134 --std 0.28938246 0.28505746 0.27971658 \\
        --data $CROSSDISTILL_DATA/cifar10/cifar10_train.npz \\
        --eval-data $CROSSDISTILL_DATA/cifar10/cifar10_test1000.npz --shots 5 --keep 0.5 --out runs/densenet
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MEAN = (0.53129727, 0.5259391, 0.52069134)
STD = (0.28938246, 0.28505746, 0.27971658)


class DenseLayer(nn.Module):
    """y = conv(ReLU(bn(x))); the output is concat(y, x): the new channels first."""

    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.conv = nn.Conv2d(c_in, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.conv(F.relu(self.bn(x))), x), dim=1)


class DenseBlock(nn.Module):
    def __init__(self, c_in: int, n: int, growth: int) -> None:
        super().__init__()
        self.dense_layers = nn.Sequential(*[DenseLayer(c_in + i * growth, growth) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_layers(x)


class Transition(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.conv = nn.Conv2d(c, c, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet40(nn.Module):
    def __init__(self, growth: int = 12, n: int = 12, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        c = 16
        self.dense_block1 = DenseBlock(c, n, growth)
        c += n * growth
        self.transition1 = Transition(c)
        self.dense_block2 = DenseBlock(c, n, growth)
        c += n * growth
        self.transition2 = Transition(c)
        self.dense_block3 = DenseBlock(c, n, growth)
        c += n * growth
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transition1(self.dense_block1(self.conv(x)))
        x = self.transition2(self.dense_block2(x))
        x = F.relu(self.bn(self.dense_block3(x)))
        return self.fc(x.mean((2, 3)))


def densenet40() -> nn.Module:
    return DenseNet40()
