"""Tiny synthetic models for fast unit tests of the core."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Pair:
    producer: str
    bn: str | None
    consumer: str


class TinyNet(nn.Module):
    """conv-bn-relu ×3 then a linear: two prunable pairs (conv1→conv2, conv2→conv3)."""

    def __init__(self, widths: tuple[int, int, int] = (6, 8, 5), in_ch: int = 3, classes: int = 4) -> None:
        super().__init__()
        a, b, c = widths
        self.conv1 = nn.Conv2d(in_ch, a, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(a)
        self.conv2 = nn.Conv2d(a, b, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(b)
        self.conv3 = nn.Conv2d(b, c, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))

    def channel_pairs(self) -> list[Pair]:
        return [Pair("conv1", "bn1", "conv2"), Pair("conv2", "bn2", "conv3")]


def make_tiny(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet()
    # Non-trivial BN statistics so slimming bugs in BN copying show up.
    for bn in (net.bn1, net.bn2, net.bn3):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return net.eval()
