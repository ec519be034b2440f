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
