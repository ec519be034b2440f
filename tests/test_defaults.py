"""Data-dependent defaults: damping falls as the few-shot set grows; explicit settings win."""
import numpy as np
import pytest
import torch

from crossdistill.config import CompressConfig
from crossdistill.defaults import auto_damping, images_per_class
from crossdistill.pipeline import FewShot, resolved_damping


def fewshot(n: int) -> FewShot:
    return FewShot(images=torch.zeros(n, 3, 32, 32), labels=torch.arange(n) % 10, indices=np.arange(n))


def test_auto_damping_shrinks_like_one_over_k_and_is_capped():
    assert auto_damping(1) == pytest.approx(0.1)
    assert auto_damping(5) == pytest.approx(0.02)
    assert auto_damping(10) < auto_damping(5) < auto_damping(1) < auto_damping(0.5)
    assert auto_damping(0.01) == 1.0
    with pytest.raises(ValueError):
        auto_damping(0)


def test_resolved_damping_uses_images_per_class_of_the_draw():
    cfg = CompressConfig(model="resnet20").validate()
    assert cfg.damping is None
    assert resolved_damping(cfg, fewshot(10)) == pytest.approx(0.1)
    assert resolved_damping(cfg, fewshot(50)) == pytest.approx(0.02)
    assert images_per_class(25, 10) == 2.5  # --n-samples draws need not be whole K
    three_classes = FewShot(images=torch.zeros(6, 3, 32, 32), labels=torch.tensor([0, 0, 1, 1, 2, 2]), indices=np.arange(6))
    assert resolved_damping(cfg, three_classes) == pytest.approx(0.05)


def test_explicit_damping_wins():
    cfg = CompressConfig(model="resnet20", damping=0.0).validate()
    assert resolved_damping(cfg, fewshot(10)) == 0.0
