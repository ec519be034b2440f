"""Optional few-shot fine-tune of the whole student after layer-wise cross distillation.

Loss: kd_weight · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − kd_weight) · CE on the
few labels; a model's other outputs (and predictions that are not class logits) are matched by
their relative squared error (finetune.losses). The teacher's soft targets carry far more information per image than a label,
which matters when there are 10–100 images. That logit loss is scaled by logit_weight, and
hint_weight > 0 adds feature hints (crossdistill.hints). Mode 'hints' of the config (hints on
the pruned layers' outputs, no logit loss) was the best recipe measured on ResNet-56: +5 points
at K=1, +3 at K=5 over the closed form, where fitting the teacher's logits on 10 images hurt
(docs/results/accuracy_push.md). Wider random views (`views='affine'`) and a moving
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

Modules: settings (FinetuneConfig, the declared settings, and the per-run FinetuneSettings),
loop (the run), losses, batchnorm, weights (trainable parameters, masks), ema, views (random
views, mixup/CutMix).
"""
from crossdistill.finetune.batchnorm import AUTO_RECALIBRATE_GAIN, choose_bn, recalibrate_bn
from crossdistill.finetune.ema import WeightAverage
from crossdistill.finetune.losses import Distillation, few_shot_losses, kd_loss
from crossdistill.finetune.loop import finetune
from crossdistill.finetune.settings import (
    BN_MODES, MODES, OPTIMIZERS, SCHEDULES, TRAINABLE, FinetuneConfig, FinetuneSettings, config_of,
    default_logit_weight, run_settings, settings_from_config,
)
from crossdistill.finetune.views import AUGMENT_POLICIES, VIEWS, affine_views, crop_flip, mix

# The names these functions had in the single-module version (tests/test_device.py imports them).
_augment = crop_flip
_affine_augment = affine_views

__all__ = [
    "AUGMENT_POLICIES", "AUTO_RECALIBRATE_GAIN", "BN_MODES", "MODES", "OPTIMIZERS", "SCHEDULES", "TRAINABLE",
    "VIEWS", "FinetuneConfig", "FinetuneSettings", "WeightAverage", "affine_views", "choose_bn", "config_of",
    "crop_flip", "default_logit_weight", "Distillation", "few_shot_losses", "finetune", "kd_loss", "mix",
    "recalibrate_bn", "run_settings", "settings_from_config",
]
