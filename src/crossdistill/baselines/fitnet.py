"""FitNet-style hint training (Romero et al. 2015) as a few-shot baseline.

The L1-pruned, slimmed student is trained end to end by gradient descent so that its
intermediate features match the teacher's on the few samples. The hints are the outputs of the
pruned layers (before BatchNorm), the points cross distillation matches layer by layer, so the
two differ only in how the match is reached (joint SGD/Adam versus per-layer closed form). The
consumers keep their output width, so no regressor is needed between student and teacher.
FitNet's second stage (logit distillation) is the library's final fine-tune, run as for every
other method when `finetune_epochs` > 0.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from crossdistill.baselines.common import extra_setting, l1_pruned, require_channels, timed_result
from crossdistill.capture import get_module
from crossdistill.compression.channels import channel_pairs
from crossdistill.config import CompressConfig
from crossdistill.device import on_device, resolve_device
from crossdistill.engine import LayerRecord
from crossdistill.errors import CrossDistillError
from crossdistill.finetune import FinetuneSettings, crop_flip, finetune, settings_from_config
from crossdistill.model_outputs import batch_slices
from crossdistill.pipeline import CompressionResult, FewShot

DEFAULT_EPOCHS = 300
DEFAULT_LR = 1e-3


@contextmanager
def capture_outputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Outputs of the named layers in the most recent forward pass (with their graph)."""
    store: dict[str, torch.Tensor] = {}
    handles = [get_module(model, n).register_forward_hook(lambda m, i, o, n=n: store.__setitem__(n, o))
               for n in names]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def hint_loss(student_feats: Mapping[str, torch.Tensor], teacher_feats: Mapping[str, torch.Tensor],
              names: Sequence[str], teacher_channels: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean over hints of ‖f_s − f_t‖² / ‖f_t‖²: relative, so that deep layers with large
    activations do not drown the shallow ones. A hint layer whose own filters were pruned (it
    is also a producer, as in VGG chains) is compared on the teacher channels it kept."""
    terms = []
    for n in names:
        t = teacher_feats[n]
        if teacher_channels and n in teacher_channels:
            t = t.index_select(1, teacher_channels[n])
        terms.append((student_feats[n] - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12))
    return torch.stack(terms).mean()


def hint_layers(student: nn.Module, records: Sequence[LayerRecord], teacher: nn.Module | None = None,
                groups: Sequence[Mapping[str, Any]] = ()) -> tuple[list[str], dict[str, torch.Tensor]]:
    """The pruned layers (consumers) as hints, with the kept teacher output channels of those
    whose own filters were pruned too (a consumer that is also a producer).

    A registered model declares its channel pairs. For any other model the hints are the
    re-solved readers of the graph's pruned channel groups (`groups`: report entries with
    'group', 'width', 'producers'); a hint that also produces a pruned group is compared on the
    group's kept units when its outputs are exactly the group's units, and is dropped when they
    are not (a producer into a concatenation or a shuffle), where the map is not one to one."""
    kept = {r.name: r.info["kept"] for r in records if "kept" in r.info}
    if hasattr(student, "channel_pairs"):
        pairs = channel_pairs(student)
        hints = [p.consumer for p in pairs]
        produced = {p.producer: torch.as_tensor(sorted(kept[p.consumer]), dtype=torch.long)
                    for p in pairs if p.consumer in kept}
        return hints, {h: produced[h] for h in hints if h in produced}
    hints = list(kept)
    units = (getattr(student, "crossdistill_slim", None) or {}).get("kept", {})
    channels: dict[str, torch.Tensor] = {}
    for g in groups:
        for producer in g["producers"]:
            if producer not in hints:
                continue
            layer = get_module(teacher, producer) if teacher is not None else None
            width = getattr(layer, "out_channels", getattr(layer, "out_features", None))
            if width == g["width"] and g["group"] in units:
                channels[producer] = torch.as_tensor(sorted(units[g["group"]]), dtype=torch.long)
            else:
                hints.remove(producer)
    return hints, channels


def _frozen_bn_train_mode(model: nn.Module) -> None:
    # BatchNorm keeps the teacher's running statistics: batch statistics of 10–100 images are
    # poor and overwriting them cost 5–6 points in a quick trial (NOTES-math.md).
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _as_bool(value: object) -> bool:
    # YAML gives booleans, `--set`-style overrides may give strings; bool("false") is True.
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def hint_settings(cfg: CompressConfig) -> FinetuneSettings:
    """The hint stage's optimiser settings: `fitnet_*` keys of cfg.extra, else these defaults."""
    return FinetuneSettings(
        epochs=int(extra_setting(cfg, "fitnet_epochs", DEFAULT_EPOCHS)),
        lr=float(extra_setting(cfg, "fitnet_lr", DEFAULT_LR)),
        batch_size=int(extra_setting(cfg, "fitnet_batch_size", cfg.batch_size)),
        optimizer=str(extra_setting(cfg, "fitnet_optimizer", "adam")),
        augment=_as_bool(extra_setting(cfg, "fitnet_augment", True)),
        seed=int(cfg.seed),
        device=cfg.device,
    ).validate()


def hint_train(student: nn.Module, teacher: nn.Module, images: torch.Tensor, hints: Sequence[str],
               settings: FinetuneSettings, teacher_channels: Mapping[str, torch.Tensor] | None = None) -> list[float]:
    """Train `student` in place on the hint loss; returns the loss of each step. The student is
    left in eval mode. `teacher_channels` maps a hint layer whose output channels were pruned
    to the teacher's channels the student kept, in order. Runs on `settings.device`; both models
    are back on their own devices afterwards."""
    device = resolve_device(settings.device)
    with on_device(device, student, teacher):
        channels = {k: v.to(device) for k, v in (teacher_channels or {}).items()}
        return _hint_train(student, teacher, images.to(device), hints, settings, channels)


def _hint_train(student: nn.Module, teacher: nn.Module, images: torch.Tensor, hints: Sequence[str],
                settings: FinetuneSettings, teacher_channels: Mapping[str, torch.Tensor]) -> list[float]:
    teacher.eval()
    params = [p for p in student.parameters() if p.requires_grad]
    if settings.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=settings.lr)
    else:
        opt = torch.optim.SGD(params, lr=settings.lr, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(settings.seed)
    n = images.shape[0]
    history: list[float] = []
    with capture_outputs(student, hints) as s_feats, capture_outputs(teacher, hints) as t_feats:
        _frozen_bn_train_mode(student)
        try:
            for _ in range(settings.epochs):
                order = torch.randperm(n, generator=gen).to(images.device)
                for s in batch_slices(n, settings.batch_size):
                    x = images[order[s]]
                    if settings.augment:
                        x = crop_flip(x, gen)
                    with torch.no_grad():
                        teacher(x)
                    student(x)
                    loss = hint_loss(s_feats, t_feats, hints, teacher_channels)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    history.append(float(loss.detach()))
        finally:
            student.eval()
    return history


def fitnet(teacher: nn.Module, fewshot: FewShot, cfg: CompressConfig, *, show_progress: bool = False) -> CompressionResult:
    """L1-pruned student, hint training on the pruned layers' outputs, then the optional final
    fine-tune (`finetune_epochs` > 0) as for every method."""
    require_channels(cfg, "fitnet")
    start = time.perf_counter()
    settings = hint_settings(cfg)
    # The final fine-tune must come after the hints, so the pruning step runs without it.
    base = l1_pruned(teacher, fewshot, cfg, show_progress=show_progress, finetune_epochs=0)
    student = base.student
    hints, kept_outputs = hint_layers(student, base.records, teacher,
                                      base.summary.get("channel_groups", {}).get("pruned", []))
    if not hints:
        raise CrossDistillError("fitnet: no pruned layer can serve as a hint (every re-solved layer also "
                                "produces channels that a concatenation or shuffle regroups)")
    history = hint_train(student, teacher, fewshot.images, hints, settings, kept_outputs)
    finetuned = None
    if cfg.finetune["epochs"] > 0:
        finetuned = finetune(student, teacher, fewshot.images, fewshot.labels if fewshot.labelled else None,
                             settings_from_config(cfg), output=cfg.output_key, kind=cfg.output_kind)
    hint_info = {"epochs": settings.epochs, "lr": settings.lr, "optimizer": settings.optimizer,
                 "augment": settings.augment, "steps": len(history),
                 "loss_first": history[0] if history else None, "loss_last": history[-1] if history else None}
    summary = {**base.summary, "fitnet": hint_info}
    return timed_result(base, student, start, f"{base.solver} + fitnet(hints={len(hints)},{settings.optimizer},"
                        f"epochs={settings.epochs},lr={settings.lr:g})", finetune=finetuned, summary=summary)
