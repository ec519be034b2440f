"""Accuracy, parameter/FLOP counting and latency measurement."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from crossdistill.data import ImageArrays
from crossdistill.errors import CrossDistillError
from crossdistill.evaluation import (
    LatencyResult,
    accuracy,
    count_flops,
    count_nonzero_params,
    count_params,
    evaluate_model,
    measure_latency,
)
from crossdistill.models import create_model


class PixelOracle(nn.Module):
    """Predicts the class encoded in the first pixel (value = 20 * label), via normalised input."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(255.0 / 20.0))

    def forward(self, x):
        label = torch.round(x[:, 0, 0, 0] * self.scale).long().clamp(0, 9)  # latency feeds random inputs
        return nn.functional.one_hot(label, 10).float()


def _encoded(n=10, channels=1):
    y = np.arange(n) % 10
    x = np.zeros((n, 4, 4, channels), np.uint8)
    x[:, 0, 0, 0] = 20 * y
    return x, y


def test_accuracy_chunked_and_restores_train_mode():
    x, y = _encoded(10)
    model = PixelOracle().train()
    assert accuracy(model, x, y, (0.0,), (1.0,), batch_size=3) == 100.0
    assert model.training
    wrong = y.copy()
    wrong[:4] = (wrong[:4] + 1) % 10
    assert accuracy(model, x, wrong, (0.0,), (1.0,), batch_size=4) == pytest.approx(60.0)


def test_accuracy_checks_inputs():
    x, y = _encoded(4)
    with pytest.raises(CrossDistillError, match="channels"):
        accuracy(PixelOracle(), x, y, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    with pytest.raises(CrossDistillError, match="uint8"):
        accuracy(PixelOracle(), x.astype(np.float32), y, (0.0,), (1.0,))
    with pytest.raises(CrossDistillError, match="label"):
        accuracy(PixelOracle(), x, y[:3], (0.0,), (1.0,))
    # grayscale N x H x W is accepted as one channel
    assert accuracy(PixelOracle(), x[..., 0], y, (0.0,), (1.0,)) == 100.0


def test_flops_of_a_single_conv_match_hand_count():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    # 2 FLOPs per multiply-add: 2 * C_out * C_in * k*k * H_out*W_out
    assert count_flops(conv, (3, 8, 8)) == 2 * 8 * 3 * 9 * 64 == 27_648
    assert count_flops(nn.Linear(20, 7), (20,)) == 2 * 20 * 7


def test_flops_of_fashion_cnn_match_hand_count():
    m = create_model("fashion_cnn")
    hand = 2 * (28 * 28 * 16 * 1 * 9 + 14 * 14 * 32 * 16 * 9 + 7 * 7 * 64 * 32 * 9 + 64 * 3 * 3 * 10)
    assert count_flops(m, (1, 28, 28)) == hand
    slim = create_model("fashion_cnn", channels=[8, 16, 32])
    assert count_flops(slim, (1, 28, 28)) < hand / 3


def test_param_counts():
    lin = nn.Linear(4, 3)
    assert count_params(lin) == 15
    with torch.no_grad():
        lin.weight[0].zero_()
        lin.bias.zero_()
    assert count_nonzero_params(lin) == 8


def test_measure_latency_restores_threads():
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    res = measure_latency(nn.Conv2d(1, 2, 3), (1, 8, 8), batch_size=2, threads=other, warmup=1, repeats=3)
    assert isinstance(res, LatencyResult)
    assert (res.batch_size, res.threads, res.repeats) == (2, other, 3)
    assert res.median_ms > 0 and res.iqr_ms >= 0 and res.device == "cpu"
    assert torch.get_num_threads() == before
    with pytest.raises(CrossDistillError):
        measure_latency(nn.Conv2d(1, 2, 3), (1, 8, 8), batch_size=0)


def test_evaluate_model_with_arrays_and_pairs():
    x, y = _encoded(20)
    data = ImageArrays(x=x, y=y.astype(np.int64), num_classes=10)
    model = PixelOracle()
    res = evaluate_model(model, data, mean=(0.0,), std=(1.0,), input_size=(1, 4, 4),
                         latency_batch_sizes=(1, 4), threads=1)
    assert res["top1"] == 100.0 and res["n_eval"] == 20
    assert res["params"] == 1 and res["nonzero_params"] == 1 and res["flops"] == 0
    assert [r["batch_size"] for r in res["latency"]] == [1, 4]
    assert all(r["threads"] == 1 for r in res["latency"])
    res2 = evaluate_model(model, (x, y), mean=(0.0,), std=(1.0,), input_size=(1, 4, 4), measure_speed=False)
    assert res2["latency"] == [] and res2["top1"] == 100.0
    with pytest.raises(CrossDistillError):
        evaluate_model(model, x, mean=(0.0,), std=(1.0,), input_size=(1, 4, 4))


def test_teacher_and_student_are_each_run_once_over_the_test_set():
    """The report's two top-1s and the agreement come from one pass of each model (they ran the
    test set four times), and equal the figures computed one by one."""
    from crossdistill.evaluation import evaluate_for, evaluate_pair_for
    from crossdistill.evaluation_agreement import agreement, scores
    from crossdistill.models import ModelInfo
    from tests.tiny import TinyNet

    torch.manual_seed(0)
    teacher, student = TinyNet(classes=10).eval(), TinyNet(classes=10).eval()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (37, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 37)
    info = ModelInfo(name="tiny", family="tiny", input_size=(3, 8, 8), num_classes=10,
                     mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), default_mu=0.9)
    seen = {"teacher": [], "student": []}
    for name, m in (("teacher", teacher), ("student", student)):
        m.register_forward_hook(lambda mod, a, o, name=name: seen[name].append(len(a[0])))
    t, s, agree = evaluate_pair_for(teacher, student, ImageArrays(x, y, 10), info, latency=False, batch_size=16)
    # 37 images in batches of 16 (the FLOPs count runs a single example besides)
    assert {k: [b for b in v if b > 1] for k, v in seen.items()} == {"teacher": [16, 16, 5], "student": [16, 16, 5]}
    for model, got in ((teacher, t), (student, s)):
        alone = evaluate_for(model, ImageArrays(x, y, 10), info, latency=False)
        assert got == alone
    xt = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - torch.tensor(info.mean)[:, None, None]) \
        / torch.tensor(info.std)[:, None, None]
    assert s["top1"] == pytest.approx(scores(student, xt, torch.from_numpy(y))["top1"])
    expected = agreement(teacher, student, [xt[:20], xt[20:]])
    assert agree["n_eval"] == 37 and agree["top1_agreement"] == pytest.approx(expected["top1_agreement"])
    assert agree["output_error"] == pytest.approx(expected["output_error"], rel=1e-5)
    assert 0 < agree["output_error"]


def test_the_evaluation_batch_changes_no_prediction():
    """The default evaluation batch went 256 -> 64 for speed (activations that fit the caches):
    the scores must be those of any other batch size."""
    from crossdistill.evaluation import accuracy
    from crossdistill.evaluation_agreement import EVAL_BATCH, compare
    from crossdistill.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    x = np.random.default_rng(0).integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    y = np.arange(300) % 10
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    assert EVAL_BATCH == 64
    assert accuracy(model, x, y, mean, std) == accuracy(model, x, y, mean, std, batch_size=256)
    images = torch.randn(300, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    student = create_model("resnet20").eval()
    runs = [compare(model, student, ((images[i:i + b], torch.as_tensor(y[i:i + b])) for i in range(0, 300, b)))
            for b in (EVAL_BATCH, 256)]
    assert runs[0][:2] == runs[1][:2] and runs[0][2]["top1_agreement"] == runs[1][2]["top1_agreement"]
