"""FinetuneConfig: the one declaration of the fine-tune's settings (ranges, choices, cross-field
rules), and run_settings, which turns it into the settings one run reads."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from crossdistill.errors import CrossDistillError
from crossdistill.finetune import FinetuneConfig, FinetuneSettings, config_of, run_settings, settings_from_config
from crossdistill.params import declared_params

FIELDS = ["epochs", "lr", "bn", "temperature", "kd_weight", "mode", "hint_weight", "hints", "logit_weight",
          "schedule", "mixup", "cutmix", "ema", "views", "batch_size", "optimizer", "augment", "trainable"]

# FinetuneSettings as settings_from_config made it for a default CompressConfig before the
# settings were declared (batch 64 = the capture batch size): results must not move.
OLD_DEFAULTS = dict(epochs=0, lr=1e-4, bn="auto", temperature=4.0, kd_weight=1.0, batch_size=64, optimizer="adam",
                    augment=True, augment_policy="crop-flip", mixup=0.0, cutmix=0.0, schedule="constant",
                    hint_weight=0.0, logit_weight=1.0, hints="layers", trainable="all", ema=0.0, seed=0, device="cpu")


def test_the_declared_settings_are_the_user_settings_with_help():
    params = declared_params(FinetuneConfig)
    assert [p.name for p in params] == FIELDS
    assert all(p.help.strip() for p in params)
    assert (FinetuneConfig.kind, FinetuneConfig.name) == ("fine-tune", "finetune")


def test_defaults_give_the_old_run_settings():
    # Mode kd, the default until hints took over, still gives exactly the settings from before.
    s = run_settings(FinetuneConfig(mode="kd"), seed=0, device="cpu", batch_size=64)
    assert dataclasses.asdict(s) == OLD_DEFAULTS
    assert {k: type(v) for k, v in dataclasses.asdict(s).items()} == {k: type(v) for k, v in OLD_DEFAULTS.items()}
    assert dataclasses.asdict(FinetuneSettings()) == OLD_DEFAULTS


def test_the_default_mode_is_hints_alone():
    s = run_settings(FinetuneConfig(), seed=0, device="cpu", batch_size=64)
    assert dataclasses.asdict(s) == {**OLD_DEFAULTS, "hint_weight": 1.0, "logit_weight": 0.0}
    assert config_of(s).mode == "hints"


@pytest.mark.parametrize("name, bad", [
    ("epochs", -1), ("epochs", 1.5), ("epochs", "many"), ("lr", 0.0), ("lr", float("nan")), ("bn", "eval"),
    ("temperature", 0), ("kd_weight", 1.5), ("kd_weight", -0.1), ("mode", "fitnet"), ("hint_weight", -1.0),
    ("hints", "all"), ("logit_weight", -1.0), ("schedule", "step"), ("mixup", -0.5), ("cutmix", -0.5),
    ("ema", 1.0), ("ema", -0.1), ("views", "randaugment"), ("batch_size", 0), ("optimizer", "lbfgs"),
    ("augment", "maybe"), ("trainable", "some"),
])
def test_a_bad_value_names_the_plugin_and_the_setting(name, bad):
    with pytest.raises(CrossDistillError, match=f"finetune: {name} "):
        FinetuneConfig(**{name: bad})


def test_values_are_converted_to_their_declared_types():
    ft = FinetuneConfig(epochs="3", lr=1, mixup=0, augment="false", batch_size=16.0)
    assert (ft.epochs, ft.lr, ft.mixup, ft.augment, ft.batch_size) == (3, 1.0, 0.0, False, 16)
    assert isinstance(ft.lr, float) and isinstance(ft.mixup, float)


def test_a_loss_is_required():
    with pytest.raises(CrossDistillError, match="no loss"):
        FinetuneConfig(mode="kd", logit_weight=0)  # mode kd: hints are off, so nothing is left
    with pytest.raises(CrossDistillError, match="no loss"):
        FinetuneConfig(hint_weight=0)  # the default mode, hints, defaults the logit loss to 0
    FinetuneConfig(logit_weight=0)
    FinetuneConfig(mode="hints", hint_weight=0, logit_weight=1)  # logits alone: fine
    FinetuneConfig(mode="hints", logit_weight=0)


def test_run_settings_resolve_the_mode_and_the_batch_size():
    s = run_settings(FinetuneConfig(mode="hints", hint_weight=2), seed=3, device="auto", batch_size=32)
    assert (s.hint_weight, s.logit_weight, s.batch_size, s.seed, s.device) == (2.0, 0.0, 32, 3, "auto")
    s = run_settings(FinetuneConfig(mode="kd", hint_weight=2, logit_weight=0.5, batch_size=8, views="affine"),
                     seed=0, device="cpu", batch_size=32)
    assert (s.hint_weight, s.logit_weight, s.batch_size, s.augment_policy) == (0.0, 0.5, 8, "affine")


def test_run_settings_made_directly_are_checked_by_the_same_declaration():
    with pytest.raises(CrossDistillError, match="finetune: optimizer"):
        FinetuneSettings(optimizer="lbfgs").validate()
    with pytest.raises(CrossDistillError, match="finetune: hint_weight"):
        FinetuneSettings(hint_weight=-1.0).validate()
    s = run_settings(FinetuneConfig(mode="hints", hints="blocks", ema=0.9), seed=0, device="cpu", batch_size=8)
    again = config_of(s)
    assert (again.mode, again.hints, again.ema, again.resolved_logit_weight()) == ("hints", "blocks", 0.9, 0.0)


def test_settings_from_a_flat_and_from_a_sectioned_config():
    flat = SimpleNamespace(**{f"finetune_{k}": v for k, v in dataclasses.asdict(FinetuneConfig(epochs=5)).items()},
                           seed=1, device="cpu", batch_size=32,
                           extra={"finetune_optimizer": "sgd", "finetune_augment": False, "finetune_mixup": 0.3})
    s = settings_from_config(flat)
    assert (s.epochs, s.optimizer, s.augment, s.mixup, s.batch_size, s.seed) == (5, "sgd", False, 0.3, 32, 1)
    sectioned = SimpleNamespace(finetune={"epochs": 5, "optimizer": "sgd", "batch_size": 16}, seed=1, device="cpu",
                                batch_size=32, extra={})
    s = settings_from_config(sectioned)
    assert (s.epochs, s.optimizer, s.batch_size) == (5, "sgd", 16)


@pytest.mark.parametrize("setting", [{"kd_weight": 0.5}, {"temperature": 2.0}])
def test_a_logit_loss_setting_is_refused_where_the_logit_loss_is_off(setting):
    # Mode hints (the default) leaves the logit loss off: kd_weight or temperature set beside it
    # would be recorded in the report yet change nothing.
    with pytest.raises(CrossDistillError, match=f"{next(iter(setting))} .*leaves off"):
        FinetuneConfig(**setting)
    FinetuneConfig(mode="kd", **setting)
    FinetuneConfig(logit_weight=0.5, **setting)  # hints plus the logit loss: the setting counts


def test_fine_tune_settings_without_epochs_are_named_and_the_hints_message_reads():
    """finetune_mixup=0.4 with finetune_epochs 0 did nothing without a word; the refusal of a
    logit setting in hints mode read 'fine-tune finetune: temperature 2 act on ...'."""
    import warnings

    from crossdistill.config import CompressConfig
    from crossdistill.errors import CrossDistillError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CompressConfig(model="resnet20", shots=1, finetune_mixup=0.4).validate()
        CompressConfig(model="resnet20", shots=1, finetune_bn="recalibrate").validate()  # acts without epochs
    said = [str(w.message) for w in caught]
    assert said == ["finetune_mixup given but finetune_epochs is 0: no fine-tune runs, so it changes nothing"]
    with pytest.raises(CrossDistillError, match=r"^finetune_temperature 2: it acts on the logit loss"):
        CompressConfig(model="resnet20", shots=1, finetune_epochs=1, finetune_temperature=2.0).validate()
