"""ImageNet ResNet-18/34 with torchvision-compatible state-dict keys (no torchvision needed).

Keys: conv1, bn1, layerX.i.{conv1,bn1,conv2,bn2}, layerX.0.downsample.{0,1}, fc — so a
torchvision checkpoint loads with `load_weights` directly. Blocks take `mid_planes` so a
channel-pruned model can be rebuilt from `model.spec()`.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from crossdistill.models.registry import IMAGENET_MEAN, IMAGENET_STD, ChannelPair, register_model

__all__ = ["ImageNetBasicBlock", "ImageNetResNet", "resnet18", "resnet34"]

_WIDTHS = (64, 128, 256, 512)


class ImageNetBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, mid_planes: int | None = None):
        super().__init__()
        mid = planes if mid_planes is None else int(mid_planes)
        if mid < 1:
            raise ValueError(f"mid_planes must be >= 1, got {mid}")
        self.conv1 = nn.Conv2d(in_planes, mid, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ImageNetResNet(nn.Module):
    def __init__(
        self,
        layers: Sequence[int],
        num_classes: int = 1000,
        mid_channels: Sequence[int] | None = None,
    ):
        super().__init__()
        total = sum(layers)
        if mid_channels is not None and len(mid_channels) != total:
            raise ValueError(f"mid_channels needs {total} entries (one per block), got {len(mid_channels)}")
        mids = iter(mid_channels) if mid_channels is not None else None
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_planes = 64
        for stage, (planes, n) in enumerate(zip(_WIDTHS, layers), start=1):
            blocks = []
            for i in range(n):
                stride = 2 if (stage > 1 and i == 0) else 1
                mid = next(mids) if mids is not None else None
                blocks.append(ImageNetBasicBlock(in_planes, planes, stride, mid))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        # torchvision's initialisation, so from-scratch training behaves the same.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward_units(self) -> list[tuple[str, Any]]:
        """(name prefix, callable) pieces whose composition is `forward` (see capture.StudentInputs)."""
        stem = ("conv1", lambda x: self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        head = ("fc", lambda x: self.fc(torch.flatten(self.avgpool(x), 1)))
        return [stem, *self._named_blocks(), head]

    def _named_blocks(self) -> list[tuple[str, ImageNetBasicBlock]]:
        return [(f"layer{s}.{i}", b) for s in (1, 2, 3, 4) for i, b in enumerate(getattr(self, f"layer{s}"))]

    def channel_pairs(self) -> list[ChannelPair]:
        # Block outputs are tied by the residual additions, so only the inner width is pruned.
        return [ChannelPair(f"{n}.conv1", f"{n}.bn1", f"{n}.conv2") for n, _ in self._named_blocks()]

    def spec(self) -> dict[str, Any]:
        return {
            "num_classes": self.fc.out_features,
            "mid_channels": [b.conv1.out_channels for _, b in self._named_blocks()],
        }

    @staticmethod
    def spec_from_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
        mids = []
        for s in (1, 2, 3, 4):
            i = 0
            while f"layer{s}.{i}.conv1.weight" in state_dict:
                mids.append(int(state_dict[f"layer{s}.{i}.conv1.weight"].shape[0]))
                i += 1
        return {"num_classes": int(state_dict["fc.weight"].shape[0]), "mid_channels": mids}


def _make(name: str, layers: tuple[int, int, int, int]):
    def factory(num_classes: int = 1000, mid_channels: Sequence[int] | None = None) -> ImageNetResNet:
        return ImageNetResNet(layers, num_classes=num_classes, mid_channels=mid_channels)

    def spec_from_state_dict(sd: dict[str, Any]) -> dict[str, Any]:
        spec = ImageNetResNet.spec_from_state_dict(sd)
        if len(spec["mid_channels"]) != sum(layers):
            raise ValueError(f"expected {sum(layers)} residual blocks, found {len(spec['mid_channels'])}")
        return spec

    factory.__name__ = name
    factory.__doc__ = f"ImageNet {name} (torchvision layout), BasicBlocks {layers}."
    factory.spec_from_state_dict = spec_from_state_dict  # type: ignore[attr-defined]
    return register_model(
        name,
        family="imagenet_resnet",
        input_size=(3, 224, 224),
        num_classes=1000,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        default_mu=0.9,
    )(factory)


resnet18 = _make("resnet18", (2, 2, 2, 2))
resnet34 = _make("resnet34", (3, 4, 6, 3))
