"""Random views of the few-shot images added to the layer-wise solve (run setting `views`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from crossdistill.calibration import calibration_images
from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.pipeline import FewShot, compress
from crossdistill.sweep import config_hash
from test_graph_channels import build
from test_graph_pruning import fewshot_for


def test_views_follow_the_images_and_repeat_with_the_seed():
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert calibration_images(x, 0) is x
    out = calibration_images(x, 3, "affine", seed=4)
    assert out.shape == (24, 3, 16, 16)
    assert torch.equal(out[:6], x)  # the few-shot images themselves come first, unchanged
    assert torch.equal(out, calibration_images(x, 3, "affine", seed=4))
    assert not torch.allclose(out, calibration_images(x, 3, "affine", seed=5))
    for k in range(1, 4):  # every view is a new image, not a copy of its source
        assert (out[6 * k: 6 * (k + 1)] - x).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    blended = calibration_images(x, 3, "affine", mixup=0.4, seed=4)
    assert torch.equal(blended[:6], x) and not torch.allclose(blended[6:], out[6:])


def test_views_refuse_bad_input():
    with pytest.raises(CrossDistillError, match="policy"):
        calibration_images(torch.zeros(2, 3, 8, 8), 1, "rotate90")
    with pytest.raises(CrossDistillError, match="N, C, H, W"):
        calibration_images(torch.zeros(2, 8), 1)
    with pytest.raises(CrossDistillError):
        CompressConfig(model="resnet20", views=-1)


@pytest.mark.parametrize("settings", [{"keep": 0.5, "budget": "global"}, {"method": "sparsity", "sparsity": 0.5}])
def test_the_solve_fits_on_the_images_and_their_views(settings):
    # The student of `views` V equals the student solved on the expanded image set directly: the
    # views reach the budget's costs and every layer's statistics, nothing else changes.
    teacher, example = build("resnet")
    few = fewshot_for(example, n=6)
    cfg = CompressConfig(model="user-resnet", n_samples=6, damping=0.01, views=2, seed=3, **settings)
    with_views = compress(teacher, few, cfg, show_progress=False).student.state_dict()
    images = calibration_images(few.images, 2, "crop-flip", seed=3)  # the default policy
    expanded = FewShot(images=images, labels=few.labels.repeat(3), indices=np.arange(18))
    plain = CompressConfig(model="user-resnet", n_samples=18, damping=0.01, seed=3, **settings)
    direct = compress(teacher, expanded, plain, show_progress=False).student.state_dict()
    without = compress(teacher, few, CompressConfig(model="user-resnet", n_samples=6, damping=0.01, seed=3,
                                                    **settings), show_progress=False).student.state_dict()
    assert with_views.keys() == direct.keys()
    for k in with_views:
        assert torch.equal(with_views[k], direct[k]), k
    assert any(with_views[k].shape != without[k].shape or not torch.equal(with_views[k], without[k])
               for k in with_views)


def test_runs_without_views_keep_their_stored_identity():
    base = config_hash(CompressConfig(model="resnet20"))
    assert config_hash(CompressConfig(model="resnet20", views=0, views_policy="affine", views_mixup=0.5)) == base
    assert config_hash(CompressConfig(model="resnet20", views=4)) != base
    assert config_hash(CompressConfig(model="resnet20", views=4, views_policy="affine")) != \
        config_hash(CompressConfig(model="resnet20", views=4))


def test_a_run_with_views_says_so_in_its_label():
    from crossdistill.sweep.describe import short_description

    assert "views=3(crop-flip,mixup=0.4)" in short_description(
        CompressConfig(model="resnet20", views=3, views_policy="crop-flip", views_mixup=0.4))
    assert "views" not in short_description(CompressConfig(model="resnet20"))

