"""capture='stream' (the teacher walked front to back, one layer's inputs held at a time) gives the
student of capture='all' (every layer's inputs from one pass), bit for bit."""
from __future__ import annotations

import pytest
import torch

from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.models import create_model
from crossdistill.pipeline import compress
from test_graph_channels import build
from test_graph_pruning import fewshot_for


def students(teacher, few, model: str = "user-x", **settings):
    out = {}
    for capture in ("all", "stream"):
        cfg = CompressConfig(model=model, n_samples=len(few.labels), damping=0.01, capture=capture, **settings)
        out[capture] = compress(teacher, few, cfg, show_progress=False).student.state_dict()
    return out


@pytest.mark.parametrize("key,settings", [
    ("densenet", {"keep": 0.5}),                       # concatenations: groups read by many layers
    ("resnet", {"keep": 0.5, "budget": "global"}),     # a global budget's costs streamed too
    ("mobilenet", {"method": "sparsity", "sparsity": 0.5}),
])
def test_streamed_capture_gives_the_same_student(key, settings):
    teacher, example = build(key)
    few = fewshot_for(example)
    got = students(teacher, few, **settings)
    assert got["all"].keys() == got["stream"].keys()
    for k in got["all"]:
        assert torch.equal(got["all"][k], got["stream"][k]), k


def test_streamed_capture_of_a_model_with_forward_units():
    torch.manual_seed(0)
    teacher = create_model("resnet20").eval()
    few = fewshot_for(torch.zeros(1, 3, 32, 32), n=8)
    got = students(teacher, few, model="resnet20", keep=0.5)
    for k in got["all"]:
        assert torch.equal(got["all"][k], got["stream"][k]), k


def test_capture_setting_is_checked():
    with pytest.raises(CrossDistillError, match="capture"):
        CompressConfig(model="resnet20", capture="later")
