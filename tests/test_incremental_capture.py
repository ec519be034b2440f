"""The student's front is run once (forward units), with the same inputs as full forwards."""
import copy

import pytest
import torch

from crossdistill.capture import StudentInputs
from crossdistill.compression.channels import plan_channels
from crossdistill.engine import distill_layers
from crossdistill.errors import CrossDistillError
from crossdistill.models import create_model
from crossdistill.objectives import create_objective
from crossdistill.solvers import create_solver


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize(
    "name, shape",
    [("resnet20", (3, 3, 32, 32)), ("vgg16", (2, 3, 32, 32)), ("fashion_cnn", (3, 1, 28, 28)), ("resnet18", (2, 3, 64, 64))],
)
def test_forward_units_compose_to_forward(name, shape):
    torch.manual_seed(0)
    model = _randomise_bn(create_model(name))
    x = torch.randn(*shape)
    with torch.no_grad():
        y = x
        for _, fn in model.forward_units():
            y = fn(y)
        assert torch.allclose(y, model(x), atol=1e-5)


def _distill(incremental: bool):
    torch.manual_seed(0)
    teacher = _randomise_bn(create_model("resnet20"))
    student = copy.deepcopy(teacher)
    x = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    recs = distill_layers(
        teacher, student, x, plan_channels(student, 0.5), create_objective("mixed", mu=0.6),
        create_solver("channels", "closed-form"), damping=1e-3, batch_size=5, incremental=incremental,
    )
    return student, recs


def test_incremental_capture_solves_the_same_network_as_full_forwards():
    inc, rec_inc = _distill(True)
    full, rec_full = _distill(False)
    # Later layers see inputs shaped by every earlier solve, so a stale cache would show up here.
    assert [r.info["kept"] for r in rec_inc] == [r.info["kept"] for r in rec_full]
    for (name, a), (_, b) in zip(inc.state_dict().items(), full.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_units_that_do_not_compose_to_forward_are_refused():
    model = _randomise_bn(create_model("fashion_cnn"))
    units = model.forward_units()
    model.forward_units = lambda: units[:-1]  # drops the classifier
    with pytest.raises(CrossDistillError, match="forward_units"):
        StudentInputs(model, [torch.randn(2, 1, 28, 28)])


def test_asking_for_an_earlier_layer_after_a_later_one_is_an_error():
    model = _randomise_bn(create_model("resnet20"))
    inputs = StudentInputs(model, [torch.randn(2, 3, 32, 32)])
    inputs.of("layer2.0.conv2")
    with pytest.raises(CrossDistillError, match="front to back"):
        inputs.of("layer1.0.conv2")
