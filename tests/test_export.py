"""ONNX / TorchScript export: verified against PyTorch, really slimmer, written atomically."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import crossdistill
from crossdistill.cli.main import main
from crossdistill.errors import CrossDistillError
from crossdistill.export import export_model, verification_inputs
from crossdistill.models import create_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("exportdata")
    rng = np.random.default_rng(0)
    np.savez(d / "train.npz", x=rng.integers(0, 256, (30, 28, 28, 1), dtype=np.uint8), y=np.arange(30) % 10)
    np.savez(d / "test.npz", x=rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8), y=np.arange(40) % 10)
    return d


@pytest.fixture(scope="module")
def run_dir(data):
    out = data / "run"
    rc = main(["compress", "--model", "fashion_cnn", "--data", str(data / "train.npz"), "--shots", "2",
               "--keep", "0.5", "--no-latency", "--quiet", "--out", str(out)])
    assert rc == 0
    return out


def _conv_out_channels(path) -> list[int]:
    graph = onnx.load(str(path)).graph
    inits = {i.name: list(i.dims) for i in graph.initializer}
    # BatchNorm is folded into the convs, so read the weight that each Conv node really uses.
    return [inits[n.input[1]][0] for n in graph.node if n.op_type == "Conv"]


def test_cli_onnx_export_on_real_images(run_dir, data, capsys):
    out = run_dir / "student.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--eval-data", str(data / "test.npz")]) == 0
    text = capsys.readouterr().out
    assert "the first 40 test images" in text
    diff = float(re.search(r"max \|logit difference\| vs PyTorch = (\S+)", text).group(1))
    assert diff <= 1e-4
    # Independently of the command's own check: onnxruntime on the real images, against PyTorch.
    model = crossdistill.load(run_dir)
    x, _ = verification_inputs(model, data / "test.npz", 40)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(x).numpy()).max() <= 1e-4
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["crossdistill.model"] == "fashion_cnn" and meta["crossdistill.mean"] == "[0.286]"


def test_slimmed_onnx_really_has_fewer_channels(run_dir, tmp_path):
    teacher = create_model("fashion_cnn")
    x, label = verification_inputs(teacher, None, 8)
    export_model(teacher, tmp_path / "teacher.onnx", "onnx", x, inputs_label=label)
    student = crossdistill.load(run_dir)
    export_model(student, tmp_path / "student.onnx", "onnx", x, inputs_label=label)
    assert _conv_out_channels(tmp_path / "teacher.onnx") == [16, 32, 64]
    assert _conv_out_channels(tmp_path / "student.onnx") == [8, 16, 64]
    size = lambda p: sum(np.prod(i.dims) for i in onnx.load(str(p)).graph.initializer)  # noqa: E731
    assert size(tmp_path / "student.onnx") < 0.7 * size(tmp_path / "teacher.onnx")


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_cli_torchscript_export(run_dir, capsys):
    out = run_dir / "student.torchscript.pt"
    assert main(["export", str(run_dir), "--format", "torchscript", "--n-verify", "5"]) == 0
    text = capsys.readouterr().out
    assert "fixed random batch of 5" in text
    assert float(re.search(r"= (\S+) \(tolerance", text).group(1)) <= 1e-4
    loaded = torch.jit.load(str(out))
    model = crossdistill.load(run_dir)
    x = torch.randn(3, 1, 28, 28)  # another batch size than the trace's
    with torch.no_grad():
        assert (loaded(x) - model(x)).abs().max() <= 1e-4


def test_existing_export_is_not_overwritten_without_force(run_dir, capsys):
    out = run_dir / "student.onnx"
    out.write_bytes(b"keep me")
    assert main(["export", str(run_dir), "--format", "onnx"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(["export", str(run_dir), "--format", "onnx", "--force"]) == 0
    assert out.read_bytes() != b"keep me"


def test_export_of_quantized_and_low_rank_models(tmp_path):
    from crossdistill.config import CompressConfig
    from crossdistill.pipeline import FewShot, compress

    torch.manual_seed(0)
    teacher = create_model("fashion_cnn").eval()
    few = FewShot(torch.randn(20, 1, 28, 28), torch.arange(20) % 10, np.arange(20))
    cfg = CompressConfig(model="fashion_cnn", prune="lowrank+quant", shots=2).validate()
    student = compress(teacher, few, cfg, show_progress=False).student
    path = crossdistill.save(student, tmp_path / "lq.safetensors")
    res = crossdistill.export.export(path, "onnx")
    assert res.path == tmp_path / "lq.onnx" and res.max_abs_diff <= 1e-4
    # the low-rank factors are two convs where the dense model had one
    assert len(_conv_out_channels(res.path)) > 3


def test_a_mismatching_export_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    import crossdistill.export as ex

    model = create_model("fashion_cnn")
    x, _ = verification_inputs(model, None, 4)
    real = ex._run_onnx
    monkeypatch.setattr(ex, "_run_onnx", lambda path, inputs: [o + 1e-2 for o in real(path, inputs)])
    with pytest.raises(CrossDistillError, match="differs from the PyTorch model by up to 0.01.*nothing was written"):
        export_model(model, tmp_path / "m.onnx", "onnx", x)
    assert list(tmp_path.iterdir()) == []


def test_a_half_precision_model_exports_with_its_own_tolerance(tmp_path, data, capsys):
    """A float16 student (saved so since persistence keeps its dtype) was refused: a faithful ONNX
    export of float16 arithmetic differs by ~2e-3 of the largest logit, float32's 1e-4 is too tight."""
    pytest.importorskip("onnxruntime")
    from crossdistill.export import default_tolerance

    torch.manual_seed(0)
    model = create_model("fashion_cnn").eval()
    assert default_tolerance(model) == 1e-4
    path = crossdistill.save(model.half(), tmp_path / "half.safetensors")
    assert main(["export", str(path), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "(tolerance 0.01)" in out and (tmp_path / "half.onnx").exists()
    # On real images too (they were fed as float32: a raw "Input type ... HalfTensor" traceback).
    assert main(["export", str(path), "--format", "torchscript", "--eval-data", str(data / "test.npz")]) == 0
    assert "the first 40 test images" in capsys.readouterr().out
    assert default_tolerance(model.to(torch.bfloat16)) == 5e-2


class _Scaled(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.factor


def test_the_tolerance_scales_with_large_logits(tmp_path, monkeypatch):
    """float32 rounding grows with the logits: a faithful export of logits near 1000 differs by
    more than 1e-4 and must pass, while an off-by-a-bit one is still refused."""
    import crossdistill.export as ex

    model = create_model("fashion_cnn").eval()
    x, _ = verification_inputs(model, None, 4)
    big = _Scaled(model, 1000.0 / float(model(x).abs().max())).eval()  # largest |logit| 1000
    real = ex._run_onnx
    monkeypatch.setattr(ex, "_run_onnx", lambda path, inputs: [o + 5e-2 for o in real(path, inputs)])
    assert export_model(big, tmp_path / "ok.onnx", "onnx", x).max_abs_diff <= 0.1  # within 1e-4 x 1000
    monkeypatch.setattr(ex, "_run_onnx", lambda path, inputs: [o + 0.2 for o in real(path, inputs)])
    with pytest.raises(CrossDistillError, match=r"allowed 0\.1: tolerance 0\.0001 times the largest \|logit\|"):
        export_model(big, tmp_path / "bad.onnx", "onnx", x)
    assert not (tmp_path / "bad.onnx").exists()


def test_export_bad_input(run_dir, data, tmp_path, capsys):
    cases = [
        (["export", str(tmp_path / "nope"), "--format", "onnx"], "no such file or directory"),
        (["export", str(tmp_path), "--format", "onnx"], "holds no saved model"),
        (["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "o.onnx"), "--n-verify", "0"],
         "--n-verify must be >= 1"),
        (["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "o.onnx"), "--tolerance", "nan"],
         "--tolerance must be a finite number"),
        (["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "o.onnx"),
          "--eval-data", str(tmp_path / "missing.npz")], "no such file or folder"),
        (["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path)], "already exists"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    np.savez(tmp_path / "rgb.npz", x=np.zeros((3, 32, 32, 3), np.uint8), y=np.zeros(3, np.int64))
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "o.onnx"),
                 "--eval-data", str(tmp_path / "rgb.npz")]) == 2
    assert "fashion_cnn expects (28, 28, 1)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: unknown format
        main(["export", str(run_dir), "--format", "tflite"])
    assert exc.value.code == 2
    assert not (tmp_path / "o.onnx").exists()


USER_FACTORY = """
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
"""


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_users_compressed_model_exports(tmp_path, capsys, fmt):
    """A model from the user's own factory: compressed, saved by the CLI, then exported with the
    input size and normalisation recorded in its file."""
    (tmp_path / "mynet.py").write_text(USER_FACTORY)
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 20)):
        np.savez(tmp_path / f"{split}.npz", x=rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8), y=np.arange(n) % 10)
    run = tmp_path / "run"
    assert main(["compress", "--model", f"{tmp_path / 'mynet.py'}:make", "--data", str(tmp_path / "train.npz"),
                 "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25", "--shots", "2", "--keep", "0.5",
                 "--no-latency", "--quiet", "--out", str(run)]) == 0
    assert main(["export", str(run), "--format", fmt, "--eval-data", str(tmp_path / "test.npz")]) == 0
    assert "the first 20 test images" in capsys.readouterr().out
    if fmt == "onnx":
        meta = {p.key: p.value for p in onnx.load(str(run / "student.onnx")).metadata_props}
        assert meta["crossdistill.input_size"] == "[3, 12, 12]" and meta["crossdistill.std"] == "[0.25, 0.25, 0.25]"
        assert _conv_out_channels(run / "student.onnx") == [4, 16]  # slimmed: the first conv kept half


def test_a_model_on_tokens_exports_on_random_inputs_and_refuses_images(tmp_path):
    """Inputs that are not images (tokens × features) and an attention whose q/k/v were pruned."""
    import warnings
    from test_attention_projections import Block, tokens

    from crossdistill.compression.coverage import CompressionWarning

    (tmp_path / "blocks.py").write_text(
        f"import sys\nsys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})\n"
        "from test_attention_projections import Block\n\ndef make():\n    return Block()\n")
    model = Block().eval()
    model.crossdistill_factory = f"{tmp_path / 'blocks.py'}:make"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompressionWarning)
        student, _ = crossdistill.compress(model, tokens(), labels=torch.arange(32) % 4, shots=8, method="sparsity",
                                           sparsity=0.5, show_progress=False)
    path = crossdistill.save(student, tmp_path / "tok.safetensors")
    res = crossdistill.export.export(path, "onnx")
    assert res.max_abs_diff <= 1e-4 and res.inputs.startswith("a fixed random batch")
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    x = tokens(5)
    with torch.no_grad():
        assert np.abs(sess.run(None, {"input": x.numpy()})[0] - student(x).numpy()).max() <= 1e-4
    np.savez(tmp_path / "img.npz", x=np.zeros((3, 6, 12, 1), np.uint8), y=np.zeros(3, np.int64))
    with pytest.raises(CrossDistillError, match=r"images are \(6, 12, 1\) \(H, W, C\) but .* expects inputs of shape \(6, 12\)"):
        crossdistill.export.export(path, "onnx", eval_data=tmp_path / "img.npz", force=True)


class SamePadded(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(1, 4, 4, padding="same")                # uneven: ONNX auto_pad
        self.b = torch.nn.Conv2d(4, 4, 3, padding="same", dilation=2)    # even, dilated
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))


def test_same_padding_exports_and_an_export_onnxruntime_refuses_is_named(tmp_path, monkeypatch):
    import crossdistill.export as ex

    torch.manual_seed(0)
    model = SamePadded().eval()
    x = torch.randn(8, 1, 28, 28)
    res = export_model(model, tmp_path / "same.onnx", "onnx", x)  # onnxruntime refuses auto_pad with dilation
    assert res.max_abs_diff <= 1e-4 and model.b.padding == "same"  # the user's model is left as it was
    monkeypatch.setattr(ex, "_run_onnx", lambda path, inputs: (_ for _ in ()).throw(RuntimeError("kernel missing")))
    with pytest.raises(CrossDistillError, match=r"does not run in onnxruntime \(RuntimeError: kernel missing\); nothing"):
        export_model(model, tmp_path / "other.onnx", "onnx", x)
    assert not (tmp_path / "other.onnx").exists()


class FixedPool(torch.nn.Module):
    """Takes any size in PyTorch (adaptive pooling to 4x4), but the ONNX exporter refuses that
    pooling with free height and width."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 4).flatten(1))


def test_a_model_the_exporter_cannot_free_exports_with_its_size_fixed(tmp_path, capfd):
    # The exporter's refusal escaped as a traceback: the free-axes attempt now falls back.
    pytest.importorskip("onnxruntime")
    model = FixedPool().eval()
    res = crossdistill.export.export_model(model, tmp_path / "m.onnx", "onnx", torch.randn(8, 3, 12, 12))
    assert res.free_axes == () and res.max_abs_diff <= 1e-4 and res.path.is_file()
    # torch printed its whole IR graph to stdout for the attempt it gave up on.
    out, err = capfd.readouterr()
    assert "Torch IR graph" not in out + err and "graph(%input" not in out + err
    print("still printed")  # stdout is back after the export
    assert capfd.readouterr().out == "still printed\n"


def test_an_uneven_same_padding_with_dilation_exports(tmp_path):
    # kernel 4, dilation 3: 'same' pads 4 before and 5 after, which ONNX writes as auto_pad, and
    # onnxruntime refuses auto_pad with dilation: the teacher and every student failed to export.
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, padding="same", dilation=3), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 2, padding="same"),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3)).eval()
    res = export_model(model, tmp_path / "m.onnx", "onnx", torch.randn(4, 3, 16, 16))
    assert res.max_abs_diff <= 1e-5 and model[0].padding == "same"  # the user's model is left as it was


class FixedBatch(torch.nn.Module):
    """Its ONNX graph holds the trace's batch size: a view to a size computed in Python."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).reshape(int(x.shape[0]), -1))


def test_an_onnx_graph_that_holds_its_batch_size_is_named_as_such(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    with pytest.raises(CrossDistillError, match=r"it runs on batches of 2, the size it was traced at, not on the 8 "
                                                 r"verification inputs"):
        export_model(FixedBatch().eval(), tmp_path / "m.onnx", "onnx", torch.randn(8, 3, 8, 8))
    assert not (tmp_path / "m.onnx").exists()


def test_a_killed_exports_temporary_file_is_removed_by_the_next_write(tmp_path):
    """An export killed before its rename left `.student.onnx.<pid>-<hex>.tmp` (half a model)
    that no later export removed; a live writer's file is left alone."""
    import os
    import subprocess
    import sys

    from crossdistill.persistence.files import atomic_write

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    out = tmp_path / "student.onnx"
    stale = tmp_path / f".student.onnx.{dead}-0123456789ab.tmp"
    live = tmp_path / f".student.onnx.{os.getppid()}-0123456789ab.tmp"
    for p in (stale, live):
        p.write_bytes(b"half")
    atomic_write(out, lambda tmp: open(tmp, "wb").write(b"whole"))
    assert out.read_bytes() == b"whole" and not stale.exists() and live.exists()


def test_a_full_disk_under_a_torchscript_export_is_an_error_not_an_abort(tmp_path, monkeypatch):
    # torch.jit.save's own file writer threw from a C++ destructor when the disk filled: the
    # process aborted (SIGABRT) and left its temporary file. The bytes are now written by Python.
    import errno
    from pathlib import Path

    import crossdistill

    real = Path.write_bytes

    def full(self, data):
        if ".tmp" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)).eval()
    with pytest.raises(CrossDistillError, match="cannot write .*No space left on device; nothing was written"):
        crossdistill.export_model(model, tmp_path / "m.torchscript.pt", "torchscript", torch.randn(2, 3, 8, 8))
    assert list(tmp_path.iterdir()) == []
