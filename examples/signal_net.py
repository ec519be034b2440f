"""A 1-d conv net for signals (N, C, L): audio, sensor or ECG classifiers have this shape, in the
spirit of M5 (Dai et al. 2017): a wide strided first conv, conv-BN-ReLU blocks with max pooling,
a residual block, global average pooling and a linear head. crossdistill compresses it as it
is; nothing is registered.

    from examples.signal_net import signal_net
    model = signal_net(in_channels=1, num_classes=10)      # input (N, 1, L), any L >= 64

benchmarks/conv1d_signals.py trains one on Fashion-MNIST read as 784-sample signals and
compresses it from K signals per class (docs/results/any_model.md).
"""
from __future__ import annotations

import torch
from torch import nn


def _cbr(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv1d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm1d(c_out), nn.ReLU()]


class Residual1d(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_cbr(width, width, 3), nn.Conv1d(width, width, 3, padding=1, bias=False),
                                  nn.BatchNorm1d(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class SignalNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_cbr(in_channels, width, 9, stride=2), nn.MaxPool1d(2),
            *_cbr(width, 2 * width, 5), nn.MaxPool1d(2),
            *_cbr(2 * width, 2 * width, 3), Residual1d(2 * width), nn.MaxPool1d(2),
            *_cbr(2 * width, 4 * width, 3))
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def signal_net(in_channels: int = 1, num_classes: int = 10, width: int = 32) -> SignalNet:
    return SignalNet(in_channels, num_classes, width)
