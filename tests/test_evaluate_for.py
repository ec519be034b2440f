"""evaluate_for: the evaluation fed from a model's info, the same for teacher and student."""
from __future__ import annotations

import numpy as np
import torch

from crossdistill.data import ImageArrays
from crossdistill.evaluation import REPORT_LATENCY_BATCHES, evaluate_for, evaluate_model
from crossdistill.models import create_model, model_info


NAME = "fashion_cnn"  # a registered model small enough for a unit test


def data(n=12):
    rng = np.random.default_rng(0)
    return ImageArrays(x=rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), y=rng.integers(0, 10, n),
                       num_classes=10)


def model():
    torch.manual_seed(0)
    return create_model(NAME)


def test_evaluate_for_is_evaluate_model_with_the_models_info():
    net, test, info = model(), data(), model_info(NAME)
    got = evaluate_for(net, test, info, latency=False)
    want = evaluate_model(net, test, mean=info.mean, std=info.std, input_size=info.input_size, measure_speed=False)
    assert got == want and got["latency"] == []
    assert evaluate_for(net, test, NAME, latency=False) == want  # a registered name is looked up


def test_evaluate_for_times_the_report_batches_only_with_latency():
    res = evaluate_for(model(), data(), NAME, latency=True, threads=1)
    assert [r["batch_size"] for r in res["latency"]] == list(REPORT_LATENCY_BATCHES)
    res = evaluate_for(model(), data(), NAME, latency=True, latency_batch_sizes=(2,), threads=1)
    assert [r["batch_size"] for r in res["latency"]] == [2] and res["latency"][0]["threads"] == 1
