"""The `device` setting: names checked before any work, models moved for the training steps
and back, and (where CUDA exists) the same results on the GPU as on the CPU."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from crossdistill.baselines import run_baseline
from crossdistill.baselines.fitnet import hint_layers, hint_train
from crossdistill.cli.main import main
from crossdistill.config import CompressConfig
from crossdistill.device import check_device_name, module_device, on_device, resolve_device
from crossdistill.errors import CrossDistillError
from crossdistill.finetune import FinetuneSettings, _affine_augment, _augment, finetune
from crossdistill.pipeline import FewShot, compress
from test_finetune import images, labels, pruned_student
from tiny import make_tiny

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device here (checked on a GPU machine when one is lent)")
no_cuda = pytest.mark.skipif(CUDA, reason="this machine has CUDA")


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:0", "cuda:12", "auto"])
def test_well_formed_names_pass(name):
    assert check_device_name(name) == name


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "cuda:0:1", "", None, 0, "mps "])
def test_malformed_names_are_refused(name):
    with pytest.raises(CrossDistillError, match="device must be one of"):
        check_device_name(name)


def test_auto_is_cuda_exactly_when_cuda_exists():
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_where_there_is_none_is_an_error_not_a_fallback(name):
    with pytest.raises(CrossDistillError, match="sees no CUDA device"):
        resolve_device(name)
    with pytest.raises(CrossDistillError, match="sees no CUDA device"):
        CompressConfig(device=name).validate()


def test_config_refuses_a_bad_device():
    with pytest.raises(CrossDistillError, match="device must be one of .*got 'gpu'"):
        CompressConfig(device="gpu")  # on construction, not only in validate()
    # FinetuneSettings (built directly by benchmarks and baselines) has its device name checked
    # where it is resolved, at the start of `finetune`: before any step changes the student.
    student, teacher, _ = pruned_student()
    before = copy.deepcopy(student.state_dict())
    with pytest.raises(CrossDistillError, match="device must be one of .*got 'gpu'"):
        finetune(student, teacher, images(), labels(), FinetuneSettings(epochs=2, lr=1e-2, device="gpu"))
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


@no_cuda
def test_cli_refuses_a_missing_gpu_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    # The data path does not exist either: the device is checked first, with the config.
    argv = ["compress", "--model", "fashion_cnn", "--data", str(tmp_path / "nope.npz"), "--device", "cuda",
            "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "sees no CUDA device" in err and len(err.splitlines()) == 1
    assert not out.exists()


class _Recording(nn.Linear):
    def __init__(self) -> None:
        super().__init__(2, 2)
        self.moves: list[torch.device] = []

    def to(self, *args, **kwargs):  # type: ignore[override]
        self.moves.append(torch.device(args[0]))
        return super().to(*args, **kwargs)


def test_on_device_moves_back_even_when_the_block_fails():
    m = _Recording()
    with pytest.raises(RuntimeError, match="boom"):
        with on_device(torch.device("cpu"), m):
            raise RuntimeError("boom")
    assert m.moves == [torch.device("cpu"), torch.device("cpu")]  # there, then home again


def test_finetune_reports_its_device_and_leaves_models_on_the_cpu():
    teacher, student, _ = pruned_student()
    info = finetune(student, teacher, images(), labels(), FinetuneSettings(epochs=2, lr=1e-3, device="auto"))
    assert info["device"] == str(resolve_device("auto"))
    assert module_device(student).type == "cpu" and module_device(teacher).type == "cpu"


# --- on a GPU: the same computation as on the CPU ----------------------------------------------

@needs_cuda
def test_views_are_the_same_on_both_devices(exact_cuda):
    x = images(12)
    crop_cpu = _augment(x, torch.Generator().manual_seed(3))
    crop_gpu = _augment(x.to(exact_cuda), torch.Generator().manual_seed(3))
    assert torch.equal(crop_cpu, crop_gpu.cpu())  # a crop and a flip are copies: exact
    aff_cpu = _affine_augment(x, torch.Generator().manual_seed(3))
    aff_gpu = _affine_augment(x.to(exact_cuda), torch.Generator().manual_seed(3))
    torch.testing.assert_close(aff_cpu, aff_gpu.cpu(), rtol=1e-4, atol=1e-4)


@needs_cuda
@pytest.mark.parametrize("extra", [{}, {"mixup": 0.4, "cutmix": 1.0, "augment_policy": "affine", "ema": 0.99}])
def test_gpu_finetune_matches_the_cpu_one(exact_cuda, extra):
    teacher, student, masks = pruned_student()
    teacher_before = copy.deepcopy(teacher.state_dict())
    runs = {}
    for device in ("cpu", "cuda"):
        s = copy.deepcopy(student)
        t = copy.deepcopy(teacher)
        settings = FinetuneSettings(epochs=5, lr=1e-3, bn="frozen", kd_weight=0.5, batch_size=8, device=device, **extra)
        info = finetune(s, t, images(), labels(), settings)
        assert module_device(s).type == "cpu" and module_device(t).type == "cpu"
        assert all(torch.equal(v, teacher_before[k]) for k, v in t.state_dict().items())
        for name, m in masks.items():
            assert torch.all(s.get_submodule(name).weight[~m] == 0), name
        runs[device] = (s, info)
    (s_cpu, i_cpu), (s_gpu, i_gpu) = runs["cpu"], runs["cuda"]
    assert i_gpu["device"].startswith("cuda") and i_gpu["steps"] == i_cpu["steps"] == 10
    for (k, a), b in zip(s_cpu.state_dict().items(), s_gpu.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=k)
    assert i_gpu["after"]["kd"] == pytest.approx(i_cpu["after"]["kd"], rel=1e-3)


@needs_cuda
def test_gpu_hint_training_matches_the_cpu_one(exact_cuda):
    teacher = make_tiny()
    shots = FewShot(images=images(16), labels=torch.arange(16) % 4, indices=np.arange(16))
    cfg = CompressConfig(model="tiny", keep=0.5, solver="prune-only", selection="l1")
    base = compress(teacher, shots, cfg, show_progress=False)
    hints, kept = hint_layers(base.student, base.records)
    histories = []
    for device in ("cpu", "cuda"):
        student = copy.deepcopy(base.student)
        settings = FinetuneSettings(epochs=10, lr=1e-2, batch_size=8, device=device)
        histories.append(hint_train(student, teacher, shots.images, hints, settings, kept))
        assert module_device(student).type == "cpu" and module_device(teacher).type == "cpu"
    np.testing.assert_allclose(histories[0], histories[1], rtol=1e-3)


@needs_cuda
@pytest.mark.parametrize("name", ["bp", "l1-finetune", "fitnet"])
def test_training_baselines_run_on_the_gpu(name):
    teacher = make_tiny()
    shots = FewShot(images=images(16), labels=torch.arange(16) % 4, indices=np.arange(16))
    cfg = CompressConfig(model="tiny", keep=0.5, finetune_epochs=3, device="cuda", extra={"fitnet_epochs": 3})
    res = run_baseline(name, teacher, shots, cfg)
    assert module_device(res.student).type == "cpu" and module_device(teacher).type == "cpu"
    if res.finetune is not None:
        assert res.finetune["device"].startswith("cuda")
