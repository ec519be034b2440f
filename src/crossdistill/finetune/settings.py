"""The fine-tune's settings, declared once.

`FinetuneConfig` is what a user sets (YAML `finetune:` section, `--finetune-*` flags, report
labels are all derived from its `param(...)` fields); constructing one is the only validation of
these settings. `FinetuneSettings` is what one run of the loop reads: the same settings with the
mode resolved into weights, plus the run's seed, device and batch size. `run_settings` turns the
first into the second.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from crossdistill.errors import CrossDistillError
from crossdistill.finetune.views.augment import AUGMENT_POLICIES
from crossdistill.hints import HINT_POINTS
from crossdistill.params import Plugin, param

BN_MODES = ("auto", "frozen", "recalibrate", "train")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")
TRAINABLE = ("all", "pruned")
MODES = ("kd", "hints")  # 'hints': the logit loss plus hint_weight · feature hints


@dataclass
class FinetuneConfig(Plugin):
    """The user-facing fine-tune settings (help texts are those of the `--finetune-*` flags)."""

    kind: ClassVar[str] = "fine-tune"
    name: ClassVar[str] = "finetune"

    def owner(self) -> str:
        return "finetune"

    epochs: int = param(0, "passes over the few-shot images (0 = off)", low=0)
    lr: float = param(1e-4, "Adam learning rate", low=0, low_open=True)
    bn: str = param(
        "auto",
        "BatchNorm: keep the running stats (frozen), re-estimate them on the few images (recalibrate; "
        "with --finetune-epochs 0 only this is done), train with batch stats, or auto (default): "
        "recalibrate only if that cuts the distillation loss on the few images by a quarter",
        choices=BN_MODES)
    temperature: float = param(4.0, "temperature of the logit distillation (in the logit loss, as kd_weight)",
                               low=0, low_open=True)
    kd_weight: float = param(
        1.0, "share of the distillation loss in the logit loss, the rest being cross-entropy on the few "
        "labels (the logit loss runs in --finetune-mode kd, or with --finetune-logit-weight > 0)",
        low=0, high=1)
    mode: str = param(
        "hints",
        "hints (default): match the teacher's outputs at every pruned layer, end to end (FitNet-style, "
        "from the cross-distilled student; about +6 points at K=1 with --finetune-epochs 300 "
        "--finetune-lr 1e-3, docs/results/accuracy_push.md); kd: distil the teacher's logits only. With "
        "10-100 images kd lost points on ResNet-56 and ShuffleNetV2 where hints gained 3-17 "
        "(docs/results/any_model.md). The bp and l1-finetune baselines always use kd",
        choices=MODES)
    hint_weight: float = param(
        1.0,
        "--finetune-mode hints: weight of the feature-hint loss (default 1; matters only next to a "
        "--finetune-logit-weight > 0)",
        low=0)
    hints: str = param(
        "layers",
        "--finetune-mode hints: where to match the teacher: the pruned layers' outputs (layers, default), "
        "the outputs of the blocks holding them, and/or the features before the classifier (penultimate)",
        choices=HINT_POINTS)
    # None, not a number, so that switching the mode switches the default with it.
    logit_weight: float | None = param(
        None,
        "weight of the logit loss (distillation + cross-entropy); default 1 with --finetune-mode kd, "
        "0 (feature hints only) with --finetune-mode hints",
        low=0)
    schedule: str = param("constant", "learning rate over the fine-tune: constant (default) or cosine decay to 0",
                          choices=SCHEDULES)
    mixup: float = param(
        0.0, "> 0: train also on mixup blends of the few images, λ ~ Beta(a, a), labelled by the teacher",
        low=0)
    cutmix: float = param(
        0.0,
        "> 0: train also on CutMix pastes of the few images, labelled by the teacher (default 0; "
        "with --finetune-mixup, one of the two per batch)",
        low=0)
    ema: float = param(
        0.0,
        "> 0: return the exponential moving average of the weights instead of the last "
        "step's; the decay at step t is min(this, (1+t)/(10+t)), so runs shorter than "
        "(10*this-1)/(1-this) steps (4490 for 0.998) average about their last t/9 steps "
        "whatever the value (0 = off)",
        low=0, high=1, high_open=True)
    views: str = param(
        "crop-flip",
        "random views of the few images, the teacher labelling the same view: crop-flip (default; "
        "pad-4 crop and flip) or affine (zoom up to 1.35x, rotation within 15 degrees, shift, flip, "
        "light contrast/brightness jitter); signals (N, C, L) are shifted, within 1/8 (crop-flip) "
        "or 0.15 (affine) of their length",
        choices=AUGMENT_POLICIES)
    # The four below were read from `extra:` before they were declared; their defaults are the
    # values that applied then.
    batch_size: int | None = param(None, "images per fine-tune step (default: the capture batch size)", low=1)
    optimizer: str = param("adam", "adam (default) or sgd (Nesterov momentum 0.9), at --finetune-lr",
                           choices=OPTIMIZERS)
    augment: bool = param(True, "train on random views (--finetune-views) of the few images, the teacher "
                          "labelling the same view; false: on the images as they are")
    trainable: str = param("all", "which parameters train: all (default), or only those of the pruned layers "
                           "(the rest keeps the teacher's)", choices=TRAINABLE)

    def check(self) -> None:
        if self.resolved_logit_weight() == 0 and (self.mode != "hints" or self.hint_weight == 0):
            # Name what the user set: in mode 'hints' the logit weight is 0 by default, so a hint
            # weight of 0 is the setting that leaves nothing to train on.
            if self.mode == "hints":
                raise CrossDistillError("the fine-tune: hint_weight 0 in mode 'hints' (whose logit_weight is "
                                        f"{'0 by default' if self.logit_weight is None else '0'}) leaves no loss: "
                                        "give hint_weight > 0, logit_weight > 0, or mode 'kd'")
            raise CrossDistillError(f"the fine-tune: logit_weight 0 in mode '{self.mode}' leaves no loss: give "
                                    "logit_weight > 0, or mode 'hints' with hint_weight > 0")
        if self.resolved_logit_weight() == 0:
            # These two shape only the logit loss: set beside the hints-only default they would
            # change nothing, and a run that ignores a setting misreports itself.
            idle = [f"finetune_{p.name} {getattr(self, p.name):g}" for p in self.params()
                    if p.name in ("kd_weight", "temperature") and getattr(self, p.name) != p.default]
            if idle:
                raise CrossDistillError(f"{' and '.join(idle)}: {'they act' if len(idle) > 1 else 'it acts'} on the "
                                        "logit loss, which mode 'hints' leaves off (logit_weight 0): set "
                                        "finetune_logit_weight > 0 to add it to the hints, or finetune_mode 'kd'")

    def unused_without_epochs(self) -> list[str]:
        """The settings given (not at their defaults) that do nothing because epochs is 0 (bn
        'recalibrate' acts without epochs: the statistics are re-estimated all the same)."""
        if self.epochs != 0:
            return []
        return [f"finetune_{p.name}" for p in self.params()
                if p.name not in ("epochs", "bn") and getattr(self, p.name) != p.default]

    def resolved_logit_weight(self) -> float:
        return default_logit_weight(self.mode) if self.logit_weight is None else float(self.logit_weight)

    def resolved_hint_weight(self) -> float:
        """The hint weight counts only in mode 'hints' (its default 1 must not switch hints on in 'kd')."""
        return float(self.hint_weight) if self.mode == "hints" else 0.0


def default_logit_weight(mode: str) -> float:
    """Hints only in mode 'hints': adding the logit loss cost 2 points on validation (accuracy_push.md)."""
    return 0.0 if mode == "hints" else 1.0


@dataclass
class FinetuneSettings:
    """One run's settings as the loop reads them: FinetuneConfig's with the mode resolved into
    hint_weight/logit_weight and batch_size filled in, plus seed and device. Built by
    `run_settings`; benchmarks and baselines may build one directly (`validate()` then checks it
    against FinetuneConfig's declarations, the only rules there are)."""

    epochs: int = 0  # passes over the few-shot set; 0 = no training (bn='recalibrate' still recalibrates)
    lr: float = 1e-4
    bn: str = "auto"
    temperature: float = 4.0
    kd_weight: float = 1.0
    batch_size: int = 64
    optimizer: str = "adam"
    augment: bool = True  # random views of the few images, teacher on the same view (policy below)
    augment_policy: str = "crop-flip"  # 'crop-flip': pad-4 crop + flip; 'affine': zoom/rotate/shift/flip + light jitter
    mixup: float = 0.0  # > 0: also mix pairs of images, λ ~ Beta(mixup, mixup); the teacher labels the mixes
    cutmix: float = 0.0  # > 0: paste a box of a partner image, area share ~ Beta(cutmix, cutmix) (with mixup: either, 50/50 per batch)
    schedule: str = "constant"  # learning rate: 'constant' or 'cosine' (to 0 over all steps)
    hint_weight: float = 0.0  # > 0: add hint_weight · feature hints (crossdistill.hints) to the logit loss
    logit_weight: float = 1.0  # weight of the logit loss (KD + CE); 0 with hints = hints only (FitNet-like)
    hints: str = "layers"  # hint points (crossdistill.hints.HINT_POINTS): 'layers' = the pruned layers' outputs
    trainable: str = "all"  # 'all' parameters, or only the 'pruned' layers' (the rest keeps the teacher's)
    ema: float = 0.0  # > 0: the result is the exponential moving average of the weights, this decay per step
    seed: int = 0
    device: str = "cpu"  # where the steps run: cpu | cuda | cuda:N | auto (crossdistill.device)

    def validate(self) -> "FinetuneSettings":
        """Checked by FinetuneConfig's declarations (no rules of its own); the device name is
        checked where it is resolved, at the start of `finetune`."""
        config_of(self)
        return self


def run_settings(ft: FinetuneConfig, *, seed: int, device: str, batch_size: int) -> FinetuneSettings:
    """The settings one fine-tune run reads. `batch_size` (the capture batch size) applies when
    `ft.batch_size` is None. No checks here: `ft` was validated when it was made."""
    return FinetuneSettings(
        epochs=ft.epochs,
        lr=ft.lr,
        bn=ft.bn,
        temperature=ft.temperature,
        kd_weight=ft.kd_weight,
        batch_size=int(ft.batch_size if ft.batch_size is not None else batch_size),
        optimizer=ft.optimizer,
        augment=ft.augment,
        augment_policy=ft.views,
        mixup=ft.mixup,
        cutmix=ft.cutmix,
        schedule=ft.schedule,
        hint_weight=ft.resolved_hint_weight(),
        logit_weight=ft.resolved_logit_weight(),
        hints=ft.hints,
        trainable=ft.trainable,
        ema=ft.ema,
        seed=int(seed),
        device=str(device),
    )


def config_of(settings: FinetuneSettings) -> FinetuneConfig:
    """The FinetuneConfig a run's settings correspond to (hints count when their weight is not 0);
    building it validates them."""
    hints_on = settings.hint_weight != 0  # a negative weight must reach the range check, not vanish
    return FinetuneConfig(
        epochs=settings.epochs, lr=settings.lr, bn=settings.bn, temperature=settings.temperature,
        kd_weight=settings.kd_weight, mode="hints" if hints_on else "kd", hint_weight=settings.hint_weight,
        hints=settings.hints, logit_weight=settings.logit_weight, schedule=settings.schedule,
        mixup=settings.mixup, cutmix=settings.cutmix, ema=settings.ema, views=settings.augment_policy,
        batch_size=settings.batch_size, optimizer=settings.optimizer, augment=settings.augment,
        trainable=settings.trainable)


# Keys of the flat CompressConfig's `extra:` that older configs used for the settings that were
# not CompressConfig fields (finetune_mixup became one later; an `extra` value still wins).
_EXTRA_KEYS = ("batch_size", "optimizer", "augment", "trainable", "mixup")


def settings_from_config(cfg: Any) -> FinetuneSettings:
    """The fine-tune settings of a CompressConfig: its `finetune` section when it has one, else
    (the flat config) its `finetune_*` fields and the `finetune_*` keys of `cfg.extra`."""
    section = getattr(cfg, "finetune", None)
    ft = FinetuneConfig(**section) if isinstance(section, Mapping) else _flat_config(cfg)
    return run_settings(ft, seed=cfg.seed, device=cfg.device, batch_size=cfg.batch_size)


def _flat_config(cfg: Any) -> FinetuneConfig:
    names = [p.name for p in FinetuneConfig.params()]
    values = {name: getattr(cfg, f"finetune_{name}") for name in names if hasattr(cfg, f"finetune_{name}")}
    extra = getattr(cfg, "extra", {}) or {}
    values.update({name: extra[f"finetune_{name}"] for name in _EXTRA_KEYS if f"finetune_{name}" in extra})
    return FinetuneConfig(**values)
