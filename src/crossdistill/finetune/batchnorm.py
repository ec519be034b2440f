"""BatchNorm statistics around the fine-tune (setting `bn`): re-estimating them on the few
images, and the 'auto' choice between keeping and re-estimating them."""
from __future__ import annotations

import torch
from torch import nn

from crossdistill.finetune.losses import Distillation
from crossdistill.model_outputs import batch_slices, batched

# 'auto' recalibrates only when that cuts the KD loss on the few-shot images by at least this
# share: a drop that large means the teacher's statistics no longer describe the student.
AUTO_RECALIBRATE_GAIN = 0.25


def bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorms that keep running statistics: one built with track_running_stats=False
    normalises with its batch's statistics in eval mode too, and has none to re-estimate."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.running_mean is not None and m.running_var is not None]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> None:
    """Replace every BN's running statistics by the pooled mean and (unbiased) variance of its
    inputs over all `images`. Pooled sums rather than PyTorch's cumulative average of batch
    statistics, which weights unequal batches equally and drops the between-batch variance.
    Upstream BNs normalise with batch statistics meanwhile, as in training mode."""
    bns = bn_modules(model)
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
        for s in batch_slices(images.shape[0], batch_size):
            model(images[s])
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


def choose_bn(student: nn.Module, teacher_outs: list[torch.Tensor], images: torch.Tensor, distill: Distillation,
              batch_size: int) -> tuple[str, dict[str, float]]:
    """'recalibrate' or 'frozen' for bn='auto', by the KD loss on the few-shot images with the
    current and with re-estimated statistics (the student is left unchanged)."""
    bns = bn_modules(student)
    saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in bns]

    def kd() -> float:
        return float(distill.kd(batched(student, images, batch_size), teacher_outs))

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
