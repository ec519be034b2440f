"""The hint fine-tune (finetune_mode 'hints'): feature hints lowered, masks and teacher untouched,
hint points found and checked, settings validated, reachable from the config and the CLI."""
import argparse
import copy

import pytest
import torch
from torch import nn

from crossdistill.cli.compress_cmd import add_config_options, config_from_args
from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.finetune import FinetuneSettings, finetune, settings_from_config
from crossdistill.hints import PENULTIMATE, capture, hint_loss, hint_points, matching_points
from crossdistill.models.cifar_resnet import resnet20
from test_finetune import images, labels, pruned_student
from tiny import TinyNet, make_tiny


def measured_hint_loss(student, teacher, x, points):
    with torch.no_grad(), capture(student, points) as s, capture(teacher, points) as t:
        student(x)
        teacher(x)
        return float(hint_loss(s, t, points))


def test_hint_finetune_lowers_the_hint_loss_and_keeps_masks_and_teacher():
    teacher, student, masks = pruned_student()
    ref = copy.deepcopy(teacher.state_dict())
    x = images()
    points = hint_points(student, teacher, "blocks+penultimate")
    before = measured_hint_loss(student, teacher, x, points)
    s = FinetuneSettings(epochs=60, lr=3e-3, bn="frozen", hint_weight=1.0, hints="blocks+penultimate", schedule="cosine",
                         mixup=0.4, cutmix=1.0, batch_size=8)
    info = finetune(student, teacher, x, labels(), s)
    after = measured_hint_loss(student, teacher, x, points)
    assert info["hint_points"] == 3
    assert after < 0.7 * before
    assert info["after"]["kd"] < info["before"]["kd"]
    for name, m in masks.items():
        assert torch.all(student.get_submodule(name).weight[~m] == 0), name
    assert all(torch.equal(ref[k], v) for k, v in teacher.state_dict().items())
    # No hook is left behind on either model.
    for model in (teacher, student):
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not student.training


def test_hints_only_leaves_the_logit_loss_out():
    # logit_weight 0: the gradient comes from the hints alone, so a student whose hint points
    # already match the teacher's exactly (a copy) does not move at all.
    teacher = make_tiny()
    student = copy.deepcopy(teacher)
    ref = copy.deepcopy(student.state_dict())
    finetune(student, teacher, images(), labels(),
             FinetuneSettings(epochs=3, lr=1e-2, bn="frozen", hint_weight=1.0, logit_weight=0.0, batch_size=8))
    assert all(torch.equal(ref[k], v) for k, v in student.state_dict().items())
    with pytest.raises(CrossDistillError, match="no loss"):
        FinetuneSettings(epochs=1, hint_weight=0.0, logit_weight=0.0).validate()


def test_hints_are_reproducible():
    runs = []
    for _ in range(2):
        teacher, student, _ = pruned_student()
        finetune(student, teacher, images(), labels(),
                 FinetuneSettings(epochs=4, lr=1e-2, hint_weight=2.0, cutmix=1.0, batch_size=8))
        runs.append(student.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_hint_points_of_a_resnet_are_its_block_outputs():
    student = resnet20(mid_channels=[8] * 9).eval()
    teacher = resnet20().eval()
    points = hint_points(student, teacher, "blocks+penultimate")
    assert points[:3] == ["layer1.0", "layer1.1", "layer1.2"] and len(points) == 10
    assert points[-1] == PENULTIMATE
    # Slimmed block internals: the block outputs still match the teacher's shapes.
    assert matching_points(student, teacher, points, torch.randn(2, 3, 32, 32)) == points
    assert hint_points(student, teacher, "penultimate") == [PENULTIMATE]
    assert hint_points(student, teacher, "layers") == [f"layer{s}.{i}.conv2" for s in (1, 2, 3) for i in range(3)]


def test_hint_points_with_slimmed_outputs_are_skipped():
    teacher = make_tiny()
    student = TinyNet(widths=(6, 3, 5)).eval()  # conv2's own outputs slimmed: not comparable
    points = hint_points(student, teacher, "blocks+penultimate")
    assert points == ["conv2", "conv3", PENULTIMATE]
    assert matching_points(student, teacher, points, images(2)) == ["conv3", PENULTIMATE]
    # None comparable: the error says where else to match, hints being the default mode.
    with pytest.raises(CrossDistillError, match="no hint point.*--finetune-hints penultimate.*--finetune-mode kd"):
        matching_points(student, teacher, ["conv2"], images(2))


def test_bad_hint_settings_raise():
    for kw, match in [({"finetune_mode": "fitnet"}, "finetune: mode"),
                      ({"finetune_hint_weight": -1.0}, "finetune: hint_weight"),
                      ({"finetune_schedule": "step"}, "finetune: schedule"),
                      ({"finetune_cutmix": -0.5}, "finetune: cutmix"),
                      ({"finetune_mixup": -0.5}, "finetune: mixup"),
                      ({"finetune_logit_weight": -1.0}, "finetune: logit_weight"),
                      ({"finetune_hints": "all"}, "finetune: hints"),
                      ({"finetune_views": "randaugment"}, "finetune: views"),
                      ({"finetune_ema": 1.0}, "finetune: ema"),
                      ({"finetune_ema": float("nan")}, "finetune: ema"),
                      ({"finetune_mode": "kd", "finetune_logit_weight": 0.0}, "no loss"),
                      ({"finetune_hint_weight": 0.0}, "no loss")]:
        with pytest.raises(CrossDistillError, match=match):
            CompressConfig(**kw).validate()
    with pytest.raises(CrossDistillError, match="finetune: hints"):
        FinetuneSettings(epochs=1, hint_weight=1.0, hints="all").validate()
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    with pytest.raises(CrossDistillError, match="differs from its teacher"):
        hint_points(plain, copy.deepcopy(plain), "blocks")
    with pytest.raises(CrossDistillError, match="linear"):
        with capture(nn.Sequential(nn.Conv2d(3, 4, 3)), [PENULTIMATE]):
            pass


def test_mode_reaches_the_settings_from_config_and_cli():
    cfg = CompressConfig(finetune_epochs=5, finetune_mode="kd").validate()
    s = settings_from_config(cfg)
    assert (s.hint_weight, s.logit_weight) == (0.0, 1.0)  # mode 'kd': the hint weight does not count
    s = settings_from_config(CompressConfig(finetune_epochs=5).validate())
    assert (s.hint_weight, s.logit_weight, s.hints) == (1.0, 0.0, "layers")  # the default, hints: hints only
    p = argparse.ArgumentParser()
    add_config_options(p)
    args = p.parse_args(["--finetune-epochs", "300", "--finetune-mode", "hints", "--finetune-hint-weight", "2",
                         "--finetune-schedule", "cosine", "--finetune-mixup", "0.4", "--finetune-cutmix", "1",
                         "--finetune-logit-weight", "0", "--finetune-hints", "blocks",
                         "--finetune-views", "affine", "--finetune-ema", "0.998"])
    s = settings_from_config(config_from_args(args))
    assert (s.epochs, s.hint_weight, s.logit_weight, s.schedule, s.mixup, s.cutmix) == (300, 2.0, 0.0, "cosine", 0.4, 1.0)
    assert (s.hints, s.augment_policy, s.ema) == ("blocks", "affine", 0.998)
    assert settings_from_config(CompressConfig(finetune_epochs=5).validate()).augment_policy == "crop-flip"


def test_compress_runs_the_hint_finetune_on_the_slimmed_student():
    import numpy as np

    from crossdistill.pipeline import FewShot, compress

    teacher = make_tiny()
    ref = copy.deepcopy(teacher.state_dict())
    shot = FewShot(images=images(16), labels=labels(16), indices=np.arange(16))
    cfg = CompressConfig(model="tiny", keep=0.5, damping=1e-3, finetune_epochs=40, finetune_lr=3e-3,
                         finetune_bn="frozen", finetune_mode="hints", extra={"finetune_augment": False}).validate()
    result = compress(teacher, shot, cfg, show_progress=False)
    plain = compress(teacher, shot, cfg.updated(finetune_epochs=0), show_progress=False)
    # conv2's own outputs were slimmed (it also produces conv3's input): only conv3 is comparable.
    assert result.finetune["hint_points"] == 1
    before = measured_hint_loss(plain.student, teacher, shot.images, ["conv3"])
    after = measured_hint_loss(result.student, teacher, shot.images, ["conv3"])
    assert after < 0.7 * before
    assert all(torch.equal(ref[k], v) for k, v in teacher.state_dict().items())


def test_trainable_pruned_moves_only_the_pruned_layers():
    teacher, student, _ = pruned_student()
    ref = copy.deepcopy(student.state_dict())
    finetune(student, teacher, images(), labels(),
             FinetuneSettings(epochs=5, lr=1e-2, bn="frozen", hint_weight=1.0, trainable="pruned", batch_size=8))
    moved = {k for k, v in student.state_dict().items() if not torch.equal(ref[k], v)}
    assert moved == {"conv2.weight", "conv3.weight"}
    with pytest.raises(CrossDistillError, match="trainable"):
        FinetuneSettings(epochs=1, trainable="some").validate()
