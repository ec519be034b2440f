"""CIFAR ResNet-20/32/44/56/110 (He et al. 2016, CIFAR variant with option-A shortcuts).

State-dict keys match akamaster/pytorch_resnet_cifar10 (the shared pretrained teachers) once
the DataParallel `module.` prefix is stripped. Every block takes a `mid_planes` width so a
channel-pruned student can be rebuilt from `model.spec()`.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.models.registry import IMAGENET_MEAN, IMAGENET_STD, ChannelPair, register_model

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]

_WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, mid_planes: int | None = None):
        super().__init__()
        mid = planes if mid_planes is None else int(mid_planes)
        if mid < 1:
            raise ValueError(f"mid_planes must be >= 1, got {mid}")
        self.conv1 = nn.Conv2d(in_planes, mid, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Option A: parameter-free, so the pretrained checkpoints have no shortcut keys.
        # The padding depends on the block's in/out planes only, never on the pruned mid width.
        self.downsample = stride != 1 or in_planes != planes
        self.pad = planes // 4
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if not self.downsample:
            return x
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(
        self,
        num_blocks: Sequence[int],
        num_classes: int = 10,
        mid_channels: Sequence[int] | None = None,
    ):
        super().__init__()
        total = sum(num_blocks)
        if mid_channels is not None and len(mid_channels) != total:
            raise ValueError(f"mid_channels needs {total} entries (one per block), got {len(mid_channels)}")
        mids = iter(mid_channels) if mid_channels is not None else None
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for stage, (planes, n) in enumerate(zip(_WIDTHS, num_blocks), start=1):
            blocks = []
            for i in range(n):
                stride = 2 if (stage > 1 and i == 0) else 1
                mid = next(mids) if mids is not None else None
                blocks.append(BasicBlock(in_planes, planes, stride, mid))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # Same scheme as the reference implementation, so students trained from scratch match.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)

    def forward_units(self) -> list[tuple[str, Any]]:
        """(name prefix, callable) pieces whose composition is `forward`: the layer-wise engine
        caches the output of finished pieces instead of re-running the whole front per layer."""
        stem = ("conv1", lambda x: F.relu(self.bn1(self.conv1(x))))
        head = ("linear", lambda x: self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1)))
        return [stem, *self._named_blocks(), head]

    def _named_blocks(self) -> list[tuple[str, BasicBlock]]:
        return [
            (f"layer{s}.{i}", blk)
            for s in (1, 2, 3)
            for i, blk in enumerate(getattr(self, f"layer{s}"))
        ]

    def channel_pairs(self) -> list[ChannelPair]:
        # The paper prunes only the inner channels of residual blocks: the block outputs are
        # tied together by the identity shortcuts.
        return [ChannelPair(f"{n}.conv1", f"{n}.bn1", f"{n}.conv2") for n, _ in self._named_blocks()]

    def spec(self) -> dict[str, Any]:
        # Read from the live modules so the spec stays right after convs are swapped for slimmer ones.
        return {
            "num_classes": self.linear.out_features,
            "mid_channels": [blk.conv1.out_channels for _, blk in self._named_blocks()],
        }

    @staticmethod
    def spec_from_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
        mids = []
        for s in (1, 2, 3):
            i = 0
            while f"layer{s}.{i}.conv1.weight" in state_dict:
                mids.append(int(state_dict[f"layer{s}.{i}.conv1.weight"].shape[0]))
                i += 1
        return {"num_classes": int(state_dict["linear.weight"].shape[0]), "mid_channels": mids}


def _make(depth: int):
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6

    def factory(num_classes: int = 10, mid_channels: Sequence[int] | None = None) -> CifarResNet:
        return CifarResNet([n, n, n], num_classes=num_classes, mid_channels=mid_channels)

    def spec_from_state_dict(sd: dict[str, Any]) -> dict[str, Any]:
        spec = CifarResNet.spec_from_state_dict(sd)
        if len(spec["mid_channels"]) != 3 * n:
            raise ValueError(f"expected {3 * n} residual blocks, found {len(spec['mid_channels'])}")
        return spec

    factory.__name__ = f"resnet{depth}"
    factory.__doc__ = f"CIFAR ResNet-{depth} ({n} BasicBlocks per stage)."
    factory.spec_from_state_dict = spec_from_state_dict  # type: ignore[attr-defined]
    return register_model(
        f"resnet{depth}",
        family="cifar_resnet",
        input_size=(3, 32, 32),
        num_classes=10,
        mean=IMAGENET_MEAN,  # the shared pretrained teachers were trained with ImageNet statistics
        std=IMAGENET_STD,
        default_mu=0.9,
    )(factory)


resnet20 = _make(20)
resnet32 = _make(32)
resnet44 = _make(44)
resnet56 = _make(56)
resnet110 = _make(110)
