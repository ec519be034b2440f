"""The user models of examples/: they build, run, and (where the shared weights are present) load
their checkpoints strictly, and a model's forward_units compose to its forward."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from crossdistill.capture import StudentInputs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WEIGHTS = Path(os.environ.get("CROSSDISTILL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "weights"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name,factory,checkpoint,size,classes", [
    ("densenet40", "densenet40", "densenet40_k12-5d543813.pth", 32, 10),
    ("shufflenetv2", "shufflenetv2_x0_5", "shufflenetv2_x0_5-1308b4e9.pt", 32, 10),
    ("resnet50", "resnet50", None, 64, 1000),
    ("resnet50", "resnet50_plain", None, 64, 1000),
    ("vit", "vit_tiny", None, 32, 10),
])
def test_example_models_run_and_load_their_weights(name, factory, checkpoint, size, classes):
    torch.manual_seed(0)
    model = getattr(load(name), factory)().eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, classes)
    if checkpoint is not None and (WEIGHTS / checkpoint).is_file():
        state = torch.load(WEIGHTS / checkpoint, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = {k.removeprefix("module."): v for k, v in state.items()}
        model.load_state_dict(state, strict=True)


def test_resnet50_has_the_papers_parameter_count_and_composable_units():
    model = load("resnet50").resnet50().eval()
    # 25.6 M parameters (He et al. 2016; 25,557,032 counting BatchNorm's affine parameters).
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    StudentInputs(model, [torch.randn(2, 3, 64, 64)])  # refuses units that do not reproduce the forward
