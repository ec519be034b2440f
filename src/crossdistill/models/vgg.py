"""VGG-16 for CIFAR-10 as used in the paper's experiments (13 conv3x3-BN-ReLU layers).

Classifier choice: the feature map after the last conv is 512x2x2 (four max-pools on 32x32);
we global-average-pool it and apply one Linear(512, num_classes). This follows the common
CIFAR VGG variants (e.g. Li et al. 2017 / network slimming) that drop the ImageNet FC stack:
the paper prunes conv layers only, and a single linear head keeps the model small and fast
to train. No pretrained CIFAR VGG-16 ships with the project; it has to be trained.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from crossdistill.models.registry import IMAGENET_MEAN, IMAGENET_STD, ChannelPair, register_model

__all__ = ["VGG", "VGG16_CFG", "vgg16"]

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)


class VGG(nn.Module):
    def __init__(
        self,
        cfg: Sequence[int | str] = VGG16_CFG,
        num_classes: int = 10,
        channels: Sequence[int] | None = None,
        in_channels: int = 3,
    ):
        super().__init__()
        n_conv = sum(1 for v in cfg if v != "M")
        if channels is not None and len(channels) != n_conv:
            raise ValueError(f"channels needs {n_conv} entries (one per conv), got {len(channels)}")
        widths = iter(channels if channels is not None else [v for v in cfg if v != "M"])
        layers: list[nn.Module] = []
        c_in = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            c_out = int(next(widths))
            if c_out < 1:
                raise ValueError(f"conv widths must be >= 1, got {c_out}")
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
        return self.classifier(out)

    def forward_units(self) -> list[tuple[str, Any]]:
        """(name prefix, callable) pieces whose composition is `forward` (see capture.StudentInputs)."""
        units: list[tuple[str, Any]] = [(f"features.{i}", m) for i, m in enumerate(self.features)]
        units.append(("classifier", lambda x: self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))))
        return units

    def _conv_indices(self) -> list[int]:
        return [i for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]

    def channel_pairs(self) -> list[ChannelPair]:
        # The last conv feeds the classifier, so its outputs are kept; every other conv's
        # outputs are pruned, which prunes the inputs of every conv but the first.
        idx = self._conv_indices()
        return [ChannelPair(f"features.{a}", f"features.{a + 1}", f"features.{b}") for a, b in zip(idx, idx[1:])]

    def spec(self) -> dict[str, Any]:
        return {
            "num_classes": self.classifier.out_features,
            "channels": [self.features[i].out_channels for i in self._conv_indices()],
        }

    @staticmethod
    def spec_from_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
        convs = sorted(
            (int(k.split(".")[1]), v)
            for k, v in state_dict.items()
            if k.startswith("features.") and k.endswith(".weight") and getattr(v, "ndim", 0) == 4
        )
        return {
            "num_classes": int(state_dict["classifier.weight"].shape[0]),
            "channels": [int(v.shape[0]) for _, v in convs],
        }


@register_model(
    "vgg16",
    family="vgg",
    input_size=(3, 32, 32),
    num_classes=10,
    # Same statistics as the shared CIFAR ResNets so every CIFAR model shares one preprocessing.
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    default_mu=0.6,
)
def vgg16(num_classes: int = 10, channels: Sequence[int] | None = None) -> VGG:
    """CIFAR VGG-16 with BatchNorm; `channels` (13 widths) rebuilds a slimmed one."""
    return VGG(VGG16_CFG, num_classes=num_classes, channels=channels)


def _vgg16_spec(sd: dict[str, Any]) -> dict[str, Any]:
    spec = VGG.spec_from_state_dict(sd)
    if len(spec["channels"]) != 13:
        raise ValueError(f"expected 13 conv layers, found {len(spec['channels'])}")
    return spec


vgg16.spec_from_state_dict = _vgg16_spec  # type: ignore[attr-defined]
