"""Optional few-shot fine-tune of the whole student after layer-wise cross distillation.

Loss: kd_weight · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − kd_weight) · CE on the
few labels. The teacher's soft targets carry far more information per image than a label,
which matters when there are 10–100 images. That logit loss is scaled by logit_weight, and
hint_weight > 0 adds feature hints (crossdistill.hints). Mode 'hints' of the config (hints on
the pruned layers' outputs, no logit loss) was the best recipe measured on ResNet-56: +5 points
at K=1, +3 at K=5 over the closed form, where fitting the teacher's logits on 10 images hurt
(docs/results/accuracy_push.md). Wider random views (`augment_policy='affine'`) and a moving
average of the weights (`ema`) took it to 88.8 % at K=1 on ResNet-56 keep 0.5, and with CutMix
added 91.1 % at K=5 (same document; recipes in docs/finetune.md).

What the fine-tune must not undo:
- masks: weights that unstructured pruning zeroed stay exactly zero (their gradients are
  masked, so Adam's moments never see them, and the masks are re-applied after every step);
  channels removed by slimming are physically gone already.
- BatchNorm statistics, on purpose (`bn`):
  'frozen'      — BN in eval mode: the teacher's running statistics (which the layer-wise
                  solve was fitted against) are used and never updated; affine parameters train;
  'recalibrate' — running statistics re-estimated on the few-shot images first, then as frozen;
  'train'       — BN in training mode: batch statistics, running statistics updated, affine trained;
  'auto'        — 'recalibrate' if re-estimating the statistics lowers the KD loss on the few-shot
                  images by at least AUTO_RECALIBRATE_GAIN (a quarter), else 'frozen'.
  Measured (ResNet-56, 1000 test images, 3 seeds): after channel pruning (keep 0.5) the
  teacher's statistics still fit and re-estimating them from 10 images cost ~1 point, while
  after 90 % unstructured pruning re-estimating them alone recovered ~17 points; 'auto' (the
  default) tells the two apart by the KD loss on the few-shot images and chose right each time.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crossdistill.device import check_device_name, on_device, resolve_device
from crossdistill.errors import CrossDistillError
from crossdistill.hints import HINT_POINTS, capture, hint_loss, hint_points, matching_points

BN_MODES = ("auto", "frozen", "recalibrate", "train")
# 'auto' recalibrates only when that cuts the KD loss on the few-shot images by at least this
# share: a drop that large means the teacher's statistics no longer describe the student.
AUTO_RECALIBRATE_GAIN = 0.25
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")
TRAINABLE = ("all", "pruned")
MODES = ("kd", "hints")  # 'hints': the logit loss plus hint_weight · feature hints


@dataclass
class FinetuneSettings:
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
        check_finetune_settings(self.epochs, self.lr, self.bn, self.temperature, self.kd_weight)
        if self.batch_size < 1:
            raise CrossDistillError("fine-tune batch size must be positive")
        if not self.mixup >= 0:
            raise CrossDistillError(f"fine-tune mixup must be >= 0, got {self.mixup}")
        if not self.cutmix >= 0:
            raise CrossDistillError(f"fine-tune cutmix must be >= 0, got {self.cutmix}")
        if self.schedule not in SCHEDULES:
            raise CrossDistillError(f"fine-tune schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.augment_policy not in AUGMENT_POLICIES:
            raise CrossDistillError(f"fine-tune augment policy must be one of {list(AUGMENT_POLICIES)}, "
                                    f"got {self.augment_policy!r}")
        if self.trainable not in TRAINABLE:
            raise CrossDistillError(f"fine-tune trainable must be one of {list(TRAINABLE)}, got {self.trainable!r}")
        if not self.logit_weight >= 0:
            raise CrossDistillError(f"finetune_logit_weight must be >= 0, got {self.logit_weight}")
        if self.logit_weight == 0 and self.hint_weight == 0:
            raise CrossDistillError("the fine-tune needs a loss: finetune_logit_weight 0 requires feature hints")
        if not self.hint_weight >= 0:
            raise CrossDistillError(f"finetune_hint_weight must be >= 0, got {self.hint_weight}")
        if self.hints not in HINT_POINTS:
            raise CrossDistillError(f"finetune_hints must be one of {list(HINT_POINTS)}, got {self.hints!r}")
        if not 0.0 <= self.ema < 1.0:
            raise CrossDistillError(f"fine-tune ema decay must lie in [0, 1), got {self.ema}")
        if self.optimizer not in OPTIMIZERS:
            raise CrossDistillError(f"fine-tune optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        check_device_name(self.device)
        return self


def check_finetune_settings(epochs: int, lr: float, bn: str, temperature: float, kd_weight: float) -> None:
    if int(epochs) < 0:
        raise CrossDistillError(f"finetune_epochs must be >= 0, got {epochs}")
    if not float(lr) > 0:
        raise CrossDistillError(f"finetune_lr must be > 0, got {lr}")
    if bn not in BN_MODES:
        raise CrossDistillError(f"finetune_bn must be one of {list(BN_MODES)}, got {bn!r}")
    if not float(temperature) > 0:
        raise CrossDistillError(f"finetune_temperature must be > 0, got {temperature}")
    if not 0.0 <= float(kd_weight) <= 1.0:
        raise CrossDistillError(f"finetune_kd_weight must lie in [0, 1], got {kd_weight}")


def default_logit_weight(mode: str) -> float:
    """Hints only in mode 'hints': adding the logit loss cost 2 points on validation (accuracy_push.md)."""
    return 0.0 if mode == "hints" else 1.0


def check_finetune_recipe(mode: str, hint_weight: float, logit_weight: float | None, schedule: str, mixup: float,
                          cutmix: float, hints: str = "layers", views: str = "crop-flip", ema: float = 0.0) -> None:
    if mode not in MODES:
        raise CrossDistillError(f"finetune_mode must be one of {list(MODES)}, got {mode!r}")
    if hints not in HINT_POINTS:
        raise CrossDistillError(f"finetune_hints must be one of {list(HINT_POINTS)}, got {hints!r}")
    if logit_weight is None:
        logit_weight = default_logit_weight(mode)
    for name, value in (("finetune_hint_weight", hint_weight), ("finetune_logit_weight", logit_weight)):
        if not float(value) >= 0:
            raise CrossDistillError(f"{name} must be >= 0, got {value}")
    if float(logit_weight) == 0 and (mode != "hints" or float(hint_weight) == 0):
        raise CrossDistillError("finetune_logit_weight 0 leaves no loss unless finetune_mode is 'hints' "
                                "with finetune_hint_weight > 0")
    if not 0.0 <= float(ema) < 1.0:
        raise CrossDistillError(f"finetune_ema must lie in [0, 1), got {ema}")
    if views not in AUGMENT_POLICIES:
        raise CrossDistillError(f"finetune_views must be one of {list(AUGMENT_POLICIES)}, got {views!r}")
    if schedule not in SCHEDULES:
        raise CrossDistillError(f"finetune_schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    for name, value in (("finetune_mixup", mixup), ("finetune_cutmix", cutmix)):
        if not float(value) >= 0:
            raise CrossDistillError(f"{name} must be >= 0, got {value}")


def settings_from_config(cfg: Any) -> FinetuneSettings:
    """The fine-tune part of a CompressConfig (extra keys `finetune_optimizer`, `finetune_augment`,
    `finetune_batch_size` and `finetune_trainable` are read from cfg.extra when present; an
    `extra.finetune_mixup` of older configs still counts). The hint weight counts only in
    finetune_mode 'hints'."""
    extra = getattr(cfg, "extra", {}) or {}
    return FinetuneSettings(
        epochs=int(cfg.finetune_epochs),
        lr=float(cfg.finetune_lr),
        bn=cfg.finetune_bn,
        temperature=float(cfg.finetune_temperature),
        kd_weight=float(cfg.finetune_kd_weight),
        batch_size=int(extra.get("finetune_batch_size", cfg.batch_size)),
        optimizer=str(extra.get("finetune_optimizer", "adam")),
        augment=bool(extra.get("finetune_augment", True)),
        augment_policy=str(cfg.finetune_views),
        ema=float(cfg.finetune_ema),
        mixup=float(extra.get("finetune_mixup", cfg.finetune_mixup)),
        cutmix=float(cfg.finetune_cutmix),
        schedule=str(cfg.finetune_schedule),
        hint_weight=float(cfg.finetune_hint_weight) if cfg.finetune_mode == "hints" else 0.0,
        logit_weight=float(default_logit_weight(cfg.finetune_mode) if cfg.finetune_logit_weight is None
                           else cfg.finetune_logit_weight),
        hints=str(cfg.finetune_hints),
        trainable=str(extra.get("finetune_trainable", "all")),
        seed=int(cfg.seed),
        device=str(cfg.device),
    ).validate()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(p_teacher ‖ p_student) at temperature T, mean over the batch (T² keeps the gradient
    scale independent of T, as Hinton et al.)."""
    t = float(temperature)
    log_s = F.log_softmax(student_logits / t, dim=1)
    log_t = F.log_softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * (t * t)


def _bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> None:
    """Replace every BN's running statistics by the pooled mean and (unbiased) variance of its
    inputs over all `images`. Pooled sums rather than PyTorch's cumulative average of batch
    statistics, which weights unequal batches equally and drops the between-batch variance.
    Upstream BNs normalise with batch statistics meanwhile, as in training mode."""
    bns = _bn_modules(model)
    sums: dict[nn.Module, list] = {bn: [0.0, 0.0, 0] for bn in bns}

    def hook(bn: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].double()
        dims = [0] + list(range(2, x.dim()))
        acc = sums[bn]
        acc[0] = acc[0] + x.sum(dims)
        acc[1] = acc[1] + (x * x).sum(dims)
        acc[2] += x.numel() // x.shape[1]

    flags = [(m, m.training) for m in model.modules()]
    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    saved = {bn: (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in bns}
    model.eval()
    for bn in bns:
        bn.train()
    try:
        for i in range(0, images.shape[0], batch_size):
            model(images[i : i + batch_size])
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.training = flag
    for bn in bns:
        s, ss, n = sums[bn]
        if n < 2:
            bn.running_mean.copy_(saved[bn][0])
            bn.running_var.copy_(saved[bn][1])
            continue
        mean = s / n
        var = (ss - n * mean * mean) / (n - 1)
        bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.clamp_min(0).to(bn.running_var.dtype))
        bn.num_batches_tracked.copy_(saved[bn][2] + 1)


def _choose_bn(student: nn.Module, teacher_logits: torch.Tensor, images: torch.Tensor, temperature: float,
               batch_size: int) -> tuple[str, dict[str, float]]:
    """'recalibrate' or 'frozen' for bn='auto', by the KD loss on the few-shot images with the
    current and with re-estimated statistics (the student is left unchanged)."""
    bns = _bn_modules(student)
    saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in bns]

    @torch.no_grad()
    def kd() -> float:
        logits = torch.cat([student(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)])
        return float(kd_loss(logits, teacher_logits, temperature))

    frozen = kd()
    recalibrate_bn(student, images, batch_size)
    recal = kd()
    with torch.no_grad():
        for bn, (m, v, n) in zip(bns, saved):
            bn.running_mean.copy_(m)
            bn.running_var.copy_(v)
            bn.num_batches_tracked.copy_(n)
    mode = "recalibrate" if recal < (1.0 - AUTO_RECALIBRATE_GAIN) * frozen else "frozen"
    return mode, {"kd_frozen": frozen, "kd_recalibrated": recal}


def _augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding, and a random horizontal flip, per image."""
    if x.dim() != 4 or pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    # Random numbers come from the CPU generator whatever x's device: the same seed gives the
    # same views on every device.
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # (n, h)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # (n, w)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    out[flip] = out[flip].flip(3)
    return out.contiguous()


def _affine_augment(x: torch.Tensor, gen: torch.Generator, zoom: float = 0.35, degrees: float = 15.0,
                    shift: float = 0.15, jitter: float = 0.2) -> torch.Tensor:
    """Wider views than crop-flip: per image a random zoom in [1, 1 + zoom] (a crop of 55–100 % of
    the area), rotation within ±degrees, shift within ±shift of the size, horizontal flip, edges
    reflected; then contrast and brightness scaled by up to ±jitter (in the normalised units).
    The teacher labels the same view, so the views need not keep the class, only stay image-like."""
    if x.dim() != 4:
        return x
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:  # drawn on the CPU generator, as in _augment
        return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=x.dtype)

    scale = 1.0 / uniform(1.0, 1.0 + zoom)
    angle = uniform(-degrees, degrees) * (math.pi / 180.0)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).to(x.dtype)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.zeros(n, 2, 3, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta[:, 0, 2], theta[:, 1, 2] = uniform(-2 * shift, 2 * shift), uniform(-2 * shift, 2 * shift)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    shape = (n, 1, 1, 1)
    contrast = uniform(1.0 - jitter, 1.0 + jitter).view(shape).to(x.device)
    brightness = uniform(-jitter, jitter).view(shape).to(x.device)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + brightness).contiguous()


VIEWS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "crop-flip": _augment, "affine": _affine_augment}
AUGMENT_POLICIES = tuple(VIEWS)


def _mix(x: torch.Tensor, settings: FinetuneSettings, gen: torch.Generator, rng: np.random.Generator
         ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Mixup (per-image λ ~ Beta) or CutMix (one box per batch, λ = the share of the image kept)
    of the batch with a random permutation of itself; with both on, one of them per batch.
    Returns (images, λ per image or None, partner index or None)."""
    use_mixup, use_cutmix = settings.mixup > 0, settings.cutmix > 0
    if len(x) < 2 or not (use_mixup or use_cutmix):
        return x, None, None
    if use_mixup and use_cutmix:
        use_cutmix = bool(rng.random() < 0.5)
    partner = torch.randperm(len(x), generator=gen).to(x.device)
    if not use_cutmix:
        # With ten images, the teacher's answers on their mixtures are most of the data.
        lam = torch.as_tensor(rng.beta(settings.mixup, settings.mixup, len(x)), dtype=x.dtype, device=x.device)
        shape = (-1,) + (1,) * (x.dim() - 1)
        return lam.view(shape) * x + (1 - lam.view(shape)) * x[partner], lam, partner
    h, w = x.shape[-2:]
    cut = math.sqrt(1.0 - float(rng.beta(settings.cutmix, settings.cutmix)))
    ch, cw = int(round(h * cut)), int(round(w * cut))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = max(cy - ch // 2, 0), min(cy + (ch + 1) // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + (cw + 1) // 2, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[partner][..., y0:y1, x0:x1]
    lam = torch.full((len(x),), 1.0 - (y1 - y0) * (x1 - x0) / (h * w), dtype=x.dtype, device=x.device)
    return out, lam, partner


def _trainable(student: nn.Module, which: str) -> list[nn.Parameter]:
    """'all' parameters, or only those of the 'pruned' layers (the consumers of channel_pairs())."""
    if which == "all":
        return [p for p in student.parameters() if p.requires_grad]
    if not hasattr(student, "channel_pairs"):
        raise CrossDistillError(f"{type(student).__name__} declares no channel_pairs(): use finetune trainable 'all'")
    return [p for pair in student.channel_pairs() for p in student.get_submodule(pair.consumer).parameters()
            if p.requires_grad]


def _masked_params(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> list[tuple[nn.Parameter, torch.Tensor]]:
    pairs = []
    for name, mask in masks.items():
        w = model.get_submodule(name).weight
        if w.shape != mask.shape:
            raise CrossDistillError(f"mask of {name!r} has shape {tuple(mask.shape)}, weight {tuple(w.shape)}")
        pairs.append((w, mask.to(device=w.device, dtype=w.dtype)))
    return pairs


class WeightAverage:
    """Exponential moving average of a model's floating-point state (parameters and BN buffers),
    with the usual warm-up min(decay, (1 + t) / (10 + t)) so early steps are not swamped by the start.
    The warm-up is the binding term until t = (10·decay − 1) / (1 − decay) (4490 steps at 0.998):
    in shorter runs the average covers roughly the last t/9 steps and `decay` only caps it."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise CrossDistillError(f"weight-average decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.updates = 0
        # state_dict() tensors share storage with the modules, so the pairs are bound once, not
        # looked up by name at every step (the fine-tune updates parameters in place).
        live = model.state_dict()
        self._pairs = [(avg, live[name]) for name, avg in self.model.state_dict().items()]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for avg, live in self._pairs:
            if avg.is_floating_point():
                avg.mul_(d).add_(live, alpha=1.0 - d)
            else:
                avg.copy_(live)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.model.state_dict())


@torch.no_grad()
def _losses(student: nn.Module, teacher_logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor | None,
            temperature: float, batch_size: int) -> dict[str, float]:
    logits = torch.cat([student(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)])
    out = {"kd": float(kd_loss(logits, teacher_logits, temperature))}
    if labels is not None:
        out["ce"] = float(F.cross_entropy(logits, labels))
        out["train_top1"] = float((logits.argmax(1) == labels).float().mean() * 100)
    return out


def finetune(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    settings: FinetuneSettings,
    masks: Mapping[str, torch.Tensor] | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune `student` in place on the few-shot images; returns what happened (losses on
    the un-augmented few-shot images before and after, steps, seconds) for the report.

    `masks` ({layer name: bool, True = kept}) defaults to those recorded on the student by
    unstructured pruning. `on_step(step, model)` is called after every step with the model the
    fine-tune would return if it stopped there (the student, or with `ema` its running average),
    in eval mode (e.g. to evaluate along the way). Returns with the student in eval mode.
    The steps run on `settings.device`; student and teacher are back on their own devices
    afterwards (`on_step` sees them on the training device).
    """
    settings.validate()
    device = resolve_device(settings.device)
    start = time.perf_counter()
    with on_device(device, student, teacher):
        info = _finetune(student, teacher, images.to(device), None if labels is None else labels.to(device),
                         settings, masks, on_step)
    info["device"] = str(device)
    info["seconds"] = time.perf_counter() - start  # moving to and from the device included
    return info


def _finetune(student: nn.Module, teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor | None,
              settings: FinetuneSettings, masks: Mapping[str, torch.Tensor] | None,
              on_step: Callable[[int, nn.Module], None] | None) -> dict[str, Any]:
    if masks is None:
        from crossdistill.compression.weight_sparsity import get_masks

        masks = get_masks(student)
    if labels is None and settings.kd_weight < 1.0:
        raise CrossDistillError("the fine-tune's cross-entropy term needs labels; set finetune_kd_weight 1")
    teacher.eval()
    bs = settings.batch_size
    with torch.no_grad():
        teacher_logits = torch.cat([teacher(images[i : i + bs]) for i in range(0, images.shape[0], bs)])
    student.eval()
    before = _losses(student, teacher_logits, images, labels, settings.temperature, bs)
    info: dict[str, Any] = {"settings": asdict(settings), "before": before, "steps": 0}
    if settings.epochs == 0:
        # bn='recalibrate' without training: only the statistics are re-estimated (after 90 %
        # unstructured pruning that alone recovered most of the accuracy).
        if settings.bn == "recalibrate":
            recalibrate_bn(student, images, bs)
            info["bn"] = "recalibrate"
            info["after"] = _losses(student, teacher_logits, images, labels, settings.temperature, bs)
        return info
    bn_mode = settings.bn
    if bn_mode == "auto":
        bn_mode, info["auto_bn"] = _choose_bn(student, teacher_logits, images, settings.temperature, bs)
    info["bn"] = bn_mode
    if bn_mode == "recalibrate":
        recalibrate_bn(student, images, bs)
    masked = _masked_params(student, masks)
    with torch.no_grad():
        for w, m in masked:
            w.mul_(m)
    params = _trainable(student, settings.trainable)
    if settings.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=settings.lr)
    else:
        opt = torch.optim.SGD(params, lr=settings.lr, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)  # mixup weights (torch's Beta takes no generator)
    n = images.shape[0]
    total_steps = settings.epochs * math.ceil(n / bs)
    sched = None
    if settings.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / total_steps)))
    points: list[str] = []
    if settings.hint_weight > 0:
        points = matching_points(student, teacher, hint_points(student, settings.hints), images[:2])
        info["hint_points"] = len(points)
        info["hint_first"] = info["hint_last"] = None
    # With a constant rate and 10-50 images the weights keep moving step to step; their running
    # average is a steadier result (masked weights stay zero in it: they are zero at every step).
    averaged = WeightAverage(student, settings.ema) if settings.ema > 0 else None
    steps = 0
    with capture(student, points) as s_feats, capture(teacher, points) as t_feats:
        try:
            student.train(bn_mode == "train")
            for _ in range(settings.epochs):
                order = torch.randperm(n, generator=gen).to(images.device)
                for i in range(0, n, bs):
                    idx = order[i : i + bs]
                    x = images[idx]
                    y = labels[idx] if labels is not None else None
                    if settings.augment:
                        x = VIEWS[settings.augment_policy](x, gen)
                    x, lam, partner = _mix(x, settings, gen, rng)
                    if settings.augment or lam is not None or points:
                        with torch.no_grad():
                            t_logits = teacher(x)
                    else:
                        t_logits = teacher_logits[idx]
                    logits = student(x)
                    loss = settings.kd_weight * kd_loss(logits, t_logits, settings.temperature)
                    if settings.kd_weight < 1.0:
                        if lam is None:
                            ce = F.cross_entropy(logits, y)
                        else:
                            ce = (lam * F.cross_entropy(logits, y, reduction="none")
                                  + (1 - lam) * F.cross_entropy(logits, y[partner], reduction="none")).mean()
                        loss = loss + (1.0 - settings.kd_weight) * ce
                    loss = settings.logit_weight * loss
                    if points:
                        hint = hint_loss(s_feats, t_feats, points)
                        loss = loss + settings.hint_weight * hint
                        info["hint_last"] = float(hint.detach())
                        if info["hint_first"] is None:
                            info["hint_first"] = info["hint_last"]
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    for w, m in masked:
                        if w.grad is not None:
                            w.grad.mul_(m)
                    opt.step()
                    if sched is not None:
                        sched.step()
                    with torch.no_grad():
                        for w, m in masked:
                            w.mul_(m)
                    steps += 1
                    if averaged is not None:
                        averaged.update()
                    if on_step is not None:
                        student.eval()
                        on_step(steps, averaged.model if averaged is not None else student)
                        student.train(bn_mode == "train")
        finally:
            student.eval()
    if averaged is not None:
        averaged.copy_to(student)
    info["steps"] = steps
    info["after"] = _losses(student, teacher_logits, images, labels, settings.temperature, bs)
    return info
