"""`crossdistill evaluate` end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from crossdistill.cli.main import main
from crossdistill.models import create_model, save_model
from crossdistill.paths import shared_data_dir


@pytest.fixture()
def tiny_run(tmp_path):
    torch.manual_seed(0)
    model = create_model("fashion_cnn", channels=[2, 3, 4])
    weights = save_model(model, tmp_path / "student.safetensors")
    rng = np.random.default_rng(0)
    data = tmp_path / "test.npz"
    np.savez(data, x=rng.integers(0, 256, (12, 28, 28, 1), dtype=np.uint8), y=rng.integers(0, 10, 12))
    return weights, data


def test_evaluate_prints_table(tiny_run, capsys):
    weights, data = tiny_run
    rc = main(["evaluate", "--weights", str(weights), "--eval-data", str(data),
               "--latency-batch-sizes", "1,2", "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "fashion_cnn" in out and "on 12 images" in out
    assert "params" in out and "FLOPs" in out
    assert out.count("latency") == 2 and "at batch 2, 1 thread" in out


def test_evaluate_json(tiny_run, capsys):
    weights, data = tiny_run
    rc = main(["evaluate", "--model", "fashion_cnn", "--weights", str(weights), "--eval-data", str(data),
               "--no-latency", "--json", "--batch-size", "5"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert res["n_eval"] == 12 and res["latency"] == [] and res["spec"]["channels"] == [2, 3, 4]
    assert 0.0 <= res["top1"] <= 100.0 and res["params"] > 0


def test_evaluate_user_errors_exit_2(tiny_run, capsys):
    weights, data = tiny_run
    assert main(["evaluate", "--model", "nope", "--weights", str(weights), "--eval-data", str(data)]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["evaluate", "--model", "resnet20", "--weights", str(weights), "--eval-data", str(data)]) == 2
    assert "resnet20" in capsys.readouterr().err


@pytest.mark.integration
def test_evaluate_shared_resnet20(capsys):
    weights = shared_data_dir() / "weights" / "resnet20-12fca82f.th"
    data = shared_data_dir() / "cifar10" / "cifar10_test1000.npz"
    if not (weights.is_file() and data.is_file()):
        pytest.skip(f"shared teacher or test images absent under {shared_data_dir()} (set CROSSDISTILL_DATA)")
    rc = main(["evaluate", "--model", "resnet20", "--weights", str(weights), "--eval-data", str(data), "--no-latency"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "91.5 % on 1000 images" in out and "269,722" in out and "81.10 M" in out


def test_evaluate_gives_a_quantized_models_size_not_its_zero_codes(tmp_path, capsys):
    """A quantized model's zero codes were printed as '(N non-zero)', read as sparsity; its stored
    size, the figure quantization is for, was missing."""
    import crossdistill

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    y = np.arange(40) % 10
    np.savez(tmp_path / "d.npz", x=x, y=y)
    teacher = create_model("fashion_cnn").eval()
    images = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    student, report = crossdistill.compress(teacher, images, labels=torch.from_numpy(y), shots=2, method="quant",
                                            bits=2, name="fashion_cnn", show_progress=False)
    path = crossdistill.save(student, tmp_path / "q.safetensors")
    assert main(["evaluate", "--weights", str(path), "--eval-data", str(tmp_path / "d.npz"), "--no-latency",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "non-zero" not in out
    assert f"{report['model_size']['total'] / 1024:,.1f} KiB stored for inference" in out


def test_evaluate_takes_latency_as_the_default_it_is():
    """`evaluate --latency` (as compress takes it) was read as an abbreviation of
    --latency-batch-sizes: 'expected one argument'."""
    from crossdistill.cli.main import build_parser

    parse = build_parser().parse_args
    base = ["evaluate", "--weights", "w", "--eval-data", "d"]
    assert parse(base).no_latency is False and parse([*base, "--latency"]).no_latency is False
    assert parse([*base, "--no-latency"]).no_latency is True
