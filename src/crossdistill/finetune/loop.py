"""The fine-tune run: prepare (teacher's logits, BatchNorm, masks, optimizer), then the steps."""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from crossdistill.device import on_device, resolve_device
from crossdistill.errors import CrossDistillError, outside_stacklevel
from crossdistill.finetune.batchnorm import choose_bn, recalibrate_bn
from crossdistill.finetune.ema import WeightAverage
from crossdistill.finetune.losses import Distillation
from crossdistill.finetune.settings import FinetuneSettings
from crossdistill.finetune.views import VIEWS, mix
from crossdistill.finetune.weights import Masks, trainable_params
from crossdistill.hints import capture, hint_loss, hint_points, matching_points
from crossdistill.model_inputs import StackedInputs
from crossdistill.model_outputs import batch_slices, batched, flat

OnStep = Callable[[int, nn.Module], None]
# Fewer steps than this are named in a warning (the measured fine-tunes took 60-300).
FEW_STEPS = 50


# A fine-tune that leaves the few-shot KD loss above this many times its value before it is named.
WORSE = 1.25


class FinetuneWarning(UserWarning):
    """A fine-tune that will run, but not as its settings suggest (the CLI prints it on one line)."""


def finetune(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    settings: FinetuneSettings,
    masks: Mapping[str, torch.Tensor] | None = None,
    on_step: OnStep | None = None,
    output: str | None = None,
    kind: str = "auto",
) -> dict[str, Any]:
    """Fine-tune `student` in place on the few-shot images; returns what happened (losses on
    the un-augmented few-shot images before and after, steps, seconds) for the report.

    `masks` ({layer name: bool, True = kept}) defaults to those recorded on the student by
    unstructured pruning. `on_step(step, model)` is called after every step with the model the
    fine-tune would return if it stopped there (the student, or with `ema` its running average),
    in eval mode (e.g. to evaluate along the way). Returns with the student in eval mode.
    The steps run on `settings.device`; student and teacher are back on their own devices
    afterwards (`on_step` sees them on the training device). `output` names the model's output
    that holds its predictions when it returns several and `kind` what they are
    (crossdistill.model_outputs; 'auto': from their shape); every output is distilled.
    """
    settings.validate()
    device = resolve_device(settings.device)
    start, cpu_start = time.perf_counter(), time.process_time()
    with on_device(device, student, teacher):
        info = _finetune(student, teacher, images.to(device), None if labels is None else labels.to(device),
                         settings, masks, on_step, output, kind)
    info["device"] = str(device)
    info["seconds"] = time.perf_counter() - start  # moving to and from the device included
    # This process's CPU time, all threads: on a shared machine the wall seconds above grow with
    # the other jobs' load, the work itself much less.
    info["cpu_seconds"] = time.process_time() - cpu_start
    return info


def check_inputs(settings: FinetuneSettings, images: torch.Tensor) -> None:
    """Refuse blends the inputs cannot take (called before the compression too, so that a run
    does not fail only after its solves)."""
    if not images.is_floating_point() and (settings.mixup > 0 or settings.cutmix > 0):
        raise CrossDistillError("mixup and CutMix blend inputs; token ids cannot be blended: set "
                                "finetune_mixup and finetune_cutmix to 0")
    if images.dim() < 3 and settings.cutmix > 0:
        # mix() would take the batch axis for an image's height: some samples swapped, others not.
        raise CrossDistillError(f"CutMix pastes a box of an image or a stretch of a signal; inputs of shape "
                                f"{tuple(images.shape[1:])} (features) have neither: set finetune_cutmix to 0 "
                                "(finetune_mixup blends any input)")


def _finetune(student: nn.Module, teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor | None,
              settings: FinetuneSettings, masks: Mapping[str, torch.Tensor] | None,
              on_step: OnStep | None, output: str | None, kind: str) -> dict[str, Any]:
    if masks is None:
        from crossdistill.compression.weight_sparsity import get_masks

        masks = get_masks(student)
    teacher.eval()
    distill = Distillation.of(teacher, images[:2], output, settings.temperature, kind)
    if settings.kd_weight < 1.0 and settings.logit_weight > 0 and not distill.has_classes:
        raise CrossDistillError(f"the fine-tune's cross-entropy term scores classes, and this model's predictions "
                                f"are {distill.kind}: set its kd_weight to 1")
    if labels is None and settings.kd_weight < 1.0:
        raise CrossDistillError("the fine-tune's cross-entropy term needs labels; set its kd_weight to 1")
    check_inputs(settings, images)
    if not distill.has_classes:
        labels = None  # the few-shot labels (one per image) are not classes of these predictions
    teacher_outs = batched(teacher, images, settings.batch_size)
    student.eval()

    def losses() -> dict[str, float]:
        return distill.few_shot_losses(student, teacher_outs, images, labels, settings.batch_size)

    stacked_views = settings.augment and images.is_floating_point() and isinstance(student, StackedInputs)
    if stacked_views:
        # A crop or shift of the stack would treat its inputs as channels of one image; what a
        # fitting view of each input is, only the model's owner knows.
        settings = replace(settings, augment=False)
    # The views (augment.py) shift signals (N, C, L) and crop images (N, C, H, W); features or
    # clips they return as they are, and the report must not say views were drawn.
    shapeless_views = settings.augment and images.is_floating_point() and images.dim() not in (3, 4)
    if shapeless_views:
        settings = replace(settings, augment=False)
    mode = "hints" if settings.hint_weight > 0 and settings.logit_weight == 0 else \
        "hints+kd" if settings.hint_weight > 0 else "kd"
    info: dict[str, Any] = {"settings": asdict(settings), "mode": mode, "before": losses(), "steps": 0}
    if settings.augment and not images.is_floating_point():
        info["augment"] = "off: token ids have no random views"
    if shapeless_views:
        info["augment"] = (f"off: inputs of shape {tuple(images.shape[1:])} have no random views (they are drawn "
                           "for images N×C×H×W and signals N×C×L)")
    if stacked_views:
        info["augment"] = "off: stacked inputs (StackedInputs) have no random views"
    if settings.epochs == 0:
        # bn='recalibrate' without training: only the statistics are re-estimated (after 90 %
        # unstructured pruning that alone recovered most of the accuracy).
        if settings.bn == "recalibrate":
            recalibrate_bn(student, images, settings.batch_size)
            info["bn"] = "recalibrate"
            info["after"] = losses()
        return info
    steps = settings.epochs * math.ceil(images.shape[0] / settings.batch_size)
    if steps < FEW_STEPS:
        # An epoch is one pass over the few images, often a single batch: "3 epochs" is 3 steps,
        # which leaves the weights where the closed form put them.
        warnings.warn(f"the fine-tune takes {steps} step{'s' * (steps != 1)} ({images.shape[0]} images, batch "
                      f"{settings.batch_size}, {settings.epochs} epochs): too few to change much; the measured "
                      "runs took 60-300 steps (docs/finetune.md: 300 epochs at K=1, 60 at K=5)", FinetuneWarning,
                      stacklevel=outside_stacklevel())
    bn_mode = _settle_bn(student, teacher_outs, images, settings, distill, info)
    run = _Training.start(student, teacher, images, settings, masks, bn_mode, distill, info)
    info["steps"] = run.train(images, labels, teacher_outs, on_step)
    info["after"] = losses()
    before, after = info["before"].get("kd"), info["after"].get("kd")
    if before is not None and after is not None and after > WORSE * before and after - before > 1e-4:
        # The student now follows the teacher less on the very images it trained on: the
        # steps did harm (BatchNorm in training mode on a few images, a learning rate too high).
        bn = info.get("bn", settings.bn)
        # BatchNorm kept frozen already: the other two ways out are left.
        ways = "finetune_epochs 0 or a lower finetune_lr" if bn == "frozen" else \
            "finetune_epochs 0, a lower finetune_lr or finetune_bn 'frozen'"
        warnings.warn(f"the fine-tune raised the few-shot KD loss from {before:.3g} to {after:.3g} (BatchNorm "
                      f"{bn}, lr {settings.lr:g}): the student follows its teacher less than before it; compare "
                      f"it with {ways}", FinetuneWarning, stacklevel=outside_stacklevel())
    return info


def _settle_bn(student: nn.Module, teacher_outs: list[torch.Tensor], images: torch.Tensor,
               settings: FinetuneSettings, distill: Distillation, info: dict[str, Any]) -> str:
    """The BatchNorm mode the steps use ('auto' decided here), statistics re-estimated if so."""
    bn_mode = settings.bn
    if bn_mode == "auto":
        bn_mode, info["auto_bn"] = choose_bn(student, teacher_outs, images, distill, settings.batch_size)
    info["bn"] = bn_mode
    if bn_mode == "recalibrate":
        recalibrate_bn(student, images, settings.batch_size)
    return bn_mode


def _optimizer(params: list[nn.Parameter], settings: FinetuneSettings, total_steps: int
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    if not params:
        if settings.trainable == "pruned":
            raise CrossDistillError("the fine-tune has no parameter to train: quantized weights stay on their grid, "
                                    "and the layers the compression changed (finetune_trainable 'pruned') have no "
                                    "bias besides them; train every parameter (finetune_trainable 'all') or leave "
                                    "finetune_epochs at 0")
        raise CrossDistillError("the fine-tune has no parameter to train (quantized weights stay on their grid, "
                                "and this model has no bias or norm besides them, or none is trainable): "
                                "leave finetune_epochs at 0")
    if settings.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=settings.lr)
    else:
        opt = torch.optim.SGD(params, lr=settings.lr, momentum=0.9, nesterov=True)
    sched = None
    if settings.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / total_steps)))
    return opt, sched


@dataclass
class _Training:
    """What the steps of one run share."""

    student: nn.Module
    teacher: nn.Module
    settings: FinetuneSettings
    bn_mode: str
    distill: Distillation
    masks: Masks
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler | None
    gen: torch.Generator  # batch order, views, mix partners
    rng: np.random.Generator  # mixup/CutMix weights (torch's Beta takes no generator)
    points: list[str]  # hint points; empty without hints
    averaged: WeightAverage | None
    info: dict[str, Any] = field(repr=False)

    @classmethod
    def start(cls, student: nn.Module, teacher: nn.Module, images: torch.Tensor, settings: FinetuneSettings,
              masks: Mapping[str, torch.Tensor], bn_mode: str, distill: Distillation,
              info: dict[str, Any]) -> "_Training":
        bound = Masks(student, masks)
        bound.apply()  # before the average copies the student: masked weights are zero in it at every step
        total_steps = settings.epochs * math.ceil(images.shape[0] / settings.batch_size)
        opt, sched = _optimizer(trainable_params(student, settings.trainable, teacher), settings, total_steps)
        points: list[str] = []
        if settings.hint_weight > 0:
            points = matching_points(student, teacher, hint_points(student, teacher, settings.hints), images[:2])
            info["hint_points"] = len(points)
            info["hint_first"] = info["hint_last"] = None
        # With a constant rate and 10-50 images the weights keep moving step to step; their running
        # average is a steadier result.
        averaged = WeightAverage(student, settings.ema) if settings.ema > 0 else None
        return cls(student, teacher, settings, bn_mode, distill, bound, opt, sched, torch.Generator().manual_seed(settings.seed),
                   np.random.default_rng(settings.seed), points, averaged, info)

    def train(self, images: torch.Tensor, labels: torch.Tensor | None, teacher_outs: list[torch.Tensor],
              on_step: OnStep | None) -> int:
        """All epochs; returns the number of steps. The result (the average, with `ema`) is left
        in the student, in eval mode."""
        n, bs = images.shape[0], self.settings.batch_size
        steps = 0
        with capture(self.student, self.points) as s_feats, capture(self.teacher, self.points) as t_feats:
            try:
                self._train_mode()
                for _ in range(self.settings.epochs):
                    order = torch.randperm(n, generator=self.gen).to(images.device)
                    for part in batch_slices(n, bs):
                        idx = order[part]
                        y = labels[idx] if labels is not None else None
                        self._step(self._loss(images[idx], y, [None if t is None else t[idx] for t in teacher_outs], s_feats, t_feats))
                        steps += 1
                        self._after_step(steps, on_step)
            finally:
                self.student.eval()
        if self.averaged is not None:
            self.averaged.copy_to(self.student)
        return steps

    def _train_mode(self) -> None:
        # BN in training mode only for bn='train'; 'frozen'/'recalibrate' keep running statistics.
        self.student.train(self.bn_mode == "train")

    def _loss(self, x: torch.Tensor, y: torch.Tensor | None, cached_teacher_outs: list[torch.Tensor],
              s_feats: dict[str, torch.Tensor], t_feats: dict[str, torch.Tensor]) -> torch.Tensor:
        s = self.settings
        viewed = s.augment and x.is_floating_point()  # token ids get no views
        if viewed:
            x = VIEWS[s.augment_policy](x, self.gen)
        x, lam, partner = mix(x, s.mixup, s.cutmix, self.gen, self.rng)
        if viewed or lam is not None or self.points:
            # A new view, a blend or hint features: the teacher must see this very batch.
            with torch.no_grad():
                t_outs = flat(self.teacher(x))
        else:
            t_outs = cached_teacher_outs
        s_outs = flat(self.student(x))
        loss = s.logit_weight * self.distill.loss(s_outs, t_outs, y, lam, partner, s.kd_weight)
        if self.points:
            hint = hint_loss(s_feats, t_feats, self.points)
            loss = loss + s.hint_weight * hint
            self.info["hint_last"] = float(hint.detach())
            if self.info["hint_first"] is None:
                self.info["hint_first"] = self.info["hint_last"]
        return loss

    def _step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.masks.mask_grads()
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        self.masks.apply()

    def _after_step(self, steps: int, on_step: OnStep | None) -> None:
        if self.averaged is not None:
            self.averaged.update()
        if on_step is not None:
            self.student.eval()
            on_step(steps, self.averaged.model if self.averaged is not None else self.student)
            self._train_mode()
