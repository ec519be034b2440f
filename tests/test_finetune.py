"""The optional few-shot fine-tune: masks kept, BatchNorm handled as asked, KD loss lowered."""
import copy

import pytest
import torch

from crossdistill.compression.weight_sparsity import get_masks
from crossdistill.config import CompressConfig
from crossdistill.errors import CrossDistillError
from crossdistill.finetune import FinetuneSettings, finetune, kd_loss, recalibrate_bn, settings_from_config, WeightAverage
from tiny import make_tiny


def images(n=16, seed=0):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def labels(n=16):
    return torch.arange(n) % 4


def pruned_student(seed=1, sparsity=0.6):
    """A student that differs from the teacher, with conv2 and conv3 magnitude-pruned."""
    teacher = make_tiny()
    student = make_tiny(seed)
    masks = {}
    for name in ("conv2", "conv3"):
        w = student.get_submodule(name).weight
        k = int(sparsity * w.numel())
        thresh = w.abs().flatten().kthvalue(k).values
        masks[name] = w.abs() > thresh
        with torch.no_grad():
            w.mul_(masks[name])
    student.crossdistill_masks = masks
    return teacher, student, masks


def bn_stats(model):
    return {n: (b.running_mean.clone(), b.running_var.clone(), b.num_batches_tracked.clone())
            for n, b in model.named_modules() if isinstance(b, torch.nn.BatchNorm2d) and b.running_mean is not None}


@pytest.mark.parametrize("bn", ["frozen", "recalibrate", "train"])
def test_masks_stay_fixed(bn):
    teacher, student, masks = pruned_student()
    s = FinetuneSettings(epochs=30, lr=1e-2, bn=bn, kd_weight=0.5, batch_size=8)
    finetune(student, teacher, images(), labels(), s)
    for name, m in masks.items():
        w = student.get_submodule(name).weight
        assert torch.all(w[~m] == 0), name
        assert not torch.all(w[m] == 0)
    assert not student.training


def test_masks_found_on_the_student_by_default():
    teacher, student, masks = pruned_student()
    assert set(get_masks(student)) == set(masks)
    finetune(student, teacher, images(), None, FinetuneSettings(epochs=10, lr=1e-2))
    assert all(torch.all(student.get_submodule(n).weight[~m] == 0) for n, m in masks.items())


def test_frozen_bn_keeps_running_stats():
    teacher, student, _ = pruned_student()
    before = bn_stats(student)
    finetune(student, teacher, images(), labels(), FinetuneSettings(epochs=20, lr=1e-2, bn="frozen"))
    after = bn_stats(student)
    for name in before:
        for a, b in zip(before[name], after[name]):
            assert torch.equal(a, b), name


def test_train_bn_updates_running_stats_and_recalibrate_matches_the_data():
    teacher, student, _ = pruned_student()
    before = bn_stats(student)
    finetune(student, teacher, images(), labels(), FinetuneSettings(epochs=3, lr=1e-3, bn="train"))
    assert not torch.equal(before["bn1"][0], student.bn1.running_mean)

    _, student, _ = pruned_student()
    x = images()
    recalibrate_bn(student, x, batch_size=5)  # batches of unequal size: still the exact statistics
    with torch.no_grad():
        h = student.conv1(x)
    assert torch.allclose(student.bn1.running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(student.bn1.running_var, h.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert not student.training and student.bn1.momentum == 0.1


@pytest.mark.parametrize("augment", [False, True])
def test_finetune_lowers_kd_loss_on_training_samples(augment):
    teacher, student, _ = pruned_student()
    x = images()
    info = finetune(student, teacher, x, labels(), FinetuneSettings(epochs=60, lr=3e-3, augment=augment))
    with torch.no_grad():
        after = float(kd_loss(student(x), teacher(x), 4.0))
    assert info["steps"] == 60
    assert 0 < info["cpu_seconds"] and 0 < info["seconds"]  # the work and the wall time, both reported
    assert after == pytest.approx(info["after"]["kd"], rel=1e-4)
    assert after < 0.7 * info["before"]["kd"]


def test_zero_epochs_changes_nothing():
    teacher, student, _ = pruned_student()
    ref = copy.deepcopy(student.state_dict())
    info = finetune(student, teacher, images(), labels(), FinetuneSettings(epochs=0))
    assert info["steps"] == 0
    assert all(torch.equal(ref[k], v) for k, v in student.state_dict().items())


def test_settings_validated():
    # The message names the plug-in and the setting as FinetuneConfig declares it.
    for kw, match in [({"finetune_bn": "eval"}, "finetune: bn"), ({"finetune_epochs": -1}, "finetune: epochs"),
                      ({"finetune_lr": 0.0}, "finetune: lr"), ({"finetune_kd_weight": 1.5}, "finetune: kd_weight"),
                      ({"finetune_temperature": 0}, "finetune: temperature")]:
        with pytest.raises(CrossDistillError, match=match):
            CompressConfig(**kw).validate()
    cfg = CompressConfig(finetune_epochs=5, finetune_bn="train", extra={"finetune_optimizer": "sgd"}).validate()
    s = settings_from_config(cfg)
    assert (s.epochs, s.bn, s.optimizer) == (5, "train", "sgd")
    teacher, student, _ = pruned_student()
    with pytest.raises(CrossDistillError, match="labels"):
        finetune(student, teacher, images(), None, FinetuneSettings(epochs=1, kd_weight=0.5))


def test_mixup_runs_reproducibly_and_keeps_masks():
    runs = []
    for _ in range(2):
        teacher, student, masks = pruned_student()
        s = FinetuneSettings(epochs=5, lr=1e-2, mixup=0.4, kd_weight=0.5, batch_size=8)
        finetune(student, teacher, images(), labels(), s)
        assert all(torch.all(student.get_submodule(n).weight[~m] == 0) for n, m in masks.items())
        runs.append(student.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_auto_bn_recalibrates_only_when_the_statistics_are_off():
    # A teacher whose statistics are those of the data, and a student equal to it: its
    # statistics are right, so auto keeps them.
    teacher = make_tiny()
    recalibrate_bn(teacher, images())
    student = copy.deepcopy(teacher)
    before = bn_stats(student)
    info = finetune(student, teacher, images(), labels(), FinetuneSettings(epochs=2, lr=1e-4, bn="auto"))
    assert info["bn"] == "frozen"
    assert all(torch.equal(a, b) for n in before for a, b in zip(before[n], bn_stats(student)[n]))
    # Statistics far from the data's: auto re-estimates them.
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for bn in (student.bn1, student.bn2):
            bn.running_mean.add_(3.0)
            bn.running_var.mul_(20.0)
    info = finetune(student, teacher, images(), labels(), FinetuneSettings(epochs=2, lr=1e-4, bn="auto"))
    assert info["bn"] == "recalibrate"
    assert info["auto_bn"]["kd_recalibrated"] < 0.75 * info["auto_bn"]["kd_frozen"]


def test_zero_epochs_with_recalibrate_only_recalibrates():
    teacher, student, _ = pruned_student()
    x = images()
    weights = {k: v.clone() for k, v in student.state_dict().items() if k.endswith("weight")}
    info = finetune(student, teacher, x, labels(), FinetuneSettings(epochs=0, bn="recalibrate"))
    assert info["steps"] == 0 and info["bn"] == "recalibrate"
    assert all(torch.equal(weights[k], student.state_dict()[k]) for k in weights)
    with torch.no_grad():
        assert torch.allclose(student.bn1.running_mean, student.conv1(x).mean((0, 2, 3)), atol=1e-5)


def test_affine_views_without_range_are_the_image_or_its_mirror():
    from crossdistill.finetune import affine_views

    x = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    out = affine_views(x, torch.Generator().manual_seed(0), zoom=0.0, degrees=0.0, shift=0.0, jitter=0.0)
    for a, b in zip(out, x):
        assert torch.allclose(a, b, atol=1e-5) or torch.allclose(a, b.flip(2), atol=1e-5)
    # Both occur, so the flip is random per image and its sign convention is the mirror, not a shift.
    assert any(torch.allclose(a, b, atol=1e-5) for a, b in zip(out, x))
    assert any(torch.allclose(a, b.flip(2), atol=1e-5) for a, b in zip(out, x))


def test_affine_views_vary_keep_shape_and_are_reproducible():
    from crossdistill.finetune import affine_views

    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    a = affine_views(x, torch.Generator().manual_seed(1))
    b = affine_views(x, torch.Generator().manual_seed(1))
    c = affine_views(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert not any(torch.allclose(v, w, atol=1e-3) or torch.allclose(v, w.flip(2), atol=1e-3) for v, w in zip(a, x))


def test_affine_policy_trains_and_bad_policy_raises():
    teacher, student, masks = pruned_student()
    x = images()
    info = finetune(student, teacher, x, labels(), FinetuneSettings(epochs=40, lr=3e-3, augment_policy="affine"))
    assert info["after"]["kd"] < 0.8 * info["before"]["kd"]
    assert all(torch.all(student.get_submodule(n).weight[~m] == 0) for n, m in masks.items())
    with pytest.raises(CrossDistillError, match="finetune: views"):
        FinetuneSettings(epochs=1, augment_policy="randaugment").validate()


def test_ema_returns_the_running_average_of_the_trajectory_and_keeps_masks():
    # The average is taken over the very trajectory the plain run follows (the average draws no
    # randomness), so replaying the plain run's states through the same recursion must give it.
    states = []
    teacher, plain, _ = pruned_student()
    finetune(plain, teacher, images(), labels(), FinetuneSettings(epochs=6, lr=1e-2, batch_size=8),
             on_step=lambda step, m: states.append(copy.deepcopy(m.state_dict())))
    teacher, student, masks = pruned_student()
    start = copy.deepcopy(student.state_dict())
    finetune(student, teacher, images(), labels(), FinetuneSettings(epochs=6, lr=1e-2, batch_size=8, ema=0.9))
    expect = {k: v.clone() for k, v in start.items()}
    for t, state in enumerate(states, 1):
        d = min(0.9, (1 + t) / (10 + t))
        for k, v in state.items():
            expect[k] = d * expect[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    got = student.state_dict()
    assert all(torch.allclose(got[k].float(), expect[k].float(), atol=1e-6) for k in got)
    assert not torch.allclose(got["conv2.weight"], states[-1]["conv2.weight"])
    assert all(torch.all(student.get_submodule(n).weight[~m] == 0) for n, m in masks.items())
    with pytest.raises(CrossDistillError, match="ema"):
        FinetuneSettings(epochs=1, ema=1.0).validate()
    for bad in (0.0, 1.0, float("nan")):  # the public class checks its own decay (benchmarks build it directly)
        with pytest.raises(CrossDistillError, match="decay"):
            WeightAverage(student, bad)


def test_a_fine_tune_of_a_few_steps_is_named_in_a_warning():
    # An epoch is one pass over the few images: with 16 images in batches of 64, 3 epochs are
    # 3 steps, which barely move the weights; a user reading "epochs" expects more.
    import warnings

    teacher, student, _ = pruned_student()
    with pytest.warns(UserWarning, match=r"the fine-tune takes 3 steps \(16 images, batch 64, 3 epochs\)"):
        finetune(student, teacher, images(), None, FinetuneSettings(epochs=3, bn="frozen"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        finetune(student, teacher, images(), None, FinetuneSettings(epochs=25, batch_size=8, bn="frozen"))  # 50 steps


def test_recalibrating_bn_never_feeds_a_batch_of_one():
    """65 images in batches of 64 left one image alone, which BatchNorm1d refuses in training mode
    ("Expected more than 1 value per channel"); it joins the batch before it, and the pooled
    statistics are those of all 65."""
    from torch import nn

    from crossdistill.finetune.batchnorm import recalibrate_bn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(65, 5)
    recalibrate_bn(model, x, batch_size=64)
    h = model[0](x)
    torch.testing.assert_close(model[1].running_mean, h.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var, h.var(0), rtol=1e-5, atol=1e-6)


def test_a_fine_tune_that_makes_the_student_follow_its_teacher_less_is_named():
    """A harmful fine-tune (finetune_bn 'train' on a few images took a student's few-shot KD loss
    40x up) passed without a word."""
    import warnings

    import crossdistill
    from torch import nn

    from crossdistill.finetune.loop import FinetuneWarning

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    x, y = torch.randn(60, 3, 8, 8), torch.arange(60) % 10
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, report = crossdistill.compress(model, x, labels=y, shots=3, keep=0.5, finetune_epochs=60,
                                          finetune_lr=0.5, show_progress=False)
    ft = report["finetune"]
    assert ft["after"]["kd"] > 1.25 * ft["before"]["kd"]
    said = [str(w.message) for w in caught if issubclass(w.category, FinetuneWarning)
            and "raised the few-shot KD loss" in str(w.message)]
    assert said
    # The way out it names is not the setting the run already had (it said "or finetune_bn 'frozen'"
    # to a run with BatchNorm frozen).
    assert f"finetune_bn '{ft['bn']}'" not in said[0], (ft["bn"], said[0])


@pytest.mark.parametrize("bn", ["auto", "recalibrate"])
def test_a_batchnorm_without_running_statistics_is_fine_tuned_as_it_is(bn):
    """BatchNorm2d(track_running_stats=False) has no statistics to freeze or re-estimate (its
    running_mean is None): 'auto' and 'recalibrate' failed on it with an AttributeError."""
    teacher, student, _ = pruned_student()
    for model in (teacher, student):
        model.bn1 = torch.nn.BatchNorm2d(model.bn1.num_features, track_running_stats=False)
    finetune(student, teacher, images(), labels(), FinetuneSettings(epochs=3, lr=1e-2, bn=bn))
    assert student.bn1.running_mean is None and not student.training


def test_features_are_not_cut_and_get_no_views_and_the_refusal_comes_before_the_solves(monkeypatch):
    """CutMix on (N, F) rows took the batch axis for an image's height (half the samples swapped,
    every one given the same λ); the views return features as they are, so none are recorded."""
    import crossdistill
    import crossdistill.pipeline as pipeline
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x, y = torch.randn(60, 6), torch.arange(60) % 3
    _, report = crossdistill.compress(model, x, labels=y, shots=4, method="quant", bits=8, finetune_epochs=1, finetune_mixup=0.2,
                                      show_progress=False)
    assert report["finetune"]["augment"].startswith("off: inputs of shape (6,) have no random views")
    assert report["finetune"]["settings"]["augment"] is False

    def no_solves(*args, **kwargs):
        raise AssertionError("the layers were solved before the refusal")

    monkeypatch.setattr(pipeline, "distill_layers", no_solves)
    with pytest.raises(CrossDistillError, match=r"inputs of shape \(6,\) \(features\) have neither: set finetune_cutmix"):
        crossdistill.compress(model, x, labels=y, shots=4, method="quant", bits=8, finetune_epochs=1, finetune_cutmix=1.0,
                              show_progress=False)
