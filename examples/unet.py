"""A small U-Net (Ronneberger et al. 2015) for semantic segmentation: two down-sampling stages,
skip connections concatenated on the way up, logits per pixel (N, classes, H, W). crossdistill
compresses it as it is: the channel groups run through the concatenations, and its predictions
are scored per pixel (top-1 and mean IoU) against N×H×W label maps.

    from examples.unet import unet
    model = unet(in_channels=1, num_classes=11)       # input (N, 1, H, W), H and W divisible by 4
    model = unet(up="transposed")                     # the paper's 2x2 up-convolutions (ConvTranspose2d)

benchmarks/segmentation.py trains one to segment Fashion-MNIST garments (each pixel: background
or the garment's class) and compresses it from K images per class (docs/results/any_model.md).
"""
from __future__ import annotations

import torch
from torch import nn


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def _up(c: int, up: str) -> nn.Module:
    """Doubles the map: nearest-neighbour copies (channels as they are), or Ronneberger et al.'s
    learned 2x2 up-convolution (a ConvTranspose2d), which also halves the channels."""
    if up == "nearest":
        return nn.Upsample(scale_factor=2, mode="nearest")
    if up == "transposed":
        return nn.ConvTranspose2d(c, c // 2, 2, stride=2)
    raise ValueError(f"up must be 'nearest' or 'transposed', not {up!r}")


class UNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 11, width: int = 16, up: str = "nearest") -> None:
        super().__init__()
        w = width
        self.enc1, self.enc2, self.bottom = _double_conv(in_channels, w), _double_conv(w, 2 * w), _double_conv(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        shrink = 2 if up == "transposed" else 1  # channels the up-sampling hands on: 4w/2 or 4w
        self.up2, self.dec2 = _up(4 * w, up), _double_conv(4 * w // shrink + 2 * w, 2 * w)
        self.up1, self.dec1 = _up(2 * w, up), _double_conv(2 * w // shrink + w, w)
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottom(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)


def unet(in_channels: int = 1, num_classes: int = 11, width: int = 16, up: str = "nearest") -> UNet:
    return UNet(in_channels, num_classes, width, up)
