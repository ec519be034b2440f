"""Bad input: every command refuses it with one clear line on stderr and exit status 2, before
any work is done and without leaving anything half-written.

The inputs are tiny files written here; the model is the Fashion CNN (28×28×1), so even the
cases that get as far as loading data take a fraction of a second.
"""
from __future__ import annotations

import builtins
import gzip
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import crossdistill
from crossdistill.cli.main import main
from crossdistill.errors import CrossDistillError
from crossdistill.models import create_model


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    gray = lambda n: rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)  # noqa: E731
    np.savez(d / "train.npz", x=gray(40), y=np.arange(40) % 10)  # 4 images per class
    np.savez(d / "rgb.npz", x=rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), y=np.arange(40) % 10)
    np.savez(d / "float.npz", x=rng.random((40, 28, 28, 1)).astype(np.float32), y=np.arange(40) % 10)
    np.savez(d / "float255.npz", x=(rng.random((40, 28, 28, 1)) * 255).astype(np.float32), y=np.arange(40) % 10)
    np.savez(d / "chw.npz", x=gray(40).transpose(0, 3, 1, 2), y=np.arange(40) % 10)
    xf = (rng.random((40, 28, 28, 1)) * 255).astype(np.float32)
    xf[3, 4, 5, 0] = np.nan
    np.savez(d / "nan.npz", x=xf, y=np.arange(40) % 10)
    np.savez(d / "labels12.npz", x=gray(40), y=np.arange(40) % 12)
    np.savez(d / "labels_declared.npz", x=gray(40), y=np.arange(40) % 12, num_classes=np.array(10))
    np.savez(d / "labels_negative.npz", x=gray(40), y=np.arange(40) % 10 - 1)
    raw = (d / "train.npz").read_bytes()
    (d / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    (d / "corrupt.npz").write_bytes(bytes(rng.integers(0, 256, 600, dtype=np.uint8)))

    torch.manual_seed(0)
    teacher = create_model("fashion_cnn")
    torch.save(teacher.state_dict(), d / "teacher.th")
    raw = (d / "teacher.th").read_bytes()
    (d / "truncated.th").write_bytes(raw[: len(raw) // 2])
    crossdistill.save(teacher, d / "teacher.safetensors")
    raw = (d / "teacher.safetensors").read_bytes()
    (d / "truncated.safetensors").write_bytes(raw[: len(raw) - 50])
    sd = {k: v.clone() for k, v in teacher.state_dict().items()}
    sd["conv2.weight"][0, 0, 0, 0] = float("inf")
    torch.save(sd, d / "inf.th")
    torch.save(create_model("fashion_cnn", channels=[8, 16, 32]).state_dict(), d / "slim.th")
    torch.save(create_model("resnet20").state_dict(), d / "resnet20.th")
    torch.save({f"model.{k}": v for k, v in teacher.state_dict().items()}, d / "prefixed.th")

    cifar = d / "cifar-10-batches-py"
    cifar.mkdir()
    good = pickle.dumps({b"data": np.zeros((10, 3072), np.uint8), b"labels": list(range(10))}, protocol=2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cifar / name).write_bytes(good)
    (cifar / "data_batch_1").write_bytes(good[: len(good) // 3])
    idx = d / "fashion"
    idx.mkdir()
    images = bytes([0, 0, 8, 3]) + struct.pack(">III", 20, 28, 28) + bytes(20 * 28 * 28)
    (idx / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(images[:-100]))
    (idx / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 20) + bytes(range(10)) * 2)

    (d / "existing").mkdir()
    (d / "existing" / "keep.txt").write_text("precious")
    (d / "bad.yaml").write_text("keep: [0.5,\n")
    (d / "sweep_bad_value.yaml").write_text("base: {model: fashion_cnn, keep: 2}\ngrid: {seed: [0]}\n")
    (d / "not_a_db.sqlite").write_bytes(b"this is not sqlite" * 20)
    (d / "factories.py").write_text(
        "from crossdistill.models import create_model\n"
        "def make_args(width):\n    return create_model('fashion_cnn')\n"
        "def make_boom():\n    raise ValueError('boom in the factory')\n")
    torch.jit.script(teacher).save(str(d / "scripted.pt"))
    return d


COMPRESS = ["compress", "--model", "fashion_cnn", "--data", "{d}/train.npz", "--shots", "2", "--no-latency",
            "--quiet", "--out", "{d}/out"]
EVALUATE = ["evaluate", "--weights", "{d}/teacher.safetensors", "--eval-data", "{d}/train.npz", "--no-latency"]


def _c(*extra: str) -> list[str]:
    return COMPRESS + list(extra)


def _swap(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


# (id, argv, what the message must say). One case per kind of bad input and command.
CASES = [
    # missing paths
    ("compress: data missing", _swap(COMPRESS, "--data", "{d}/nope.npz"), "nope.npz: no such file or folder"),
    ("compress: weights missing", _c("--weights", "{d}/nope.th"), "weights file not found: {d}/nope.th"),
    ("compress: config missing", _c("--config", "{d}/nope.yaml"), "cannot read config {d}/nope.yaml"),
    ("evaluate: weights missing", _swap(EVALUATE, "--weights", "{d}/nope.safetensors"), "not found"),
    ("evaluate: data missing", _swap(EVALUATE, "--eval-data", "{d}/nope.npz"), "nope.npz: no such file or folder"),
    ("export: source missing", ["export", "{d}/nope", "--format", "onnx"], "{d}/nope: no such file or directory"),
    ("sweep: config missing", ["sweep", "{d}/nope.yaml"], "cannot read config"),
    ("report: database missing", ["report", "{d}/nope.sqlite"], "not found"),
    ("baseline: data missing", ["baseline", "l1", "--model", "fashion_cnn", "--data", "{d}/nope.npz", "--out", "{d}/out"],
     "no such file or folder"),
    ("demo: data missing", ["demo", "--data", "{d}/nope", "--out", "{d}/out"], "no such file or folder"),
    # truncated or corrupt checkpoints and data files
    ("compress: truncated .th", _c("--weights", "{d}/truncated.th"), "truncated or corrupt"),
    ("compress: truncated .safetensors", _c("--weights", "{d}/truncated.safetensors"), "truncated or corrupt"),
    ("evaluate: truncated model", _swap(EVALUATE, "--weights", "{d}/truncated.safetensors"), "truncated or corrupt"),
    ("compress: truncated npz", _swap(COMPRESS, "--data", "{d}/truncated.npz"), "truncated.npz: cannot read .npz"),
    ("compress: corrupt npz", _swap(COMPRESS, "--data", "{d}/corrupt.npz"), "corrupt.npz: cannot read .npz"),
    ("compress: truncated CIFAR batch", _swap(_swap(COMPRESS, "--data", "{d}/cifar-10-batches-py"), "--model", "resnet20"),
     "data_batch_1: unsafe or corrupt pickle (pickle data was truncated)"),
    ("compress: truncated IDX", _swap(COMPRESS, "--data", "{d}/fashion"), "truncated IDX file"),
    ("compress: invalid YAML", _c("--config", "{d}/bad.yaml"), "is not valid YAML"),
    ("report: not a database", ["report", "{d}/not_a_db.sqlite", "--out", "{d}/out"], "not a crossdistill results database"),
    # a checkpoint whose shapes do not fit the model
    ("compress: slimmer checkpoint", _c("--weights", "{d}/slim.th"),
     "does not fit model fashion_cnn: shape mismatch: conv1.weight: expected (16, 1, 3, 3), got (8, 1, 3, 3)"),
    ("compress: other architecture", _c("--weights", "{d}/resnet20.th"), "does not fit model fashion_cnn"),
    ("compress: keys of a wrapper", _c("--weights", "{d}/prefixed.th"), "the file's keys carry the prefix 'model.'"),
    ("evaluate: other architecture", ["evaluate", "--model", "fashion_cnn", "--weights", "{d}/resnet20.th",
                                      "--eval-data", "{d}/train.npz"], "resnet20.th"),
    # images of the wrong shape or dtype
    ("compress: wrong image shape", _swap(COMPRESS, "--data", "{d}/rgb.npz"),
     "images are (32, 32, 3) (H, W, C) but fashion_cnn expects (28, 28, 1)"),
    ("compress: wrong test image shape", _c("--eval-data", "{d}/rgb.npz"), "images are (32, 32, 3)"),
    ("evaluate: wrong image shape", _swap(EVALUATE, "--eval-data", "{d}/rgb.npz"), "images are (32, 32, 3)"),
    ("compress: float images", _swap(COMPRESS, "--data", "{d}/float.npz"), "x must have dtype uint8"),
    # labels out of range
    ("compress: more classes than the model", _swap(COMPRESS, "--data", "{d}/labels12.npz"),
     "label 11 is out of range for fashion_cnn, which has 10 classes"),
    ("compress: test labels out of range", _c("--eval-data", "{d}/labels12.npz"), "label 11 is out of range"),
    ("evaluate: labels out of range", _swap(EVALUATE, "--eval-data", "{d}/labels12.npz"), "label 11 is out of range"),
    ("compress: label above declared classes", _swap(COMPRESS, "--data", "{d}/labels_declared.npz"),
     "label 11 is outside [0, 10)"),
    ("compress: negative label", _swap(COMPRESS, "--data", "{d}/labels_negative.npz"), "label -1 is negative"),
    # non-finite values in data or weights
    ("compress: NaN pixels", _swap(COMPRESS, "--data", "{d}/nan.npz"), "NaN or infinite"),
    ("compress: inf weights", _c("--weights", "{d}/inf.th"), "non-finite values (NaN/inf) in conv2.weight"),
    ("evaluate: inf weights", ["evaluate", "--model", "fashion_cnn", "--weights", "{d}/inf.th", "--eval-data",
                               "{d}/train.npz"], "non-finite values (NaN/inf) in conv2.weight"),
    # K larger than a class has
    ("compress: K too large", _swap(COMPRESS, "--shots", "5"), "shots=5 per class is more than class 0 has (4 samples): give shots 4 or fewer"),
    ("compress: factory with arguments", _swap(COMPRESS, "--model", "{d}/factories.py:make_args"),
     "the factory is called with no arguments, and it takes some (missing a required argument: 'width')"),
    ("compress: factory raising", _swap(COMPRESS, "--model", "{d}/factories.py:make_boom"),
     "the factory failed at {d}/factories.py:5: ValueError: boom in the factory"),
    ("compress: TorchScript weights", _c("--weights", "{d}/scripted.pt"), "a TorchScript file (torch.jit.save), not a "
                                                                          "checkpoint of weights"),
    ("compress: keep and flops", _c("--keep", "0.5", "--flops", "0.3"), "give one of --keep, --flops, --parameters"),
    ("compress: out is a file", _swap(COMPRESS, "--out", "{d}/train.npz"),
     "exists and is not a directory (--force replaces folders only)"),
    ("compress: channels-first images", _swap(COMPRESS, "--data", "{d}/chw.npz"),
     "x looks channels-first, (40, 1, 28, 28) (N, C, H, W); image arrays are N×H×W×C: save x.transpose(0, 2, 3, 1)"),
    ("compress: float pixels 0..255", _swap(COMPRESS, "--data", "{d}/float255.npz"),
     "convert explicitly: x.round().astype(np.uint8)"),
    ("compress: K zero", _swap(COMPRESS, "--shots", "0"), "shots must be >= 1"),
    # keep / sparsity / rank ratios outside their ranges
    ("compress: keep 0", _c("--keep", "0"), "keep must lie in (0, 1] or 'paper', got 0.0"),
    ("compress: keep 1.5", _c("--keep", "1.5"), "keep must lie in (0, 1] or 'paper', got 1.5"),
    ("compress: keep nan", _c("--keep", "nan"), "keep must be a finite number, got nan"),
    ("compress: keep text", _c("--keep", "half"), "keep must be a number or 'paper', got 'half'"),
    ("compress: sparsity 1", _c("--prune", "sparsity", "--sparsity", "1"), "sparsity must lie in [0, 1)"),
    ("compress: sparsity negative", _c("--prune", "sparsity", "--sparsity", "-0.1"), "sparsity must lie in [0, 1)"),
    ("compress: rank ratio 0", _c("--prune", "lowrank", "--rank-ratio", "0"), "rank_ratio must lie in (0, 1]"),
    ("baseline: keep 2", ["baseline", "l1", "--model", "fashion_cnn", "--data", "{d}/train.npz", "--keep", "2",
                          "--out", "{d}/out"], "keep must lie in (0, 1] or 'paper', got 2.0"),
    ("demo: keep 2", ["demo", "--keep", "2", "--out", "{d}/out"], "keep must lie in (0, 1] or 'paper', got 2.0"),
    ("sweep: keep 2 in the file", ["sweep", "{d}/sweep_bad_value.yaml", "--db", "{d}/s.sqlite"],
     "keep must lie in (0, 1] or 'paper', got 2"),
    # mu, alpha, beta outside [0, 1]
    ("compress: mu 1.5", _c("--objective", "mixed", "--mu", "1.5"), "objective mixed: mu must lie in [0, 1], got 1.5"),
    ("compress: mu nan", _c("--objective", "mixed", "--mu", "nan"), "objective mixed: mu must be a finite number"),
    # a setting of another plug-in than the selected one (mu with the default objective soft)
    ("compress: mu for soft", _c("--mu", "0.5"), "is a setting of objective mixed, not of the selected"),
    ("compress: alpha negative", _c("--objective", "soft", "--alpha", "-0.1"), "alpha must lie in [0, 1], got -0.1"),
    ("compress: beta 2", _c("--objective", "soft", "--beta", "2"), "beta must lie in [0, 1], got 2.0"),
    # other numbers that used to crash deep inside numpy or torch
    ("compress: negative seed", _c("--seed", "-1"), "seed must be >= 0"),
    ("compress: damping nan", _c("--damping", "nan"), "damping must be a finite number"),
    ("compress: damping inf", _c("--damping", "inf"), "damping must be a finite number"),
    ("compress: lr nan", _c("--solver", "paper", "--lr", "nan"), "lr must be a finite number"),
    ("evaluate: zero threads", EVALUATE + ["--threads", "0"], "threads must be >= 1"),
    # an existing output is never overwritten without --force
    ("compress: output exists", _swap(COMPRESS, "--out", "{d}/existing"), "{d}/existing already exists; pass --force"),
    ("baseline: output exists", ["baseline", "l1", "--model", "fashion_cnn", "--data", "{d}/train.npz",
                                 "--out", "{d}/existing"], "already exists; pass --force"),
    ("demo: output exists", ["demo", "--out", "{d}/existing"], "already exists; pass --force"),
]


def _case(name: str, argv: list[str], message: str):
    from crossdistill.cli.main import COMMANDS

    # Each case needs its command (and --prune sparsity its method) in this tree.
    known = {m.rsplit(".", 1)[1].removesuffix("_cmd") for m in COMMANDS}
    missing = argv[0] not in known or ("--prune" in argv and argv[argv.index("--prune") + 1] == "sparsity"
                                       and "sparsity" not in _methods())
    return pytest.param(argv, message, id=name, marks=pytest.mark.skipif(missing, reason="not in this tree"))


def _methods() -> set[str]:
    from crossdistill.compression import METHODS

    return set(METHODS)


@pytest.mark.parametrize("argv,message", [_case(*c) for c in CASES])
def test_cli_refuses_bad_input(d, capsys, argv, message):
    argv = [a.replace("{d}", str(d)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message.replace("{d}", str(d)) in err
    assert len(err.splitlines()) == 1, err  # one message, no traceback
    assert err.startswith(f"crossdistill {argv[0]}: error: ")
    assert not (d / "out").exists()
    assert (d / "existing" / "keep.txt").read_text() == "precious"
    assert not [p for p in d.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_unreadable_files_are_reported(d, tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked.npz"
    shutil.copy(d / "train.npz", locked)
    weights = tmp_path / "locked.th"
    shutil.copy(d / "teacher.th", weights)
    for p in (locked, weights):
        p.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything: let the OS refuse as it would anyone else
        real_open = builtins.open

        def refusing_open(file, *args, **kwargs):
            if str(file) in (str(locked), str(weights)):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", refusing_open)
    out = str(tmp_path / "out")
    assert main(["compress", "--model", "fashion_cnn", "--data", str(locked), "--shots", "2", "--out", out]) == 2
    assert "locked.npz: cannot read .npz (PermissionError" in capsys.readouterr().err
    assert main(["compress", "--model", "fashion_cnn", "--data", str(d / "train.npz"), "--weights", str(weights),
                 "--shots", "2", "--out", out]) == 2
    assert "locked.th: not a readable PyTorch checkpoint" in capsys.readouterr().err


def test_a_run_that_fails_leaves_no_folder_it_made_for_its_output(d, tmp_path, capsys):
    argv = [a.replace("{d}", str(d)) for a in _swap(_swap(COMPRESS, "--model", "{d}/factories.py:make_boom"),
                                                    "--out", str(tmp_path / "runs" / "new" / "a"))]
    (tmp_path / "kept").mkdir()
    assert main(argv) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


def test_a_config_file_yields_to_the_flags_that_replace_its_settings(d, tmp_path, capsys):
    """A run's config.yaml records flops beside keep: --keep replaces it, in every form a file
    may hold it; a clash with a setting of the file names the file."""
    from crossdistill.cli.config_options import yield_to_flags

    saved = {"model": "fashion_cnn", "method": {"name": "channels", "params": {"keep": 0.5, "flops": 0.5}},
             "solver": {"name": "closed-form", "params": {"selection": "obs"}}}
    out = yield_to_flags(saved, {"keep": 0.7})
    assert out["method"]["params"] == {"keep": 0.5} and out["solver"] == saved["solver"]
    assert yield_to_flags(saved, {"method": "sparsity"}) == saved  # other settings: resolve's own rules
    for form in ({"flops": 0.5}, {"method.flops": 0.5}, {"prune": {"name": "channels", "extra": {"flops": 0.5}}},
                 {"extra": {"flops": 0.5}}):
        assert "0.5" not in str({k: v for k, v in yield_to_flags(form, {"keep": 0.7}).items() if k != "prune"}) \
            and "flops" not in str(yield_to_flags(form, {"keep": 0.7}))
    with pytest.raises(CrossDistillError, match="give one of --keep, --flops, --parameters, not --keep and --flops"):
        yield_to_flags(saved, {"keep": 0.7, "flops": 0.3})
    # Through the command line: a run's own config, rerun with another keep; another method's
    # clash with the file's solver settings names the file.
    base = ["compress", "--model", "fashion_cnn", "--data", f"{d}/train.npz", "--shots", "2", "--flops", "0.6",
            "--quiet", "--out", str(tmp_path / "a")]
    assert main(base) == 0
    config = tmp_path / "a" / "config.yaml"
    assert main(["compress", "--config", str(config), "--keep", "0.7", "--quiet", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    assert main(["compress", "--config", str(config), "--method", "sparsity", "--sparsity", "0.5", "--quiet",
                 "--out", str(tmp_path / "c")]) == 2
    assert f"with the settings of {config}: flags replace only settings of the same name" in capsys.readouterr().err


def test_failure_while_writing_leaves_no_output(d, tmp_path, monkeypatch, capsys):
    import crossdistill.pipeline as pipeline

    real = pipeline.write_run

    def write_then_fail(out, result, report):
        real(out, result, report)
        raise OSError(28, "No space left on device", str(out / "report.json"))

    monkeypatch.setattr(pipeline, "write_run", write_then_fail)
    out = tmp_path / "run"
    argv = ["compress", "--model", "fashion_cnn", "--data", str(d / "train.npz"), "--shots", "2", "--no-latency",
            "--quiet", "--out", str(out)]
    assert main(argv) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary directory
    monkeypatch.setattr(pipeline, "write_run", real)
    assert main(argv) == 0 and (out / "student.safetensors").is_file()
    assert main(argv) == 2  # now it exists
    (out / "marker").write_text("old")
    assert main(argv + ["--force"]) == 0
    assert not (out / "marker").exists() and (out / "student.safetensors").is_file()


class _WithDepthwiseReader(torch.nn.Module):
    """A model whose declared prunable pair ends in a depthwise conv, which channel pruning
    cannot re-solve on fewer input channels."""

    def __init__(self) -> None:
        super().__init__()
        from tiny import Pair

        self._pair = Pair("features.0", "features.1", "features.3")
        layer = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                            torch.nn.ReLU(), layer)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))

    def channel_pairs(self):
        return [self._pair]


def test_a_group_nothing_can_prune_is_named_with_its_path():
    # Channel pruning follows the graph: a group it cannot prune is left whole, named with the reason.
    from crossdistill.config import CompressConfig
    from crossdistill.pipeline import FewShot, compress

    few = FewShot(torch.randn(8, 1, 28, 28), torch.arange(8) % 4, np.arange(8))
    cfg = CompressConfig(model="fashion_cnn", shots=2).validate()
    with pytest.raises(CrossDistillError, match="features.0, features.3 -> features.3, fc: feeds the classifier fc"):
        compress(_WithDepthwiseReader().eval(), few, cfg, show_progress=False)


def test_public_functions_raise_our_error(d, tmp_path):
    from crossdistill.config import resolve
    from crossdistill.data import load_image_data, read_npz, sample_few_shot, to_tensor
    from crossdistill.export import export_model
    from crossdistill.models import load_weights

    calls = [
        (lambda: read_npz(d / "nope.npz"), "no such .npz file"),
        (lambda: load_image_data(d / "truncated.npz"), "cannot read .npz"),
        (lambda: load_weights(create_model("fashion_cnn"), d / "slim.th"), "shape mismatch"),
        (lambda: sample_few_shot(np.arange(40) % 10, shots=5), "more than class 0 has"),
        (lambda: to_tensor(np.zeros((2, 28, 28, 1), np.float32), (0.5,), (0.5,)), "uint8"),
        (lambda: resolve({}, {"keep": 0}), "keep must lie in (0, 1]"),
        (lambda: resolve({"objective": "mixed", "mu": "high"}, {}), "mu must be a number, got 'high'"),
        (lambda: resolve({}, {"beta": -1.0}), "beta must lie in [0, 1]"),
        (lambda: crossdistill.load(d / "truncated.safetensors"), "truncated or corrupt"),
        (lambda: crossdistill.save(create_model("fashion_cnn"), tmp_path), "safetensors"),
        (lambda: export_model(create_model("fashion_cnn"), tmp_path / "m.onnx", "onnx", torch.full((2, 1, 28, 28), float("nan"))),
         "finite"),
        (lambda: export_model(create_model("fashion_cnn"), tmp_path / "m.onnx", "tflite", torch.zeros(2, 1, 28, 28)),
         "unknown export format"),
    ]
    for call, message in calls:
        with pytest.raises(CrossDistillError) as exc:
            call()
        assert message in str(exc.value)


def test_n_samples_replaces_the_default_k(d, tmp_path, capsys):
    """--n-samples used to clash with the default K=5 ('give either shots or n_samples')."""
    out = tmp_path / "run"
    assert main(["compress", "--model", "fashion_cnn", "--data", str(d / "train.npz"), "--n-samples", "12",
                 "--no-latency", "--quiet", "--out", str(out)]) == 0
    assert len(crossdistill.load(out).spec()["channels"]) == 3
    assert main(["compress", "--model", "fashion_cnn", "--data", str(d / "train.npz"), "--n-samples", "1000",
                 "--out", str(tmp_path / "o2")]) == 2
    assert "n_samples=1000 is larger than the data set (40 images)" in capsys.readouterr().err


def test_a_layer_whose_weight_is_computed_names_the_undo_of_its_own_form():
    """torch.nn.utils.prune's weight_orig/weight_mask was told to call remove_parametrizations,
    which raises on it; each form now gets its own undo, and a sparsity run that finds nothing
    says why for each layer."""
    import torch.nn.utils.prune as torch_prune

    import crossdistill
    from torch import nn

    def net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()

    torch.manual_seed(0)
    x, y = torch.randn(40, 3, 8, 8), torch.arange(40) % 10
    pruned = net()
    torch_prune.l1_unstructured(pruned[2], "weight", amount=0.4)
    with pytest.raises(CrossDistillError, match=r"2: unsupported: .*torch\.nn\.utils\.prune\.remove\(layer, 'weight'\); "
                                                r"6: the last linear"):
        crossdistill.compress(pruned, x, labels=y, shots=2, method="sparsity", sparsity=0.5, show_progress=False)
    torch_prune.remove(pruned[2], "weight")  # what the message says: then it runs
    crossdistill.compress(pruned, x, labels=y, shots=2, method="sparsity", sparsity=0.5, show_progress=False)
    normed = net()
    torch.nn.utils.weight_norm(normed[2])
    from crossdistill.capture import own_weight_reason

    assert "torch.nn.utils.remove_weight_norm(layer)" in own_weight_reason(normed[2])
    param = net()
    torch.nn.utils.parametrizations.weight_norm(param[2])
    assert "remove_parametrizations(layer, 'weight')" in own_weight_reason(param[2])


def test_a_torchscript_module_is_refused_with_the_way_out():
    """Quantization returned a scripted model unchanged (nothing reaches its compiled layers) and
    the other methods blamed the first conv and the classifier."""
    import crossdistill
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    x, y = torch.randn(40, 3, 8, 8), torch.arange(40) % 10
    for scripted in (torch.jit.script(model), torch.jit.trace(model, x[:2])):
        with pytest.raises(CrossDistillError, match="is a TorchScript module .*compress the nn.Module it was made from"):
            crossdistill.compress(scripted, x, labels=y, shots=2, method="quant", bits=4, show_progress=False)


def test_pixels_as_stored_are_refused_with_the_conversion_they_need():
    """uint8 N×H×W×C pixels, and float images left channels last, were told to use a path or a
    nonsensical --input-size 3 32 3; each message now gives the conversion."""
    import crossdistill
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10)).eval()
    y = torch.arange(20) % 10
    nhwc = torch.randint(0, 256, (20, 16, 16, 3), dtype=torch.uint8)
    with pytest.raises(CrossDistillError, match=r"uint8 pixels \(20, 16, 16, 3\): .*x\.permute\(0, 3, 1, 2\)\.float\(\) / 255"):
        crossdistill.compress(model, nhwc, labels=y, shots=1, show_progress=False)
    with pytest.raises(CrossDistillError, match=r"uint8 pixels \(20, 3, 16, 16\): .*\(x\.float\(\) / 255"):
        crossdistill.compress(model, nhwc.permute(0, 3, 1, 2), labels=y, shots=1, show_progress=False)
    with pytest.raises(CrossDistillError, match=r"look N×H×W×C \(channels last.*x\.permute\(0, 3, 1, 2\)"):
        crossdistill.compress(model, nhwc.float() / 255, labels=y, shots=1, show_progress=False)


def test_damping_zero_on_singular_moments_names_the_layer_and_the_way_out():
    """--damping 0 passed validation and crashed in linalg.inv with a traceback."""
    import crossdistill
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        model[0].bias[8:] = -100.0  # half the channels always 0 after the ReLU: conv 2's moments are singular
    x, y = torch.randn(40, 3, 8, 8), torch.arange(40) % 10
    with pytest.raises(CrossDistillError, match=r"layer 2: its input moments are singular with damping 0 .*positive damping"):
        crossdistill.compress(model, x, labels=y, shots=2, keep=0.5, damping=0.0, show_progress=False)
    crossdistill.compress(model, x, labels=y, shots=2, keep=0.5, show_progress=False)  # the default damps


def test_an_npz_saved_channels_first_is_told_to_transpose():
    import numpy as np

    from crossdistill.checks import check_input_shape
    from crossdistill.data import ImageArrays

    # Refused as it is read, whatever the model (one of your own takes its input size from the data).
    with pytest.raises(CrossDistillError, match=r"channels-first, \(4, 3, 32, 32\).*x\.transpose\(0, 2, 3, 1\)"):
        ImageArrays(np.zeros((4, 3, 32, 32), np.uint8), np.zeros(4, np.int64), 10)
    # A layout the reader cannot tell (C = W = 3) is still named against the model's input size.
    data = ImageArrays(np.zeros((4, 3, 5, 3), np.uint8), np.zeros(4, np.int64), 10)
    with pytest.raises(CrossDistillError, match=r"x\.transpose\(0, 2, 3, 1\)"):
        check_input_shape(data, (3, 5, 3), "m", "x.npz")


@pytest.mark.parametrize("key, keyword", [("progress", "show_progress"), ("shot", "shots"), ("label", "labels")])
def test_a_setting_named_like_a_keyword_of_compress_points_to_the_keyword(key, keyword):
    """compress(progress=False) answered 'unknown config key' with sixty config keys, none of them
    the keyword show_progress it meant."""
    import crossdistill

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2)).eval()
    with pytest.raises(CrossDistillError, match=rf"unknown setting {key}=; did you mean its keyword {keyword}=\?"):
        crossdistill.compress(model, torch.randn(6, 3, 8, 8), show_progress=False, **{key: 1})


def test_ctrl_c_while_the_command_line_is_being_built_is_one_line(monkeypatch, capsys):
    """Building the parser imports every plug-in (seconds): a Ctrl-C then printed a traceback."""
    import crossdistill.cli.main as cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["models"]) == 130
    assert capsys.readouterr().err.strip() == "crossdistill: interrupted"
