"""Conv1d models (audio, sensor and other signals of shape (N, C, L)): every method solves their
convs as the height-1 Conv2d each one equals, channel groups follow 1-d pooling and
concatenation, the fine-tune's views shift signals, and the student saves, loads and exports."""
from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

import crossdistill
from crossdistill.finetune.views.augment import VIEWS

SIGNAL_NET = textwrap.dedent("""
    import torch
    from torch import nn

    def make():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv1d(2, 12, 7, stride=2, padding=3), nn.BatchNorm1d(12), nn.ReLU(),
            nn.Conv1d(12, 16, 5, padding="same", dilation=2), nn.BatchNorm1d(16), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(16, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 4))
""")


@pytest.fixture
def signal_net(tmp_path):
    path = tmp_path / "signal_net.py"
    path.write_text(SIGNAL_NET)
    from crossdistill.models.user import build_user_model

    model = build_user_model(f"{path}:make")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):  # statistics that are not the identity
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval(), f"{path}:make"


def signals(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 64, generator=gen), torch.arange(n) % 4


def relative_error(student: nn.Module, teacher: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        t = teacher(x)
        return float((student(x) - t).norm() / t.norm())


def test_the_closed_form_reconstructs_a_conv1d_model_that_pruning_alone_does_not(signal_net):
    teacher, _ = signal_net
    x, y = signals()
    solved, report = crossdistill.compress(teacher, x, labels=y, shots=10, keep=0.5, show_progress=False)
    pruned, _ = crossdistill.compress(teacher, x, labels=y, shots=10, keep=0.5, solver="prune-only",
                                      show_progress=False)
    assert solved[3].in_channels == 6 and solved[7].in_channels == 8  # both groups half kept
    assert sum(p.numel() for p in solved.parameters()) == sum(p.numel() for p in pruned.parameters())
    held_out = signals(40, seed=1)[0]
    assert relative_error(solved, teacher, held_out) < 0.5 * relative_error(pruned, teacher, held_out)
    assert report["layers"]  # the re-solved readers are reported like a Conv2d model's


@pytest.mark.parametrize("method, settings", [("sparsity", {"sparsity": 0.5}), ("quant", {"bits": 4}),
                                              ("lowrank", {"rank_ratio": 0.5})])
def test_every_method_compresses_the_conv1d_layers(signal_net, method, settings):
    teacher, _ = signal_net
    x, y = signals()
    student, report = crossdistill.compress(teacher, x, labels=y, shots=10, method=method, show_progress=False,
                                            **settings)
    entries = {e["name"]: e for e in report[method]["layers"]}
    done = {"sparsity": "pruned", "quant": "quantized", "lowrank": "factorised"}[method]
    assert entries["3"]["status"] == done and entries["3"]["type"] == "Conv1d 5"
    assert relative_error(student, teacher, signals(40, seed=1)[0]) < 0.5


def test_a_conv1d_student_saves_loads_and_exports(signal_net, tmp_path):
    pytest.importorskip("onnxruntime")
    teacher, factory = signal_net
    x, y = signals()
    student, _ = crossdistill.compress(teacher, x, labels=y, shots=10, keep=0.5, show_progress=False)
    student.crossdistill_factory = factory
    path = crossdistill.save(student, tmp_path / "s.safetensors")
    loaded = crossdistill.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), student(x))
    from crossdistill.export import export

    result = export(path, "onnx", tmp_path / "s.onnx")
    assert result.max_abs_diff <= 1e-4


@pytest.mark.parametrize("policy, reach", [("crop-flip", 64 // 8), ("affine", round(0.15 * 64))])
def test_signal_views_are_shifts_within_their_reach(policy, reach):
    x = torch.randn(50, 3, 64, generator=torch.Generator().manual_seed(0))
    out = VIEWS[policy](x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    seen = set()
    for a, b in zip(x, out):
        hits = [s for s in range(-reach, reach + 1)
                if torch.equal(b, torch.nn.functional.pad(a, (reach, reach))[:, reach - s: reach - s + 64])]
        assert hits, "a view that is not a shift of its signal"
        seen.add(hits[0])
    assert len(seen) > 3  # not always the same shift


def test_the_fine_tune_runs_on_signals(signal_net):
    teacher, _ = signal_net
    x, y = signals()
    student, report = crossdistill.compress(teacher, x, labels=y, shots=10, keep=0.5, finetune_epochs=3,
                                            show_progress=False)
    ft = report["finetune"]
    assert ft["steps"] > 0 and torch.isfinite(student(x)).all()


def _signal_npz(path, n: int, seed: int):
    import numpy as np

    x, y = signals(n, seed)
    np.savez(path, x=x.numpy(), y=y.numpy())  # float32 (N, C, L): signals, used as stored
    return path


def test_the_command_line_compresses_evaluates_and_exports_signals(signal_net, tmp_path, capsys):
    import json

    from crossdistill.cli.main import main

    teacher, factory = signal_net
    weights = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), weights)
    train, test = _signal_npz(tmp_path / "train.npz", 40, 0), _signal_npz(tmp_path / "test.npz", 30, 1)
    out = tmp_path / "run"
    assert main(["compress", "--model", factory, "--weights", str(weights), "--data", str(train),
                 "--eval-data", str(test), "--shots", "5", "--keep", "0.5", "--quiet", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    x, y = signals(30, seed=1)
    with torch.no_grad():
        expected = 100.0 * float((teacher(x).argmax(1) == y).float().mean())
    assert report["teacher"]["top1"] == pytest.approx(expected) and report["teacher"]["n_eval"] == 30
    capsys.readouterr()
    assert main(["evaluate", "--weights", str(out), "--eval-data", str(test), "--no-latency", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == report["student"]["top1"]
    assert main(["export", str(out), "--format", "torchscript", "--eval-data", str(test),
                 "--out", str(tmp_path / "s.pt")]) == 0
    assert "the first 30 test signals" in capsys.readouterr().out


def test_signals_of_the_wrong_shape_or_with_nans_are_named(signal_net, tmp_path, capsys):
    import numpy as np

    from crossdistill.cli.main import main

    _, factory = signal_net
    np.savez(tmp_path / "short.npz", x=np.zeros((20, 2, 8), np.float32), y=np.arange(20) % 4)
    bad = np.zeros((20, 2, 64), np.float32)
    bad[3, 1, 5] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad, y=np.arange(20) % 4)
    train = _signal_npz(tmp_path / "train.npz", 40, 0)
    for data, eval_data, message in [(train, tmp_path / "short.npz", "signals of shape (2, 8) (C, L) but"),
                                     (tmp_path / "nan.npz", train, "contains NaN or infinite values")]:
        assert main(["compress", "--model", factory, "--data", str(data), "--eval-data", str(eval_data),
                     "--shots", "2", "--quiet", "--out", str(tmp_path / "run")]) != 0
        assert message in capsys.readouterr().err
        assert not (tmp_path / "run").exists()


def test_signals_are_normalised_per_channel_without_a_pixel_scale():
    import numpy as np

    from crossdistill.data import to_tensor

    x = np.random.default_rng(0).normal(size=(4, 2, 9)).astype(np.float32)
    t = to_tensor(x, (1.0, -2.0), (2.0, 0.5))
    assert t.shape == (4, 2, 9)
    torch.testing.assert_close(t[:, 0], torch.from_numpy((x[:, 0] - 1.0) / 2.0))
    torch.testing.assert_close(t[:, 1], torch.from_numpy((x[:, 1] + 2.0) / 0.5))


def test_cutmix_on_signals_swaps_one_stretch_of_time_in_every_channel():
    # A box over (C, L) pasted a partner's sensor axes over some of the signal's own.
    import numpy as np

    from crossdistill.finetune.views.mix import mix

    x = torch.arange(8 * 6 * 40, dtype=torch.float32).reshape(8, 6, 40)
    for seed in range(20):
        out, lam, partner = mix(x, 0.0, 1.0, torch.Generator().manual_seed(seed), np.random.default_rng(seed))
        swapped = (out != x).any(dim=1)  # (N, L): where any channel changed
        for i in range(8):
            if partner[i] == i:
                continue
            t = swapped[i].nonzero().flatten()
            assert ((out[i] != x[i]).any(dim=1)).all() or t.numel() == 0  # every channel, or none
            if t.numel():
                assert t.max() - t.min() + 1 == t.numel()  # one stretch
                torch.testing.assert_close(out[i, :, t], x[partner[i], :, t])
            assert abs(float(lam[i]) - (1 - t.numel() / 40)) < 1e-6


def test_onnx_leaves_the_length_free_when_the_model_takes_any_length(signal_net, tmp_path):
    # Audio clips vary in length; the file had the length of the calibration signals fixed.
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    from crossdistill.export import export_model

    teacher, _ = signal_net  # adaptive pooling: any length
    x = signals(8)[0]
    res = export_model(teacher, tmp_path / "any.onnx", "onnx", x)
    assert res.free_axes == ("length",)
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    longer = torch.randn(3, 2, 100)
    with torch.no_grad():
        assert np.abs(sess.run(None, {"input": longer.numpy()})[0] - teacher(longer).numpy()).max() <= 1e-4
    fixed = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 62, 3)).eval()  # one length only
    res = export_model(fixed, tmp_path / "fixed.onnx", "onnx", x)
    assert res.free_axes == ()
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == ["batch", 2, 64]
