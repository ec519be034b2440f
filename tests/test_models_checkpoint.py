"""Safe weight loading: formats, unwrapping, refusals and shape checks; the shared teachers."""
from __future__ import annotations

import fractions

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from crossdistill.errors import CrossDistillError
from crossdistill.models import (
    create_model,
    load_checkpoint,
    load_model,
    load_state_dict_file,
    load_weights,
    model_info,
    save_model,
)
from crossdistill.paths import shared_data_dir

SHARED_WEIGHTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
MEASURED_TOP1 = {"resnet20": 91.5, "resnet56": 92.6}  # on cifar10_test1000.npz, per shared/data/README.md


def _tiny(channels=(3, 4, 5)):
    torch.manual_seed(0)
    return create_model("fashion_cnn", channels=list(channels)).eval()


def test_unwraps_state_dict_and_strips_module_prefix(tmp_path):
    t = torch.arange(4.0)
    torch.save({"state_dict": {"module.a": t, "module.module.b": t}, "best_prec1": 91.7}, tmp_path / "x.th")
    sd = load_state_dict_file(tmp_path / "x.th")
    assert set(sd) == {"a", "b"} and torch.equal(sd["a"], t)
    torch.save({"model": {"c": t}, "epoch": 3}, tmp_path / "y.pth")
    assert set(load_state_dict_file(tmp_path / "y.pth")) == {"c"}
    torch.save({"d": t}, tmp_path / "z.pt")
    assert set(load_state_dict_file(tmp_path / "z.pt")) == {"d"}


def test_safetensors(tmp_path):
    save_file({"module.w": torch.ones(2, 3)}, str(tmp_path / "w.safetensors"))
    sd = load_state_dict_file(tmp_path / "w.safetensors")
    assert list(sd) == ["w"] and sd["w"].shape == (2, 3)


def test_pickled_objects_are_refused_for_safety(tmp_path):
    torch.save({"state_dict": {"a": torch.zeros(1)}, "extra": fractions.Fraction(1, 3)}, tmp_path / "evil.pt")
    with pytest.raises(CrossDistillError, match="refused for safety"):
        load_state_dict_file(tmp_path / "evil.pt")


@pytest.mark.parametrize("content", [b"", b"hello world", "truncate"])
def test_corrupt_files_are_user_errors(tmp_path, content):
    path = tmp_path / "w.pt"
    if content == "truncate":
        torch.save({"a": torch.zeros(100)}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CrossDistillError, match="w.pt"):
        load_state_dict_file(path)


def test_missing_junk_and_unknown_formats(tmp_path):
    with pytest.raises(CrossDistillError, match="not found"):
        load_state_dict_file(tmp_path / "nope.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CrossDistillError, match="safetensors"):
        load_state_dict_file(tmp_path / "junk.safetensors")
    (tmp_path / "w.npy").write_bytes(b"x")
    with pytest.raises(CrossDistillError, match="unknown weights format"):
        load_state_dict_file(tmp_path / "w.npy")
    torch.save({"a": torch.zeros(1), "lr": 0.1}, tmp_path / "mixed.pt")
    with pytest.raises(CrossDistillError, match="non-tensor.*lr"):
        load_state_dict_file(tmp_path / "mixed.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CrossDistillError, match="list"):
        load_state_dict_file(tmp_path / "list.pt")


def test_load_weights_names_shape_mismatch():
    small = _tiny((3, 4, 5))
    sd = _tiny((3, 6, 5)).state_dict()
    with pytest.raises(CrossDistillError) as exc:
        load_weights(small, sd)
    msg = str(exc.value)
    assert "conv2.weight: expected (4, 3, 3, 3), got (6, 3, 3, 3)" in msg
    assert "bn2.weight: expected (4,), got (6,)" in msg
    assert "(+1 more)" in msg  # conv3.weight, beyond the first five listed


def test_load_weights_missing_and_unexpected_keys():
    m = _tiny()
    sd = m.state_dict()
    sd.pop("fc.bias")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CrossDistillError) as exc:
        load_weights(m, sd)
    assert "missing keys (1): fc.bias" in str(exc.value) and "unexpected keys (1): extra.weight" in str(exc.value)


def test_load_weights_rejects_non_finite():
    m = _tiny()
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["bn2.running_var"][0] = float("nan")
    with pytest.raises(CrossDistillError, match="non-finite.*bn2.running_var"):
        load_weights(m, sd)


def test_load_weights_tolerates_absent_bn_counters_and_copies_values():
    src, dst = _tiny(), create_model("fashion_cnn", channels=[3, 4, 5])
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_weights(dst, sd)
    assert torch.equal(dst.conv2.weight, src.conv2.weight)
    assert torch.equal(dst.bn1.running_var, src.bn1.running_var)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_and_load_slimmed_model(tmp_path, suffix):
    m = _tiny((2, 3, 4))
    with torch.no_grad():
        m.bn1.running_mean.uniform_()
    path = save_model(m, tmp_path / f"student{suffix}")
    ckpt = load_checkpoint(path)
    assert ckpt.model_name == "fashion_cnn" and ckpt.spec == m.spec()
    back = load_model(path)
    assert back.crossdistill_name == "fashion_cnn" and back.spec() == m.spec()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x), m(x))


def test_load_model_infers_spec_from_plain_state_dict(tmp_path):
    m = create_model("resnet20", mid_channels=[4, 5, 6, 7, 8, 9, 10, 11, 12])
    torch.save({"state_dict": {f"module.{k}": v for k, v in m.state_dict().items()}}, tmp_path / "s.th")
    back = load_model(tmp_path / "s.th", "resnet20")
    assert back.spec() == m.spec()
    with pytest.raises(CrossDistillError, match="does not record its model; name it with --model: a registry name .* or path/to/file.py:function"):
        load_model(tmp_path / "s.th")
    with pytest.raises(CrossDistillError, match="resnet56"):
        load_model(tmp_path / "s.th", "resnet56")


def _shared(name: str):
    path = shared_data_dir() / "weights" / SHARED_WEIGHTS[name]
    if not path.is_file():
        pytest.skip(f"shared teacher {path} is absent (set CROSSDISTILL_DATA to the shared data folder)")
    return path


def _shared_test_images():
    path = shared_data_dir() / "cifar10" / "cifar10_test1000.npz"
    if not path.is_file():
        pytest.skip(f"shared CIFAR-10 test images {path} are absent (set CROSSDISTILL_DATA)")
    with np.load(path) as d:
        return d["x"], d["y"]


@pytest.mark.integration
@pytest.mark.parametrize("name", ["resnet20", pytest.param("resnet56", marks=pytest.mark.slow)])
def test_shared_teacher_loads_and_reaches_measured_accuracy(name):
    from crossdistill.evaluation import accuracy

    path = _shared(name)
    x, y = _shared_test_images()
    model = create_model(name)
    load_weights(model, path)
    info = model_info(name)
    top1 = accuracy(model, x, y, info.mean, info.std, batch_size=500)
    assert abs(top1 - MEASURED_TOP1[name]) <= 0.05, top1


@pytest.mark.integration
def test_shared_teacher_rejected_by_wrong_architecture():
    path = _shared("resnet20")
    with pytest.raises(CrossDistillError, match="layer1.0.conv1.weight: expected"):
        load_weights(create_model("resnet20", mid_channels=[8] * 9), path)
    with pytest.raises(CrossDistillError, match="missing keys"):
        load_weights(create_model("resnet32"), path)


def test_a_checkpoint_of_several_state_dicts_says_how_to_pick_one(tmp_path):
    t = torch.arange(4.0)
    torch.save({"net": {"a": t}, "ema": {"a": t + 1}}, tmp_path / "two.pt")
    with pytest.raises(CrossDistillError, match=r"non-tensor entries: net, ema; it holds several state dicts "
                                                 r"\(net, ema\): save the one to compress as a file of its own"):
        load_state_dict_file(tmp_path / "two.pt")
