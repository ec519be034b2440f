"""The layer-wise compression makes its tensors where its data is (what `--device cuda` needs),
checked on the CPU: under device_follow.data_device_only() any tensor made on the default device
instead of the data's is a meta tensor, and the first op that mixes it with the data fails.
Every objective, solver, capture mode and method, on the graph shapes of test_graph_channels."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from crossdistill.config import CompressConfig
from crossdistill.models import create_model
from crossdistill.pipeline import FewShot, compress
from device_follow import data_device_only
from test_device import needs_cuda
from test_graph_channels import build
from test_graph_pruning import fewshot_for
from tiny import make_tiny

CASES = [
    ("chain", {"keep": 0.5}),
    ("chain", {"keep": 0.5, "objective": "soft", "alpha": 0.3, "beta": 0.6}),
    ("chain", {"keep": 0.5, "objective": "mixed", "mu": 0.6}),
    ("chain", {"keep": 0.5, "objective": "correction"}),
    ("chain", {"keep": 0.5, "objective": "imitation", "capture": "stream"}),
    ("tiny", {"keep": 0.5, "solver": "paper", "iters": 30}),
    ("tiny", {"keep": 0.5, "solver": "prune-only"}),
    ("tiny", {"keep": 0.5, "solver": "fskd"}),
    ("tiny", {"keep": 0.5, "selection": "l1"}),
    ("tiny", {"keep": 0.5, "selection": "thinet"}),
    ("tiny", {"keep": 0.5, "selection": "lasso"}),
    ("resnet", {"keep": 0.5, "budget": "global"}),
    ("resnet", {"flops": 0.6, "budget": "global", "capture": "disk"}),
    ("densenet", {"keep": 0.5, "capture": "stream"}),
    ("grouped", {"keep": 0.5}),
    ("mobilenet", {"method": "sparsity", "sparsity": 0.5, "sparse_mask": "obc"}),
    ("mobilenet", {"method": "sparsity", "sparsity": 0.5, "solver": "sparsegpt", "refine": True}),
    ("mobilenet", {"method": "sparsity", "sparsity": 0.5, "solver": "paper", "iters": 30}),
    ("mobilenet", {"method": "quant", "bits": 4}),
    ("mobilenet", {"method": "quant", "bits": 4, "solver": "rtn"}),
    ("mobilenet", {"method": "lowrank", "rank_ratio": 0.5}),
    ("chain", {"method": "channels+quant", "keep": 0.5, "bits": 8}),
    ("transformer", {"method": "sparsity", "sparsity": 0.5}),
]


def build_case(key: str) -> tuple[nn.Module, torch.Tensor]:
    if key == "tiny":  # conv → conv → conv → mean → Linear: what the paper's solvers prune
        return make_tiny(), torch.zeros(1, 3, 8, 8)
    return build(key)


def run_guarded(teacher: nn.Module, few: FewShot, model: str, **settings) -> dict[str, torch.Tensor]:
    cfg = CompressConfig(model=model, n_samples=len(few.labels), damping=0.01, batch_size=4, **settings)
    with data_device_only():
        student = compress(teacher, few, cfg, show_progress=False).student
    return student.state_dict()


@pytest.mark.filterwarnings("ignore:sparsity. left uncompressed")  # the transformer's packed q/k/v
@pytest.mark.parametrize("key,settings", CASES, ids=[f"{k}-{'-'.join(map(str, s.values()))}" for k, s in CASES])
def test_compression_makes_its_tensors_on_the_datas_device(key, settings):
    teacher, example = build_case(key)
    run_guarded(teacher, fewshot_for(example), f"user-{key}", **settings)


class Wide(nn.Module):
    """A 128-channel 3×3 conv (d = 1152, 64 rows): at 20 % sparsity its rows are solved by
    conjugate gradients (linalg.uses_cg), the path of ImageNet-sized layers."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 128, 3, padding=1)
        self.b = nn.Conv2d(128, 64, 3, padding=1)
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))


def test_the_wide_layer_paths_follow_the_data():
    from crossdistill import linalg

    torch.manual_seed(0)
    teacher = Wide().eval()
    few = fewshot_for(torch.zeros(1, 3, 4, 4), n=24)
    assert linalg.uses_cg(torch.arange(1152).expand(64, 1152) % 5 != 0)  # 20 % zeros
    run_guarded(teacher, few, "user-wide", method="sparsity", sparsity=0.2)


def test_a_registered_model_with_forward_units_follows_the_data():
    torch.manual_seed(0)
    teacher = create_model("resnet20").eval()
    run_guarded(teacher, fewshot_for(torch.zeros(1, 3, 32, 32), n=6), "resnet20", keep=0.5, capture="disk")


def test_the_check_catches_a_tensor_made_on_the_default_device():
    # A solver that makes one tensor without the data's device, the bug this file is about.
    from crossdistill.solvers.channel_closed_form import ClosedFormChannels

    original = ClosedFormChannels.solve

    def careless(self, problem, task, student):
        ridge = torch.eye(problem.H.shape[0], dtype=problem.H.dtype)  # no device=
        return original(self, type(problem)(H=problem.H + 0 * ridge, B=problem.B, c=problem.c,
                                            w_teacher=problem.w_teacher), task, student)

    teacher, example = build("chain")
    few = fewshot_for(example)
    ClosedFormChannels.solve = careless
    try:
        with pytest.raises(AssertionError, match="without the data's device"):
            run_guarded(teacher, few, "user-chain", keep=0.5)
    finally:
        ClosedFormChannels.solve = original
    # Outside the check the same code runs (on the CPU the default device is the data's).
    cfg = CompressConfig(model="user-chain", n_samples=len(few.labels), damping=0.01, batch_size=4, keep=0.5)
    compress(copy.deepcopy(teacher), few, cfg, show_progress=False)


def test_the_check_changes_nothing_it_lets_through():
    teacher, example = build("resnet")
    few = fewshot_for(example)
    cfg = CompressConfig(model="user-resnet", n_samples=len(few.labels), damping=0.01, batch_size=4, keep=0.5)
    plain = compress(teacher, few, cfg, show_progress=False).student.state_dict()
    guarded = run_guarded(teacher, few, "user-resnet", keep=0.5)
    assert plain.keys() == guarded.keys()
    for k in plain:
        assert torch.equal(plain[k], guarded[k]), k
    assert np.isfinite(sum(float(v.double().sum()) for v in plain.values() if v.is_floating_point()))


@pytest.mark.parametrize("name", ["l1", "fskd", "thinet", "cp"])
def test_the_layer_wise_baselines_follow_the_data(name):
    from crossdistill.baselines import run_baseline

    teacher = make_tiny()
    few = fewshot_for(torch.zeros(1, 3, 8, 8))
    cfg = CompressConfig(model="user-tiny", n_samples=len(few.labels), damping=0.01, batch_size=4, keep=0.5)
    with data_device_only():
        run_baseline(name, teacher, few, cfg)


# --- on a GPU: the same student as on the CPU (exact_cuda: conftest.py) -------------------------

GPU_CASES = [
    ("tiny", {"keep": 0.5}),
    ("tiny", {"keep": 0.5, "solver": "paper", "iters": 30}),
    ("resnet", {"keep": 0.5, "budget": "global"}),
    ("densenet", {"keep": 0.5, "capture": "disk"}),
    ("mobilenet", {"method": "sparsity", "sparsity": 0.5}),
    ("mobilenet", {"method": "quant", "bits": 4}),
    ("mobilenet", {"method": "lowrank", "rank_ratio": 0.5}),
]


def cpu_and_gpu(teacher: nn.Module, few: FewShot, model: str, **settings) -> list[tuple[nn.Module, list]]:
    out = []
    for device in ("cpu", "cuda"):
        cfg = CompressConfig(model=model, n_samples=len(few.labels), damping=0.01, batch_size=4, device=device,
                             **settings)
        result = compress(teacher, few, cfg, show_progress=False)
        assert all(t.device.type == "cpu" for t in result.student.state_dict().values())  # back on the CPU
        out.append((result.student, result.records))
    assert all(t.device.type == "cpu" for t in teacher.state_dict().values())
    return out


def assert_same_student(cpu: tuple[nn.Module, list], gpu: tuple[nn.Module, list], images: torch.Tensor) -> None:
    """The stated tolerance. The GPU's float32 forwards round differently (other convolution
    algorithms, TF32 off), and the float64 moments and solves carry that rounding: the same
    kept channels (shapes) and sparsity, each layer's loss to 1e-4 relative, and the students'
    outputs to 1e-3 of their scale. Weights are compared as well, loosely, where both runs made
    the same choices (a near-tie between two channels or two weights may fall either way, and
    then only the losses must agree)."""
    (s_cpu, r_cpu), (s_gpu, r_gpu) = cpu, gpu
    a_sd, b_sd = s_cpu.state_dict(), s_gpu.state_dict()
    assert a_sd.keys() == b_sd.keys()
    for k in a_sd:
        a, b = a_sd[k], b_sd[k]
        assert a.shape == b.shape, k
        if a.is_floating_point():
            assert int((a == 0).sum()) == int((b == 0).sum()), k  # the same number of zeros
            if torch.equal(a == 0, b == 0):
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * (float(a.abs().max()) or 1.0), msg=k)
    assert [r.name for r in r_cpu] == [r.name for r in r_gpu]
    for x, y in zip(r_cpu, r_gpu):
        assert y.loss_after == pytest.approx(x.loss_after, rel=1e-4, abs=1e-9), x.name
    with torch.no_grad():
        out_cpu, out_gpu = s_cpu.eval()(images), s_gpu.eval()(images)
    torch.testing.assert_close(out_gpu, out_cpu, rtol=0, atol=1e-3 * float(out_cpu.abs().max()))


@needs_cuda
@pytest.mark.parametrize("key,settings", GPU_CASES, ids=[f"{k}-{'-'.join(map(str, s.values()))}" for k, s in GPU_CASES])
def test_gpu_compression_gives_the_cpu_student(exact_cuda, key, settings):
    teacher, example = build_case(key)
    few = fewshot_for(example)
    assert_same_student(*cpu_and_gpu(teacher, few, f"user-{key}", **settings), few.images)


@needs_cuda
def test_gpu_wide_layer_sparsity_gives_the_cpu_student(exact_cuda):
    torch.manual_seed(0)
    few = fewshot_for(torch.zeros(1, 3, 4, 4), n=24)
    assert_same_student(*cpu_and_gpu(Wide().eval(), few, "user-wide", method="sparsity", sparsity=0.2), few.images)

