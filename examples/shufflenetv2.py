"""ShuffleNetV2 x0.5 for CIFAR-10, as a user's model (not in crossdistill's registry).

The architecture of `../shared/data/weights/shufflenetv2_x0_5-1308b4e9.pt` (90.5 % on the first
1000 CIFAR-10 test images), written from the description in the data folder's README:

    crossdistill compress --model examples/shufflenetv2.py:shufflenetv2_x0_5 \\
        --weights $CROSSDISTILL_DATA/weights/shufflenetv2_x0_5-1308b4e9.pt \\
        --mean 0.4914 0.4822 0.4465 --std 0.2023 0.1994 0.2010 \\
        --data $CROSSDISTILL_DATA/cifar10/cifar10_train.npz \\
        --eval-data $CROSSDISTILL_DATA/cifar10/cifar10_test1000.npz --shots 5 --keep 0.5 --out runs/shufflenet
"""
from __future__ import annotations

import torch
from torch import nn

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        b = c_out // 2
        if stride == 2:
            self.branch1 = nn.Sequential(
                nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in),
                nn.Conv2d(c_in, b, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        first = c_in if stride == 2 else b
        self.branch2 = nn.Sequential(
            nn.Conv2d(first, b, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
            nn.Conv2d(b, b, 3, stride, 1, groups=b, bias=False), nn.BatchNorm2d(b),
            nn.Conv2d(b, b, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            keep, rest = x.chunk(2, dim=1)
            out = torch.cat((keep, self.branch2(rest)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, repeats: tuple[int, ...] = (4, 8, 4), widths: tuple[int, ...] = (24, 48, 96, 192, 1024),
                 num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                   nn.ReLU(inplace=True))
        c = widths[0]
        for i, (n, w) in enumerate(zip(repeats, widths[1:4])):
            setattr(self, f"stage{i + 2}", nn.Sequential(*[Block(c if j == 0 else w, w, 2 if j == 0 else 1)
                                                           for j in range(n)]))
            c = w
        self.conv5 = nn.Sequential(nn.Conv2d(c, widths[4], 1, bias=False), nn.BatchNorm2d(widths[4]),
                                   nn.ReLU(inplace=True))
        self.fc = nn.Linear(widths[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stage4(self.stage3(self.stage2(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


def shufflenetv2_x0_5() -> nn.Module:
    return ShuffleNetV2()
