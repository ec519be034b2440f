"""A model without forward_units: each layer's input is replayed from what its enclosing modules
received, and the student is the one that passes from the images for every layer give."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import crossdistill.capture_replay as replay_module
from crossdistill.capture import StudentInputs
from crossdistill.compression.coverage import CompressionWarning
from crossdistill.config import CompressConfig
from crossdistill.pipeline import FewShot, compress
from test_attention_projections import Block as AttentionBlock, tokens
from test_graph_channels import build


class FromImages(replay_module.ModuleReplay):
    """Every layer's input from a pass from the images: what the capture did before replay."""

    def _chain(self, owner: str) -> list[str]:
        return []


def solve(model: nn.Module, x: torch.Tensor, monkeypatch, *, from_images: bool, **settings) -> nn.Module:
    with monkeypatch.context() as m:
        if from_images:
            m.setattr("crossdistill.capture.ModuleReplay", FromImages)
        cfg = CompressConfig(model="user", n_samples=len(x), damping=0.01, batch_size=5, **settings).validate()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CompressionWarning)
            return compress(model, FewShot(x, torch.arange(len(x)) % 3, np.arange(len(x))), cfg,
                            show_progress=False).student


def assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("key, settings", [
    ("resnet", {"keep": 0.5}), ("densenet", {"keep": 0.5}), ("shufflenet", {"keep": 0.5}),
    ("mobilenet", {"method": "sparsity", "sparsity": 0.5}), ("transformer", {"method": "quant", "bits": 4}),
])
def test_replayed_inputs_give_the_student_of_passes_from_the_images(key, settings, monkeypatch):
    teacher, example = build(key)
    x = torch.randn((12, *example.shape[1:]), generator=torch.Generator().manual_seed(3))
    assert_same(solve(teacher, x, monkeypatch, from_images=False, **settings),
                solve(teacher, x, monkeypatch, from_images=True, **settings))


def test_attention_layers_replayed_from_the_attention_block(monkeypatch):
    teacher = AttentionBlock(cross=True).eval()
    x = tokens(12)
    assert_same(solve(teacher, x, monkeypatch, from_images=False, method="sparsity", sparsity=0.5),
                solve(teacher, x, monkeypatch, from_images=True, method="sparsity", sparsity=0.5))


class Stage(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1))
                                      for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return x


class Deep(nn.Module):
    """A stem, two stages of residual blocks, a head: no forward_units."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.stage1, self.stage2 = Stage(3), Stage(3)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.stage1(torch.relu(self.stem(x)))).mean((2, 3)))


def test_the_images_are_run_once_per_top_level_module_not_once_per_layer():
    torch.manual_seed(0)
    model = Deep().eval()
    batches = [torch.randn(4, 3, 8, 8), torch.randn(3, 3, 8, 8)]
    inputs = StudentInputs(model, batches)
    full = StudentInputs(model, batches, incremental=False)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for name in layers:
        got, ref = inputs.of(name), full.of(name)
        assert all(torch.equal(a, b) for a, b in zip(got, ref)), name
    # stem, stage1's layers, stage2's layers, head: four passes from the images, not 14.
    assert inputs._replay is not None and inputs._replay.forward_passes == 4 * len(batches)


class Scaled(nn.Module):
    """Reads an attribute its parent sets before each call: not a function of its arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.scale = torch.ones(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2.0)  # and writes into its argument: the kept input must be a copy
        return self.conv2(torch.relu(self.conv1(x)) * self.scale)


class Parent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.inner = Scaled()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        self.inner.scale = h.mean()
        return self.head(self.inner(h).mean((2, 3)))


def test_a_module_that_reads_more_than_its_arguments_is_not_replayed(monkeypatch):
    torch.manual_seed(0)
    teacher = Parent().eval()
    batches = [torch.randn(4, 3, 8, 8), torch.randn(3, 3, 8, 8) * 3]
    inputs = StudentInputs(teacher, batches)
    ref = StudentInputs(teacher, batches, incremental=False)
    for name in ("stem", "inner.conv1", "inner.conv2", "head"):
        assert all(torch.equal(a, b) for a, b in zip(inputs.of(name), ref.of(name))), name
    assert "inner" not in inputs._replay.replayable  # the check on the first batch caught it
    x = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    assert_same(solve(copy.deepcopy(teacher), x, monkeypatch, from_images=False, method="sparsity", sparsity=0.5,
                      prune_first=True),
                solve(copy.deepcopy(teacher), x, monkeypatch, from_images=True, method="sparsity", sparsity=0.5,
                      prune_first=True))


class WritesAfterReading(nn.Module):
    """Writes into the tensor its first conv has just read (an in-place op after the layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        x.add_(1.0)
        return self.conv2(torch.relu(h) + x)


def test_inputs_are_kept_as_the_layer_received_them_though_the_pass_goes_on():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), WritesAfterReading(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 3)).eval()
    batches = [torch.randn(4, 3, 8, 8), torch.randn(3, 3, 8, 8)]
    inputs, ref = StudentInputs(model, batches), StudentInputs(model, batches, incremental=False)
    for name in ("0", "2.conv1", "2.conv2", "4"):
        assert all(torch.equal(a, b) for a, b in zip(inputs.of(name), ref.of(name))), name

